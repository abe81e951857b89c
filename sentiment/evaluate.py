"""Evaluation from samples: ground-truth reward, win rate and KL(policy || reference) on held-out prompts.

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

import torch

import data
import kernels
from sentiment.task import sample_completions


@torch.no_grad()
def completion_logps(model, prompt_ids, completions, pad_id, batch_size=64, impl="auto"):
    """Sum of log p(completion | prompt) under `model` for each row, on the model's device.

    prompt_ids, completions: lists of token-id lists (same length N, each non-empty). Returns (N,) float32
    on the CPU.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(prompt_ids), batch_size):
        rows = list(zip(prompt_ids[start:start + batch_size], completions[start:start + batch_size]))
        batch = {k: v.to(device) for k, v in data.collate_responses(rows, pad_id).items()}
        logits = model(batch["input_ids"])  # (b, T, V)
        out.append(kernels.sequence_logprobs(logits, batch["labels"], batch["mask"], impl=impl).cpu())  # (b,)
    model.train(was_training)
    return torch.cat(out)  # (N,)


@torch.no_grad()
def sample_report(policy, reference, tokenizer, prompts, reward_fn, *, max_new_tokens, seed=0, batch_size=64,
                  impl="auto"):
    """Sample one completion per prompt from each model and compare them on the ground-truth reward.

    Both models sample from the same seed (through `sample_completions`, which leaves the caller's RNG and
    the models' train/eval modes as they were), on the device their parameters are on.

    Args:
        policy, reference: GPT models. tokenizer: their tiktoken.Encoding. prompts: list of N str.
        reward_fn: list[str] -> list[float], applied to the completion text only.
    Returns a dict: reward_policy, reward_reference, win_rate, tie_rate, kl_policy_reference (floats), and the
    per-prompt lists (rewards_policy, rewards_reference, samples_policy, samples_reference).
    """
    eos = tokenizer.eot_token
    samples = {name: sample_completions(model, tokenizer, prompts, k=1, max_new_tokens=max_new_tokens,
                                        temperature=1.0, seed=seed, batch_size=batch_size)
               for name, model in (("policy", policy), ("reference", reference))}
    texts = {name: [group[0] for group in s.texts] for name, s in samples.items()}
    rewards_policy = [float(r) for r in reward_fn(texts["policy"])]
    rewards_reference = [float(r) for r in reward_fn(texts["reference"])]

    # KL(pi || pi_ref) from the policy's own samples.
    prompt_ids = samples["policy"].prompt_ids
    policy_ids = [group[0] for group in samples["policy"].token_ids]
    logp_policy = completion_logps(policy, prompt_ids, policy_ids, eos, batch_size, impl)  # (N,)
    logp_reference = completion_logps(reference, prompt_ids, policy_ids, eos, batch_size, impl)  # (N,)
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
