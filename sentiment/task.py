"""The sentiment task's pieces: the ground-truth reward, the corpus stream, sampling, and preference
pairs.

See `sentiment/__init__.py` for the task as a whole (the paper's section 6.1, offline).
"""

import contextlib
import dataclasses
import functools
import logging
import statistics
from collections.abc import Sequence

import torch

from data import PreferenceRecord, save_preferences
from sentiment.reviews import Review, make_corpus

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def sentiment_reward(texts: Sequence[str]) -> list[float]:
    """Ground-truth reward: VADER compound score in [-1, 1] of each completion text (positive =
    good)."""
    if isinstance(texts, str):
        raise TypeError("sentiment_reward takes a list of completion texts, got a single str")
    analyzer = _analyzer()
    return [float(analyzer.polarity_scores(t)["compound"]) for t in texts]


def corpus_tokens(tokenizer, *, n_bytes: int = 1_500_000, seed: int = 0) -> torch.Tensor:
    """The pre-training corpus as one token stream: review, EOS, review, EOS, ... (1-D int64
    tensor).

    Args:
        tokenizer: a tiktoken.Encoding (data.get_tokenizer); reviews are encoded with
            encode_ordinary.
        n_bytes: generate reviews until their text reaches this many bytes (1.5 MB ~ 12k reviews).
        seed: the generator's seed; same seed, same stream.
    """
    texts = [review.text for review in make_corpus(n_bytes, seed=seed)]
    eos = tokenizer.eot_token
    stream = []
    for ids in tokenizer.encode_ordinary_batch(texts, num_threads=1):
        stream += ids
        stream.append(eos)
    return torch.tensor(stream, dtype=torch.int64)  # (N,)


# --------------------------------------------------------------------------------------------------
# Sampling from a model and building preference pairs


@dataclasses.dataclass
class PairReport:
    """What `build_preference_pairs` sampled, kept and dropped."""

    n_prompts: int
    k: int
    n_completions: int
    n_without_eos: int  # completions cut at max_new_tokens (scored as they are)
    n_pairs: int
    n_dropped_small_gap: int  # prompts whose best - worst reward is < min_reward_gap or 0
    mean_reward: float  # over all k * n_prompts completions
    mean_chosen_reward: float
    mean_rejected_reward: float

    def summary(self) -> str:
        return (f"{self.n_pairs} pairs from {self.n_prompts} prompts x {self.k} samples; dropped "
                f"{self.n_dropped_small_gap} with a reward gap below the threshold; "
                f"{self.n_without_eos} of {self.n_completions} samples hit max_new_tokens; mean "
                f"reward {self.mean_reward:+.3f} (chosen {self.mean_chosen_reward:+.3f}, rejected "
                f"{self.mean_rejected_reward:+.3f})")


@dataclasses.dataclass
class Samples:
    """What `sample_completions` drew: for prompts[i], its k completions as text and as token
    ids."""

    # texts[i][j]: the j-th completion of prompts[i], decoded without the EOS
    texts: list[list[str]]
    # token_ids[i][j]: its token ids, with the EOS when it stopped at one
    token_ids: list[list[list[int]]]
    prompt_ids: list[list[int]]  # prompt_ids[i]: prompts[i] encoded (encode_ordinary)
    n_without_eos: int  # completions that stopped at max_new_tokens rather than at EOS


@contextlib.contextmanager
def cpu_threads(count: int):
    """torch's CPU threads set to `count` inside the block, then set back (nothing to do when they
    already are, or for a count of 0: torch's default)."""
    before = torch.get_num_threads()
    if count <= 0 or count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sample_completions(model, tokenizer, prompts: Sequence[str], *, k: int = 1,
                       max_new_tokens: int = 64,
                       temperature: float = 1.0, top_k: int | None = None, seed: int = 0,
                       batch_size: int = 64, threads: int = 1) -> Samples:
    """Sample k completions per prompt with `model.complete` (one batched call), on the model's
    device.

    The model is put in eval mode for sampling (its previous mode is restored) and sampling draws
    from the torch RNG of the model's device, seeded with `seed` inside `torch.random.fork_rng`
    (which forks exactly that device's generator), so the caller's RNG state is untouched and the
    same seed gives the same samples.

    Sampling runs on `threads` CPU threads, one by default: a small model's sampling is a long
    chain of tiny ops, and when another process holds a core each op's parallel region waits for a
    descheduled thread (bench/bench_threads.py: on 2 cores, 4x slower beside one busy process on
    two threads, unchanged on one, at 1.4x the idle time). The samples are the same on any count.

    Args:
        model: a model.GPT (anything with `complete` and `parameters`); tokenizer: its
            tiktoken.Encoding.
        prompts: N strings; k: completions per prompt; max_new_tokens, temperature, top_k: sampling
        settings. threads: CPU threads while sampling (>= 1).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    eos = tokenizer.eot_token
    prompt_ids = [tokenizer.encode_ordinary(p) for p in prompts]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), cpu_threads(threads):
            torch.manual_seed(seed)
            outputs = model.complete([ids for ids in prompt_ids for _ in range(k)], max_new_tokens,
                                     temperature=temperature, top_k=top_k, eos_token=eos,
                                     batch_size=batch_size)
    finally:
        model.train(was_training)
    n_without_eos = sum(1 for ids in outputs if not ids or ids[-1] != eos)
    texts = [tokenizer.decode([t for t in ids if t != eos], errors="replace") for ids in outputs]
    return Samples(texts=[texts[i * k:(i + 1) * k] for i in range(len(prompts))],
                   token_ids=[outputs[i * k:(i + 1) * k] for i in range(len(prompts))],
                   prompt_ids=prompt_ids, n_without_eos=n_without_eos)


def build_preference_pairs(model, tokenizer, prompts: Sequence[str], *, k: int = 4,
                           min_reward_gap: float = 0.1,
                           max_new_tokens: int = 64, temperature: float = 1.0,
                           top_k: int | None = None,
                           seed: int = 0, batch_size: int = 64, reward_fn=None, path=None,
                           return_report: bool = False):
    """Preference pairs the paper's way: sample k completions per prompt, label them by the reward.

    For each prompt the completion with the highest reward is `chosen` and the one with the lowest
    is `rejected` (the first one on ties); a prompt whose best - worst gap is below
    `min_reward_gap`, or zero, gives no pair (counted in the report). Deterministic for a given
    model, prompts and seed.

    Args:
        model: anything with GPT.complete(prompts: list[list[int]], max_new_tokens, temperature,
            top_k, eos_token, batch_size) -> list[list[int]] and parameters() (model.GPT).
        tokenizer: tiktoken.Encoding used by the model; prompts: list of str (e.g.
            make_prompts()[0]).
        k: completions per prompt (>= 2); max_new_tokens, temperature, top_k: sampling settings.
        reward_fn: list[str] -> list[float] scoring completions; default `sentiment_reward` (VADER).
        path: if given, also write the pairs there as standard JSONL (`save_preferences`).
    Returns:
        list[PreferenceRecord] (prompt = the opening, chosen/rejected = completion texts), or
        (records, PairReport) when return_report.
    """
    if k < 2:
        raise ValueError(f"k must be >= 2 to form a pair, got {k}")
    samples = sample_completions(model, tokenizer, prompts, k=k, max_new_tokens=max_new_tokens,
                                 temperature=temperature, top_k=top_k, seed=seed,
                                 batch_size=batch_size)
    completions = samples.texts
    flat_rewards = [float(r)
                    for r in (reward_fn or sentiment_reward)([c for group in completions
                                                              for c in group])]
    records, chosen_rewards, rejected_rewards, n_small_gap = [], [], [], 0
    for i, (prompt, group) in enumerate(zip(prompts, completions)):
        rewards = flat_rewards[i * k:(i + 1) * k]
        best = max(range(k), key=lambda j: rewards[j])
        worst = min(range(k), key=lambda j: rewards[j])
        if rewards[best] - rewards[worst] < min_reward_gap or rewards[best] == rewards[worst]:
            n_small_gap += 1
            continue
        records.append(PreferenceRecord(prompt, group[best], group[worst]))
        chosen_rewards.append(rewards[best])
        rejected_rewards.append(rewards[worst])
    report = PairReport(
        n_prompts=len(prompts), k=k, n_completions=len(flat_rewards),
                        n_without_eos=samples.n_without_eos,
        n_pairs=len(records), n_dropped_small_gap=n_small_gap,
        mean_reward=statistics.fmean(flat_rewards) if flat_rewards else float("nan"),
        mean_chosen_reward=statistics.fmean(chosen_rewards) if records else float("nan"),
        mean_rejected_reward=statistics.fmean(rejected_rewards) if records else float("nan"))
    log.info("%s", report.summary())
    if path is not None:
        save_preferences(records, path)
    return (records, report) if return_report else records


def corpus_statistics(reviews: Sequence[Review],
                      neutral_band: float = 0.05) -> dict[str, dict[str, float]]:
    """VADER compound of review bodies by intended sentiment: count, mean, std and fraction agreeing
    (positive > band, negative < -band, neutral within +-band). Used to check the generator."""
    scores = sentiment_reward([r.body for r in reviews])
    stats = {}
    for label, s in (("positive", 1), ("negative", -1), ("neutral", 0)):
        xs = [x for r, x in zip(reviews, scores) if r.sentiment == s]
        if not xs:
            continue
        agree = [(x > neutral_band) if s > 0 else (x < -neutral_band) if s < 0
                 else (abs(x) <= neutral_band)
                 for x in xs]
        stats[label] = {"count": len(xs), "mean": statistics.fmean(xs),
                        "std": statistics.pstdev(xs), "agreement": sum(agree) / len(xs)}
    return stats
