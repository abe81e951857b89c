"""Masked log-probabilities of label tokens: the log pi(y | x) term of the DPO loss (Rafailov et al.
2023, Eq. 7).

    token_logprobs(logits, labels, mask)[b, t] = mask[b, t] * log_softmax(logits[b, t])[labels[b,
    t]]
    sequence_logprobs(logits, labels, mask)[b] = sum_t token_logprobs(...)[b, t]

What it computes is naive.py (log_softmax, gather, mask, sum: the yardstick of the tests). What runs
computes the same numbers without an fp32 (B, T, V) temporary: logprobs_torch.py (chunked PyTorch;
the CPU path) and logprobs_triton.py (the fused kernel; the CUDA path, also runnable on CPU tensors
under TRITON_INTERPRET=1). impl="auto" picks Triton for CUDA tensors and the torch path otherwise;
both are deterministic (per-position results, then a fixed-order sum over T). linear_logprobs.py
computes sequence_logprobs(hidden @ weight.T, ...) without the logits at all
(linear_sequence_logprobs). Left out: label smoothing, ignore_index conventions (use the mask).
"""

import torch

from .checks import IMPLS, check_inputs, resolve_impl
from .linear_logprobs import linear_sequence_logprobs, naive_linear_sequence_logprobs
from .logprobs_torch import torch_token_logprobs
from .naive import naive_sequence_logprobs, naive_token_logprobs

__all__ = ["IMPLS", "sequence_logprobs", "token_logprobs", "naive_sequence_logprobs",
           "naive_token_logprobs", "linear_sequence_logprobs", "naive_linear_sequence_logprobs"]


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, *,
                   impl: str = "auto",
                   inplace_backward: bool = False, check_labels: bool = True) -> torch.Tensor:
    """Per-position log-probabilities of the labels, exactly 0 where mask is 0; differentiable
    w.r.t. logits.

    Shape:
        logits (B, T, V) float32/bfloat16/float16 (float64 on the torch path); any strides, e.g. a
            view logits[:, :-1]; never copied or upcast as a whole.
        labels (B, T) int64, aligned with logits: logits[:, t] scores labels[:, t] (the caller
            shifts). Any value (e.g. -100) is allowed where mask is 0.
        mask (B, T) bool or 0/1 of any dtype: the positions that count.
        returns (B, T) float32 (float64 for float64 logits).
    impl: "auto" (Triton on CUDA tensors, torch otherwise), "torch" or "triton".
    inplace_backward: write the gradient into the logits buffer instead of a new (B, T, V) tensor.
        Safe only when nothing else reads these logits after this call's backward: not another loss
        on the same logits,
        not an op that saved them for its own backward (autograd then raises a version-counter
        error), and
        not retain_graph + a second backward. Typical safe case: logits = lm_head(h) used only here.
    check_labels: raise ValueError for a label outside [0, V) at an unmasked position (and for a
        non-bool mask holding values other than 0/1). Costs one pass over labels and one host sync;
        with it off, such a label yields NaN for that position instead of an out-of-bounds read.
    """
    keep = check_inputs(logits, labels, mask, check_values=check_labels)  # (B, T) bool
    if resolve_impl(impl, logits) == "triton":
        # imported lazily: TRITON_INTERPRET must be set first
        from .logprobs_triton import triton_token_logprobs
        return triton_token_logprobs(logits, labels, keep, inplace_backward)
    return torch_token_logprobs(logits, labels, keep, inplace_backward)


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, *,
                      impl: str = "auto",
                      inplace_backward: bool = False, check_labels: bool = True) -> torch.Tensor:
    """sum_t mask[b, t] * log_softmax(logits[b, t])[labels[b, t]]: log pi(y | x) per sequence.

    Shape: logits (B, T, V), labels (B, T), mask (B, T) as in token_logprobs; returns (B,) float32
    (float64 for float64 logits on the torch path). A row whose mask is all 0 returns exactly 0 with
    zero gradient. The gradient has the logits' dtype and is exactly 0 at masked-out positions. For
    a length-normalised loss divide by the token count mask.sum(-1). Arguments impl,
    inplace_backward, check_labels: see token_logprobs.
    """
    tok = token_logprobs(logits, labels, mask, impl=impl, inplace_backward=inplace_backward,
                         check_labels=check_labels)   # (B, T)
    return tok.sum(-1)                                   # (B,) fixed-order reduction: deterministic
