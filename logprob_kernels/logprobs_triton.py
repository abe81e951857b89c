"""Fused Triton kernel for masked token log-probabilities, forward and backward.

What it computes (the log pi(y | x) of the DPO loss, Rafailov et al. 2023, Eq. 7, before the sum
over t):

    m[b, t]     = max_v logits[b, t, v]
    log_s[b, t] = log sum_v exp(logits[b, t, v] - m[b, t])        (so logsumexp = m + log_s)
    logp[b, t]  = mask[b, t] * ((logits[b, t, labels[b, t]] - m[b, t]) - log_s[b, t])

m and log_s are kept apart rather than added into one logsumexp: with fp32 logits near 1e4 the
spacing of fp32 numbers there is ~1e-3, so a single stored logsumexp would be off by up to that much
and every probability exp(x - logsumexp) off by the same relative amount; x - m is exact in the same
situation.

Why a kernel. The naive path, logits.float().log_softmax(-1).gather(...), runs one full-size pass
per op and keeps an fp32 (B, T, V) log-softmax alive for backward. Count bytes for N = B*T
positions, V vocabulary entries and s bytes per logit (s = 2 for bf16), ignoring the O(N) traffic of
labels, mask and outputs:

    naive forward     .float(): read s, write 4;  log_softmax: read 4 (at least once), write 4
                      -> >= (s + 12) N V bytes; the fp32 log-softmax (4 N V bytes) is saved for
                      backward
    naive backward    gather backward: write 4 (zeros + scatter); log_softmax backward: read 4 + 4,
                      write 4;
                      .float() backward: read 4, write s   -> >= (s + 24) N V bytes
    fused forward     read s N_keep V                        (N_keep = positions with mask 1)
    fused backward    read s N_keep V + write s N V          (masked rows are only written, with
                      zeros)

With bf16 that is 6 N V bytes for forward + backward instead of >= 40 N V, and the only (B, T, V)
tensor the fused path allocates is the gradient itself (none with inplace_backward). For N = 8192, V
= 128256 in bf16 one pass over the logits is 2.1 GB: about 0.63 ms at the H100's 3.35 TB/s, so the
forward roofline is ~0.63 ms and forward + backward ~1.9 ms (H100 SXM; not yet measured on a GPU:
see bench/).

Forward (one program per position). Positions with mask 0 store logp = 0 and return without touching
the vocabulary. Otherwise the program streams the row in BLOCK_V chunks, keeping a running max m and
a running sum s = sum_v exp(x_v - m) in fp32 (the "online softmax" recurrence of Milakov &
Gimelshein 2018):

    m_new = max(m, max(x_chunk));   s = s * exp(m - m_new) + sum(exp(x_chunk - m_new));   m = m_new

so m and log_s need a single read of the row. The target logit is one scalar load. m and log_s are
saved, (B, T) fp32 each, so backward need not recompute them. The per-sequence sum is done
afterwards by torch over the (B, T) fp32 log-probs in a fixed order: no atomics, and repeated runs
are bit-identical.

Backward. With g[b, t] = d loss / d logp[b, t], x = logits[b, t], p = softmax(x), p_v = exp((x_v -
m) - log_s):

    d logp / d x_v  = d/dx_v (x_label - logsumexp(x)) = 1[v == label] - exp(x_v - logsumexp(x))
                    = onehot_v - p_v
    dlogits[b,t,v]  = g[b, t] * mask[b, t] * (onehot_v - p_v)

One program per position again: masked rows write zeros (no reads), kept rows re-read the logits,
form p from the saved m and log_s, and write the gradient in the logits dtype. In-place mode passes
the logits buffer as the gradient buffer: each element is read before it is overwritten, by the same
program, so this is safe for the kernel; whether it is safe for the caller is said in
logprob_kernels.token_logprobs.

Launch configuration (V up to 128256 on an H100): BLOCK_V covers 16 KiB of logits per loop step
(8192 bf16/fp16 or 4096 fp32 elements), with 16 or 8 warps, so each thread owns 16 elements, i.e.
two 16-byte vector loads of bf16 per step: enough bytes in flight per SM (several programs resident)
to approach HBM bandwidth, few enough registers to avoid spills. Small vocabularies use one block of
next_power_of_2(V) and fewer warps. Vector loads need 16-byte aligned rows, i.e. V a multiple of 8
for bf16 (32000 and 128256 are); for V = 50257 the compiler emits coalesced 2-byte loads instead
(padding the vocabulary to 50304, as nanoGPT does, restores vector loads). `python
bench/bench_logprobs.py --aot sm_90` shows registers, spills and load widths, no GPU needed. Left
out: fp64 logits (use the torch path), +inf logits, and tuning beyond this heuristic (no autotune).
"""

import contextlib

import torch
import triton
import triton.language as tl

BLOCK_BYTES = 16 * 1024  # logits bytes streamed per loop step


@triton.jit
def _to_out_dtype(x, out_dtype: tl.constexpr, ROUND_BY_HAND: tl.constexpr):
    """Cast fp32 -> out_dtype rounding to nearest even.

    On a GPU, x.to(bf16) already rounds to nearest even. The CPU interpreter truncates fp32 -> bf16
    instead, so there (ROUND_BY_HAND) the fp32 bits are rounded first: add 0x7FFF plus the lowest
    bit that survives, clear the 16 bits bf16 drops; the result is exactly representable and the
    final cast is exact.
    """
    if ROUND_BY_HAND:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(out_dtype)


@triton.jit
def _logprobs_fwd_kernel(
    # (B, T, V) fp32/bf16/fp16; element [b, t, v] at b*stride_lb + t*stride_lt + v*stride_lv
    logits_ptr,
    labels_ptr,   # (B, T) integer labels; element [b, t] at b*stride_yb + t*stride_yt
    keep_ptr,     # (B, T) int8, contiguous: 1 where the position counts (mask != 0), else 0
    logp_ptr,     # (B, T) fp32, contiguous, output: logp[b, t], 0 where keep is 0
    # (B, T) fp32, contiguous, output: row max m[b, t] for backward (0 where keep is 0, never read)
    m_ptr,
    log_s_ptr,    # (B, T) fp32, contiguous, output: log_s[b, t] for backward (likewise)
    T,            # positions per sequence, to split the flat position index into (b, t)
    V,            # vocabulary size (any value; the last block is masked)
    # logits strides in elements (a view like logits[:, :-1] is fine)
    stride_lb, stride_lt, stride_lv,
    stride_yb, stride_yt,             # labels strides in elements
    BLOCK_V: tl.constexpr,            # vocabulary entries per loop step, a power of two
):
    # flat position b*T + t; int64 so b*stride_lb cannot overflow
    pos = tl.program_id(0).to(tl.int64)
    b = pos // T
    t = pos % T
    keep = tl.load(keep_ptr + pos)
    if keep == 0:  # masked position: no vocabulary work at all
        tl.store(logp_ptr + pos, 0.0)
        tl.store(m_ptr + pos, 0.0)
        tl.store(log_s_ptr + pos, 0.0)
        return
    row_ptr = logits_ptr + b * stride_lb + t * stride_lt
    cols = tl.arange(0, BLOCK_V)
    m = tl.full((), float("-inf"), tl.float32)  # running max of the row so far
    s = tl.full((), 0.0, tl.float32)            # running sum of exp(x - m) so far
    for v0 in range(0, V, BLOCK_V):
        v = v0 + cols
        # (BLOCK_V,)
        x = tl.load(row_ptr + v * stride_lv, mask=v < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        # While every entry seen is -inf, m_new is -inf and x - m_new would be NaN; shift by 0
        # instead: s stays 0.
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - shift) + tl.sum(tl.exp(x - shift), axis=0)
        m = m_new
    # the shift s was summed against (a row of only -inf: 0, s = 0)
    m = tl.where(m == float("-inf"), 0.0, m)
    log_s = tl.log(s)
    label = tl.load(labels_ptr + b * stride_yb + t * stride_yt)
    # A label outside [0, V) is rejected by the wrapper (check_labels); with the check off it gives
    # NaN rather than an out-of-bounds read.
    in_vocab = (label >= 0) & (label < V)
    x_label = tl.load(row_ptr + label * stride_lv, mask=in_vocab, other=float("nan")).to(tl.float32)
    tl.store(logp_ptr + pos, (x_label - m) - log_s)
    tl.store(m_ptr + pos, m)
    tl.store(log_s_ptr + pos, log_s)


@triton.jit
def _logprobs_bwd_kernel(
    # (B, T, V) the forward's logits, read again (may be the same memory as grad_ptr)
    logits_ptr,
    # (B, T, V) output dlogits in the logits dtype; element [b, t, v] at b*stride_gb + ...
    grad_ptr,
    # (B, T) fp32 upstream gradient g[b, t]; any strides (0 for a broadcast from a sum)
    grad_logp_ptr,
    labels_ptr,     # (B, T) integer labels, as in forward
    keep_ptr,       # (B, T) int8 contiguous mask, as in forward
    m_ptr,          # (B, T) fp32 contiguous row max saved by forward
    log_s_ptr,      # (B, T) fp32 contiguous log of the shifted sum saved by forward
    T, V,           # as in forward
    stride_lb, stride_lt, stride_lv,  # logits strides
    stride_gb, stride_gt, stride_gv,  # gradient strides (equal to the logits strides in place)
    stride_ob, stride_ot,             # upstream gradient strides
    stride_yb, stride_yt,             # labels strides
    BLOCK_V: tl.constexpr,            # vocabulary entries per loop step
    ROUND_BY_HAND: tl.constexpr,      # True only for bf16 gradients under the CPU interpreter
):
    pos = tl.program_id(0).to(tl.int64)
    b = pos // T
    t = pos % T
    grad_row = grad_ptr + b * stride_gb + t * stride_gt
    cols = tl.arange(0, BLOCK_V)
    keep = tl.load(keep_ptr + pos)
    # mask[b, t] = 0: the gradient is exactly zero; write it without reading the logits
    if keep == 0:
        zeros = tl.zeros((BLOCK_V,), dtype=grad_ptr.dtype.element_ty)
        for v0 in range(0, V, BLOCK_V):
            v = v0 + cols
            tl.store(grad_row + v * stride_gv, zeros, mask=v < V)
        return
    row_ptr = logits_ptr + b * stride_lb + t * stride_lt
    g = tl.load(grad_logp_ptr + b * stride_ob + t * stride_ot).to(tl.float32)
    m = tl.load(m_ptr + pos)
    log_s = tl.load(log_s_ptr + pos)
    label = tl.load(labels_ptr + b * stride_yb + t * stride_yt)
    for v0 in range(0, V, BLOCK_V):
        v = v0 + cols
        x = tl.load(row_ptr + v * stride_lv, mask=v < V, other=float("-inf")).to(tl.float32)
        p = tl.exp((x - m) - log_s)                # softmax(logits[b, t])[v]; 0 at -inf entries
        onehot = tl.where(v == label, 1.0, 0.0)    # 1[v == label]
        dx = g * (onehot - p)                      # dlogits[b, t, v]
        tl.store(grad_row + v * stride_gv,
                 _to_out_dtype(dx, grad_ptr.dtype.element_ty, ROUND_BY_HAND),
                 mask=v < V)


def on_device_of(t: torch.Tensor):
    """Launch on t's GPU (Triton launches on the current device), or nothing to do on the CPU
    interpreter."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def launch_config(V: int, element_size: int) -> tuple[int, int]:
    """(BLOCK_V, num_warps): 16 KiB of logits per loop step, 16 elements per thread on big
    vocabularies."""
    block_v = min(triton.next_power_of_2(V), BLOCK_BYTES // element_size)
    num_warps = max(1, min(16, block_v // (32 * 16)))  # 8192 -> 16 warps, 4096 -> 8, 512 -> 1
    return block_v, num_warps


class TritonTokenLogprobs(torch.autograd.Function):
    """autograd.Function: (logits (B, T, V), labels (B, T), keep (B, T) bool) -> logp (B, T)
    fp32."""

    @staticmethod
    def forward(ctx, logits, labels, keep, inplace_backward: bool, block_v):
        B, T, V = logits.shape
        keep_i8 = keep.to(torch.int8).contiguous()                           # (B, T)
        logp = torch.empty(B, T, dtype=torch.float32, device=logits.device)  # (B, T)
        m = torch.empty(B, T, dtype=torch.float32, device=logits.device)     # (B, T)
        log_s = torch.empty(B, T, dtype=torch.float32, device=logits.device) # (B, T)
        BLOCK_V, num_warps = launch_config(V, logits.element_size())
        if block_v is not None:  # tests force small blocks to exercise the multi-block path
            BLOCK_V = block_v
        if B * T > 0:
            with on_device_of(logits):
                _logprobs_fwd_kernel[(B * T,)](
                    logits, labels, keep_i8, logp, m, log_s, T, V,
                    logits.stride(0), logits.stride(1), logits.stride(2), labels.stride(0),
                                               labels.stride(1),
                    BLOCK_V=BLOCK_V, num_warps=num_warps)
        ctx.save_for_backward(logits, labels, keep_i8, m, log_s)
        ctx.inplace_backward = inplace_backward
        ctx.config = (BLOCK_V, num_warps)
        return logp

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logp):
        logits, labels, keep_i8, m, log_s = ctx.saved_tensors
        B, T, V = logits.shape
        grad = logits if ctx.inplace_backward else torch.empty(logits.shape, dtype=logits.dtype,
                                                               device=logits.device)  # (B, T, V)
        grad_logp = grad_logp.to(torch.float32)  # (B, T), strides kept (often (1, 0) from a sum)
        BLOCK_V, num_warps = ctx.config
        round_by_hand = (not logits.is_cuda) and logits.dtype == torch.bfloat16
        if B * T > 0:
            with on_device_of(logits):
                _logprobs_bwd_kernel[(B * T,)](
                    logits, grad, grad_logp, labels, keep_i8, m, log_s, T, V,
                    logits.stride(0), logits.stride(1), logits.stride(2),
                    grad.stride(0), grad.stride(1), grad.stride(2),
                    grad_logp.stride(0), grad_logp.stride(1), labels.stride(0), labels.stride(1),
                    BLOCK_V=BLOCK_V, ROUND_BY_HAND=round_by_hand, num_warps=num_warps)
        return grad, None, None, None, None


def triton_token_logprobs(logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor,
                          inplace_backward: bool = False,
                          block_v: int | None = None) -> torch.Tensor:
    """Token log-probs (B, T) fp32 from the fused kernel, 0 where keep is False; differentiable.

    Shape: logits (B, T, V) fp32/bf16/fp16, any strides, on CUDA (or CPU under TRITON_INTERPRET=1);
    labels (B, T) integer; keep (B, T) bool (already validated by logprob_kernels.checks). block_v
    overrides BLOCK_V (a power of two).
    """
    if block_v is not None and (block_v < 1 or block_v & (block_v - 1)):
        raise ValueError(f"logprob_kernels: block_v must be a power of two, got {block_v}")
    return TritonTokenLogprobs.apply(logits, labels, keep, inplace_backward, block_v)
