"""Fluency: the share of generated words that are words of the review corpus.

The lexicon reward (VADER) can be gamed: a policy far from the reference may pile up positive words
and lose its spelling ("ine ling . TV was perfect nding was w re really b movie"). The generator of
the corpus has a small, closed vocabulary, so spelling is easy to check: split a text into words
(runs of letters, with an optional apostrophe part), lower-case them, and count how many belong to
the corpus vocabulary.

    fluency = (words of the corpus vocabulary) / (all words)          pooled over a set of
    completions

A completion with no word at all ("", ".") adds nothing to either count. Well-formed reviews score
1.0; the byte-level model of the first demo scored about 0.93 and its garbling DPO policy 0.64.

With the task's BPE vocabulary (`tokenizer.py`) every token is a whole word, so a policy can no
longer misspell, and word fluency stays near 1.0; what it can still do is string words together in
ways the grammar never does ("it was a so loved it", "superb stupid brilliant"). `bigram_fluency`
measures that: the share of adjacent word pairs (within a text) that occur somewhere in the corpus.
"""

import functools
import re
from collections.abc import Sequence

from sentiment.reviews import make_corpus, make_prompts

WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")


def words(text: str) -> list[str]:
    """The lower-cased words of `text`: "It's GREAT, I loved-it" -> ["it's", "great", "i", "loved",
    "it"]."""
    return [w.lower() for w in WORD.findall(text)]


@functools.lru_cache(maxsize=1)
def _corpus_words() -> tuple[frozenset[str], frozenset[tuple[str, str]]]:
    train, heldout = make_prompts()
    texts = [review.text for review in make_corpus(300_000, seed=0)] + train + heldout
    split = [words(text) for text in texts]
    return frozenset(w for ws in split for w in ws), frozenset(p for ws in split
                                                               for p in zip(ws, ws[1:]))


def corpus_vocabulary() -> frozenset[str]:
    """Every word the review generator writes, lower-cased: read off 300 kB of generated reviews and
    all prompts (the grammar's word lists are small, so that covers all of them;
    tests/test_sentiment.py checks it)."""
    return _corpus_words()[0]


def word_counts(texts: Sequence[str], bigrams: bool = False) -> tuple[list[int], list[int]]:
    """(words, corpus words) per text, the two counts behind `fluency`, for per-sample confidence
    intervals; with bigrams=True, (adjacent word pairs, pairs that occur in the corpus) instead."""
    vocabulary, corpus_bigrams = _corpus_words()
    split = [words(t) for t in texts]
    if bigrams:
        pairs = [list(zip(ws, ws[1:])) for ws in split]
        return [len(ps) for ps in pairs], [sum(p in corpus_bigrams for p in ps) for ps in pairs]
    return [len(ws) for ws in split], [sum(w in vocabulary for w in ws) for ws in split]


def fluency(texts: Sequence[str], bigrams: bool = False) -> float:
    """The share of all words in `texts` that are words of the corpus vocabulary (nan if there is no
    word); with bigrams=True, the share of adjacent word pairs that occur in the corpus
    (`bigram_fluency`)."""
    if isinstance(texts, str):
        raise TypeError("fluency takes a list of texts, got a single str")
    n_total, n_known = word_counts(texts, bigrams)
    return sum(n_known) / sum(n_total) if sum(n_total) else float("nan")


def bigram_fluency(texts: Sequence[str]) -> float:
    """The share of adjacent word pairs in `texts` (within each text) that occur in the corpus."""
    return fluency(texts, bigrams=True)
