"""A seeded generator of short English movie reviews: the offline stand-in for IMDb in the sentiment task.

The paper's controlled-sentiment experiment (Rafailov et al., 2023, section 6.1) fine-tunes GPT-2 on IMDb
reviews, prompts it with review openings and rewards positive continuations. IMDb cannot be downloaded here,
and a model small enough to pre-train on a laptop CPU in a minute needs a simpler language, so this module
writes reviews from a small grammar instead:

    opening (sentiment-neutral, ends in "and")  +  body (carries the sentiment, ~40-100 bytes)
    "I watched this film with my sister and"    +  " the acting was really superb. The pacing was a
                                                     little slow, but the ending was wonderful."

Bodies mix many aspects (acting, plot, score, pacing, dialogue, ending, ...), several sentence templates,
strongly scored positive and negative adjectives (for VADER, the reward), intensifiers ("really", "so"),
negation ("not bad at all", "not good at all"), contrast clauses ("X was a little slow, but Y was great";
"Although ..., ...") and neutral filler sentences. Sentiment is positive or negative in equal shares, with
a few neutral reviews, so a model pre-trained on the corpus continues a prompt with either sentiment.
Everything is drawn from `random.Random(seed)`: the same seed gives the same reviews and prompts.

Left out: real review text, long reviews, and words VADER does not know (they would add nothing to the reward).
"""

import dataclasses
import random

# ---------------------------------------------------------------------------------------------- vocabulary
# (aspect, is_plural); VADER gives every one of them a neutral score.
ASPECTS = (("acting", False), ("plot", False), ("story", False), ("score", False), ("soundtrack", False),
           ("visuals", True), ("pacing", False), ("dialogue", False), ("ending", False), ("cast", False),
           ("characters", True), ("camera work", False), ("direction", False), ("script", False),
           ("effects", True), ("costumes", True), ("final scene", False), ("lead actor", False),
           ("sets", True), ("music", False), ("editing", False), ("first half", False), ("songs", True),
           ("lighting", False), ("sound", False))
POSITIVE = ("great", "superb", "wonderful", "excellent", "brilliant", "beautiful", "amazing", "fantastic",
            "perfect", "lovely", "delightful", "gorgeous", "awesome")
NEGATIVE = ("bad", "awful", "terrible", "horrible", "poor", "stupid", "pathetic", "ugly", "lousy", "nasty",
            "dumb", "idiotic", "horrendous", "disappointing", "disgusting")
NEUTRAL = ("long", "slow", "quiet", "loud", "simple", "dark", "predictable", "short", "unusual", "familiar")
INTENSIFIERS = ("", "", "", "really ", "very ", "so ", "absolutely ", "incredibly ", "quite ", "extremely ")
# A mild word of the opposite sentiment, for the weak side of a contrast clause.
MILD = {+1: ("a little slow", "a bit weak", "somewhat dull", "a little long"),
        -1: ("nice", "fine", "good", "okay")}
NEGATED = {+1: ("not bad at all", "never dull", "not bad", "not terrible"),
           -1: ("not good at all", "not great", "never funny", "not good")}
VERBS = {+1: ("loved", "enjoyed", "adored"), -1: ("hated", "disliked", "regretted")}
FILM = ("film", "movie")
CLOSINGS = {+1: ("I loved it.", "Highly recommended.", "What a great film!", "A real joy.", "Best film of the year.",
                 "I enjoyed every minute.", "A perfect night out."),
            -1: ("I hated it.", "What a waste of time.", "Avoid it.", "A total mess.", "Worst film of the year.",
                 "A real disaster.", "I was so bored.")}

# Openings: "{subject} {verb} {object} {context} and", optionally after a premise clause.
SUBJECTS = (("I", "watched"), ("I", "saw"), ("We", "watched"), ("We", "saw"), ("I", "rented"),
            ("My brother and I", "watched"), ("My parents and I", "saw"), ("I", "finally saw"),
            ("I", "went to see"), ("My wife and I", "watched"), ("I", "caught"), ("My son and I", "saw"))
OBJECTS = ("this film", "this movie", "the film", "the movie", "this picture")
CONTEXTS = ("last night", "with my sister", "on a Sunday afternoon", "at the cinema", "on a long flight",
            "after work", "over the weekend", "on television", "with my cousin", "on a quiet evening",
            "at a small theater", "on a train", "for a class", "in the morning", "with my kids",
            "on my laptop", "after dinner", "at home", "in a full theater", "on a Tuesday")
PREMISES = ("After seeing the trailer", "After reading the book", "On a whim", "Years after it came out",
            "Without knowing anything about it", "Because of the poster")


@dataclasses.dataclass(frozen=True)
class Review:
    """One generated review: `opening` + `body` is the text; sentiment is +1, -1 or 0 (neutral)."""

    opening: str
    body: str
    sentiment: int

    @property
    def text(self) -> str:
        return self.opening + self.body


def make_opening(rng: random.Random) -> str:
    """A sentiment-neutral review opening that ends in "and" (no trailing space)."""
    (subject, verb), obj, context = rng.choice(SUBJECTS), rng.choice(OBJECTS), rng.choice(CONTEXTS)
    if rng.random() < 0.3:
        subject = subject if subject == "I" else subject[0].lower() + subject[1:]
        return f"{rng.choice(PREMISES)}, {subject} {verb} {obj} {context} and"
    return f"{subject} {verb} {obj} {context} and"


# ---------------------------------------------------------------------------------------------------- body


def _aspect(rng, exclude=()):
    while True:
        name, plural = rng.choice(ASPECTS)
        if name not in exclude:
            return name, ("were" if plural else "was")


def _adjective(rng, s: int) -> str:
    words = POSITIVE if s > 0 else NEGATIVE
    return rng.choice(INTENSIFIERS) + rng.choice(words)


def _first_clause(rng, s: int, used: list) -> str:
    """The clause right after the opening's "and" (lower case, ends with a period)."""
    a, was = _aspect(rng, used)
    used.append(a)
    kind = rng.randrange(6)
    if kind == 0:
        return f"the {a} {was} {_adjective(rng, s)}."
    if kind == 1:
        return f"I thought the {a} {was} {_adjective(rng, s)}."
    if kind == 2:
        return f"I found the {a} {_adjective(rng, s)}."
    if kind == 3:
        adj = _adjective(rng, s)
        article = "an" if adj[0] in "aeiou" else "a"
        return f"it was {article} {adj} {rng.choice(FILM)}."
    if kind == 4:
        return f"I {rng.choice(VERBS[s])} it. The {a} {was} {_adjective(rng, s)}."
    b, were = _aspect(rng, used)
    used.append(b)
    return f"the {a} and the {b} were {_adjective(rng, s)}."


def _second_sentence(rng, s: int, used: list) -> str:
    a, was = _aspect(rng, used)
    b, were = _aspect(rng, used + [a])
    used += [a, b]
    kind = rng.randrange(6)
    if kind == 0:
        return f"The {a} {was} {_adjective(rng, s)}."
    if kind == 1:  # the strong side after "but" (VADER weighs the clause after "but" more)
        return f"The {a} {was} {rng.choice(MILD[s])}, but the {b} {were} {_adjective(rng, s)}."
    if kind == 2:
        return f"Although the {a} {was} {rng.choice(MILD[s])}, the {b} {were} {_adjective(rng, s)}."
    if kind == 3:
        return f"The {a} {was} {rng.choice(NEGATED[s])}."
    if kind == 4:
        return f"Even the {a} {was} {_adjective(rng, s)}."
    return f"The {a} {was} {rng.choice(NEUTRAL)}, and the {b} {were} {_adjective(rng, s)}."


def _neutral_body(rng) -> str:
    a, was = _aspect(rng)
    b, were = _aspect(rng, [a])
    text = f" the {a} {was} {rng.choice(NEUTRAL)}. The {b} {were} {rng.choice(NEUTRAL)}."
    if rng.random() < 0.5:
        text += f" It is a {rng.choice(NEUTRAL)} {rng.choice(FILM)}."
    return text


def make_body(rng: random.Random, sentiment: int, min_bytes: int = 40, max_bytes: int = 100) -> str:
    """A review body with the given sentiment (+1, -1, 0), starting with a space, min..max bytes long."""
    while True:
        if sentiment == 0:
            text = _neutral_body(rng)
        else:
            used = []
            parts = [_first_clause(rng, sentiment, used)]
            if rng.random() < 0.75:
                parts.append(_second_sentence(rng, sentiment, used))
            if rng.random() < 0.5:
                parts.append(rng.choice(CLOSINGS[sentiment]))
            text = " " + " ".join(parts)
        if min_bytes <= len(text.encode()) <= max_bytes:
            return text


def _sentiment_blocks(rng: random.Random, p_neutral: float):
    """Endless sentiments in shuffled blocks of 20 with exact shares: as many positive as negative reviews,
    round(20 * p_neutral) neutral ones, so any corpus longer than a few blocks is balanced."""
    n_neutral = round(20 * p_neutral)
    if not 0 <= n_neutral <= 20 or (20 - n_neutral) % 2:
        raise ValueError(f"p_neutral={p_neutral} must be k/20 with 20 - k even (e.g. 0.1)")
    block = [0] * n_neutral + [+1, -1] * ((20 - n_neutral) // 2)
    while True:
        rng.shuffle(block)
        yield from block


def make_reviews(n: int, seed: int = 0, p_neutral: float = 0.1) -> list[Review]:
    """`n` reviews drawn from `random.Random(seed)`: equal numbers of positive and negative, p_neutral neutral."""
    rng = random.Random(seed)
    sentiments = _sentiment_blocks(rng, p_neutral)
    return [Review(make_opening(rng), make_body(rng, s), s) for s, _ in zip(sentiments, range(n))]


def make_corpus(n_bytes: int = 1_500_000, seed: int = 0, p_neutral: float = 0.1) -> list[Review]:
    """Reviews drawn from `random.Random(seed)` until their texts total at least `n_bytes` UTF-8 bytes."""
    rng, reviews, total = random.Random(seed), [], 0
    sentiments = _sentiment_blocks(rng, p_neutral)
    while total < n_bytes:
        s = next(sentiments)
        reviews.append(Review(make_opening(rng), make_body(rng, s), s))
        total += len(reviews[-1].text.encode())
    return reviews


def make_prompts(n_train: int = 512, n_heldout: int = 128, seed: int = 0) -> tuple[list[str], list[str]]:
    """Distinct review openings, split into (train, held_out) prompt lists with no prompt in both.

    The held-out prompts are never used to build preference pairs; the reward measured on them tells how well
    a policy generalizes to new prompts. (Openings are short and compositional, so the pre-training corpus
    may contain any of them, as IMDb-trained GPT-2 in the paper has seen reviews like its test prompts.)
    """
    rng, seen, prompts = random.Random(seed + 1_000_003), set(), []
    n_possible = len(SUBJECTS) * len(OBJECTS) * len(CONTEXTS) * (1 + len(PREMISES))
    if n_train + n_heldout > n_possible // 2:
        raise ValueError(f"asked for {n_train + n_heldout} distinct prompts; the grammar makes at most "
                         f"~{n_possible}, ask for at most half of that")
    while len(prompts) < n_train + n_heldout:
        opening = make_opening(rng)
        if opening not in seen:
            seen.add(opening)
            prompts.append(opening)
    return prompts[:n_train], prompts[n_train:]
