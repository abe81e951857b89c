"""The naive, obviously correct masked log-prob sum: the yardstick the fused paths are tested
against.

    logp[b, t]   = log_softmax(logits[b, t])[labels[b, t]]
    result[b]    = sum_t mask[b, t] * logp[b, t]

This is the quantity log pi(y | x) in the DPO loss (Rafailov et al. 2023, Eq. 7) when the mask
selects the response tokens. It materialises the whole (B, T, V) log-softmax (in fp32, or fp64 for
fp64 logits) and lets autograd keep it for backward: simple and exact, but several times the memory
of the logits. It does no input validation beyond what torch itself does; use it in tests, not in
training.
"""

import torch


def naive_token_logprobs(logits: torch.Tensor, labels: torch.Tensor,
                         mask: torch.Tensor) -> torch.Tensor:
    """Per-position log-probabilities of the labels, 0 where mask is 0.

    Shape: logits (B, T, V) any float dtype; labels (B, T) int64; mask (B, T) bool or 0/1.
    Returns (B, T) in float32, or float64 when logits are float64. Labels at masked-out positions
    are ignored.
    """
    compute_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    keep = mask != 0                                                     # (B, T) bool
    logp = torch.log_softmax(logits.to(compute_dtype), dim=-1)           # (B, T, V)
    safe_labels = torch.where(keep, labels, torch.zeros_like(labels))   # (B, T) any in-range index
    picked = logp.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)     # (B, T)
    return torch.where(keep, picked, torch.zeros_like(picked))          # (B, T)


def naive_sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor,
                            mask: torch.Tensor) -> torch.Tensor:
    """sum_t mask[b, t] * log_softmax(logits[b, t])[labels[b, t]], the plain way.

    Shape: logits (B, T, V) any float dtype; labels (B, T) int64; mask (B, T) bool or 0/1.
    Returns (B,) in float32, or float64 when logits are float64.

    Worked example: V = 2, logits [[0, 0]] and label 1 give log(1/2) = -0.6931...; with a second
    unmasked position whose logits are [ln 3, 0] and label 0 the sum is log(1/2) + log(3/4) =
    -0.9808...
    """
    return naive_token_logprobs(logits, labels, mask).sum(-1)  # (B,)
