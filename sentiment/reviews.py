"""A seeded generator of short English movie reviews: the offline stand-in for IMDb in the sentiment
task.

The paper's controlled-sentiment experiment (Rafailov et al., 2023, section 6.1) fine-tunes GPT-2 on
IMDb reviews, prompts it with review openings and rewards positive continuations. IMDb cannot be
downloaded here, and a model small enough to pre-train on a laptop CPU in a minute needs a simpler
language, so this module writes reviews from a small grammar instead:

    opening (neutral, <= 64 bytes, ends in "and")  +  body (carries the sentiment, 40-90 bytes)
    "I watched this film with my sister and"    +  " the acting was really superb. The pacing was a
                                                     little slow, but the ending was wonderful."

Bodies mix many aspects (acting, plot, music, pacing, dialogue, ending, ...), several sentence
templates, strongly scored positive and negative adjectives (for VADER, the reward), intensifiers
("really", "so"), negation ("not bad at all", "not good at all"), contrast clauses ("X was a little
slow, but Y was great"; "Although ..., ...") and neutral filler sentences. Sentiment is positive or
negative in equal shares, with a few neutral reviews, so a model pre-trained on the corpus continues
a prompt with either sentiment. Everything is drawn from `random.Random(seed)`: the same seed gives
the same reviews and prompts.

Measured (seed 0, 1.5 MB = ~14k reviews, VADER on the body): positive reviews score +0.84 +- 0.09,
negative -0.80 +- 0.10, neutral 0.00; 100% of a 4000-review sample on the intended side of +-0.05;
mean +0.02. A 0.8M-parameter byte-level GPT (4 layers, 128 wide) pre-trained for 450-550 steps of 16
x 160 tokens (~75 s on 2 CPU cores, loss ~0.4 nats/byte) writes mostly well-formed bodies of either
sentiment (held-out mean reward +0.03..+0.09); 3 epochs of DPO (beta 0.1, lr 1e-4..2e-4, batch 32)
on ~500 best-vs-worst pairs of its own samples (k=4, 96 new tokens) raised the held-out mean reward
by +0.49..+0.58 in three runs.
"""

import dataclasses
import random

# --------------------------------------------------------------------------------------- vocabulary
# (aspect, is_plural); VADER gives every one of them a neutral score.
ASPECTS = (("acting", False), ("plot", False), ("story", False), ("music", False),
           ("ending", False), ("cast", False), ("dialogue", False), ("pacing", False),
           ("script", False), ("visuals", True), ("characters", True), ("camera work", False),
           ("effects", True), ("direction", False), ("songs", True), ("lead actor", False))
# A small vocabulary of words VADER scores strongly (lexicon valence 2.0-3.1), so that a tiny model
# learns to spell them quickly and every review carries a clear reward.
POSITIVE = ("great", "superb", "wonderful", "excellent", "brilliant", "beautiful", "amazing",
            "perfect")
NEGATIVE = ("bad", "awful", "terrible", "horrible", "poor", "stupid", "ugly", "pathetic")
NEUTRAL = ("long", "slow", "quiet", "loud", "simple", "dark", "short")
INTENSIFIERS = ("", "", "really ", "very ", "so ", "absolutely ", "quite ")
# A mild word of the opposite sentiment, for the weak side of a contrast clause.
MILD = {+1: ("a little slow", "a bit weak", "a little long"), -1: ("nice", "fine", "good")}
NEGATED = {+1: ("not bad at all", "not bad", "not terrible"),
           -1: ("not good at all", "not great", "not good")}
VERBS = {+1: ("loved", "enjoyed"), -1: ("hated", "disliked")}
FILM = ("film", "movie")
CLOSINGS = {+1: ("I loved it.", "Highly recommended.", "What a great film!", "A real joy.",
                 "A perfect night out."),
            -1: ("I hated it.", "What a waste of time.", "Avoid it.", "A total mess.",
                 "A real disaster.")}

# Openings: "[{premise}, ]{subject} {verb} {object} {context} and", at most MAX_OPENING_BYTES long.
SUBJECTS = (("I", "watched"), ("I", "saw"), ("We", "watched"), ("We", "saw"), ("I", "rented"),
            ("My dad and I", "watched"), ("My mom and I", "saw"), ("I", "finally saw"),
            ("I", "caught"), ("My wife and I", "watched"), ("My son and I", "saw"),
            ("I", "went to see"))
OBJECTS = ("this film", "this movie", "the film", "the movie")
CONTEXTS = ("last night", "with my sister", "on a Sunday", "at the cinema", "on a flight",
            "after work", "over the weekend", "on TV", "with my cousin", "at a small theater",
            "on a train", "for a class", "in the morning", "with my kids", "on my laptop",
            "after dinner", "at home", "on a Tuesday", "in a hotel", "with my uncle", "at noon",
            "on DVD", "in the park", "at school")
PREMISES = ("Yesterday", "Last year", "At last", "Once again", "On a whim")
MAX_OPENING_BYTES = 64


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
    while True:
        (subject, verb), obj, context = (rng.choice(SUBJECTS), rng.choice(OBJECTS),
                                         rng.choice(CONTEXTS))
        opening = f"{subject} {verb} {obj} {context} and"
        if rng.random() < 0.3:
            opening = (f"{rng.choice(PREMISES)}, "
                       f"{opening if subject == 'I' else opening[0].lower() + opening[1:]}")
        if len(opening.encode()) <= MAX_OPENING_BYTES:
            return opening


# --------------------------------------------------------------------------------------------- body


def _aspect(rng, exclude=()):
    while True:
        name, plural = rng.choice(ASPECTS)
        if name not in exclude:
            return name, ("were" if plural else "was")


def _adjective(rng, sentiment: int) -> str:
    words = POSITIVE if sentiment > 0 else NEGATIVE
    return rng.choice(INTENSIFIERS) + rng.choice(words)


def _first_clause(rng, sentiment: int, used: list) -> str:
    """The clause right after the opening'sentiment "and" (lower case, ends with a period)."""
    a, was = _aspect(rng, used)
    used.append(a)
    kind = rng.randrange(6)
    if kind == 0:
        return f"the {a} {was} {_adjective(rng, sentiment)}."
    if kind == 1:
        return f"I thought the {a} {was} {_adjective(rng, sentiment)}."
    if kind == 2:
        return f"I found the {a} {_adjective(rng, sentiment)}."
    if kind == 3:
        adj = _adjective(rng, sentiment)
        article = "an" if adj[0] in "aeiou" else "a"
        return f"it was {article} {adj} {rng.choice(FILM)}."
    if kind == 4:
        return f"I {rng.choice(VERBS[sentiment])} it. The {a} {was} {_adjective(rng, sentiment)}."
    b, were = _aspect(rng, used)
    used.append(b)
    return f"the {a} and the {b} were {_adjective(rng, sentiment)}."


def _second_sentence(rng, sentiment: int, used: list) -> str:
    a, was = _aspect(rng, used)
    b, were = _aspect(rng, used + [a])
    used += [a, b]
    kind = rng.randrange(6)
    if kind == 0:
        return f"The {a} {was} {_adjective(rng, sentiment)}."
    if kind == 1:  # the strong side after "but" (VADER weighs the clause after "but" more)
        return (f"The {a} {was} {rng.choice(MILD[sentiment])}, but the {b} {were} "
                f"{_adjective(rng, sentiment)}.")
    if kind == 2:
        return (f"Although the {a} {was} {rng.choice(MILD[sentiment])}, the {b} {were} "
                f"{_adjective(rng, sentiment)}.")
    if kind == 3:
        return f"The {a} {was} {rng.choice(NEGATED[sentiment])}."
    if kind == 4:
        return f"Even the {a} {was} {_adjective(rng, sentiment)}."
    return f"The {a} {was} {rng.choice(NEUTRAL)}, and the {b} {were} {_adjective(rng, sentiment)}."


def _neutral_body(rng) -> str:
    a, was = _aspect(rng)
    b, were = _aspect(rng, [a])
    text = f" the {a} {was} {rng.choice(NEUTRAL)}. The {b} {were} {rng.choice(NEUTRAL)}."
    if rng.random() < 0.5:
        text += f" It is a {rng.choice(NEUTRAL)} {rng.choice(FILM)}."
    return text


def make_body(rng: random.Random, sentiment: int, min_bytes: int = 40, max_bytes: int = 90) -> str:
    """A review body with the given sentiment (+1, -1, 0), starting with a space, min..max bytes
    long."""
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
    """Endless sentiments in shuffled blocks of 20 with exact shares: as many positive as negative
    reviews, round(20 * p_neutral) neutral ones, so any corpus longer than a few blocks is
    balanced."""
    n_neutral = round(20 * p_neutral)
    if not 0 <= n_neutral <= 20 or (20 - n_neutral) % 2:
        raise ValueError(f"p_neutral={p_neutral} must be k/20 with 20 - k even (e.g. 0.1)")
    block = [0] * n_neutral + [+1, -1] * ((20 - n_neutral) // 2)
    while True:
        rng.shuffle(block)
        yield from block


def make_reviews(n: int, seed: int = 0, p_neutral: float = 0.1) -> list[Review]:
    """`n` reviews drawn from `random.Random(seed)`: equal numbers of positive and negative,
    p_neutral neutral."""
    rng = random.Random(seed)
    sentiments = _sentiment_blocks(rng, p_neutral)
    return [Review(make_opening(rng), make_body(rng, s), s) for s, _ in zip(sentiments, range(n))]


def make_corpus(n_bytes: int = 1_500_000, seed: int = 0, p_neutral: float = 0.1) -> list[Review]:
    """Reviews drawn from `random.Random(seed)` until their texts total at least `n_bytes` UTF-8
    bytes."""
    rng, reviews, total = random.Random(seed), [], 0
    sentiments = _sentiment_blocks(rng, p_neutral)
    while total < n_bytes:
        s = next(sentiments)
        reviews.append(Review(make_opening(rng), make_body(rng, s), s))
        total += len(reviews[-1].text.encode())
    return reviews


def make_prompts(n_train: int = 512, n_heldout: int = 128,
                 seed: int = 0) -> tuple[list[str], list[str]]:
    """Distinct review openings, split into (train, held_out) prompt lists with no prompt in both.

    The held-out prompts are never used to build preference pairs; the reward measured on them tells
    how well a policy generalizes to new prompts. (Openings are short and compositional, so the
    pre-training corpus may contain any of them, as IMDb-trained GPT-2 in the paper has seen reviews
    like its test prompts.)
    """
    rng, seen, prompts = random.Random(seed + 1_000_003), set(), []
    n_possible = len(SUBJECTS) * len(OBJECTS) * len(CONTEXTS) * (1 + len(PREMISES))
    if n_train + n_heldout > n_possible // 2:
        raise ValueError(f"asked for {n_train + n_heldout} distinct prompts; the grammar makes at "
                         f"most ~{n_possible}, ask for at most half of that")
    while len(prompts) < n_train + n_heldout:
        opening = make_opening(rng)
        if opening not in seen:
            seen.add(opening)
            prompts.append(opening)
    return prompts[:n_train], prompts[n_train:]


def make_unlabeled_prompts(n: int, n_train: int = 512, n_heldout: int = 128,
                           seed: int = 0) -> list[str]:
    """`n` more openings of the same grammar, none of them among make_prompts(n_train, n_heldout,
    seed)'s: a pool of in-distribution prompts that no preference pair used (the paper's
    "unlabeled prompts", section 7). The generator continues where make_prompts stopped."""
    prompts, _ = make_prompts(n_train + n_heldout + n, 0, seed)
    return prompts[n_train + n_heldout:]


# -------------------------------------------------------------------- a shifted prompt distribution
# Openings about other things than films: books, albums, songs, games, plays and shows, with the
# verbs they take and other contexts. The form ("... and", <= 64 bytes) is the same; the words are
# new to the pre-training corpus, so the base model finds them less likely and its tokenizer splits
# them into more pieces (experiments/out_of_distribution.py measures both).
SHIFTED_SUBJECTS = ("I", "We", "I", "We", "My aunt and I", "My friend and I")
SHIFTED_THINGS = (("read", ("this book", "the novel", "this comic", "the poem", "the memoir")),
                  ("played", ("this game", "the new game", "this board game", "the quiz")),
                  ("heard", ("this album", "the record", "the song", "this podcast")),
                  ("went to", ("this play", "the concert", "the opera", "the show")),
                  ("binged", ("this show", "the series", "the new season")))
SHIFTED_CONTEXTS = ("on the bus", "in the car", "at the gym", "on my phone", "at the office",
                    "on the beach", "before bed", "on vacation", "at lunch", "in bed",
                    "at the pool", "on a hike", "at the library", "on a rainy day",
                    "during lunch", "in one sitting", "on a long drive", "at a friend's place")


def make_shifted_prompts(n: int = 128, seed: int = 0, fits=None) -> list[str]:
    """`n` distinct openings about books, albums, games, plays and shows (not films), of the same
    form as make_prompts's: "{subject} {verb} {thing} {context} and", at most MAX_OPENING_BYTES;
    `fits` (str -> bool), when given, keeps only the openings it accepts (e.g. at most so many
    tokens). The out-of-distribution prompts of the sentiment task. ValueError when the grammar
    cannot make n of them."""
    rng, seen, prompts = random.Random(seed + 2_000_003), set(), []
    n_possible = (len(set(SHIFTED_SUBJECTS)) * sum(len(things) for _, things in SHIFTED_THINGS)
                  * len(SHIFTED_CONTEXTS))
    for _ in range(100 * n_possible):
        if len(prompts) == n:
            return prompts
        verb, things = rng.choice(SHIFTED_THINGS)
        opening = (f"{rng.choice(SHIFTED_SUBJECTS)} {verb} {rng.choice(things)} "
                   f"{rng.choice(SHIFTED_CONTEXTS)} and")
        if opening in seen:
            continue
        seen.add(opening)
        if len(opening.encode()) <= MAX_OPENING_BYTES and (fits is None or fits(opening)):
            prompts.append(opening)
    raise ValueError(f"asked for {n} distinct shifted prompts; the grammar made {len(prompts)} "
                     f"that fit (of ~{n_possible})")
