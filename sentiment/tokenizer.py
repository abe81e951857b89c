"""The sentiment task's own tokenizer: a small BPE trained on the generated reviews
(`reviews_bpe.tiktoken`).

A byte-level model must first learn to spell "wonderful" before it can learn when to say it. The
reviews (`reviews.py`) use only ~150 distinct words, so a BPE vocabulary trained on the corpus
itself makes every one of them a single token: a tiny model gets whole words for free, sees ~4.4x
shorter sequences, and spends its capacity on what to say rather than on spelling.

Training uses tiktoken's own educational trainer, `tiktoken._educational.bpe_train` (greedy:
repeatedly merge the most frequent adjacent pair inside GPT-2's pre-tokenized pieces; the 256 single
bytes are ranks 0..255, merges follow in order). The text is `make_corpus(n_bytes, seed)` reviews
joined with "\\n", plus every train and held-out prompt of `make_prompts()`, so that all opening
words are covered. Same settings, same file: the generator is seeded and the trainer is
deterministic (ties go to the first pair seen).

Settings and measurements (2-core CPU; numbers on the 1.5 MB seed-0 pre-training corpus, 13934
reviews):

    n_bytes 60_000 (557 reviews) + 640 prompts = 88 kB of text, seed 0, vocab_size 666
    -> n_vocab 667, <|endoftext|> = 666; training takes ~14 s
    per review                 107.7 bytes -> 24.5 tokens
    distinct words, as they occur in the text (" acting", or "Yesterday" at a review's start): 148
                               of 148 are one token (" word" forms: 140 of 147; the 7 that are not -
                               "At", "Last", "My", "On", "Once", "We", "Yesterday" - only ever open
                               a review, with no space)
    token ids that occur       151 of 667 (the others are intermediate merges such as " Ev")

666 is the largest size this text can fill: after 410 merges every piece is a single token and the
trainer has no pair left to merge (`train_reviews_bpe` then raises ValueError). Smaller sizes leave
the rarest words in pieces: 650 is the smallest with 95% of the words whole, but splits " nice", "
fine", " little", ... More text changes little: with 40-100 kB of reviews the numbers above are the
same (the largest size is 666 or 667); 60 kB holds each of the rarest words (" little", " bit", "
weak") at least 3 times.

Regenerate the file (and print the numbers) with:  python -m sentiment.tokenizer
Use it with:  data.get_tokenizer(sentiment.tokenizer.TOKENIZER_FILE)
"""

import os
import statistics
import time

import regex
from tiktoken._educational import bpe_train

from data.tokenizer import GPT2_PATTERN, get_tokenizer, save_ranks
from sentiment.reviews import make_corpus, make_prompts

TOKENIZER_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reviews_bpe.tiktoken")
SETTINGS = {"vocab_size": 666, "n_bytes": 60_000, "seed": 0}  # the settings of the shipped file


def training_text(n_bytes: int = SETTINGS["n_bytes"], seed: int = SETTINGS["seed"]) -> str:
    """The BPE training text: corpus reviews and all train and held-out prompts, one per line."""
    train_prompts, heldout_prompts = make_prompts()
    return "\n".join([r.text for r in make_corpus(n_bytes, seed)] + train_prompts + heldout_prompts)


def train_reviews_bpe(vocab_size: int = SETTINGS["vocab_size"], n_bytes: int = SETTINGS["n_bytes"],
                      seed: int = SETTINGS["seed"]) -> dict[bytes, int]:
    """BPE ranks (dict[bytes, int], 256 single bytes first, then vocab_size - 256 merges) for the
    reviews.

    Raises:
        ValueError: vocab_size < 256, or larger than the text can fill (every piece already one
        token).
    """
    text = training_text(n_bytes, seed)
    try:
        # visualise=None: no printing
        return bpe_train(text, vocab_size, GPT2_PATTERN, visualise=None)
    except ValueError as err:
        if vocab_size < 256:
            raise
        raise ValueError(f"vocab_size {vocab_size} is more than {n_bytes} bytes of reviews "
                         "can fill: every "
                         "piece of the text became one token before that (bpe_train found "
                         "no pair to merge)"
                         ) from err


def write_reviews_bpe(path: str = TOKENIZER_FILE, **settings) -> dict[bytes, int]:
    """Train with `settings` (defaults: SETTINGS) and write the ranks to `path` in tiktoken's
    format."""
    ranks = train_reviews_bpe(**settings)
    save_ranks(ranks, path)
    return ranks


def measure(path: str = TOKENIZER_FILE, n_bytes: int = 1_500_000, seed: int = 0) -> dict:
    """Tokens and bytes per review, and the share of distinct words that are one token, on the
    corpus."""
    enc = get_tokenizer(path)
    texts = [r.text for r in make_corpus(n_bytes, seed)]
    pieces = {p for t in texts for p in regex.findall(GPT2_PATTERN, t) if regex.search(r"\p{L}", p)}
    words = {w for t in texts for w in regex.findall(r"\p{L}+", t)}
    return {
        "bytes_per_review": statistics.mean(len(t.encode()) for t in texts),
        "tokens_per_review": statistics.mean(len(ids) for ids in enc.encode_ordinary_batch(texts)),
        "words_one_token": sum(len(enc.encode_ordinary(p)) == 1 for p in pieces) / len(pieces),
        "space_words_one_token": sum(len(enc.encode_ordinary(" " + w)) == 1 for w in words)
            / len(words),
        "n_vocab": enc.n_vocab,
    }


if __name__ == "__main__":
    start = time.perf_counter()
    write_reviews_bpe()
    print(f"wrote {TOKENIZER_FILE} ({SETTINGS}) in {time.perf_counter() - start:.1f} s")
    for key, value in measure().items():
        print(f"{key:>22}: {value:.3f}" if isinstance(value, float) else f"{key:>22}: {value}")
