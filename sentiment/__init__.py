"""The embedded task: controlled sentiment generation (Rafailov et al., 2023, section 6.1), offline.

In the paper, x is a prefix of an IMDb review, the policy writes the continuation y, and a sentiment
classifier gives the ground-truth reward r(x, y). Preference pairs are made by sampling completions
from the model and labelling them with that reward. Here, with no downloads:

* corpus: short generated reviews (`reviews.py`), 1-2 MB, to pre-train a small base model;
  `corpus_tokens` returns them as one token stream with EOS after every review;
* prompts: sentiment-neutral review openings, split into train and held-out sets (`make_prompts`),
  a pool of unlabeled ones (`make_unlabeled_prompts`) and openings of another kind
  (`make_shifted_prompts`);
* reward: VADER's compound score in [-1, 1] (Hutto & Gilbert, 2014; `vaderSentiment` package) of the
  completion only - the prompt is neutral and is not scored;
* pairs: for each train prompt, sample k completions from the model (one batched `GPT.complete`
  call), score them, pair the best (chosen) with the worst (rejected), drop pairs whose reward gap
  is below a
  threshold (counted), and optionally write them as standard JSONL for `data.load_preferences`;
* fluency (`fluency.py`): the share of generated words that are words of the corpus, which falls
  when a policy games the lexicon reward by garbling;
* evaluation (`evaluate.py`): ground-truth reward, KL(policy || reference), fluency and win rate
  from samples, each with a 95% confidence interval.

    reviews.py    the seeded movie-review generator (corpus, prompts)
    tokenizer.py  a small BPE vocabulary trained on the corpus (reviews_bpe.tiktoken)
    task.py       sentiment_reward, corpus_tokens, sample_completions, build_preference_pairs
    fluency.py    corpus_vocabulary, fluency, bigram_fluency
    evaluate.py   completion_logps, score_policy, sample_report

Left out: the paper's classifier (a fine-tuned SiEBERT model) and real IMDb text; the reward here is
a lexicon scorer, which a policy can exploit by piling up positive words - the KL term of DPO is
what keeps the completions reading like reviews.
"""

from sentiment.evaluate import (
    completion_logps,
    fluency_numbers,
    mean_ci95,
    pearson,
    ranks,
    ratio_ci95,
    sample_report,
    score_policy,
    spearman,
    win_and_tie_rates,
)
from sentiment.fluency import bigram_fluency, corpus_vocabulary, fluency, word_counts
from sentiment.reviews import (
    MAX_OPENING_BYTES,
    Review,
    make_corpus,
    make_prompts,
    make_reviews,
    make_shifted_prompts,
    make_unlabeled_prompts,
)
from sentiment.task import (
    PairReport,
    Samples,
    build_preference_pairs,
    corpus_statistics,
    corpus_tokens,
    cpu_threads,
    sample_completions,
    sentiment_reward,
)
from sentiment.tokenizer import TOKENIZER_FILE

__all__ = [
    "MAX_OPENING_BYTES", "PairReport", "Review", "Samples", "TOKENIZER_FILE", "bigram_fluency",
    "build_preference_pairs", "completion_logps", "corpus_statistics", "corpus_tokens",
    "corpus_vocabulary", "cpu_threads", "fluency", "fluency_numbers", "make_corpus", "make_prompts",
    "make_reviews", "make_shifted_prompts", "make_unlabeled_prompts", "mean_ci95", "pearson",
    "ranks", "ratio_ci95", "sample_completions",
    "sample_report", "score_policy", "sentiment_reward", "spearman", "win_and_tie_rates",
    "word_counts",
]
