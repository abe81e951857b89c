"""Graded tests of Assignment 2: masked log-probs, a chunked backward and a fused Triton kernel (20
points).

What is graded (logprob_kernels/, the three functions of course/manifest.py):
  TorchTokenLogprobs.backward      the backward of the chunked torch path (impl="torch")          7
                                   points
  _logprobs_fwd_kernel             the Triton forward kernel (impl="triton")
                                   6 points
  _logprobs_bwd_kernel             the Triton backward kernel
                                   5 points
  both paths on a DPO-like concatenated batch, forward + backward                                 2
  points

The yardstick is logprob_kernels/naive.py (naive log_softmax + gather + mask + sum, which the
student copy keeps) evaluated in float64 on the very same (possibly bf16-quantised) logits, and
torch autograd through it; plus properties of the math (gradient rows sum to 0, exact zeros where
the mask is 0, gradcheck). Nothing here re-implements the functions being graded.

The Triton backward tests call the autograd.Function's backward (TritonTokenLogprobs.backward, which
stays in the student copy and launches _logprobs_bwd_kernel) with the row statistics m and log_s it
expects from the forward computed here by torch in float64, so the backward kernel is graded on its
own: a forward kernel that is still missing or wrong does not cost the backward's points. The last
test runs both kernels together.

Without a GPU, Triton runs in its CPU interpreter (TRITON_INTERPRET=1, set below before triton is
imported); shapes are small for that reason (a few ms per program and vocabulary block). On a CUDA
machine the same tests run the compiled kernels. Run: `python -m course grade A2`, or
`python -m pytest -q -p course.plugin -o addopts= course/graders/test_a2_kernels.py`.
"""

import os
import types

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# Triton's CPU interpreter: must be decided before triton is first imported
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import logprob_kernels  # noqa: E402  (logprob_kernels.logprobs_triton imports triton)
from logprob_kernels import logprobs_torch  # noqa: E402
from logprob_kernels.logprobs_triton import (  # noqa: E402
    TritonTokenLogprobs,
    launch_config,
    triton_token_logprobs,
)
from logprob_kernels.naive import naive_sequence_logprobs, naive_token_logprobs  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LAYOUTS = ("contiguous", "shifted", "vocab_strided")


def hyp(n):
    """Explicit hypothesis settings (no conftest profile is loaded for the graders): fixed seed, no
    deadline."""
    return settings(derandomize=True, deadline=None, max_examples=n, database=None,
                    print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ----------------------------------------------------------------------- problems and the reference

@st.composite
def problems(draw, dtypes, max_positions=12, max_vocab=160, layouts=LAYOUTS):
    B = draw(st.integers(1, 3))
    return dict(B=B, T=draw(st.integers(1, max(1, max_positions // B))),
                V=draw(st.integers(1, max_vocab)),
                dtype=draw(st.sampled_from(dtypes)), layout=draw(st.sampled_from(layouts)),
                mask=draw(st.sampled_from(["random", "span", "all", "none"])),
                empty_row=draw(st.booleans()),
                scale=draw(st.sampled_from([1.0, 10.0, 100.0])),
                seed=draw(st.integers(0, 2**31 - 1)))


def make(p):
    """values (B, T, V) in p's dtype, labels (B, T) (-100 where masked), mask (B, T) bool, g_row
    (B,), g_tok (B, T).

    Mask kinds: "random" positions, "span" one response span per row (possibly empty), "all",
    "none"; with empty_row the last row is masked out entirely (an empty response). Upstream
    gradients differ per row/token.
    """
    B, T, V = p["B"], p["T"], p["V"]
    gen = torch.Generator().manual_seed(p["seed"])
    values = (p["scale"] * torch.randn(B, T, V, generator=gen, dtype=torch.float64)).to(p["dtype"])
    if p["mask"] == "random":
        mask = torch.rand(B, T, generator=gen) < 0.6
    elif p["mask"] == "span":
        start = torch.randint(0, T + 1, (B, 1), generator=gen)
        length = torch.randint(0, T + 1, (B, 1), generator=gen)
        mask = (torch.arange(T) >= start) & (torch.arange(T) < start + length)
    else:
        mask = torch.full((B, T), p["mask"] == "all")
    if p["empty_row"]:
        mask[-1] = False
    labels = torch.randint(0, V, (B, T), generator=gen)
    labels[~mask] = -100  # any value is allowed where the mask is 0
    # a different upstream gradient per row
    g_row = torch.randn(B, generator=gen) + 0.5 * torch.arange(B)
    g_tok = torch.randn(B, T, generator=gen)
    return tuple(t.to(DEVICE) for t in (values, labels, mask, g_row, g_tok))


def as_layout(values, layout):
    """(leaf, view, grad_of_view): a leaf requiring grad and a (B, T, V) view of it in the given
    memory layout.

    "contiguous"; "shifted": base[:, :-1] of a (B, T + 1, V) base (the usual logits[:, :-1], whose
    last position must get an exact zero gradient); "vocab_strided": a (V, B, T) base permuted,
    vocabulary stride B*T. grad_of_view maps leaf.grad onto the view's (B, T, V) indexing.
    """
    B, T, V = values.shape
    if layout == "contiguous":
        leaf = values.detach().clone().requires_grad_(True)
        return leaf, leaf, lambda g: g
    if layout == "shifted":
        extra = torch.full((B, 1, V), 7.0, dtype=values.dtype, device=values.device)
        leaf = torch.cat([values.detach(), extra], dim=1).requires_grad_(True)  # (B, T + 1, V)
        return leaf, leaf[:, :-1], lambda g: g[:, :-1]
    leaf = values.detach().permute(2, 0, 1).contiguous().requires_grad_(True)  # (V, B, T)
    return leaf, leaf.permute(1, 2, 0), lambda g: g.permute(1, 2, 0)


def naive(values, labels, mask, upstream):
    """The reference in float64 on the same values: (log-probs, d(upstream . log-probs)/d logits).

    upstream (B,) differentiates the sequence sums (naive_sequence_logprobs), (B, T) the token
    log-probs.
    """
    x = values.detach().to(torch.float64).requires_grad_(True)
    out = (naive_sequence_logprobs if upstream.dim() == 1 else naive_token_logprobs)(x, labels,
                                                                                     mask)
    out.backward(upstream.to(torch.float64))
    return out.detach(), x.grad


def close_grad(grad, ref, dtype):
    """The gradient (in the logits dtype) against the float64 reference gradient."""
    assert grad.dtype == dtype, f"the gradient must have the logits dtype {dtype}, got {grad.dtype}"
    assert grad.shape == ref.shape
    if dtype == torch.float64:
        torch.testing.assert_close(grad, ref, rtol=1e-7, atol=1e-9)
    elif dtype == torch.float32:
        torch.testing.assert_close(grad.double(), ref, rtol=1e-5, atol=1e-5)
    # bf16/fp16: the float64 reference rounded to that dtype, dtype-default tolerances (about 1 ulp)
    else:
        torch.testing.assert_close(grad, ref.to(dtype))


def nan_where_masked(values, mask):
    """The logits with NaN in every row whose mask is 0: a masked position must not read (or use)
    its logits."""
    return torch.where(mask[..., None], values, torch.full_like(values, float("nan")))


def triton_backward_alone(logits, labels, mask, grad_tok, *, inplace=False, block_v=None):
    """dlogits from the Triton backward kernel alone, via TritonTokenLogprobs.backward (the launch
    stays).

    The saved statistics the kernel reads are computed here in float64 from their definitions (m =
    row max, log_s = logsumexp - m, both 0 at masked positions, as the forward stores them), rounded
    to fp32. grad_tok (B, T) is the upstream gradient of the token log-probs, any strides.
    """
    B, T, V = logits.shape
    keep = mask != 0
    x = logits.detach().to(torch.float64)
    m = x.amax(-1)                                                   # (B, T)
    log_s = torch.logsumexp(x, -1) - m                               # (B, T)
    zero = torch.zeros_like(m)
    m = torch.where(keep, m, zero).float().contiguous()
    log_s = torch.where(keep, log_s, zero).float().contiguous()
    block, warps = launch_config(V, logits.element_size())
    if block_v is not None:
        block, warps = block_v, 1
    ctx = types.SimpleNamespace(saved_tensors=(logits.detach(), labels,
                                               keep.to(torch.int8).contiguous(), m, log_s),
                                inplace_backward=inplace, config=(block, warps))
    return TritonTokenLogprobs.backward(ctx, grad_tok)[0]


def triton_tok(logits, labels, mask, block_v=None):
    """Token log-probs from the Triton forward: the public API, or the wrapper with a forced
    BLOCK_V."""
    if block_v is None:
        return logprob_kernels.token_logprobs(logits, labels, mask, impl="triton")
    return triton_token_logprobs(logits, labels, mask != 0, False, block_v)


# ============================================================================= the torch path's
# backward (7)

@pytest.mark.points(2)
@hyp(40)
@given(problems(dtypes=[torch.float64, torch.float32], max_positions=16, max_vocab=200),
       st.booleans())
def test_torch_backward_matches_naive_autograd(p, per_token):
    """impl="torch": d/dlogits of sequence_logprobs (per-row upstream) or token_logprobs (per-token
    upstream) equals autograd through the naive reference, in float64 and float32, any layout, masks
    with empty rows."""
    values, labels, mask, g_row, g_tok = make(p)
    upstream = g_tok if per_token else g_row
    ref_out, ref_grad = naive(values, labels, mask, upstream)
    leaf, view, grad_of_view = as_layout(values, p["layout"])
    fn = logprob_kernels.token_logprobs if per_token else logprob_kernels.sequence_logprobs
    out = fn(view, labels, mask, impl="torch")
    out.backward(upstream.to(out.dtype))
    grad = grad_of_view(leaf.grad)
    close_grad(grad, ref_grad, p["dtype"])
    if p["layout"] == "shifted":
        assert torch.all(leaf.grad[:, -1] == 0), (
            "the position outside the view must get no gradient")
    if p["dtype"] == torch.float64:  # sum_v (onehot_v - p_v) = 0: every gradient row sums to zero
        torch.testing.assert_close(grad.sum(-1), torch.zeros_like(grad[..., 0]), rtol=0, atol=1e-12)


@pytest.mark.points(1)
def test_torch_backward_low_precision_logits():
    """bf16 and fp16 logits (a shifted view, as logits[:, :-1]): the gradient comes back in the
    logits dtype, equal to the float64 reference rounded to that dtype."""
    for i, dtype in enumerate([torch.bfloat16, torch.float16]):
        p = dict(B=3, T=5, V=77, dtype=dtype, layout="shifted", mask="span", empty_row=True,
                 scale=4.0, seed=10 + i)
        values, labels, mask, g_row, _ = make(p)
        _, ref_grad = naive(values, labels, mask, g_row)
        leaf, view, grad_of_view = as_layout(values, "shifted")
        logprob_kernels.sequence_logprobs(view, labels, mask, impl="torch").backward(g_row)
        close_grad(grad_of_view(leaf.grad), ref_grad, dtype)
        assert torch.all(leaf.grad[:, -1] == 0)


@pytest.mark.points(1)
def test_torch_backward_is_exactly_zero_on_masked_positions():
    """Masked positions (and rows whose mask is all 0) get an exact 0 gradient, without using their
    logits: they are NaN here. Kept positions still match the reference."""
    for dtype in (torch.float32, torch.float64):
        p = dict(B=4, T=6, V=33, dtype=dtype, layout="contiguous", mask="random", empty_row=True,
                 scale=3.0, seed=21)
        values, labels, mask, g_row, _ = make(p)
        mask[0] = False                                     # a second empty row, first in the batch
        labels[0] = -100
        _, ref_grad = naive(values, labels, mask, g_row)
        x = nan_where_masked(values, mask).requires_grad_(True)
        out = logprob_kernels.sequence_logprobs(x, labels, mask, impl="torch")
        assert out[0].item() == 0.0 and out[-1].item() == 0.0
        out.backward(g_row.to(out.dtype))
        assert not torch.isnan(x.grad).any(), (
            "masked rows must not turn NaN logits into NaN gradients")
        assert torch.all(x.grad[~mask] == 0), (
            "the gradient must be exactly zero at masked-out positions")
        close_grad(x.grad[mask], ref_grad[mask], dtype)


@pytest.mark.points(1)
def test_torch_backward_gradcheck_fp64():
    """torch.autograd.gradcheck (finite differences) on float64, a strided view, an empty row."""
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(3, 5, 7, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 7, (3, 4), generator=gen)
    mask = torch.tensor([[1, 1, 0, 1], [0, 0, 0, 0], [0, 1, 1, 1]], dtype=torch.bool)
    labels[~mask] = -100
    base, labels, mask = base.to(DEVICE), labels.to(DEVICE), mask.to(DEVICE)
    view = base[:, :-1].detach().requires_grad_(True)  # (3, 4, 7), non-contiguous
    assert torch.autograd.gradcheck(
        lambda x: logprob_kernels.sequence_logprobs(x, labels, mask, impl="torch"), (view,))
    assert torch.autograd.gradcheck(
        lambda x: logprob_kernels.token_logprobs(x, labels, mask, impl="torch"), (view,))


@pytest.mark.points(1)
def test_torch_backward_does_not_depend_on_the_chunk_size(monkeypatch):
    """Rows processed 1, 2, 3 (and 40, i.e. all) at a time (CHUNK_ELEMENTS forced small) give the
    same gradient."""
    p = dict(B=3, T=7, V=50, dtype=torch.float32, layout="contiguous", mask="random",
             empty_row=False, scale=5.0,
             seed=4)
    values, labels, mask, g_row, _ = make(p)
    _, ref_grad = naive(values, labels, mask, g_row)
    grads = []
    # 1, 2, 3 rows per chunk (157: not a multiple of V), everything at once
    for chunk in (50, 100, 157, 2000):
        monkeypatch.setattr(logprobs_torch, "CHUNK_ELEMENTS", chunk)
        x = values.clone().requires_grad_(True)
        logprob_kernels.sequence_logprobs(x, labels, mask, impl="torch").backward(g_row)
        close_grad(x.grad, ref_grad, torch.float32)
        grads.append(x.grad)
    for grad in grads[1:]:
        torch.testing.assert_close(grad, grads[0], rtol=1e-6, atol=1e-7)


@pytest.mark.points(1)
def test_torch_inplace_backward_gives_the_same_gradient():
    """inplace_backward=True on a view logits[:, :-1]: the same gradient, and the logits buffer now
    holds it."""
    for dtype in (torch.float32, torch.bfloat16):
        p = dict(B=2, T=5, V=70, dtype=dtype, layout="shifted", mask="random", empty_row=True,
                 scale=3.0, seed=7)
        values, labels, mask, g_row, _ = make(p)
        _, ref_grad = naive(values, labels, mask, g_row)
        leaf, view, grad_of_view = as_layout(values, "shifted")
        logprob_kernels.sequence_logprobs(view, labels, mask, impl="torch").backward(g_row)
        leaf2, _, _ = as_layout(values, "shifted")
        # a non-leaf whose buffer nothing else needs (MulBackward by a scalar saves none)
        full = leaf2 * 1.0
        logits = full[:, :-1]
        logprob_kernels.sequence_logprobs(logits, labels, mask, impl="torch",
                                          inplace_backward=True).backward(g_row)
        close_grad(grad_of_view(leaf2.grad), ref_grad, dtype)
        torch.testing.assert_close(leaf2.grad, leaf.grad, rtol=0, atol=0)
        assert torch.equal(logits.detach(), grad_of_view(leaf.grad)), \
            "in place: the logits buffer must now hold the gradient"
        assert torch.all(full[:, -1] == 7.0), "in place must not write outside the logits view"


# ============================================================================= the Triton forward
# kernel (6)

@pytest.mark.points(2)
@hyp(30)
@given(problems(dtypes=[torch.float32, torch.bfloat16, torch.float16]),
       st.sampled_from([None, 16, 64]))
def test_triton_forward_matches_naive(p, block_v):
    """impl="triton" token log-probs (fp32, shape (B, T)) equal the float64 naive reference on the
    same logits (bf16/fp16 values upcast), for fp32/bf16/fp16, strided views, several vocabulary
    blocks; sequence sums too."""
    values, labels, mask, _, _ = make(p)
    ref_tok, _ = naive(values, labels, mask, torch.zeros(labels.shape, device=DEVICE))
    _, view, _ = as_layout(values, p["layout"])
    tok = triton_tok(view.detach(), labels, mask, block_v)
    assert tok.dtype == torch.float32 and tok.shape == (p["B"], p["T"])
    torch.testing.assert_close(tok.double(), ref_tok, rtol=1e-5, atol=1e-4)
    assert torch.all(tok[~mask] == 0)
    seq = logprob_kernels.sequence_logprobs(view.detach(), labels, mask, impl="triton")
    torch.testing.assert_close(seq.double(), ref_tok.sum(-1), rtol=1e-5, atol=1e-4 * p["T"])


@pytest.mark.points(1)
def test_triton_forward_is_exactly_zero_on_masked_positions():
    """Masked positions give exactly 0 (their logits are NaN here: a masked position does no
    vocabulary work), an all-masked row sums to exactly 0, and kept positions are finite, < 0 and
    equal to the reference."""
    for dtype in (torch.float32, torch.bfloat16):
        p = dict(B=3, T=5, V=45, dtype=dtype, layout="contiguous", mask="random", empty_row=True,
                 scale=2.0, seed=5)
        values, labels, mask, _, _ = make(p)
        mask[0, :2] = True
        labels[0, :2] = torch.tensor([3, 44])
        ref_tok, _ = naive(values, labels, mask, torch.zeros(labels.shape, device=DEVICE))
        x = nan_where_masked(values, mask)
        tok = logprob_kernels.token_logprobs(x, labels, mask, impl="triton")
        assert torch.all(tok[~mask] == 0), (
            "masked positions must be exactly 0 (and not read their logits)")
        assert torch.isfinite(tok[mask]).all() and torch.all(tok[mask] < 0)
        torch.testing.assert_close(tok.double(), ref_tok, rtol=1e-5, atol=1e-5)
        seq = logprob_kernels.sequence_logprobs(x, labels, mask, impl="triton")
        assert seq[-1].item() == 0.0, "a row with an empty mask sums to exactly 0"


@pytest.mark.points(1)
def test_triton_forward_large_logits_stay_exact():
    """Logits offset by +-1e4 and 3e4 in fp32 (where fp32 spacing is ~1e-3): log-probs stay exact to
    ~1e-6, so the row max and the log of the shifted sum must be kept apart. Also bf16 logits near
    1e4 (ties)."""
    gen = torch.Generator().manual_seed(8)
    B, T, V = 3, 4, 100
    noise = 3.0 * torch.randn(B, T, V, generator=gen)
    offset = torch.tensor([1e4, -1e4, 3e4]).view(B, 1, 1)
    values = (offset + noise).float()
    labels = torch.randint(0, V, (B, T), generator=gen)
    # the label is the row max: logp close to 0
    labels[:, 0] = values[:, 0].argmax(-1)
    values[:, 1, 5] = values[:, 1, 6] = values[:, 1].max()  # a tie at the top
    labels[:, 1] = 5
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[2, 3] = False
    labels[2, 3] = -100
    values, labels, mask = values.to(DEVICE), labels.to(DEVICE), mask.to(DEVICE)
    for block_v in (None, 32):
        tok = triton_tok(values, labels, mask, block_v)
        ref_tok, _ = naive(values, labels, mask, torch.zeros(B, T, device=DEVICE))
        assert torch.isfinite(tok).all()
        torch.testing.assert_close(tok.double(), ref_tok, rtol=0, atol=2e-5)
    # spacing 64: many ties
    bf = (1e4 + 64.0 * torch.randn(B, T, V, generator=gen)).to(torch.bfloat16).to(DEVICE)
    tok = logprob_kernels.token_logprobs(bf, labels, mask, impl="triton")
    ref_tok, _ = naive(bf, labels, mask, torch.zeros(B, T, device=DEVICE))
    torch.testing.assert_close(tok.double(), ref_tok, rtol=1e-6, atol=1e-5)


@pytest.mark.points(1)
def test_triton_forward_minus_inf_logits():
    """-inf logits away from the label (a vocabulary tail spanning whole blocks, a row whose first
    blocks are all -inf, a row where only the label is finite: logp exactly 0): finite results equal
    to the reference."""
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        gen = torch.Generator().manual_seed(9)
        B, T, V = 2, 3, 150
        values = torch.randn(B, T, V, generator=gen).to(dtype)
        values[:, :, 100:] = float("-inf")          # the tail: blocks 4.. of 32 entirely -inf
        # the first three blocks entirely -inf; finite: 99 only
        values[0, 1, :99] = float("-inf")
        values[1, 2, :] = float("-inf")
        values[1, 2, 40] = 2.5                      # only the label is finite
        labels = torch.randint(0, 99, (B, T), generator=gen)
        labels[0, 1], labels[1, 2] = 99, 40
        mask = torch.ones(B, T, dtype=torch.bool)
        values, labels, mask = values.to(DEVICE), labels.to(DEVICE), mask.to(DEVICE)
        ref_tok, _ = naive(values, labels, mask, torch.zeros(B, T, device=DEVICE))
        for block_v in (None, 32):
            tok = triton_tok(values, labels, mask, block_v)
            assert torch.isfinite(tok).all(), f"{dtype}, block_v={block_v}: -inf logits gave {tok}"
            assert tok[0, 1].item() == 0.0 and tok[1, 2].item() == 0.0
            torch.testing.assert_close(tok.double(), ref_tok, rtol=1e-5, atol=1e-5)


@pytest.mark.points(1)
def test_triton_forward_awkward_vocabulary_sizes():
    """V not a multiple of the block (the last block is partial), V smaller than the block, V = 1
    (logp = 0)."""
    cases = [(1, None), (3, None), (37, None), (129, None), (100, 16), (129, 64), (5, 8), (1, 4)]
    for i, (V, block_v) in enumerate(cases):
        p = dict(B=2, T=3, V=V, dtype=torch.float32, layout="contiguous", mask="all",
                 empty_row=False, scale=4.0,
                 seed=30 + i)
        values, labels, mask, _, _ = make(p)
        mask[1, 2] = False
        labels[1, 2] = -100
        values[:, :, -1] += 6.0                     # the last (partial-block) entry matters
        labels[0, 0] = V - 1
        ref_tok, _ = naive(values, labels, mask, torch.zeros(labels.shape, device=DEVICE))
        tok = triton_tok(values, labels, mask, block_v)
        torch.testing.assert_close(tok.double(), ref_tok, rtol=1e-5, atol=1e-5,
                                   msg=lambda m: f"V={V}, block_v={block_v}: {m}")
        if V == 1:
            assert torch.all(tok == 0)


# ============================================================================= the Triton backward
# kernel (5)

@pytest.mark.points(2)
@hyp(30)
@given(problems(dtypes=[torch.float32, torch.bfloat16, torch.float16]),
       st.sampled_from([None, 16, 64]),
       st.sampled_from(["per_token", "per_row", "transposed"]))
def test_triton_backward_matches_naive_autograd(p, block_v, upstream):
    """The backward kernel's dlogits = g * (onehot - softmax) equals autograd through the naive
    reference, in the logits dtype, for strided logits and upstream gradients per token, per row
    (stride 0 over t, as from the sum in sequence_logprobs) or transposed; masked positions exactly
    0."""
    values, labels, mask, g_row, g_tok = make(p)
    B, T = labels.shape
    if upstream == "per_row":
        g = g_row[:, None].expand(B, T)             # strides (1, 0)
    elif upstream == "transposed":
        g = g_tok.t().contiguous().t()              # strides (1, B)
    else:
        g = g_tok
    _, ref_grad = naive(values, labels, mask, g.contiguous())
    _, view, _ = as_layout(values, p["layout"])
    grad = triton_backward_alone(view, labels, mask, g, block_v=block_v)
    close_grad(grad, ref_grad, p["dtype"])
    assert torch.all(grad[~mask] == 0)


@pytest.mark.points(1)
def test_triton_backward_is_exactly_zero_on_masked_rows():
    """Masked rows (and all-masked sequences) get an exact 0 gradient and their logits are not used
    (NaN here); kept rows match the reference."""
    for dtype in (torch.float32, torch.bfloat16):
        p = dict(B=3, T=4, V=70, dtype=dtype, layout="contiguous", mask="random", empty_row=True,
                 scale=3.0, seed=12)
        values, labels, mask, _, g_tok = make(p)
        mask[0, 0] = True
        labels[0, 0] = 69
        _, ref_grad = naive(values, labels, mask, g_tok)
        grad = triton_backward_alone(nan_where_masked(values, mask), labels, mask, g_tok,
                                     block_v=32)
        assert not torch.isnan(grad).any(), (
            "masked rows must not turn NaN logits into NaN gradients")
        assert torch.all(grad[~mask] == 0), (
            "the gradient must be exactly zero at masked-out positions")
        close_grad(grad[mask], ref_grad[mask], dtype)


@pytest.mark.points(1)
def test_triton_backward_large_and_minus_inf_logits():
    """fp32 logits offset by 1e4 (p from (x - m) - log_s, kept apart: relative error ~1e-6, not
    ~1e-3), and -inf logits away from the label (gradient exactly 0 there, a tie at the top:
    +-g/2)."""
    gen = torch.Generator().manual_seed(13)
    B, T, V = 2, 3, 90
    values = (1e4 + 3.0 * torch.randn(B, T, V, generator=gen)).float()
    values[1] -= 2e4                                        # the second sequence near -1e4
    # a clear tie at the top: p = 1/2 each
    values[0, 1, 3] = values[0, 1, 4] = values[0, 1].max() + 20.0
    values[1, :, 60:] = float("-inf")                       # a -inf vocabulary tail
    values[1, 2, :10] = float("-inf")
    labels = torch.randint(0, 60, (B, T), generator=gen)
    labels[0, 1] = 3
    mask = torch.ones(B, T, dtype=torch.bool)
    g = torch.tensor([[1.0, 1.0, -0.5], [2.0, 0.25, -1.5]])
    values, labels, mask, g = values.to(DEVICE), labels.to(DEVICE), mask.to(DEVICE), g.to(DEVICE)
    _, ref_grad = naive(values, labels, mask, g)
    for block_v in (None, 32):
        grad = triton_backward_alone(values, labels, mask, g, block_v=block_v)
        assert torch.isfinite(grad).all()
        torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-7)
        assert torch.all(grad[1, :, 60:] == 0) and torch.all(grad[1, 2, :10] == 0)
        torch.testing.assert_close(grad[0, 1, 3:5], torch.tensor([0.5, -0.5], device=DEVICE),
                                   rtol=0, atol=1e-6)


@pytest.mark.points(1)
def test_triton_inplace_backward_gives_the_same_gradient():
    """In place (the logits buffer is the gradient buffer, here a strided view logits[:, :-1]): the
    same gradient as out of place, written into the logits' memory, and nothing outside the view is
    touched."""
    for dtype in (torch.float32, torch.bfloat16):
        p = dict(B=2, T=5, V=70, dtype=dtype, layout="shifted", mask="random", empty_row=True,
                 scale=3.0, seed=14)
        values, labels, mask, _, g_tok = make(p)
        _, ref_grad = naive(values, labels, mask, g_tok)
        base = torch.cat([values, torch.full_like(values[:, :1], 7.0)], dim=1)  # (B, T + 1, V)
        expected = triton_backward_alone(base[:, :-1], labels, mask, g_tok, block_v=32)
        close_grad(expected, ref_grad, dtype)
        grad = triton_backward_alone(base[:, :-1], labels, mask, g_tok, inplace=True, block_v=32)
        assert grad.data_ptr() == base.data_ptr(), (
            "in place: the gradient must be the logits buffer")
        assert torch.equal(grad, expected)
        assert torch.equal(base[:, :-1], expected), "the logits buffer must now hold the gradient"
        assert torch.all(base[:, -1] == 7.0), "in place must not write outside the logits view"


# ============================================================================= both kernels, a DPO
# batch (2)

@pytest.mark.points(2)
def test_triton_and_torch_agree_on_a_concatenated_dpo_batch():
    """A DPO step in miniature: chosen and rejected rows concatenated (prompt masked out, response
    masked in, right padding, labels pre-shifted), logits = h @ W, a DPO-style loss. impl="triton"
    (also in place) gives the same sequence log-probs and the same gradient w.r.t. W as impl="torch"
    and as the naive reference."""
    gen = torch.Generator().manual_seed(15)
    pairs, T, D, V = 2, 7, 8, 97
    h = torch.randn(2 * pairs, T, D, generator=gen)
    w0 = torch.randn(D, V, generator=gen) / 2
    # rows 0..1 chosen, 2..3 rejected (same prompts)
    prompt = torch.tensor([2, 3, 2, 3])
    # response tokens; the last rejected one is empty
    length = torch.tensor([4, 2, 3, 0])
    t = torch.arange(T)
    # pre-shifted response span
    mask = (t >= prompt[:, None] - 1) & (t < prompt[:, None] - 1 + length[:, None])
    labels = torch.randint(0, V, (2 * pairs, T), generator=gen)
    labels[~mask] = -100
    ref_logps = torch.tensor([-20.0, -11.0, -17.0, -0.5])
    h, w0, mask, labels, ref_logps = (x.to(DEVICE) for x in (h, w0, mask, labels, ref_logps))

    def step(impl, dtype, inplace=False):
        w = w0.clone().to(dtype).requires_grad_(True)
        logits = h.to(dtype) @ w                            # (2B, T, V); only this loss reads it
        if impl == "naive":
            logps = naive_sequence_logprobs(logits, labels, mask)
        else:
            logps = logprob_kernels.sequence_logprobs(logits, labels, mask, impl=impl,
                                                      inplace_backward=inplace)
        ratios = logps - ref_logps
        loss = -torch.nn.functional.logsigmoid(0.1 * (ratios[:pairs] - ratios[pairs:])).mean()
        loss.backward()
        return logps.detach(), w.grad.float()

    for dtype in (torch.float32, torch.bfloat16):
        logps_torch, grad_torch = step("torch", dtype)
        logps_naive, grad_naive = step("naive", dtype)
        assert logps_torch[-1].item() == 0.0
        for inplace in (False, True):
            logps_triton, grad_triton = step("triton", dtype, inplace)
            torch.testing.assert_close(logps_triton, logps_torch, rtol=1e-6, atol=1e-5)
            torch.testing.assert_close(logps_triton, logps_naive, rtol=1e-5, atol=1e-4)
            tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2,
                                                                                 atol=2e-3)
            torch.testing.assert_close(grad_triton, grad_torch, **tol)
            torch.testing.assert_close(grad_triton, grad_naive, **tol)
