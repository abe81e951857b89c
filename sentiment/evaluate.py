"""Evaluation from samples: ground-truth reward, KL(policy || reference), fluency and win rate on
held-out prompts.

The paper's controlled-sentiment experiment (section 6.1, Figure 2 left) judges a policy by two
numbers measured on its own samples: the ground-truth reward it achieves, and how far it moved from
the reference,

    KL(pi || pi_ref) = E_{y ~ pi(.|x)} [ log pi(y|x) - log pi_ref(y|x) ]        (sequence level, in
    nats)

estimated here by Monte Carlo on the policy's samples, drawn at temperature 1 with no top-k (any
other sampling would not be a sample of pi, and the estimate would be biased). Both log-probs are
sums over the completion tokens, computed with `logprob_kernels.sequence_logprobs`. Samples stop at
EOS or after `max_new_tokens`; a truncated sample is still scored exactly, as a prefix. Fluency
(`sentiment.fluency`) catches the reward hacking a lexicon reward invites.

Every mean comes with the half-width of its 95% confidence interval, 1.96 standard errors over the
samples (for fluency, a ratio of sums, the delta-method standard error). Win rate: the fraction of
samples where the policy's completion gets a strictly higher reward than the reference's completion
of the same prompt and sample index (ties count as losses; their fraction is reported too).
"""

import math

import torch

import data
import logprob_kernels
from sentiment.fluency import word_counts
from sentiment.task import sample_completions


@torch.no_grad()
def completion_logps(model, prompt_ids, completions, pad_id, batch_size=64, impl="auto",
                     temperature=1.0):
    """Sum of log p(completion | prompt) under `model` for each row, on the model's device; with a
    temperature, under the tempered model (softmax of logits / temperature), the distribution
    sampling at it draws from.

    prompt_ids, completions: lists of token-id lists (same length N, each non-empty). Returns (N,)
    float32 on the CPU.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for batch in data.response_batches(prompt_ids, completions, pad_id, batch_size):
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(batch["input_ids"]) / temperature  # (b, T, V)
        out.append(logprob_kernels.sequence_logprobs(logits, batch["labels"], batch["mask"],
                                                     impl=impl).cpu())  # (b,)
    model.train(was_training)
    return torch.cat(out)  # (N,)


def mean_ci95(values):
    """(mean, half-width of the normal 95% confidence interval) of a list of floats."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else float("nan")
    return mean, 1.96 * math.sqrt(var / n)


def pearson(xs, ys):
    """Pearson's correlation of two equally long lists of floats (nan when either is constant)."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    cov = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
    var_x, var_y = sum((x - mean_x) ** 2 for x in xs), sum((y - mean_y) ** 2 for y in ys)
    return cov / math.sqrt(var_x * var_y) if var_x > 0 and var_y > 0 else float("nan")


def ranks(values):
    """The rank of each value (1 = the smallest), ties sharing the mean of their ranks."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    result, start = [0.0] * len(values), 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            result[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return result


def spearman(xs, ys):
    """Spearman's rank correlation: Pearson's on the ranks (ties at their mean rank)."""
    return pearson(ranks(xs), ranks(ys))


def ratio_ci95(numerators, denominators):
    """(sum(num) / sum(den), 95% half-width by the delta method), for a pooled share such as
    fluency."""
    n, total = len(numerators), sum(denominators)
    if total == 0:
        return float("nan"), float("nan")
    ratio = sum(numerators) / total
    residuals = [a - ratio * b for a, b in zip(numerators, denominators)]
    var = sum(r * r for r in residuals) / (n - 1) if n > 1 else float("nan")
    return ratio, 1.96 * math.sqrt(var / n) / (total / n)


@torch.no_grad()
def score_policy(policy, reference, tokenizer, prompts, reward_fn, *, max_new_tokens,
                 samples_per_prompt=1,
                 seed=0, batch_size=64, impl="auto", temperature=1.0):
    """Sample `samples_per_prompt` completions per prompt from `policy`; score reward, KL and
    fluency.

    With a temperature the samples come from the tempered policy pi_T (softmax of logits / T), and
    the KL is KL(pi_T || reference), with log pi_T of each sample: what the policy sampled at T
    costs in KL.

    Args:
        policy, reference: GPT models (pass the same object twice to score the reference: KL is then
            0).
        tokenizer: their tiktoken.Encoding. prompts: list of N str. reward_fn: list[str] ->
        list[float].
    Returns a dict: reward, kl, fluency, bigram_fluency (floats) with their `_ci95` 95% half-widths,
    n_samples, and per sample (prompt-major, N * samples_per_prompt): rewards, logratios (log pi -
    log pi_ref), texts, prompt_index, prompt_ids and completion_ids (token-id lists, EOS included
    where one was sampled).
    """
    samples = sample_completions(policy, tokenizer, prompts, k=samples_per_prompt,
                                 max_new_tokens=max_new_tokens,
                                 temperature=temperature, seed=seed, batch_size=batch_size)
    texts = [t for group in samples.texts for t in group]
    rewards = [float(r) for r in reward_fn(texts)]
    prompt_ids = [ids for ids in samples.prompt_ids for _ in range(samples_per_prompt)]
    completion_ids = [ids for group in samples.token_ids for ids in group]
    if policy is reference and temperature == 1.0:
        logratios = [0.0] * len(texts)
    else:
        eos = tokenizer.eot_token
        policy_logps = completion_logps(policy, prompt_ids, completion_ids, eos, batch_size, impl,
                                        temperature)
        reference_logps = completion_logps(reference, prompt_ids, completion_ids, eos, batch_size,
                                           impl)
        logratios = (policy_logps - reference_logps).tolist()
    (reward, reward_ci), (kl, kl_ci) = mean_ci95(rewards), mean_ci95(logratios)
    return {"reward": reward, "reward_ci95": reward_ci, "kl": kl, "kl_ci95": kl_ci,
            **fluency_numbers(texts), "n_samples": len(texts), "rewards": rewards,
            "logratios": logratios, "texts": texts,
            "prompt_index": [i for i in range(len(prompts)) for _ in range(samples_per_prompt)],
            "prompt_ids": prompt_ids, "completion_ids": completion_ids}


def fluency_numbers(texts):
    """fluency and bigram_fluency of `texts` (sentiment.fluency), each with its 95% half-width
    (`_ci95`)."""
    out = {}
    for name, bigrams in (("fluency", False), ("bigram_fluency", True)):
        out[name], out[name + "_ci95"] = ratio_ci95(*reversed(word_counts(texts, bigrams)))
    return out


def win_and_tie_rates(policy_rewards, reference_rewards):
    """(win rate, tie rate): the shares of sample pairs (same prompt, same sample index) where the
    policy's reward is strictly higher than the reference's, and where they are equal. Lists of
    floats of the same length."""
    pairs = list(zip(policy_rewards, reference_rewards, strict=True))
    return sum(p > r for p, r in pairs) / len(pairs), sum(p == r for p, r in pairs) / len(pairs)


def sample_report(policy, reference, tokenizer, prompts, reward_fn, *, max_new_tokens,
                  samples_per_prompt=1,
                  seed=0, batch_size=64, impl="auto"):
    """Score policy and reference on the same prompts and seeds (`score_policy`), and compare them.

    Both sample through `sample_completions`, which leaves the caller's RNG and the models'
    train/eval modes as they were, on the device their parameters are on.
    Returns a dict: reward_policy, reward_reference, kl_policy_reference, fluency_policy,
    fluency_reference, bigram_fluency_policy, bigram_fluency_reference (each with a `_ci95`
    half-width), win_rate, tie_rate, n_samples, and per sample rewards_policy,
    rewards_reference, samples_policy, samples_reference.
    """
    settings = dict(max_new_tokens=max_new_tokens, samples_per_prompt=samples_per_prompt, seed=seed,
                    batch_size=batch_size, impl=impl)
    pol = score_policy(policy, reference, tokenizer, prompts, reward_fn, **settings)
    ref = score_policy(reference, reference, tokenizer, prompts, reward_fn, **settings)
    pairs = list(zip(pol["rewards"], ref["rewards"]))
    return {
        "reward_policy": pol["reward"], "reward_policy_ci95": pol["reward_ci95"],
        "reward_reference": ref["reward"], "reward_reference_ci95": ref["reward_ci95"],
        "kl_policy_reference": pol["kl"], "kl_policy_reference_ci95": pol["kl_ci95"],
        "fluency_policy": pol["fluency"], "fluency_policy_ci95": pol["fluency_ci95"],
        "fluency_reference": ref["fluency"], "fluency_reference_ci95": ref["fluency_ci95"],
        "bigram_fluency_policy": pol["bigram_fluency"],
        "bigram_fluency_policy_ci95": pol["bigram_fluency_ci95"],
        "bigram_fluency_reference": ref["bigram_fluency"],
        "bigram_fluency_reference_ci95": ref["bigram_fluency_ci95"],
        **dict(zip(("win_rate", "tie_rate"), win_and_tie_rates(pol["rewards"], ref["rewards"]))),
        "n_samples": len(pairs), "rewards_policy": pol["rewards"],
        "rewards_reference": ref["rewards"], "samples_policy": pol["texts"],
        "samples_reference": ref["texts"],
    }
