"""Tests for logprob_kernels/: the Triton kernel (interpreted on CPU) and the torch path against the
naive fp64 reference.

Shapes stay small because the Triton interpreter costs about a millisecond per loop step;
block_v=64/128 forces several vocabulary blocks so the streaming logsumexp is exercised. Tensors are
made on the CPU from seeded generators and moved to DEVICE, so on a CUDA machine the same tests run
the compiled kernel.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import logprob_kernels
from logprob_kernels import logprobs_torch
from logprob_kernels.checks import check_inputs
from logprob_kernels.logprobs_triton import launch_config, triton_token_logprobs
from logprob_kernels.naive import naive_sequence_logprobs, naive_token_logprobs

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
IMPLS = ["triton", "torch"]
# without CUDA, conftest runs Triton interpreted
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def on(*tensors):
    return tuple(t.to(DEVICE) for t in tensors)


# ----------------------------------------------------------------------------- problem generation

def make_leaf(values: torch.Tensor, layout: str):
    """A leaf tensor requiring grad and a (B, T, V) view of it with the given memory layout.

    layout: "contiguous"; "shifted" = base[:, :-1] of a (B, T+1, V) base, the usual logits[:, :-1];
    "vocab_strided" = a (V, B, T) base permuted so that the vocabulary stride is B*T.
    Returns (leaf, view, grad_of_view) where grad_of_view maps leaf.grad to the view's layout.
    """
    B, T, V = values.shape
    if layout == "contiguous":
        leaf = values.clone().requires_grad_(True)
        return leaf, leaf, lambda g: g
    if layout == "shifted":
        base = torch.cat([values, torch.randn(B, 1, V).to(values)], dim=1)  # (B, T+1, V)
        leaf = base.requires_grad_(True)
        return leaf, leaf[:, :-1], lambda g: g[:, :-1]
    base = values.permute(2, 0, 1).contiguous()  # (V, B, T)
    leaf = base.requires_grad_(True)
    return leaf, leaf.permute(1, 2, 0), lambda g: g.permute(1, 2, 0)


def make_mask(kind: str, B: int, T: int, gen: torch.Generator) -> torch.Tensor:
    if kind == "none":
        return torch.zeros(B, T, dtype=torch.bool)
    if kind == "all":
        return torch.ones(B, T, dtype=torch.bool)
    if kind == "span":  # one contiguous response span per row, possibly empty
        starts = torch.randint(0, T + 1, (B, 1), generator=gen)
        ends = torch.randint(0, T + 1, (B, 1), generator=gen)
        t = torch.arange(T)
        return (t >= starts) & (t < ends)
    return torch.rand(B, T, generator=gen) < 0.6


@st.composite
def problems(draw, max_positions=16, max_vocab=300):
    B = draw(st.integers(1, 3))
    T = draw(st.integers(1, max(1, max_positions // B)))
    V = draw(st.integers(1, max_vocab))
    return dict(B=B, T=T, V=V, dtype=draw(st.sampled_from(DTYPES)),
                mask_kind=draw(st.sampled_from(["random", "none", "all", "span"])),
                layout=draw(st.sampled_from(["contiguous", "shifted", "vocab_strided"])),
                scale=draw(st.sampled_from([1.0, 8.0, 100.0])),
                seed=draw(st.integers(0, 2**31 - 1)))


def build(p):
    gen = torch.Generator().manual_seed(p["seed"])
    values = (p["scale"] * torch.randn(p["B"], p["T"], p["V"], generator=gen)).to(p["dtype"])
    mask = make_mask(p["mask_kind"], p["B"], p["T"], gen)
    labels = torch.randint(0, p["V"], (p["B"], p["T"]), generator=gen)
    labels[~mask] = -100  # anything is allowed where mask is 0
    # upstream gradient on the token log-probs
    grad_tok = torch.randn(p["B"], p["T"], generator=gen)
    return on(values, labels, mask, grad_tok)


def reference(values, labels, mask, grad_tok):
    """Naive fp64 forward and its autograd gradient on the same (quantized) logits."""
    x = values.double().requires_grad_(True)
    tok = naive_token_logprobs(x, labels, mask)
    tok.backward(grad_tok.double())
    return tok.detach(), x.grad


def run(impl, view, labels, mask, grad_tok, block_v=None, inplace=False):
    if impl == "triton" and block_v is not None:
        tok = triton_token_logprobs(view, labels, check_inputs(view, labels, mask), inplace,
                                    block_v)
    else:
        tok = logprob_kernels.token_logprobs(view, labels, mask, impl=impl,
                                             inplace_backward=inplace)
    tok.backward(grad_tok)
    return tok.detach()


# --------------------------------------------------------------------------- agreement (hypothesis)

@settings(max_examples=40)
@given(problems(), st.sampled_from(IMPLS), st.sampled_from([64, 128]))
def test_fused_paths_match_naive_fp64_forward_and_backward(p, impl, block_v):
    values, labels, mask, grad_tok = build(p)
    ref_tok, ref_grad = reference(values, labels, mask, grad_tok)
    leaf, view, view_grad = make_leaf(values, p["layout"])
    tok = run(impl, view, labels, mask, grad_tok, block_v=block_v)
    assert tok.dtype == torch.float32 and tok.shape == (p["B"], p["T"])
    torch.testing.assert_close(tok.double(), ref_tok, rtol=1e-5, atol=1e-4)
    assert torch.all(tok[~mask] == 0)
    grad = view_grad(leaf.grad)                                   # (B, T, V) in the logits dtype
    assert grad.dtype == p["dtype"]
    torch.testing.assert_close(grad, ref_grad.to(p["dtype"]))     # dtype-default tolerances
    assert torch.all(grad[~mask] == 0), "gradient must be exactly zero at masked-out positions"
    if p["layout"] == "shifted":
        assert torch.all(leaf.grad[:, -1] == 0)


@settings(max_examples=10)
@given(problems(max_positions=12, max_vocab=200))
def test_triton_and_torch_agree_on_sequence_sums(p):
    values, labels, mask, _ = build(p)
    seq_triton = logprob_kernels.sequence_logprobs(values, labels, mask, impl="triton")
    seq_torch = logprob_kernels.sequence_logprobs(values, labels, mask, impl="torch")
    torch.testing.assert_close(seq_triton, seq_torch, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(seq_torch.double(),
                               naive_sequence_logprobs(values.double(), labels, mask),
                               rtol=1e-5, atol=1e-4)


def test_torch_path_chunks_rows(monkeypatch):
    """Several row chunks (CHUNK_ELEMENTS forced small) give the same numbers as one chunk."""
    values, labels, mask, grad_tok = build(dict(B=3, T=7, V=50, dtype=torch.float32,
                                                mask_kind="random",
                                                layout="contiguous", scale=4.0, seed=3))
    ref_tok, ref_grad = reference(values, labels, mask, grad_tok)
    monkeypatch.setattr(logprobs_torch, "CHUNK_ELEMENTS", 120)  # 2 rows per chunk
    x = values.clone().requires_grad_(True)
    tok = run("torch", x, labels, mask, grad_tok)
    torch.testing.assert_close(tok.double(), ref_tok, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), ref_grad, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("layout", ["contiguous", "shifted"])
def test_torch_path_gradcheck_fp64(layout):
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(3, 4, 6, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 6, (3, 4), generator=gen)
    mask = torch.tensor([[1, 1, 0, 1], [0, 0, 0, 0], [0, 1, 1, 1]], dtype=torch.bool)
    labels[~mask] = -100
    values, labels, mask = on(values, labels, mask)
    _, view, _ = make_leaf(values, layout)
    view = view.detach().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: logprob_kernels.sequence_logprobs(x, labels, mask, impl="torch"), (view,))
    assert torch.autograd.gradcheck(
        lambda x: logprob_kernels.token_logprobs(x, labels, mask, impl="torch"), (view,))


@pytest.mark.parametrize("impl", IMPLS)
def test_sequence_gradient_formula_by_hand(impl):
    """d/dlogits of sum_t logp = g * mask * (onehot - softmax), written out directly."""
    gen = torch.Generator().manual_seed(1)
    values = torch.randn(2, 3, 10, generator=gen)
    labels = torch.tensor([[1, 9, -100], [0, 5, 5]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    g = torch.tensor([0.5, -2.0])
    values, labels, mask, g = on(values, labels, mask, g)
    x = values.clone().requires_grad_(True)
    logprob_kernels.sequence_logprobs(x, labels, mask, impl=impl).backward(g)
    onehot = torch.nn.functional.one_hot(labels.clamp(min=0), 10).float()   # (B, T, V)
    expected = g[:, None, None] * mask[..., None] * (onehot - values.softmax(-1))
    torch.testing.assert_close(x.grad, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layout", ["contiguous", "shifted"])
def test_inplace_backward_gives_the_same_gradient(impl, layout):
    values, labels, mask, grad_tok = build(dict(B=2, T=5, V=70, dtype=torch.bfloat16,
                                                mask_kind="random",
                                                layout=layout, scale=3.0, seed=7))
    leaf, view, view_grad = make_leaf(values, layout)
    run(impl, view, labels, mask, grad_tok)
    expected = view_grad(leaf.grad).clone()
    # In place: logits must be a non-leaf tensor whose buffer nobody else needs; here a fresh
    # product.
    leaf2, _, _ = make_leaf(values, layout)
    # non-leaf; MulBackward by a scalar saves no tensor
    logits_full = leaf2 * 1.0
    logits = logits_full[:, :-1] if layout == "shifted" else logits_full
    run(impl, logits, labels, mask, grad_tok, inplace=True)
    assert torch.equal(view_grad(leaf2.grad), expected)
    assert torch.equal(logits.detach(), expected), "the logits buffer now holds the gradient"


# ----------------------------------------------------------------------------- invariants

@settings(max_examples=6)
@given(problems(max_positions=8, max_vocab=150), st.sampled_from(IMPLS))
def test_adding_a_constant_to_a_row_changes_nothing(p, impl):
    values, labels, mask, _ = build({**p, "dtype": torch.float32})
    # one constant per (b, t) row of logits
    shift = 50.0 * torch.randn(p["B"], p["T"], 1, device=DEVICE)
    a = logprob_kernels.sequence_logprobs(values, labels, mask, impl=impl)
    b = logprob_kernels.sequence_logprobs(values + shift, labels, mask, impl=impl)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4 * p["T"])


@settings(max_examples=6)
@given(problems(max_positions=10, max_vocab=120), st.sampled_from(IMPLS), st.integers(0, 2**16))
def test_sum_over_disjoint_spans_equals_the_whole(p, impl, cut_seed):
    values, labels, mask, _ = build({**p, "mask_kind": "random"})
    # span id
    cut, = on(torch.randint(0, 3, mask.shape, generator=torch.Generator().manual_seed(cut_seed)))
    whole = logprob_kernels.sequence_logprobs(values, labels, mask, impl=impl)
    parts = sum(logprob_kernels.sequence_logprobs(values, labels, mask & (cut == k), impl=impl)
                for k in range(3))
    torch.testing.assert_close(parts, whole, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_token_logprobs_sum_to_sequence_logprobs(impl):
    values, labels, mask, _ = build(dict(B=3, T=5, V=40, dtype=torch.float16, mask_kind="random",
                                         layout="contiguous", scale=2.0, seed=11))
    tok = logprob_kernels.token_logprobs(values, labels, mask, impl=impl)
    assert torch.equal(tok.sum(-1),
                       logprob_kernels.sequence_logprobs(values, labels, mask, impl=impl))
    assert torch.all(tok[~mask] == 0) and torch.all(tok[mask] < 0)


def test_reference_worked_example():
    """V = 2: log(1/2) + log(3/4) = -0.98083, the example in the reference docstring."""
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]]])
    labels = torch.tensor([[1, 0, -100]])
    mask = torch.tensor([[1, 1, 0]])
    expected = torch.tensor([math.log(0.5) + math.log(0.75)])
    logits, labels, mask, expected = on(logits, labels, mask, expected)
    for impl in IMPLS:
        got = logprob_kernels.sequence_logprobs(logits, labels, mask, impl=impl)
        torch.testing.assert_close(got, expected)
    torch.testing.assert_close(naive_sequence_logprobs(logits, labels, mask), expected)


# ----------------------------------------------------------------------------- edge cases

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.int64, torch.float32])
def test_empty_mask_rows_give_exact_zero_and_zero_gradient(impl, mask_dtype):
    values = torch.randn(3, 4, 33)
    labels = torch.full((3, 4), -100)
    labels[1] = torch.tensor([3, 4, 5, 6])
    mask = torch.zeros(3, 4, dtype=mask_dtype)
    mask[1, 1:3] = 1
    values, labels, mask = on(values, labels, mask)
    x = values.clone().requires_grad_(True)
    out = logprob_kernels.sequence_logprobs(x, labels, mask, impl=impl)
    out.backward(torch.ones(3, device=DEVICE))
    assert out[0].item() == 0.0 and out[2].item() == 0.0 and out[1].item() < 0
    assert torch.all(x.grad[0] == 0) and torch.all(x.grad[2] == 0) and torch.all(x.grad[1, [0, 3]]
                                                                                 == 0)
    torch.testing.assert_close(out, naive_sequence_logprobs(values, labels, mask))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype,big",
                         [(torch.float32, 1e4), (torch.float16, 6.0e4), (torch.bfloat16, 1.6e38)])
def test_extreme_logits_are_stable(impl, dtype, big):
    """Logits up to +-1e4 in fp32 and across the fp16/bf16 ranges (for bf16 up to the size where a
    log-prob, a difference of two logits, still fits in the fp32 output: |x| <= 1.7e38)."""
    gen = torch.Generator().manual_seed(5)
    values = (big * (2 * torch.rand(2, 3, 90, generator=gen) - 1)).to(dtype)
    values[0, 0, 7] = big                        # the target is the maximum: logp ~ 0
    # a tie at the top: p = 1/2 each, however large the logits
    values[0, 1, 3] = values[0, 1, 4] = big
    labels = torch.randint(0, 90, (2, 3), generator=gen)
    labels[0, 0], labels[0, 1] = 7, 3
    mask = torch.ones(2, 3, dtype=torch.bool)
    values, labels, mask, ones = on(values, labels, mask, torch.ones(2, 3))
    x = values.clone().requires_grad_(True)
    out = logprob_kernels.token_logprobs(x, labels, mask, impl=impl)
    out.sum().backward()
    grad = x.grad
    ref_tok, ref_grad = reference(values, labels, mask, ones)
    assert torch.isfinite(out).all() and torch.isfinite(grad.float()).all()
    torch.testing.assert_close(out.double(), ref_tok, rtol=1e-6, atol=1e-3 if big > 1e5 else 1e-6)
    torch.testing.assert_close(grad, ref_grad.to(dtype))
    assert grad[0, 1, 3].item() == 0.5 and grad[0, 1, 4].item() == -0.5


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_minus_inf_logits_outside_the_target(impl, dtype):
    gen = torch.Generator().manual_seed(9)
    values = torch.randn(2, 4, 150, generator=gen).to(dtype)
    # a masked-out vocabulary tail, spanning whole blocks
    values[:, :, 100:] = float("-inf")
    # a row whose only finite entries are 99 (the target) and 100+
    values[0, 1, :99] = float("-inf")
    labels = torch.randint(0, 100, (2, 4), generator=gen)
    labels[0, 1] = 99
    mask = torch.ones(2, 4, dtype=torch.bool)
    values, labels, mask, ones = on(values, labels, mask, torch.ones(2, 4))
    x = values.clone().requires_grad_(True)
    tok = run(impl, x, labels, mask, ones, block_v=64)
    ref_tok, ref_grad = reference(values, labels, mask, ones)
    assert torch.isfinite(tok).all() and tok[0, 1].item() == 0.0
    torch.testing.assert_close(tok.double(), ref_tok, rtol=1e-5, atol=1e-5)
    assert torch.all(x.grad[:, :, 100:] == 0) and torch.isfinite(x.grad.float()).all()
    torch.testing.assert_close(x.grad, ref_grad.to(dtype))


@pytest.mark.parametrize("impl", IMPLS)
def test_out_of_range_labels_at_unmasked_positions_raise(impl):
    values = torch.randn(2, 3, 8)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    labels = torch.tensor([[1, 2, -100], [0, 8, 3]])  # -100 is masked (fine); 8 == V is not
    values, mask, labels = on(values, mask, labels)
    with pytest.raises(ValueError, match=r"labels\[1, 1\] = 8 is outside the vocabulary \[0, 8\)"):
        logprob_kernels.sequence_logprobs(values, labels, mask, impl=impl)
    labels[1, 1] = -1
    with pytest.raises(ValueError, match=r"labels\[1, 1\] = -1"):
        logprob_kernels.token_logprobs(values, labels, mask, impl=impl)
    # With the check off, the bad position reads no memory out of bounds and yields NaN; the rest is
    # intact.
    tok = logprob_kernels.token_logprobs(values, labels, mask, impl=impl, check_labels=False)
    assert (torch.isnan(tok[1, 1]) and torch.isfinite(tok[0]).all()
            and torch.isfinite(tok[1, [0, 2]]).all())


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_arguments_raise_typed_errors(impl):
    values, labels, mask = on(torch.randn(2, 3, 8), torch.zeros(2, 3, dtype=torch.long),
                              torch.ones(2, 3))
    with pytest.raises(ValueError, match="mask must hold only 0 and 1"):
        logprob_kernels.sequence_logprobs(values, labels, 2 * mask, impl=impl)
    with pytest.raises(ValueError, match="labels must have shape"):
        logprob_kernels.sequence_logprobs(values, labels[:, :2], mask, impl=impl)
    with pytest.raises(ValueError, match=r"\(B, T, V\)"):
        logprob_kernels.sequence_logprobs(values[0], labels, mask, impl=impl)
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        logprob_kernels.sequence_logprobs(values, labels.float(), mask, impl=impl)
    with pytest.raises(TypeError, match="logits dtype"):
        logprob_kernels.sequence_logprobs(values.long(), labels, mask, impl=impl)
    with pytest.raises(ValueError, match="impl must be one of"):
        logprob_kernels.sequence_logprobs(values, labels, mask, impl="cuda")
    with pytest.raises(TypeError, match="use impl='torch' for float64"):
        logprob_kernels.sequence_logprobs(values.double(), labels, mask, impl="triton")


@pytest.mark.parametrize("impl", IMPLS)
def test_int32_labels_and_empty_time_axis(impl):
    values, labels, mask, _ = build(dict(B=2, T=3, V=20, dtype=torch.float32, mask_kind="random",
                                         layout="contiguous", scale=1.0, seed=6))
    expected = logprob_kernels.sequence_logprobs(values, labels, mask, impl=impl)
    assert torch.equal(logprob_kernels.sequence_logprobs(values, labels.int(), mask, impl=impl),
                       expected)
    empty = torch.zeros(2, 0, 20, device=DEVICE, requires_grad=True)
    out = logprob_kernels.sequence_logprobs(empty, labels[:, :0], mask[:, :0], impl=impl)
    out.sum().backward()
    assert torch.equal(out, torch.zeros(2, device=DEVICE)) and empty.grad.shape == (2, 0, 20)


def test_auto_picks_triton_for_cuda_tensors_and_torch_otherwise():
    values, labels, mask, _ = build(dict(B=2, T=3, V=20, dtype=torch.float32, mask_kind="random",
                                         layout="contiguous", scale=1.0, seed=2))
    expected_impl = "triton" if values.is_cuda else "torch"
    assert torch.equal(logprob_kernels.sequence_logprobs(values, labels, mask),
                       logprob_kernels.sequence_logprobs(values, labels, mask, impl=expected_impl))
    assert logprob_kernels.sequence_logprobs(values.double(), labels, mask).dtype == torch.float64


# ----------------------------------------------------------------------- determinism, launch config

@pytest.mark.parametrize("impl", IMPLS)
def test_repeated_runs_are_bit_identical(impl):
    values, labels, mask, grad_tok = build(dict(B=2, T=4, V=130, dtype=torch.bfloat16,
                                                mask_kind="random",
                                                layout="shifted", scale=3.0, seed=4))
    results = []
    for _ in range(2):
        leaf, view, view_grad = make_leaf(values, "contiguous")
        seq = logprob_kernels.sequence_logprobs(view, labels, mask, impl=impl)
        seq.backward(grad_tok[:, 0])
        results.append((seq.detach(), leaf.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_launch_config_for_large_vocabularies():
    assert launch_config(128256, 2) == (8192, 16)   # bf16: 16 KiB per step, 16 elements per thread
    assert launch_config(128256, 4) == (4096, 8)    # fp32: 16 KiB per step
    assert launch_config(257, 2) == (512, 1)
    assert launch_config(1, 4) == (1, 1)
