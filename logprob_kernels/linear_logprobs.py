"""Log-probabilities of the label tokens computed from the last hidden states, without the (N, V)
logits.

This is log pi(y | x) of the DPO loss (Rafailov et al. 2023, Eq. 7) with the language-model head
folded in. With i running over the positions (b, t), hidden[i] (d,) the final hidden state and
weight (V, d) the head:

    z[i, v]   = hidden[i] . weight[v]                       the logits, never stored whole
    lse[i]    = log sum_v exp(z[i, v])
    logp[i]   = z[i, labels[i]] - lse[i]
    result[b] = sum_t mask[b, t] * logp[b, t]

Three implementations compute the same numbers:
* naive_linear_sequence_logprobs: logits = hidden @ weight.T, then logprob_kernels.naive's naive
  log-softmax; the yardstick in tests (fp64-capable).
* LinearTokenLogprobs below: chunked PyTorch; the CPU path and the readable statement of the
  algorithm.
* logprob_kernels/linear_logprobs_triton.py: Triton kernels that keep the logits in registers; the
  CUDA path.
linear_sequence_logprobs(..., impl="auto") picks Triton for CUDA tensors and the torch path
otherwise.

Compaction. Positions with mask 0 (prompt, padding) are dropped before any matrix product: the kept
rows are gathered into (N_keep, d), so a batch that is 60% prompt costs 40% of the FLOPs.

Backward. With p[i, v] = exp(z[i, v] - lse[i]) and g[i] = d loss / d result[b] for the sequence b
that holds position i (in DPO a different number per sequence: beta * sigma(...) with opposite signs
for chosen and rejected):

    dz[i, v]   = g[i] * (1[v == labels[i]] - p[i, v])            (N_keep, V), one chunk of rows at a
               time
    dhidden[i] = sum_v dz[i, v] * weight[v]      = dz @ weight     (N_keep, d)
    dweight[v] = sum_i dz[i, v] * hidden[i]      = dz.T @ hidden   (V, d)

The forward pass cannot do this work ahead of time (as Liger-Kernel's fused linear cross-entropy
does, to skip a recomputation): g is only known in backward, and dweight sums over positions, so a
per-sequence g cannot be applied to a precomputed dweight afterwards (Liger-Kernel PR #1298).
Forward saves lse (N_keep floats) and backward recomputes z chunk by chunk.

Cost, for N kept positions, vocabulary V, hidden size d, s bytes per element (s = 2 for bf16):

    FLOPs    forward   z = hidden @ weight.T                                   2 N V d
             backward  recompute z, dhidden = dz @ weight, dweight = dz.T @ h  6 N V d
             total 8 N V d, against 6 N V d for the naive path (one GEMM forward, two backward): the
             price of
             not keeping the logits is one more GEMM. The softmax work is O(N V), small next to d
             multiply-adds.
    memory   naive: the logits (N V s) and an fp32 log-softmax (4 N V, kept for backward); backward
             holds that, the fp32 gradient of the gather scattered into (N, V) and the log-softmax
             gradient: ~12 N V
             bytes at its peak. GPT-2 (V = 50257), N = 2048, fp32: 412 MB per (N, V) tensor, and
             bench/bench_linear_logprobs.py measures ~1.25 GB of extra peak memory for forward +
             backward.
             here (torch path): one chunk of fp32 logits (CHUNK_ELEMENTS * 4 = 32 MiB) worked on in
             place, lse (4 N bytes) and the gradients every method returns, dhidden (N d s) and
             dweight (V d s), the latter accumulated in fp32 (V d 4 bytes; for fp32 weights that is
             the gradient itself). The same bench measures 0.34-0.41 GB, of which 0.16 GB are the
             gradients. Triton path: a (c, V) dz workspace in the input dtype (at most
             linear_logprobs_triton.DZ_WORKSPACE_BYTES) instead of the fp32 chunk.
    bytes    naive: >= (s + 12) N V forward and >= (s + 24) N V backward (counted in
             logprob_kernels/logprobs_triton.py) plus the GEMMs' own N V s writes and 2 N V s reads.
             here (torch path): each chunk of c rows reads the
             weight 3 times (z, recomputed z, dz @ weight) and updates the fp32 dweight (read +
             write, 8 V d), so
             c sets the arithmetic intensity: 8 c V d FLOPs per (3 s + 8) V d bytes, 0.57 c FLOPs
             per byte in bf16. The elementwise passes over a chunk's fp32 logits (about ten, forward
             and backward) add ~60 bytes per logit. The Triton path keeps the logits in registers
             (linear_logprobs_triton.py).

Precision: the torch path computes fp16/bf16 logits in that dtype, as the naive path does, then
works in fp32; the Triton kernels accumulate the logits in fp32 and never round them. Left out: a
bias on the head, logit soft-capping, label smoothing, double backward, autocast (hidden and weight
must share a dtype).
"""

import torch

from .checks import FLOAT_DTYPES, check_inputs, resolve_impl
from .naive import naive_sequence_logprobs

# elements of one chunk's (rows, V) fp32 logits: 32 MiB; 166 rows for V = 50257
CHUNK_ELEMENTS = 1 << 23


def naive_linear_sequence_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                                   mask: torch.Tensor) -> torch.Tensor:
    """sum_t mask[b, t] * log_softmax(hidden[b, t] @ weight.T)[labels[b, t]], the plain way (all
    logits built).

    Shape: hidden (B, T, d) and weight (V, d) of one float dtype; labels (B, T) int64; mask (B, T)
    bool or 0/1. Returns (B,) float32, or float64 for float64 inputs. No input checks;
    differentiable by autograd.
    """
    logits = hidden @ weight.T                               # (B, T, V)
    return naive_sequence_logprobs(logits, labels, mask)     # (B,)


def check_linear_inputs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                        mask: torch.Tensor) -> torch.Tensor:
    """Validate shapes, dtypes, devices and label values; return keep = (mask != 0) as a (B, T) bool
    tensor.

    Shape: hidden (B, T, d) float; weight (V, d) of the same dtype; labels (B, T) integer; mask (B,
    T). Labels must lie in [0, V) where mask is 1 (one pass over labels and one host sync, as in
    logprob_kernels.checks).
    """
    for name, t, dims in (("hidden", hidden, "(B, T, d)"), ("weight", weight, "(V, d)")):
        if not isinstance(t, torch.Tensor) or t.dim() != len(dims.split(",")):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"logprob_kernels: {name} must be a {dims} tensor, got {got}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"logprob_kernels: {name} dtype must be one of "
                            f"{FLOAT_DTYPES}, got {t.dtype}")
    if hidden.dtype != weight.dtype:
        raise TypeError(f"logprob_kernels: hidden and weight must have the same dtype, got "
                        f"{hidden.dtype} and {weight.dtype}")
    if weight.device != hidden.device:
        raise ValueError(f"logprob_kernels: weight is on {weight.device} but hidden is on "
                         f"{hidden.device}")
    B, T, d = hidden.shape
    V = weight.shape[0]
    if weight.shape[1] != d:
        raise ValueError(f"logprob_kernels: hidden has size d = {d} but weight "
                         f"{tuple(weight.shape)} has d = {weight.shape[1]}; weight must be (V, d), "
                         f"as lm_head.weight is")
    for name, t in (("labels", labels), ("mask", mask)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"logprob_kernels: {name} must be a torch.Tensor, got "
                            f"{type(t).__name__}")
        if tuple(t.shape) != (B, T):
            raise ValueError(f"logprob_kernels: {name} must have shape (B, T) = {(B, T)} matching "
                             f"hidden {tuple(hidden.shape)}, got {tuple(t.shape)}")
    # Shapes agree; the dtype, device and value checks of labels and mask are
    # logprob_kernels.checks' own. A zero-stride (B, T, V) view of one element stands in for the
    # logits there: it allocates nothing.
    return check_inputs(hidden.new_empty(()).expand(B, T, V), labels, mask)


class LinearTokenLogprobs(torch.autograd.Function):
    """autograd.Function: (hidden (B, T, d), weight (V, d), labels (B, T), keep (B, T) bool) -> logp
    (B, T).

    Returns fp32 (fp64 for fp64 inputs), 0 where keep is False. Saves hidden, weight, the kept
    labels and positions and lse (N_keep,): no logits.
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, keep):
        B, T, d = hidden.shape
        V = weight.shape[0]
        acc_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        rows = max(1, CHUNK_ELEMENTS // V)                            # kept positions per chunk
        # (N,), (N,) the positions that count
        b_idx, t_idx = keep.nonzero(as_tuple=True)
        kept_labels = labels[b_idx, t_idx].long()                     # (N,)
        logp = torch.zeros(B, T, dtype=acc_dtype, device=hidden.device)             # (B, T)
        lse = torch.empty(b_idx.numel(), dtype=acc_dtype, device=hidden.device)     # (N,)
        for start in range(0, b_idx.numel(), rows):
            chunk = slice(start, start + rows)
            h = hidden[b_idx[chunk], t_idx[chunk]]                    # (c, d) gathered: compacted
            z = (h @ weight.T).to(acc_dtype)                          # (c, V) this chunk's logits
            target = z.gather(1, kept_labels[chunk, None]).squeeze(1) # (c,) z[i, labels[i]]
            m = z.amax(dim=-1)                                        # (c,)
            # (c,) logsumexp, in place on z
            lse[chunk] = m + z.sub_(m[:, None]).exp_().sum(-1).log()
            logp[b_idx[chunk], t_idx[chunk]] = target - lse[chunk]
        ctx.save_for_backward(hidden, weight, kept_labels, b_idx, t_idx, lse)
        ctx.rows = rows
        return logp

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logp):
        hidden, weight, kept_labels, b_idx, t_idx, lse = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[:2]
        grad_hidden = (torch.zeros_like(hidden, memory_format=torch.contiguous_format)
                       if need_hidden else None)
        # dweight sums over every chunk: accumulated in fp32 (fp64 for fp64 weights), cast once at
        # the end.
        grad_weight = (torch.zeros(weight.shape, dtype=lse.dtype, device=weight.device)
                       if need_weight
                       else None)                                     # (V, d)
        # (N,) each position's sequence gradient
        g_all = grad_logp[b_idx, t_idx].to(lse.dtype)
        for start in range(0, b_idx.numel(), ctx.rows):
            chunk = slice(start, start + ctx.rows)
            h = hidden[b_idx[chunk], t_idx[chunk]]                    # (c, d)
            g = g_all[chunk]                                          # (c,)
            # (c, V) recomputed, as in forward
            z = (h @ weight.T).to(lse.dtype)
            dz = z.sub_(lse[chunk, None]).exp_().mul_(-g[:, None])   # (c, V) -g * p, in place
            dz.scatter_add_(1, kept_labels[chunk, None], g[:, None])  # + g * onehot
            if need_hidden:
                # Each row of dhidden is complete within its chunk: one GEMM in the input dtype
                # (fp32 accumulation inside, as for the naive path's gradient), no (V, d) upcast of
                # the weight.
                grad_hidden[b_idx[chunk], t_idx[chunk]] = dz.to(weight.dtype) @ weight   # (c, d)
            if need_weight:
                grad_weight.addmm_(dz.T, h.to(lse.dtype))             # (V, d) += (V, c) @ (c, d)
        if need_weight:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None


def linear_sequence_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                             mask: torch.Tensor, *, impl: str = "auto") -> torch.Tensor:
    """sum_t mask[b, t] * log_softmax(hidden[b, t] @ weight.T)[labels[b, t]]: log pi(y | x) per
    sequence.

    Shape:
        hidden (B, T, d) float32/bfloat16/float16 (float64 on the torch path), any strides, e.g.
        h[:, :-1].
        weight (V, d), the same dtype: lm_head.weight (tied to the embedding table or not).
        labels (B, T) int64, aligned with hidden: hidden[:, t] scores labels[:, t] (the caller
            shifts). Any value (e.g. -100) is allowed where mask is 0; elsewhere a label outside [0,
            V) raises ValueError.
        mask (B, T) bool or 0/1 of any dtype: the positions that count.
        returns (B,) float32 (float64 for float64 inputs), differentiable w.r.t. hidden and weight
            for any upstream gradient (B,). A row whose mask is all 0 gives exactly 0 and zero
            gradient.
    impl: "auto" (Triton for CUDA tensors, torch otherwise), "torch" or "triton".

    Worked example: d = V = 2, weight = identity, so the logits are the hidden states: hidden [[0,
    0], [ln 3, 0]] with labels [1, 0] give log(1/2) + log(3/4) = -0.9808..., as in
    logprob_kernels.naive.
    """
    keep = check_linear_inputs(hidden, weight, labels, mask)  # (B, T) bool
    if resolve_impl(impl, hidden, "hidden and weight") == "triton":
        # lazily: TRITON_INTERPRET first
        from .linear_logprobs_triton import triton_linear_token_logprobs
        tok = triton_linear_token_logprobs(hidden, weight, labels, keep)  # (B, T)
    else:
        tok = LinearTokenLogprobs.apply(hidden, weight, labels, keep)    # (B, T)
    # (B,) fixed-order: deterministic
    return tok.sum(-1)
