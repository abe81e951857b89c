"""Triton kernels for log-probabilities from hidden states: the logits live only in registers, tile
by tile.

What they compute, the math and the FLOP count: logprob_kernels/linear_logprobs.py (log pi(y | x) of
DPO's Eq. 7 with the head folded in). Inputs here are already compacted: h (N, d) holds the kept
positions only.

Forward, _lse_fwd_kernel. A program owns BLOCK_N positions and a range of the vocabulary. For each
vocabulary tile it computes z = h_tile @ weight_tile.T (BLOCK_N, BLOCK_V) with tl.dot over BLOCK_D
slices of d, and folds it into a running max m and running sum s = sum exp(z - m) per position (the
online softmax of Milakov & Gimelshein 2018, as in logprob_kernels/logprobs_triton.py); the label's
logit is picked up by the tile that holds it. A tile of z never leaves registers: 2 N V d FLOPs for
12 bytes written per position and vocabulary range. With N = 8192 and BLOCK_N = 128 there are only
64 position blocks, fewer than an H100's 132 SMs, so the vocabulary is split into v_splits ranges,
one program each; torch then merges the (N, v_splits) partial (m, s) pairs: lse = M + log sum_j s_j
exp(m_j - M), M = max_j m_j. No atomics, so results are bit-identical from run to run.

Backward, per chunk of c kept positions (the chunk bounds the workspace):
  1. _dlogits_kernel: one program per (BLOCK_N, BLOCK_V) tile recomputes z and writes
     dz = g * (onehot - exp(z - lse)) in the input dtype into a (c, V) workspace.     2 c V d FLOPs
  2. _dhidden_kernel: a program owns a (BLOCK_N, BLOCK_D) tile of dhidden and loops over vocabulary
     tiles:
     dhidden = dz @ weight.                                                             2 c V d
     FLOPs
  3. _dweight_kernel: a program owns a (BLOCK_V, BLOCK_D) tile of dweight and loops over the chunk's
     position
     tiles: dweight += dz.T @ h, into an fp32 (V, d) accumulator (read-modify-write from the second
                                                                                        chunk on). 2
                                                                                        c V d FLOPs
Fusing 2 and 3 into 1 (as Cut Cross-Entropy does) saves the workspace but needs atomic adds into
dhidden and dweight (nondeterministic) or a recomputation of z for every BLOCK_D slice of the
output; writing dz once in bf16 and reading it twice costs 3 c V s bytes in all, ~6 GB for N = 8192,
V = 128256: ~2 ms at 3.35 TB/s, against ~35 ms for the 8 N V d FLOPs at the H100's 989 dense bf16
TFLOP/s (d = 4096). The dweight update moves 8 V d bytes per chunk (4.2 GB for V = 128256, d =
4096), so chunks are large: DZ_WORKSPACE_BYTES of dz, 2048 rows at V = 128256 in bf16, 4 chunks and
~15 GB (~4.5 ms) of accumulator traffic for N = 8192; a larger budget (LaunchConfig.chunk_rows)
trades workspace for that traffic.

Launch configuration (launch_config; sizes are powers of two, at least 16 for tl.dot), checked by
compiling for sm_90 (no spills): for bf16/fp16, BLOCK_N = BLOCK_V = 128 and BLOCK_D = 64 with 8
warps and 3 pipeline stages: wgmma instructions, a 128 x 128 fp32 accumulator (64 registers per
thread; the forward uses 244 of 255) and 2 x 16 KiB of operand tiles per stage in shared memory;
smaller tiles underfeed the tensor cores, larger ones spill. fp32 inputs use 64 x 128 x 32 tiles and
2 stages (the 128 x 128 x 64 fp32 forward spills) and tl.dot's "ieee" precision unless
torch.backends.cuda.matmul.allow_tf32 is set, as torch.matmul does. No autotuning. Under the CPU
interpreter (TRITON_INTERPRET=1) loads are upcast to fp32 before tl.dot and bf16 stores are rounded
by hand (logprob_kernels/logprobs_triton._to_out_dtype). Left out: fp64 (use the torch path), a head
bias, logits beyond fp32 range.
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .logprobs_triton import _to_out_dtype, on_device_of

DZ_WORKSPACE_BYTES = 512 * 1024 * 1024  # the backward's (c, V) dz workspace, in the input dtype


@dataclass(frozen=True)
class LaunchConfig:
    """Tile sizes and launch parameters; the defaults are the bf16/fp16 configuration (see the
    docstring)."""
    block_n: int = 128             # positions per tile
    block_v: int = 128             # vocabulary entries per tile
    # slice of the hidden size per tl.dot step (and dhidden / dweight tile width)
    block_d: int = 64
    num_warps: int = 8
    num_stages: int = 3            # software-pipelined operand loads (ignored by the interpreter)
    # vocabulary ranges in the forward grid; None: about 2 programs per SM
    v_splits: int | None = None
    # kept positions per backward chunk; None: DZ_WORKSPACE_BYTES of dz
    chunk_rows: int | None = None


@triton.jit
def _logits_tile(h_ptr, w_ptr, rows, cols, N, V, D, stride_hn, stride_hd, stride_wv, stride_wd,
                 BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
                 UPCAST: tl.constexpr,
                 PRECISION: tl.constexpr):
    """z[rows, cols] = h[rows] @ weight[cols].T as a (BLOCK_N, BLOCK_V) fp32 tile; 0 outside (N,
    V)."""
    z = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        k = (d0 + tl.arange(0, BLOCK_D)).to(tl.int64)
        h = tl.load(h_ptr + rows[:, None] * stride_hn + k[None, :] * stride_hd,
                    mask=(rows[:, None] < N) & (k[None, :] < D), other=0.0)     # (BLOCK_N, BLOCK_D)
        w = tl.load(w_ptr + cols[None, :] * stride_wv + k[:, None] * stride_wd,
                    # (BLOCK_D, BLOCK_V) = weight.T
                    mask=(cols[None, :] < V) & (k[:, None] < D), other=0.0)
        if UPCAST:  # the CPU interpreter: bf16/fp16 arithmetic there is unsupported or inexact
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        z = tl.dot(h, w, z, input_precision=PRECISION)
    return z


@triton.jit
def _lse_fwd_kernel(
    h_ptr,        # (N, d) kept hidden states; element [i, k] at i*stride_hn + k*stride_hd
    w_ptr,        # (V, d) head weight; element [v, k] at v*stride_wv + k*stride_wd
    labels_ptr,   # (N,) int64 labels, all in [0, V) (checked by the caller)
    m_ptr,        # (N, S) fp32 output: max of z over split j's vocabulary range, at i*S + j
    s_ptr,        # (N, S) fp32 output: sum of exp(z - m) over that range
    target_ptr,   # (N,) fp32 output: z[i, labels[i]], written by the split that holds the label
    N, V, D, S,   # positions, vocabulary, hidden size, vocabulary splits
    stride_hn, stride_hd, stride_wv, stride_wd,
    SPLIT_V: tl.constexpr,  # vocabulary entries per split, a multiple of BLOCK_V
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    # int64: no offset overflow
    rows = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    split = tl.program_id(1)
    v_start = split * SPLIT_V
    v_end = tl.minimum(v_start + SPLIT_V, V)
    labels = tl.load(labels_ptr + rows, mask=rows < N, other=-1)
    m = tl.full((BLOCK_N,), float("-inf"), tl.float32)   # running max over the tiles seen
    s = tl.zeros((BLOCK_N,), dtype=tl.float32)            # running sum of exp(z - m)
    target = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for v0 in range(v_start, v_end, BLOCK_V):
        cols = (v0 + tl.arange(0, BLOCK_V)).to(tl.int64)
        z = _logits_tile(h_ptr, w_ptr, rows, cols, N, V, D, stride_hn, stride_hd, stride_wv,
                         stride_wd,
                         BLOCK_N, BLOCK_V, BLOCK_D, UPCAST, PRECISION)
        # past the vocabulary: no probability mass
        z = tl.where(cols[None, :] < V, z, float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=1))            # finite: every tile has a column < V
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new[:, None]), axis=1)
        m = m_new
        target += tl.sum(tl.where(cols[None, :] == labels[:, None], z, 0.0), axis=1)
    tl.store(m_ptr + rows * S + split, m, mask=rows < N)
    tl.store(s_ptr + rows * S + split, s, mask=rows < N)
    tl.store(target_ptr + rows, target, mask=(rows < N) & (labels >= v_start) & (labels < v_end))


@triton.jit
def _dlogits_kernel(
    h_ptr, w_ptr,        # as in forward: this chunk's (c, d) hidden rows and the (V, d) weight
    labels_ptr,          # (c,) int64 labels
    lse_ptr,             # (c,) fp32 logsumexp saved by forward
    g_ptr,               # (c,) fp32 upstream gradient of each position's sequence
    dz_ptr,              # (c, V) output in the input dtype, contiguous: g * (onehot - softmax(z))
    N, V, D,             # N = c here
    stride_hn, stride_hd, stride_wv, stride_wd,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, ROUND_BY_HAND: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    cols = (tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)).to(tl.int64)
    z = _logits_tile(h_ptr, w_ptr, rows, cols, N, V, D, stride_hn, stride_hd, stride_wv, stride_wd,
                     BLOCK_N, BLOCK_V, BLOCK_D, UPCAST, PRECISION)
    lse = tl.load(lse_ptr + rows, mask=rows < N, other=0.0)
    g = tl.load(g_ptr + rows, mask=rows < N, other=0.0)
    labels = tl.load(labels_ptr + rows, mask=rows < N, other=-1)
    p = tl.exp(z - lse[:, None])                                          # softmax(z[i])[v]
    onehot = tl.where(cols[None, :] == labels[:, None], 1.0, 0.0)
    dz = g[:, None] * (onehot - p)                                        # (BLOCK_N, BLOCK_V)
    dz = _to_out_dtype(dz, dz_ptr.dtype.element_ty, ROUND_BY_HAND)
    tl.store(dz_ptr + rows[:, None] * V + cols[None, :], dz,
             mask=(rows[:, None] < N) & (cols[None, :] < V))


@triton.jit
def _dhidden_kernel(
    dz_ptr,       # (c, V) contiguous, from _dlogits_kernel
    w_ptr,        # (V, d) weight
    dh_ptr,       # (c, d) contiguous output in the hidden dtype: dz @ weight
    N, V, D,
    stride_wv, stride_wd,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, ROUND_BY_HAND: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    k = (tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)).to(tl.int64)
    acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = (v0 + tl.arange(0, BLOCK_V)).to(tl.int64)
        dz = tl.load(dz_ptr + rows[:, None] * V + cols[None, :],
                     # (BLOCK_N, BLOCK_V)
                     mask=(rows[:, None] < N) & (cols[None, :] < V), other=0.0)
        w = tl.load(w_ptr + cols[:, None] * stride_wv + k[None, :] * stride_wd,
                    mask=(cols[:, None] < V) & (k[None, :] < D), other=0.0)     # (BLOCK_V, BLOCK_D)
        if UPCAST:
            dz = dz.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(dz, w, acc, input_precision=PRECISION)
    dh = _to_out_dtype(acc, dh_ptr.dtype.element_ty, ROUND_BY_HAND)
    tl.store(dh_ptr + rows[:, None] * D + k[None, :], dh,
             mask=(rows[:, None] < N) & (k[None, :] < D))


@triton.jit
def _dweight_kernel(
    dz_ptr,       # (c, V) contiguous, from _dlogits_kernel
    h_ptr,        # (c, d) this chunk's hidden rows
    dw_ptr,       # (V, d) contiguous fp32 accumulator of dweight
    N, V, D,
    stride_hn, stride_hd,
    ACCUMULATE: tl.constexpr,  # add to dw (every chunk after the first) instead of overwriting it
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    cols = (tl.program_id(0) * BLOCK_V + tl.arange(0, BLOCK_V)).to(tl.int64)
    k = (tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)).to(tl.int64)
    acc = tl.zeros((BLOCK_V, BLOCK_D), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        rows = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        dz_t = tl.load(dz_ptr + rows[None, :] * V + cols[:, None],
                       # (BLOCK_V, BLOCK_N) = dz.T
                       mask=(rows[None, :] < N) & (cols[:, None] < V), other=0.0)
        h = tl.load(h_ptr + rows[:, None] * stride_hn + k[None, :] * stride_hd,
                    # (BLOCK_N, BLOCK_D)
                    mask=(rows[:, None] < N) & (k[None, :] < D), other=0.0)
        if UPCAST:
            dz_t = dz_t.to(tl.float32)
            h = h.to(tl.float32)
        acc = tl.dot(dz_t, h, acc, input_precision=PRECISION)
    out = dw_ptr + cols[:, None] * D + k[None, :]
    inside = (cols[:, None] < V) & (k[None, :] < D)
    if ACCUMULATE:
        acc += tl.load(out, mask=inside, other=0.0)
    tl.store(out, acc, mask=inside)


def launch_config(dtype: torch.dtype) -> LaunchConfig:
    """The default tiles for hidden/weight of this dtype."""
    if dtype == torch.float32:
        return LaunchConfig(block_n=64, block_v=128, block_d=32, num_warps=8, num_stages=2)
    return LaunchConfig()


def _constants(x: torch.Tensor, cfg: LaunchConfig) -> dict:
    """Tile sizes and dtype switches shared by every launch."""
    fp32_precision = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    return dict(BLOCK_N=cfg.block_n, BLOCK_V=cfg.block_v, BLOCK_D=cfg.block_d, UPCAST=not x.is_cuda,
                # ignored for 16-bit inputs
                PRECISION=fp32_precision if x.dtype == torch.float32 else "tf32",
                num_warps=cfg.num_warps, num_stages=cfg.num_stages)


class TritonLinearTokenLogprobs(torch.autograd.Function):
    """autograd.Function: (hidden (B, T, d), weight (V, d), labels (B, T), keep (B, T) bool) -> logp
    (B, T) fp32.

    Saves hidden, weight, the kept labels and positions and lse (N_keep,) fp32: no logits.
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, keep, cfg):
        B, T, d = hidden.shape
        V = weight.shape[0]
        b_idx, t_idx = keep.nonzero(as_tuple=True)                 # (N,), (N,)
        N = b_idx.numel()
        kept_labels = labels[b_idx, t_idx].long().contiguous()     # (N,)
        logp = torch.zeros(B, T, dtype=torch.float32, device=hidden.device)   # (B, T)
        lse = torch.empty(N, dtype=torch.float32, device=hidden.device)       # (N,)
        if N > 0:
            h = hidden[b_idx, t_idx]                                # (N, d) compacted, contiguous
            n_blocks, v_tiles = triton.cdiv(N, cfg.block_n), triton.cdiv(V, cfg.block_v)
            splits = cfg.v_splits
            if splits is None:  # about two programs per SM; one range on the interpreter
                sms = (torch.cuda.get_device_properties(h.device).multi_processor_count
                       if h.is_cuda else 1)
                splits = triton.cdiv(2 * sms, n_blocks)
            tiles_per_split = triton.cdiv(v_tiles, max(1, min(splits, v_tiles)))
            # every range holds at least one column
            splits = triton.cdiv(v_tiles, tiles_per_split)
            m_part = torch.empty(N, splits, dtype=torch.float32, device=h.device)  # (N, S)
            s_part = torch.empty(N, splits, dtype=torch.float32, device=h.device)  # (N, S)
            target = torch.empty(N, dtype=torch.float32, device=h.device)          # (N,)
            with on_device_of(h):
                _lse_fwd_kernel[(n_blocks, splits)](
                    h, weight, kept_labels, m_part, s_part, target, N, V, d, splits,
                    h.stride(0), h.stride(1), weight.stride(0), weight.stride(1),
                    SPLIT_V=tiles_per_split * cfg.block_v, **_constants(h, cfg))
            m = m_part.amax(dim=1)                                              # (N,)
            # (N,) merged ranges
            lse = m + (s_part * torch.exp(m_part - m[:, None])).sum(dim=1).log()
            logp[b_idx, t_idx] = target - lse
        ctx.save_for_backward(hidden, weight, kept_labels, b_idx, t_idx, lse)
        ctx.cfg = cfg
        return logp

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logp):
        hidden, weight, kept_labels, b_idx, t_idx, lse = ctx.saved_tensors
        cfg = ctx.cfg
        need_hidden, need_weight = ctx.needs_input_grad[:2]
        N, (V, d) = b_idx.numel(), weight.shape
        grad_hidden = (torch.zeros_like(hidden, memory_format=torch.contiguous_format)
                       if need_hidden else None)
        # the first chunk writes every entry
        new = torch.zeros if N == 0 else torch.empty
        # (V, d)
        grad_weight = new(V, d, dtype=torch.float32, device=weight.device) if need_weight else None
        if N == 0 or not (need_hidden or need_weight):
            return (grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype),
                    None, None, None)
        # (N,) each position's sequence gradient
        g_all = grad_logp[b_idx, t_idx].to(torch.float32)
        rows = cfg.chunk_rows or max(cfg.block_n, DZ_WORKSPACE_BYTES // (V * hidden.element_size())
                                     // cfg.block_n * cfg.block_n)
        # (c, V) workspace
        dz = torch.empty(min(rows, N), V, dtype=hidden.dtype, device=hidden.device)
        consts = _constants(hidden, cfg)
        round_by_hand = (not hidden.is_cuda) and hidden.dtype == torch.bfloat16
        with on_device_of(hidden):
            for start in range(0, N, rows):
                chunk = slice(start, start + rows)
                h = hidden[b_idx[chunk], t_idx[chunk]]              # (c, d) contiguous
                c = h.shape[0]
                _dlogits_kernel[(triton.cdiv(c, cfg.block_n), triton.cdiv(V, cfg.block_v))](
                    h, weight, kept_labels[chunk], lse[chunk], g_all[chunk], dz, c, V, d,
                    h.stride(0), h.stride(1), weight.stride(0), weight.stride(1),
                    ROUND_BY_HAND=round_by_hand, **consts)
                if need_hidden:
                    dh = torch.empty(c, d, dtype=hidden.dtype, device=hidden.device)   # (c, d)
                    _dhidden_kernel[(triton.cdiv(c, cfg.block_n), triton.cdiv(d, cfg.block_d))](
                        dz, weight, dh, c, V, d, weight.stride(0), weight.stride(1),
                        ROUND_BY_HAND=round_by_hand, **consts)
                    grad_hidden[b_idx[chunk], t_idx[chunk]] = dh
                if need_weight:
                    _dweight_kernel[(triton.cdiv(V, cfg.block_v), triton.cdiv(d, cfg.block_d))](
                        dz, h, grad_weight, c, V, d, h.stride(0), h.stride(1), ACCUMULATE=start > 0,
                        **consts)
        return (grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype), None,
                None, None)


def triton_linear_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                                 keep: torch.Tensor,
                                 config: LaunchConfig | None = None) -> torch.Tensor:
    """Token log-probs (B, T) fp32 from hidden states, 0 where keep is False; differentiable w.r.t.
    hidden, weight.

    Shape: hidden (B, T, d) and weight (V, d), one dtype of fp32/bf16/fp16, any strides, on CUDA (or
    CPU under TRITON_INTERPRET=1); labels (B, T) integer; keep (B, T) bool. Inputs are validated by
    logprob_kernels.linear_logprobs.check_linear_inputs. config overrides the tiles (tests force
    small ones).
    """
    cfg = config or launch_config(hidden.dtype)
    for name in ("block_n", "block_v", "block_d"):
        size = getattr(cfg, name)
        if size < 16 or size & (size - 1):
            raise ValueError(f"logprob_kernels: LaunchConfig.{name} must be a power of two >= 16 "
                             f"(tl.dot), got {size}")
    return TritonLinearTokenLogprobs.apply(hidden, weight, labels, keep, cfg)
