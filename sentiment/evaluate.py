"""Evaluation from samples: ground-truth reward, win rate and KL(policy || reference), plus the demo's plots.

The paper's controlled-sentiment experiment (section 6.1) judges a policy by two numbers measured on its own
samples: the ground-truth reward it achieves, and how far it moved from the reference,

    KL(pi || pi_ref) = E_{y ~ pi(.|x)} [ log pi(y|x) - log pi_ref(y|x) ]        (sequence level, in nats)

estimated here by Monte Carlo with one policy sample per held-out prompt, drawn at temperature 1 with no
top-k (any other sampling would not be a sample of pi, and the estimate would be biased). Both log-probs are
sums over the completion tokens, computed with `kernels.sequence_logprobs`. Samples stop at EOS or after
`max_new_tokens`; a truncated sample is still scored exactly, as a prefix.

Win rate: the fraction of prompts where the policy's sample gets a strictly higher ground-truth reward than
the reference's sample for the same prompt (ties count as losses; their fraction is reported too).
"""

import math

import torch

import data
import kernels


@torch.no_grad()
def completion_logps(model, prompt_ids, completions, pad_id, batch_size=64, impl="auto"):
    """Sum of log p(completion | prompt) under `model` for each row.

    prompt_ids, completions: lists of token-id lists (same length N). Returns (N,) float32 on the CPU.
    """
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(prompt_ids), batch_size):
        rows = [data.EncodedPair(p, c, c) for p, c in zip(prompt_ids[start:start + batch_size],
                                                          completions[start:start + batch_size])]
        batch = data.sft_collate(rows, pad_id)  # prompt + completion, mask on the completion tokens
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(batch["input_ids"])  # (b, T, V)
        out.append(kernels.sequence_logprobs(logits, batch["labels"], batch["mask"], impl=impl).cpu())
    return torch.cat(out)  # (N,)


@torch.no_grad()
def sample_report(policy, reference, tokenizer, prompts, reward_fn, *, max_new_tokens, seed=0, batch_size=64):
    """Sample one completion per prompt from each model and compare them on the ground-truth reward.

    Args:
        policy, reference: GPT models (put in eval mode here).
        tokenizer: a tiktoken.Encoding; prompts: list of str.
        reward_fn: list[str] -> list[float], applied to the completion text only.
    Returns a dict: reward_policy, reward_reference, win_rate, tie_rate, kl_policy_reference, and the per-prompt
    lists (rewards_policy, rewards_reference, samples_policy, samples_reference).
    """
    policy.eval()
    reference.eval()
    eos = tokenizer.eot_token
    prompt_ids = [tokenizer.encode_ordinary(p) for p in prompts]

    samples = {}
    for name, model in (("policy", policy), ("reference", reference)):
        with torch.random.fork_rng(devices=[]):  # leave the caller's random stream untouched
            torch.manual_seed(seed)  # the same random stream for both models
            samples[name] = model.complete(prompt_ids, max_new_tokens, temperature=1.0, eos_token=eos,
                                           batch_size=batch_size)
    texts = {name: [tokenizer.decode([t for t in c if t != eos], errors="replace") for c in comps]
             for name, comps in samples.items()}
    rewards_policy = [float(r) for r in reward_fn(texts["policy"])]
    rewards_reference = [float(r) for r in reward_fn(texts["reference"])]

    # KL(pi || pi_ref) from the policy's own samples.
    logp_policy = completion_logps(policy, prompt_ids, samples["policy"], eos, batch_size)  # (N,)
    logp_reference = completion_logps(reference, prompt_ids, samples["policy"], eos, batch_size)  # (N,)
    kl = (logp_policy - logp_reference).mean().item()

    n = len(prompts)
    wins = sum(p > r for p, r in zip(rewards_policy, rewards_reference))
    ties = sum(p == r for p, r in zip(rewards_policy, rewards_reference))
    return {
        "reward_policy": sum(rewards_policy) / n,
        "reward_reference": sum(rewards_reference) / n,
        "win_rate": wins / n,
        "tie_rate": ties / n,
        "kl_policy_reference": kl,
        "rewards_policy": rewards_policy,
        "rewards_reference": rewards_reference,
        "samples_policy": texts["policy"],
        "samples_reference": texts["reference"],
    }


def plot_training(rows, path, title="DPO training"):
    """Plot DPO loss and rewards/accuracies and margins against the step, train and held-out, to a PNG.

    rows: the dicts written to metrics.jsonl (keys "step", "split" and the dpo.dpo_metrics names).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ["loss", "rewards/accuracies", "rewards/margins"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, key in zip(axes, panels):
        for split, style in (("train", "-"), ("eval", "o-")):
            points = [(r["step"], r[key]) for r in rows if r.get("split") == split and key in r]
            if points:
                ax.plot(*zip(*points), style, label=split, markersize=3)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.legend()
    if "loss" in panels:
        axes[0].axhline(math.log(2), color="gray", linestyle=":", linewidth=1)  # the loss at policy == reference
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_rewards(rewards_reference, rewards_policy, path):
    """Histogram of the ground-truth reward of reference vs policy samples on held-out prompts, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    bins = [i / 10 for i in range(-10, 11)]
    ax.hist(rewards_reference, bins=bins, alpha=0.6, label=f"reference (mean {sum(rewards_reference) / len(rewards_reference):+.2f})")
    ax.hist(rewards_policy, bins=bins, alpha=0.6, label=f"DPO policy (mean {sum(rewards_policy) / len(rewards_policy):+.2f})")
    ax.set_xlabel("ground-truth reward (VADER compound)")
    ax.set_ylabel("held-out prompts")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
