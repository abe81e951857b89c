"""Masked token log-probabilities in plain PyTorch, chunked so that no (B, T, V) fp32 tensor is ever
built.

This is the CPU path of `logprob_kernels.token_logprobs` / `logprob_kernels.sequence_logprobs` and
the readable statement of what the Triton kernel (logprob_kernels/logprobs_triton.py) fuses. For
each position (b, t) with mask 1:

    m[b, t]     = max_v logits[b, t, v]                                  (in fp32; fp64 for fp64
                logits)
    log_s[b, t] = log sum_v exp(logits[b, t, v] - m[b, t])
    logp[b, t]  = (logits[b, t, labels[b, t]] - m[b, t]) - log_s[b, t]

and logp = 0 where mask is 0. Only the positions with mask 1 are gathered, in chunks of rows whose
fp32 copy stays under CHUNK_ELEMENTS, so the extra memory is one chunk (plus the gradient in
backward), not an fp32 copy of the logits. The backward pass (derived in logprobs_triton.py) is

    dlogits[b, t, v] = g[b, t] * mask[b, t] * (1[v == labels[b, t]] - exp((logits[b, t, v] - m) -
    log_s))

from the saved m and log_s (kept apart for accuracy at large logits, see logprobs_triton.py),
written in the logits dtype; positions with mask 0 get an exact zero gradient.
Left out: double backward (the Function is once-differentiable).
"""

import torch

CHUNK_ELEMENTS = 1 << 23  # elements of a (rows, V) fp32 chunk: 32 MiB


def _pick_targets(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """x[i, labels[i]] for each row; NaN for a label outside [0, V) (only reachable with
    check_labels=False)."""
    V = x.shape[-1]
    valid = (labels >= 0) & (labels < V)                                     # (M,)
    picked = x.gather(1, labels.clamp(0, V - 1).unsqueeze(1)).squeeze(1)    # (M,)
    return torch.where(valid, picked, torch.full_like(picked, float("nan")))


class TorchTokenLogprobs(torch.autograd.Function):
    """autograd.Function: (logits (B, T, V), labels (B, T), keep (B, T) bool) -> logp (B, T)."""

    @staticmethod
    def forward(ctx, logits, labels, keep, inplace_backward: bool):
        B, T, V = logits.shape
        acc_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        rows_per_chunk = max(1, CHUNK_ELEMENTS // V)
        # (M,), (M,) the positions that count
        b_idx, t_idx = keep.nonzero(as_tuple=True)
        logp = torch.zeros(B, T, dtype=acc_dtype, device=logits.device)        # (B, T)
        row_max = torch.empty(b_idx.numel(), dtype=acc_dtype, device=logits.device)  # (M,) m
        log_s = torch.empty(b_idx.numel(), dtype=acc_dtype, device=logits.device)    # (M,)
        for start in range(0, b_idx.numel(), rows_per_chunk):
            bs, ts = b_idx[start:start + rows_per_chunk], t_idx[start:start + rows_per_chunk]
            # (m, V) our own copy of just these rows
            x = logits[bs, ts].to(acc_dtype)
            target = _pick_targets(x, labels[bs, ts].long())       # (m,)
            m = x.amax(dim=-1)                                     # (m,)
            # a row of only -inf: shift by 0
            m = torch.where(m == float("-inf"), torch.zeros_like(m), m)
            log_s_chunk = x.sub_(m[:, None]).exp_().sum(-1).log()  # (m,) in place on the copy
            logp[bs, ts] = (target - m) - log_s_chunk
            row_max[start:start + rows_per_chunk] = m
            log_s[start:start + rows_per_chunk] = log_s_chunk
        ctx.save_for_backward(logits, labels, keep, b_idx, t_idx, row_max, log_s)
        ctx.inplace_backward = inplace_backward
        ctx.rows_per_chunk = rows_per_chunk
        return logp

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logp):
        logits, labels, keep, b_idx, t_idx, row_max, log_s = ctx.saved_tensors
        V = logits.shape[-1]
        if ctx.inplace_backward:
            # (B, T, V) overwritten row by row
            grad = logits
        else:
            grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)  # (B, T, V)
        # masked-out rows: exactly zero, no reads
        grad[~keep] = 0
        rows = ctx.rows_per_chunk
        for start in range(0, b_idx.numel(), rows):
            bs, ts = b_idx[start:start + rows], t_idx[start:start + rows]
            g = grad_logp[bs, ts].to(log_s.dtype)                  # (m,)
            x = logits[bs, ts].to(log_s.dtype)                     # (m, V)
            chunk = slice(start, start + rows)
            # (m, V) in place
            softmax = x.sub_(row_max[chunk, None]).sub_(log_s[chunk, None]).exp_()
            dx = softmax.mul_(-g[:, None])                         # (m, V) the -g * softmax term
            lab = labels[bs, ts].long()                            # (m,)
            valid = ((lab >= 0) & (lab < V)).to(g.dtype)           # (m,)
            # + the one-hot term
            dx.scatter_add_(1, lab.clamp(0, V - 1)[:, None], (g * valid)[:, None])
            grad[bs, ts] = dx.to(logits.dtype)
        return grad, None, None, None


def torch_token_logprobs(logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor,
                         inplace_backward: bool = False) -> torch.Tensor:
    """Token log-probs (B, T) (fp32, or fp64 for fp64 logits), 0 where keep is False;
    differentiable.

    Shape: logits (B, T, V) float, any strides; labels (B, T) integer; keep (B, T) bool (already
    validated).
    """
    return TorchTokenLogprobs.apply(logits, labels, keep, inplace_backward)
