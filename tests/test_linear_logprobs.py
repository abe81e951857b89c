"""Tests for logprob_kernels/linear_logprobs*.py: log-probs from hidden states against the naive
path in float64.

The yardstick is naive_linear_sequence_logprobs on the same (quantized) inputs cast to float64, with
autograd's gradients w.r.t. hidden and weight. Shapes stay small because the Triton interpreter
costs ~2 ms per loop step; SMALL tiles (16) and short backward chunks force several position,
vocabulary and hidden-size tiles, several vocabulary splits in forward and several chunks in
backward. TRITON_INTERPRET is set by tests/conftest.py before triton is imported (as for
tests/test_kernels.py); on a CUDA machine the same tests run compiled.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import logprob_kernels
from logprob_kernels import linear_logprobs
from logprob_kernels.linear_logprobs import check_linear_inputs, naive_linear_sequence_logprobs
from logprob_kernels.linear_logprobs_triton import (
    LaunchConfig,
    launch_config,
    triton_linear_token_logprobs,
)

IMPLS = ["torch", "triton"]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SMALL = LaunchConfig(block_n=16, block_v=16, block_d=16, v_splits=3, chunk_rows=8)
# torch path in run(): V = 17 -> 5 rows per chunk, V = 50 -> 2, V = 130 -> 1
TORCH_CHUNK_ELEMENTS = 100
# a non-uniform per-sequence upstream gradient, as DPO's sigma terms
SEQ_GRAD = torch.tensor([0.3, -2.0, 1.7])


def on(*tensors):
    return tuple(t.to(DEVICE) for t in tensors)


def make_problem(B, T, d, V, dtype, seed, mask_kind="random", scale=2.0):
    """hidden (B, T, d), weight (V, d) with logits of size ~scale, labels (B, T), mask (B, T) with
    an empty row."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, d, generator=gen).to(dtype)
    weight = (scale / math.sqrt(d) * torch.randn(V, d, generator=gen)).to(dtype)
    labels = torch.randint(0, V, (B, T), generator=gen)
    mask = (torch.rand(B, T, generator=gen) < 0.6 if mask_kind == "random"
            else torch.ones(B, T, dtype=torch.bool))
    if mask_kind == "random" and B > 1:
        mask[1] = False  # an empty row: exactly 0, zero gradient
    if mask_kind == "none":
        mask[:] = False
    labels[~mask] = -100  # anything is allowed where mask is 0
    return on(hidden, weight, labels, mask)


def reference(hidden, weight, labels, mask, seq_grad):
    """Naive float64 forward (B,) and its gradients w.r.t. hidden and weight for upstream seq_grad
    (B,)."""
    h = hidden.double().requires_grad_(True)
    w = weight.double().requires_grad_(True)
    out = naive_linear_sequence_logprobs(h, w, labels, mask)
    out.backward(seq_grad.double())
    return out.detach(), h.grad, w.grad


def run(impl, hidden, weight, labels, mask, seq_grad, config=SMALL):
    """Our forward (B,) and gradients w.r.t. fresh leaf copies of hidden and weight. With a config,
    Triton runs with its tiles and the torch path with TORCH_CHUNK_ELEMENTS (several chunks);
    config=None: the defaults."""
    h = hidden.detach().clone().requires_grad_(True)
    w = weight.detach().clone().requires_grad_(True)
    with pytest.MonkeyPatch.context() as patch:
        if config is not None:
            patch.setattr(linear_logprobs, "CHUNK_ELEMENTS", TORCH_CHUNK_ELEMENTS)
        if impl == "triton" and config is not None:
            keep = check_linear_inputs(h, w, labels, mask)
            out = triton_linear_token_logprobs(h, w, labels, keep, config).sum(-1)
        else:
            out = logprob_kernels.linear_sequence_logprobs(h, w, labels, mask, impl=impl)
        out.backward(seq_grad)
    return out.detach(), h.grad, w.grad


def assert_matches_reference(impl, hidden, weight, labels, mask, seq_grad, config=SMALL):
    out, dh, dw = run(impl, hidden, weight, labels, mask, seq_grad, config)
    ref, ref_dh, ref_dw = reference(hidden, weight, labels, mask, seq_grad)
    B, T = labels.shape
    assert out.shape == (B,) and out.dtype == (torch.float64 if hidden.dtype == torch.float64
                                               else torch.float32)
    assert dh.dtype == hidden.dtype and dw.dtype == weight.dtype
    if hidden.dtype in (torch.float32, torch.float64):
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(dh.double(), ref_dh, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(dw.double(), ref_dw, rtol=1e-4, atol=1e-5)
    else:
        # 16-bit: the torch path rounds the logits to the input dtype (as the naive path does; ~0.4%
        # of |z|), both paths round dz and the gradients once. Tolerances scale with the size of
        # what is compared.
        torch.testing.assert_close(out.double(), ref, rtol=2e-2, atol=3e-2 * T)
        for ours, theirs in ((dh, ref_dh), (dw, ref_dw)):
            torch.testing.assert_close(ours.double(), theirs, rtol=2e-2,
                                       atol=2e-2 * theirs.abs().max().item())
    empty = ~mask.any(-1)                                       # (B,) rows with nothing to count
    assert torch.all(out[empty] == 0) and torch.all(dh[~mask] == 0), (
        "masked positions: exactly zero")


# -------------------------------------------------------------------- agreement with the naive path

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d,V", [(16, 17), (24, 50), (40, 130)])
def test_matches_naive_fp64_values_and_gradients(impl, dtype, d, V):
    hidden, weight, labels, mask = make_problem(3, 9, d, V, dtype, seed=d * V)
    assert_matches_reference(impl, hidden, weight, labels, mask, on(SEQ_GRAD)[0])


@settings(max_examples=15)
@given(B=st.integers(1, 3), T=st.integers(1, 8), d=st.sampled_from([16, 24, 40]),
       V=st.integers(1, 90),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
       impl=st.sampled_from(IMPLS),
       mask_kind=st.sampled_from(["random", "all", "none"]), seed=st.integers(0, 2**31 - 1))
def test_random_problems_match_naive(B, T, d, V, dtype, impl, mask_kind, seed):
    hidden, weight, labels, mask = make_problem(B, T, d, V, dtype, seed, mask_kind)
    seq_grad, = on(torch.randn(B, generator=torch.Generator().manual_seed(seed)))
    assert_matches_reference(impl, hidden, weight, labels, mask, seq_grad)


@pytest.mark.parametrize("impl", IMPLS)
def test_non_uniform_sequence_gradient(impl):
    """(out * c).sum().backward() with c = [0.3, -2.0, 1.7]: each sequence's gradient scaled by its
    own c."""
    hidden, weight, labels, mask = make_problem(3, 6, 24, 50, torch.float32, seed=5,
                                                mask_kind="all")
    c, = on(SEQ_GRAD)
    h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    (logprob_kernels.linear_sequence_logprobs(h, w, labels, mask, impl=impl) * c).sum().backward()
    _, ref_dh, ref_dw = reference(hidden, weight, labels, mask, c)
    torch.testing.assert_close(h.grad.double(), ref_dh, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(w.grad.double(), ref_dw, rtol=1e-4, atol=1e-5)
    # A uniform gradient scaled afterwards would be wrong: the sequences' contributions to dweight
    # differ.
    _, _, uniform_dw = reference(hidden, weight, labels, mask, torch.ones_like(c))
    assert not torch.allclose(ref_dw, c.mean().double() * uniform_dw, atol=1e-3)


@pytest.mark.parametrize("impl", IMPLS)
def test_worked_example(impl):
    """d = V = 2 and weight = identity: the logits are the hidden states; log(1/2) + log(3/4) =
    -0.98083."""
    hidden = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]]])
    weight = torch.eye(2)
    labels, mask = torch.tensor([[1, 0, -100]]), torch.tensor([[1, 1, 0]])
    hidden, weight, labels, mask = on(hidden, weight, labels, mask)
    out = logprob_kernels.linear_sequence_logprobs(hidden, weight, labels, mask, impl=impl)
    torch.testing.assert_close(out, torch.tensor([math.log(0.5) + math.log(0.75)], device=DEVICE))


def test_torch_path_gradcheck_fp64_over_several_chunks(monkeypatch):
    monkeypatch.setattr(linear_logprobs, "CHUNK_ELEMENTS", 10)  # 2 rows per chunk for V = 5
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 4, 6, generator=gen, dtype=torch.float64)
    weight = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 1], [0, 0, 0, 0], [0, 1, 1, 1]], dtype=torch.bool)
    labels = torch.randint(0, 5, (3, 4), generator=gen).masked_fill(~mask, -100)
    hidden, weight, labels, mask = on(hidden, weight, labels, mask)
    # (3, 4, 6)
    view = torch.cat([hidden, hidden[:, :1]], dim=1)[:, :-1].detach().requires_grad_(True)
    weight.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda h, w: logprob_kernels.linear_sequence_logprobs(h, w, labels, mask, impl="torch"),
                                    (view, weight))


# ----------------------------------------------------------------------------- layouts and graphs

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layout", ["shifted", "transposed"])
def test_strided_hidden_and_weight(impl, layout):
    """hidden = big[:, :-1] (the usual shift) or a (d, T, B) buffer permuted; weight stored
    transposed."""
    hidden, weight, labels, mask = make_problem(2, 7, 24, 50, torch.float32, seed=8)
    if layout == "shifted":
        big = torch.cat([hidden, torch.randn_like(hidden[:, :1])], dim=1)   # (B, T+1, d)
        view = big[:, :-1]
    else:
        # (B, T, d), stride (1, B, B*T)
        view = hidden.permute(2, 1, 0).contiguous().permute(2, 1, 0)
    w_view = weight.T.contiguous().T                                         # (V, d), stride (1, V)
    assert not view.is_contiguous() and not w_view.is_contiguous()
    h, w = view.detach().requires_grad_(True), w_view.detach().requires_grad_(True)
    out = logprob_kernels.linear_sequence_logprobs(h, w, labels, mask, impl=impl)
    out.backward(on(SEQ_GRAD[:2])[0])
    ref, ref_dh, ref_dw = reference(hidden, weight, labels, mask, on(SEQ_GRAD[:2])[0])
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(h.grad.double(), ref_dh, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(w.grad.double(), ref_dw, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_tied_embeddings_gradients_add_up(impl):
    """The weight is both the embedding table and the head: its gradient is the sum over both
    uses."""
    B, T, d, V = 2, 5, 16, 30
    gen = torch.Generator().manual_seed(3)
    table = torch.randn(V, d, generator=gen) / 2
    mix = torch.randn(d, d, generator=gen) / math.sqrt(d)
    ids = torch.randint(0, V, (B, T + 1), generator=gen)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, :2] = False                                           # a prompt
    table, mix, ids, mask, c = on(table, mix, ids, mask, SEQ_GRAD[:2])

    def forward(weight, mix, fn):
        hidden = torch.tanh(weight[ids[:, :-1]] @ mix)            # (B, T, d) a one-layer "model"
        # (B, T) next tokens: the caller shifts
        labels = ids[:, 1:]
        return (fn(hidden, weight, labels, mask) * c).sum()

    ours = table.clone().requires_grad_(True)
    forward(ours, mix, lambda h, w, y, m: logprob_kernels.linear_sequence_logprobs(
        h, w, y, m, impl=impl)).backward()
    ref = table.double().requires_grad_(True)
    forward(ref, mix.double(), naive_linear_sequence_logprobs).backward()
    torch.testing.assert_close(ours.grad.double(), ref.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_frozen_weight_or_frozen_hidden(impl):
    """Only the gradients asked for are computed (a frozen, e.g. LoRA-untouched, head gets none)."""
    hidden, weight, labels, mask = make_problem(2, 4, 16, 20, torch.float32, seed=2)
    _, ref_dh, ref_dw = reference(hidden, weight, labels, mask, torch.ones(2, device=DEVICE))
    h = hidden.clone().requires_grad_(True)
    logprob_kernels.linear_sequence_logprobs(h, weight, labels, mask, impl=impl).sum().backward()
    torch.testing.assert_close(h.grad.double(), ref_dh, rtol=1e-4, atol=1e-5)
    w = weight.clone().requires_grad_(True)
    logprob_kernels.linear_sequence_logprobs(hidden, w, labels, mask, impl=impl).sum().backward()
    torch.testing.assert_close(w.grad.double(), ref_dw, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_saves_no_logits_for_backward(impl):
    """Nothing of size N * V (or N_keep * V) is kept between forward and backward."""
    hidden, weight, labels, mask = make_problem(2, 16, 16, 64, torch.float32, seed=4,
                                                mask_kind="all")
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t,
                                                  lambda t: t):
        out = logprob_kernels.linear_sequence_logprobs(hidden.requires_grad_(True), weight, labels,
                                                       mask, impl=impl)
    out.sum().backward()
    assert saved and max(saved) == max(hidden.numel(), weight.numel()) < 2 * 16 * 64, saved


# ---------------------------------------------------------------------------- edge cases and errors

@pytest.mark.parametrize("impl", IMPLS)
def test_all_masked_batch_gives_exact_zeros(impl):
    hidden, weight, labels, mask = make_problem(3, 4, 16, 20, torch.bfloat16, seed=1,
                                                mask_kind="none")
    out, dh, dw = run(impl, hidden, weight, labels, mask, on(SEQ_GRAD)[0])
    assert torch.equal(out, torch.zeros(3, device=DEVICE))
    assert torch.equal(dh, torch.zeros_like(hidden)) and torch.equal(dw, torch.zeros_like(weight))


def test_triton_is_deterministic_and_default_tiles_agree():
    hidden, weight, labels, mask = make_problem(3, 9, 40, 130, torch.bfloat16, seed=6)
    g, = on(SEQ_GRAD)
    first, second = (run("triton", hidden, weight, labels, mask, g) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first, second)), "bit-identical runs"
    # launch_config(bf16): one tile
    default = run("triton", hidden, weight, labels, mask, g, config=None)
    assert (launch_config(torch.bfloat16).block_n == 128 and launch_config(torch.float32).block_d
            == 32)
    torch.testing.assert_close(default[0], first[0], rtol=1e-5, atol=1e-5)


# 2 tiles, then 1
@pytest.mark.parametrize("config", [LaunchConfig(16, 16, 16, v_splits=1, chunk_rows=20),
                                    # one chunk
                                    LaunchConfig(32, 16, 32, v_splits=9, chunk_rows=27),
                                    # 6 short chunks
                                    LaunchConfig(16, 32, 16, v_splits=2, chunk_rows=5)])
def test_triton_tiles_splits_and_chunks_do_not_change_the_result(config):
    hidden, weight, labels, mask = make_problem(3, 9, 40, 130, torch.float32, seed=7,
                                                mask_kind="all")
    assert_matches_reference("triton", hidden, weight, labels, mask, on(SEQ_GRAD)[0], config)


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_inputs_raise_typed_errors(impl):
    hidden, weight, labels, mask = make_problem(2, 3, 16, 8, torch.float32, seed=0, mask_kind="all")
    f = logprob_kernels.linear_sequence_logprobs
    with pytest.raises(ValueError, match=r"labels must have shape \(B, T\) = \(2, 3\)"):
        f(hidden, weight, labels[:, :2], mask, impl=impl)
    with pytest.raises(ValueError, match=r"mask must have shape"):
        f(hidden, weight, labels, mask[:1], impl=impl)
    with pytest.raises(ValueError, match=r"hidden must be a \(B, T, d\) tensor, got \(6, 16\)"):
        f(hidden.reshape(6, 16), weight, labels, mask, impl=impl)
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        f(hidden, weight, labels.float(), mask, impl=impl)
    with pytest.raises(ValueError, match=r"hidden has size d = 16 but weight \(16, 8\) has d = 8"):
        f(hidden, weight.T, labels, mask, impl=impl)
    with pytest.raises(TypeError, match="hidden and weight must have the same dtype"):
        f(hidden, weight.bfloat16(), labels, mask, impl=impl)
    labels[1, 2] = 8                                              # == V at a kept position
    with pytest.raises(ValueError, match=r"labels\[1, 2\] = 8 is outside the vocabulary \[0, 8\)"):
        f(hidden, weight, labels, mask, impl=impl)
    # the same label at a masked position: fine
    mask[1, 2] = False
    assert torch.isfinite(f(hidden, weight, labels, mask, impl=impl)).all()
    with pytest.raises(ValueError, match="impl must be one of"):
        f(hidden, weight, labels, mask, impl="naive")


def test_float64_needs_the_torch_path_and_auto_picks_torch_on_cpu():
    hidden, weight, labels, mask = make_problem(2, 3, 16, 8, torch.float64, seed=0)
    with pytest.raises(TypeError, match="use impl='torch' for float64"):
        logprob_kernels.linear_sequence_logprobs(hidden, weight, labels, mask, impl="triton")
    out = logprob_kernels.linear_sequence_logprobs(hidden, weight, labels, mask)
    assert out.dtype == torch.float64
    if not hidden.is_cuda:
        assert torch.equal(out,
                           logprob_kernels.linear_sequence_logprobs(hidden, weight, labels, mask,
                                                                    impl="torch"))
    with pytest.raises(ValueError, match="power of two >= 16"):
        triton_linear_token_logprobs(hidden.float(), weight.float(), labels, mask,
                                     LaunchConfig(block_d=8))
