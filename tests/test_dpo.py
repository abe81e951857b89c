"""Tests for dpo.py: the loss family (with RPO) and the Unlikelihood baseline against a naive
float64 reference, properties from the DPO paper's math, the docstrings' worked examples, input
errors, the metrics, and the concatenated forward pass."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import dpo
from logprob_kernels.naive import naive_sequence_logprobs
from methods import unlikelihood
from model import GPT, GPTConfig
from naive_dpo import (
    naive_dpo_loss,
    naive_pair_dloss_dh,
    naive_pair_loss,
    naive_unlikelihood_dloss_dx,
    naive_unlikelihood_loss,
    sigmoid,
)

LOSS_TYPES = ["sigmoid", "ipo", "hinge", "robust"]
betas = st.floats(0.01, 10.0)
smoothings = st.floats(0.0, 0.45)
rpo_alphas = st.floats(0.0, 10.0)

# --------------------------------------------------------------------------------------------------
# Hypothesis strategies. Log-probs are drawn on a grid (multiples of 2^-10 up to |x| = 4 or 64, or
# multiples of 1/4 up to |x| = 2^20 ~ 1e6), one scale per batch, so every value and every difference
# h = (a - b) - (c - d) is exact in float32: the float32 code and the float64 naive reference then
# see the very same h, and any disagreement is the loss function's own error, not input rounding.
SCALES = [(2**12, 2**10), (2**16, 2**10), (2**22, 4)]  # (largest integer numerator, denominator)


@st.composite
def grid_columns(draw, k=4, max_size=8):
    """k columns of B grid log-probs sharing one scale: a list of k lists of B Python floats."""
    limit, denom = draw(st.sampled_from(SCALES))
    n = draw(st.integers(1, max_size))
    cols = [draw(st.lists(st.integers(-limit, limit), min_size=n, max_size=n)) for _ in range(k)]
    return [[v / denom for v in col] for col in cols]


def tensors(cols, requires_grad=False):
    return [torch.tensor(c, dtype=torch.float32, requires_grad=requires_grad) for c in cols]


def as_f64(xs):
    return torch.tensor(xs, dtype=torch.float64)


def token_counts(data, n):
    """n response lengths in [1, 64] as a list of ints, and as a (n,) int64 or float32 tensor."""
    lengths = data.draw(st.lists(st.integers(1, 64), min_size=n, max_size=n))
    return lengths, torch.tensor(lengths,
                                 dtype=data.draw(st.sampled_from([torch.int64, torch.float32])))


# --------------------------------------------------------------------------------------------------
# The vectorised float32 loss against the naive per-pair float64 reference.


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@given(cols=grid_columns(), beta=betas, eps=smoothings)
def test_matches_naive_reference(loss_type, cols, beta, eps):
    eps = eps if loss_type in ("sigmoid", "robust") else 0.0
    inputs = tensors(cols, requires_grad=True)
    losses, chosen_rewards, rejected_rewards = dpo.dpo_loss(*inputs, beta=beta, loss_type=loss_type,
                                                            label_smoothing=eps)
    ref_losses, ref_chosen, ref_rejected = naive_dpo_loss(*cols, beta=beta, loss_type=loss_type,
                                                          eps=eps)
    assert losses.dtype == torch.float32
    torch.testing.assert_close(losses.double(), as_f64(ref_losses), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chosen_rewards.double(), as_f64(ref_chosen), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rejected_rewards.double(), as_f64(ref_rejected), rtol=1e-5,
                               atol=1e-5)
    assert not chosen_rewards.requires_grad and not rejected_rewards.requires_grad

    # Gradients: d loss / d h from the hand-differentiated reference; h = pc - pr - rc + rr gives
    # the signs.
    losses.sum().backward()
    dh = as_f64([naive_pair_dloss_dh(*pair, beta, loss_type, eps) for pair in zip(*cols)])
    for t, sign in zip(inputs, (1, -1, -1, 1)):
        torch.testing.assert_close(t.grad.double(), sign * dh, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Properties from the math.


@given(cols=grid_columns(k=2), beta=betas)
def test_policy_equal_to_reference_gives_log2_and_half_beta_gradient(cols, beta):
    chosen, rejected = tensors(cols, requires_grad=True)
    losses, chosen_rewards, rejected_rewards = dpo.dpo_loss(chosen, rejected, chosen.detach(),
                                                            rejected.detach(),
                                                            beta=beta)
    assert torch.equal(losses, torch.full_like(losses, math.log(2)))  # -log sigma(0), exactly
    assert torch.equal(chosen_rewards, torch.zeros_like(chosen_rewards))
    losses.sum().backward()
    torch.testing.assert_close(chosen.grad, torch.full_like(chosen, -beta / 2))  # -beta * sigma(0)
    torch.testing.assert_close(rejected.grad, torch.full_like(rejected, beta / 2))


@given(cols=grid_columns(), beta=betas)
def test_gradient_weight_is_beta_sigmoid_of_reward_gap(cols, beta):
    """Section 4: |dL/dh| = beta * sigma(-beta h) = beta * sigma(r_hat(y_l) - r_hat(y_w))."""
    pc, pr, rc, rr = tensors(cols)
    # (B,) exact
    h = torch.tensor([(a - b) - (c - d) for a, b, c, d in zip(*cols)], requires_grad=True)
    zeros = torch.zeros_like(h)
    losses, _, _ = dpo.dpo_loss(h, zeros, zeros, zeros, beta=beta)
    losses.sum().backward()
    expected = torch.tensor([beta * sigmoid(-beta * float(x)) for x in h.detach()])
    torch.testing.assert_close(h.grad.abs(), expected)
    _, chosen_rewards, rejected_rewards = dpo.dpo_loss(pc, pr, rc, rr, beta=beta)
    torch.testing.assert_close(h.grad.abs(),
                               beta * torch.sigmoid(rejected_rewards - chosen_rewards),
                               rtol=1e-4, atol=1e-6)


@given(cols=grid_columns(), beta=betas, eps=smoothings)
def test_swapping_chosen_and_rejected_flips_the_smoothing(cols, beta, eps):
    """cDPO: swapped pairs with smoothing eps = unswapped pairs with 1 - eps (outside the public
    range, so compared with the loss function of h and with the naive reference)."""
    pc, pr, rc, rr = tensors(cols)
    swapped, _, _ = dpo.dpo_loss(pr, pc, rr, rc, beta=beta, label_smoothing=eps)
    h = (pc - pr) - (rc - rr)  # (B,) exact on the grid
    torch.testing.assert_close(swapped, dpo._losses_from_margin(h, beta, "sigmoid", 1 - eps))
    naive = torch.tensor([naive_pair_loss(*pair, beta, "sigmoid", 1 - eps) for pair in zip(*cols)])
    torch.testing.assert_close(swapped, naive, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@given(cols=grid_columns(k=6), beta=betas)
def test_loss_depends_only_on_h(loss_type, cols, beta):
    """Adding a per-pair constant to both chosen log-probs, or to both policy log-probs, keeps h and
    the loss."""
    pc, pr, rc, rr, c1, c2 = tensors(cols)
    base, _, _ = dpo.dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type)
    shifted_chosen, _, _ = dpo.dpo_loss(pc + c1, pr, rc + c1, rr, beta=beta, loss_type=loss_type)
    shifted_policy, _, _ = dpo.dpo_loss(pc + c2, pr + c2, rc, rr, beta=beta, loss_type=loss_type)
    assert torch.equal(base, shifted_chosen)
    assert torch.equal(base, shifted_policy)


@given(cols=grid_columns(), beta=betas, eps=smoothings)
def test_sigmoid_loss_is_binary_cross_entropy_on_beta_h(cols, beta, eps):
    """Eq. 7 is BCE with label 1 on the Bradley-Terry score beta * h; cDPO is BCE with the soft
    label 1 - eps."""
    pc, pr, rc, rr = tensors(cols)
    # the reference in float64: in float32, BCE's max(s, 0) - s * (1 - eps) cancels catastrophically
    # at large |s| (4.5e-5 off at s = 3445), while the loss, a weighted sum of log-sigmoids, does
    # not
    score = beta * ((pc.double() - pr.double()) - (rc.double() - rr.double()))  # (B,) float64
    losses, _, _ = dpo.dpo_loss(pc, pr, rc, rr, beta=beta)
    torch.testing.assert_close(losses.double(), F.binary_cross_entropy_with_logits(
        score, torch.ones_like(score), reduction="none"), rtol=1.3e-6, atol=1e-5)
    smoothed, _, _ = dpo.dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=eps)
    torch.testing.assert_close(smoothed.double(), F.binary_cross_entropy_with_logits(
        score, torch.full_like(score, 1 - eps), reduction="none"), rtol=1e-5, atol=1e-5)


@given(beta=betas)
def test_ipo_minimum_is_at_h_equal_one_over_two_beta(beta):
    target = 1 / (2 * beta)
    h = target + torch.linspace(-1, 1, 201)  # (201,) float32 around the minimum
    h.requires_grad_(True)
    zeros = torch.zeros_like(h)
    losses, _, _ = dpo.dpo_loss(h, zeros, zeros, zeros, beta=beta, loss_type="ipo")
    assert int(losses.argmin()) == 100
    at_min = torch.tensor([target], requires_grad=True)
    loss_at_min, _, _ = dpo.dpo_loss(at_min, zeros[:1], zeros[:1], zeros[:1], beta=beta,
                                     loss_type="ipo")
    loss_at_min.backward()
    assert loss_at_min.item() == 0.0 and at_min.grad.item() == 0.0


@given(k=st.integers(-6, 3), h_num=st.integers(-4096, 4096))
def test_hinge_is_zero_once_beta_h_reaches_one(k, h_num):
    beta, h_value = 2.0**k, h_num / 64  # beta * h is exact in float32
    h = torch.tensor([h_value], requires_grad=True)
    zeros = torch.zeros_like(h)
    loss, _, _ = dpo.dpo_loss(h, zeros, zeros, zeros, beta=beta, loss_type="hinge")
    loss.backward()
    if beta * h_value >= 1:
        assert loss.item() == 0.0 and h.grad.item() == 0.0
    else:
        assert loss.item() == 1 - beta * h_value and h.grad.item() == -beta


@given(cols=grid_columns(), beta=betas, eps=smoothings)
def test_robust_loss_is_unbiased_under_label_flips(cols, beta, eps):
    """Chowdhury et al.: if each label flips with probability eps, the expected robust loss is the
    clean DPO loss: (1 - eps) * L_robust(h) + eps * L_robust(-h) = -log sigma(beta h). With eps = 0
    it is plain DPO."""
    pc, pr, rc, rr = tensors(cols)
    kept, _, _ = dpo.dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="robust", label_smoothing=eps)
    flipped, _, _ = dpo.dpo_loss(pr, pc, rr, rc, beta=beta, loss_type="robust", label_smoothing=eps)
    clean, _, _ = dpo.dpo_loss(pc, pr, rc, rr, beta=beta)
    # (B,) cancels for large |h|: scale atol
    expected_loss = (1 - eps) * kept.double() + eps * flipped.double()
    scale = kept.double().abs() + flipped.double().abs()
    assert ((expected_loss - clean.double()).abs() <= 1e-5 * scale + 1e-6).all(), (expected_loss,
                                                                                   clean)
    robust_no_noise, _, _ = dpo.dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="robust")
    torch.testing.assert_close(robust_no_noise, clean)


@given(cols=grid_columns(k=2), beta=betas)
def test_reference_free_dpo_is_zero_reference_logps(cols, beta):
    pc, pr = tensors(cols)
    zeros = torch.zeros_like(pc)
    losses, chosen_rewards, rejected_rewards = dpo.dpo_loss(pc, pr, zeros, zeros, beta=beta)
    torch.testing.assert_close(losses, -F.logsigmoid(beta * (pc - pr)))
    torch.testing.assert_close(chosen_rewards, beta * pc)
    torch.testing.assert_close(rejected_rewards, beta * pr)
    naive, _, _ = naive_dpo_loss(*cols, [0.0] * len(pc), [0.0] * len(pc), beta=beta)
    torch.testing.assert_close(losses.double(), torch.tensor(naive, dtype=torch.float64), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_finite_loss_and_gradients_for_huge_h(loss_type, dtype):
    h = torch.tensor([-1e6, -1e3, -1.0, 0.0, 1.0, 1e3, 1e6])
    eps = 0.1 if loss_type in ("sigmoid", "robust") else 0.0
    inputs = [x.to(dtype).requires_grad_(True) for x in (h, torch.zeros_like(h), -h,
                                                         torch.full_like(h, -1e6))]
    losses, chosen_rewards, rejected_rewards = dpo.dpo_loss(*inputs, beta=0.5, loss_type=loss_type,
                                                            label_smoothing=eps)
    assert losses.dtype == chosen_rewards.dtype == rejected_rewards.dtype == torch.float32
    losses.sum().backward()
    for t in [losses, chosen_rewards, rejected_rewards] + [x.grad for x in inputs]:
        assert torch.isfinite(t).all(), t


def test_half_precision_inputs_are_computed_in_float32():
    pc, pr, rc, rr = (torch.tensor(v, dtype=torch.float16) for v in ([-7.5, -3.25], [-9.0, -2.5],
                                                                     [-8.0, -3.0], [-8.5, -2.75]))
    losses, chosen_rewards, _ = dpo.dpo_loss(pc, pr, rc, rr, beta=0.3)
    expected, _, _ = dpo.dpo_loss(pc.float(), pr.float(), rc.float(), rr.float(), beta=0.3)
    assert losses.dtype == chosen_rewards.dtype == torch.float32
    assert torch.equal(losses, expected)


# --------------------------------------------------------------------------------------------------
# RPO: every loss_type plus rpo_alpha * the per-token NLL of the chosen response.


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@given(cols=grid_columns(), beta=betas, eps=smoothings, rpo_alpha=rpo_alphas, data=st.data())
def test_rpo_matches_naive_reference(loss_type, cols, beta, eps, rpo_alpha, data):
    eps = eps if loss_type in ("sigmoid", "robust") else 0.0
    lengths, n = token_counts(data, len(cols[0]))
    inputs = tensors(cols, requires_grad=True)
    losses, chosen_rewards, rejected_rewards = dpo.dpo_loss(*inputs, beta=beta, loss_type=loss_type,
                                                            label_smoothing=eps,
                                                            rpo_alpha=rpo_alpha,
                                                            chosen_lengths=n)
    ref_losses, ref_chosen, ref_rejected = naive_dpo_loss(*cols, beta=beta, loss_type=loss_type,
                                                          eps=eps,
                                                          rpo_alpha=rpo_alpha,
                                                          chosen_lengths=lengths)
    # The DPO term and the NLL term may have opposite signs (robust < 0; grid log-probs may be > 0)
    # and cancel up to |h| ~ 1e6: the float32 error scales with their sizes, not with their sum.
    dpo_term = as_f64([naive_pair_loss(*pair, beta, loss_type, eps) for pair in zip(*cols)])
    nll_term = as_f64([-rpo_alpha * pc / k for pc, k in zip(cols[0], lengths)])
    scale = dpo_term.abs() + nll_term.abs()
    assert losses.dtype == torch.float32
    assert ((losses.double() - as_f64(ref_losses)).abs() <= 1e-5 * scale + 1e-5).all(), (losses,
                                                                                         ref_losses)
    torch.testing.assert_close(chosen_rewards.double(), as_f64(ref_chosen), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rejected_rewards.double(), as_f64(ref_rejected), rtol=1e-5,
                               atol=1e-5)

    # By hand: d loss / d pc = dloss/dh - rpo_alpha / n; the other three only through h, as without
    # RPO.
    losses.sum().backward()
    dh = as_f64([naive_pair_dloss_dh(*pair, beta, loss_type, eps) for pair in zip(*cols)])
    d_nll = as_f64([-rpo_alpha / k for k in lengths])
    assert ((inputs[0].grad.double() - (dh + d_nll)).abs() <= 1e-5 * (dh.abs() + d_nll.abs())
            + 1e-5).all()
    for t, sign in zip(inputs[1:], (-1, -1, 1)):
        torch.testing.assert_close(t.grad.double(), sign * dh, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@given(cols=grid_columns(), beta=betas, rpo_alpha=rpo_alphas, data=st.data())
def test_rpo_only_adds_minus_alpha_over_length_to_the_chosen_gradient(loss_type, cols, beta,
                                                                      rpo_alpha, data):
    """rpo_alpha = 0 is exactly plain DPO; any rpo_alpha leaves the rewards and the gradients of the
    other three inputs bit-identical and moves d loss / d policy_chosen_logps by -rpo_alpha /
    chosen_lengths."""
    lengths, n = token_counts(data, len(cols[0]))

    def run(**kwargs):
        inputs = tensors(cols, requires_grad=True)
        out = dpo.dpo_loss(*inputs, beta=beta, loss_type=loss_type, **kwargs)
        out[0].sum().backward()
        return out, [t.grad for t in inputs]

    plain, plain_grads = run()
    zero, zero_grads = run(rpo_alpha=0.0, chosen_lengths=n)
    rpo, rpo_grads = run(rpo_alpha=rpo_alpha, chosen_lengths=n)
    for a, b in zip(plain + tuple(plain_grads), zero + tuple(zero_grads)):
        assert torch.equal(a, b)
    assert torch.equal(rpo[1], plain[1]) and torch.equal(rpo[2], plain[2])
    assert not rpo[1].requires_grad and not rpo[2].requires_grad
    for a, b in zip(rpo_grads[1:], plain_grads[1:]):
        assert torch.equal(a, b)
    shift = as_f64([-rpo_alpha / k for k in lengths])  # (B,) by hand
    g = plain_grads[0].double()
    assert ((rpo_grads[0].double() - g - shift).abs() <= 1e-6 * (g.abs() + shift.abs())
            + 1e-7).all()


# --------------------------------------------------------------------------------------------------
# The Unlikelihood baseline: NLL of y_w + alpha * per-token mean of -log(1 - p) over y_l.

# the clamp bound as float32 log-probs meet it
CLAMP32 = float(torch.tensor(unlikelihood.UNLIKELIHOOD_CLAMP))
# the clamp, p ~ 1, the log1mexp switch
NEAR_ZERO = [0.0, -1e-9, -1e-7, -5e-7, -2e-6, -1e-4, -math.log(2), -0.5]


@st.composite
def unlikelihood_inputs(draw, max_b=6, max_t=8):
    """(chosen (B,), lengths (B,), token log-probs (B, T), mask (B, T)) as lists; >= 1 True per mask
    row and 0 at masked positions, as logprob_kernels.token_logprobs returns them; log-probs are
    float32 values."""
    B, T = draw(st.integers(1, max_b)), draw(st.integers(1, max_t))
    logp = st.one_of(st.floats(-30.0, 0.0, width=32), st.sampled_from(NEAR_ZERO))
    mask = [draw(st.lists(st.booleans(), min_size=T, max_size=T)) for _ in range(B)]
    for row in mask:
        row[draw(st.integers(0, T - 1))] = True
    x = [[draw(logp) if m else 0.0 for m in row] for row in mask]
    chosen = draw(st.lists(st.floats(-100.0, 0.0, width=32), min_size=B, max_size=B))
    lengths = draw(st.lists(st.integers(1, 64), min_size=B, max_size=B))
    return chosen, lengths, x, mask


def unlikelihood_tensors(chosen, lengths, x, mask):
    return (torch.tensor(chosen, requires_grad=True), torch.tensor(lengths),
            torch.tensor(x, requires_grad=True), torch.tensor(mask))


@given(inputs=unlikelihood_inputs(), alpha=st.floats(0.0, 1.0))
def test_unlikelihood_matches_naive_reference(inputs, alpha):
    c, n, x, mask = unlikelihood_tensors(*inputs)
    losses = unlikelihood.unlikelihood_loss(c, n, x, mask, alpha=alpha)
    assert losses.dtype == torch.float32 and losses.shape == c.shape
    naive = naive_unlikelihood_loss(inputs[0], inputs[1], x.tolist(), inputs[3], alpha,
                                    clamp=CLAMP32)
    torch.testing.assert_close(losses.double(), as_f64(naive), rtol=1e-5, atol=1e-5)

    # Gradients by hand: -1/|y_w| for the chosen; alpha/|y_l| * p/(1 - p) for unmasked rejected
    # tokens up to the clamp, 0 past it and exactly 0 (never NaN) at masked positions.
    losses.sum().backward()
    torch.testing.assert_close(c.grad.double(), as_f64([-1 / k for k in inputs[1]]))
    assert torch.isfinite(x.grad).all()
    assert torch.equal(x.grad[~mask], torch.zeros_like(x.grad[~mask]))
    torch.testing.assert_close(x.grad.double(),
                               as_f64(naive_unlikelihood_dloss_dx(x.tolist(), inputs[3], alpha,
                                                                  clamp=CLAMP32)),
                               rtol=1e-5, atol=1e-6)


@given(inputs=unlikelihood_inputs(), fill=st.sampled_from([3.0, -math.inf, math.inf, math.nan]))
def test_unlikelihood_ignores_whatever_masked_positions_hold(inputs, fill):
    c, n, x, mask = unlikelihood_tensors(*inputs)
    clean = unlikelihood.unlikelihood_loss(c, n, x, mask)
    clean.sum().backward()
    dirty_x = x.detach().masked_fill(~mask, fill).requires_grad_(True)
    dirty = unlikelihood.unlikelihood_loss(c, n, dirty_x, mask)
    dirty.sum().backward()
    assert torch.equal(dirty, clean)
    assert torch.equal(dirty_x.grad, x.grad)


@given(inputs=unlikelihood_inputs())
def test_unlikelihood_with_alpha_zero_is_the_chosen_per_token_nll(inputs):
    c, n, x, mask = unlikelihood_tensors(*inputs)
    losses = unlikelihood.unlikelihood_loss(c, n, x, mask, alpha=0.0)
    assert torch.equal(losses, -c.detach() / n)
    losses.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_unlikelihood_hand_gradient_is_the_derivative_of_the_naive_loss():
    """Central differences of the naive float64 loss agree with the hand-derived gradient the tests
    use."""
    xs, mask, alpha, h = ([[-20.0, -3.0, -math.log(2), -0.1, -1e-3, 0.0]], [[True] * 5 + [False]],
                          0.7, 1e-7)
    grads = naive_unlikelihood_dloss_dx(xs, mask, alpha)[0]
    for t in range(5):
        up, down = ([[v + s * (i == t) for i, v in enumerate(xs[0])]] for s in (h, -h))
        fd = (naive_unlikelihood_loss([0.0], [1], up, mask, alpha)[0]
              - naive_unlikelihood_loss([0.0], [1], down, mask, alpha)[0]) / (2 * h)
        assert fd == pytest.approx(grads[t], rel=1e-5, abs=1e-9)
    assert grads[5] == 0.0


def test_unlikelihood_is_finite_at_p_equal_one():
    """x = 0 (p = 1) is clamped to -1e-6: penalty -log(1 - e^-1e-6) = 13.8155, finite, with zero
    gradient."""
    x = torch.tensor([[0.0, 0.0]], requires_grad=True)
    loss = unlikelihood.unlikelihood_loss(torch.tensor([0.0]), torch.tensor([1]), x,
                                          torch.tensor([[True, True]]))
    loss.backward()
    torch.testing.assert_close(loss, torch.tensor([-math.log(-math.expm1(-1e-6))]))
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_unlikelihood_computes_in_float32():
    c, n, x = torch.tensor([-3.0, -5.5]), torch.tensor([3, 4]), torch.tensor([[-0.5, -2.0],
                                                                              [-1e-3, -0.25]])
    mask = torch.tensor([[True, False], [True, True]])
    expected = unlikelihood.unlikelihood_loss(c, n, x, mask, alpha=0.5)
    for dtype in (torch.float64, torch.bfloat16):
        out = unlikelihood.unlikelihood_loss(c.to(dtype), n, x.to(dtype), mask, alpha=0.5)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, expected, rtol=1e-2 if dtype == torch.bfloat16 else 1e-6,
                                   atol=1e-6)


# --------------------------------------------------------------------------------------------------
# The worked examples of the docstrings, derived by hand there.


def test_worked_example():
    beta = 0.5
    pc, pr = torch.tensor([-10.0], requires_grad=True), torch.tensor([-12.0])
    rc, rr = torch.tensor([-11.0]), torch.tensor([-11.0])
    losses, chosen_rewards, rejected_rewards = dpo.dpo_loss(pc, pr, rc, rr, beta=beta)
    torch.testing.assert_close(losses, torch.tensor([0.3132617]))
    torch.testing.assert_close(chosen_rewards, torch.tensor([0.5]))
    torch.testing.assert_close(rejected_rewards, torch.tensor([-0.5]))
    losses.backward()
    torch.testing.assert_close(pc.grad, torch.tensor([-0.1344707]))
    cdpo, _, _ = dpo.dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=0.1)
    torch.testing.assert_close(cdpo, torch.tensor([0.4132617]))
    ipo, _, _ = dpo.dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="ipo")
    torch.testing.assert_close(ipo, torch.tensor([1.0]))
    hinge, _, _ = dpo.dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="hinge")
    torch.testing.assert_close(hinge, torch.tensor([0.0]))
    robust, _, _ = dpo.dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="robust", label_smoothing=0.1)
    torch.testing.assert_close(robust, torch.tensor([0.1882617]))


def test_worked_example_rpo():
    pc = torch.tensor([-10.0], requires_grad=True)
    losses, chosen_rewards, rejected_rewards = dpo.dpo_loss(pc, torch.tensor([-12.0]),
                                                            torch.tensor([-11.0]),
                                                            torch.tensor([-11.0]), beta=0.5,
                                                            rpo_alpha=1.0,
                                                            chosen_lengths=torch.tensor([5]))
    torch.testing.assert_close(losses, torch.tensor([2.3132617]))
    torch.testing.assert_close(chosen_rewards, torch.tensor([0.5]))
    torch.testing.assert_close(rejected_rewards, torch.tensor([-0.5]))
    losses.backward()
    torch.testing.assert_close(pc.grad, torch.tensor([-0.3344707]))


def test_worked_example_unlikelihood():
    chosen = torch.tensor([-2.0], requires_grad=True)
    # middle position masked
    x = torch.tensor([[math.log(0.5), 0.0, math.log(0.25)]], requires_grad=True)
    losses = unlikelihood.unlikelihood_loss(chosen, torch.tensor([4]), x,
                                            torch.tensor([[True, False, True]]),
                                            alpha=1.0)
    torch.testing.assert_close(losses, torch.tensor([0.9904146]))
    # the unlikelihood term
    torch.testing.assert_close(losses - 0.5, torch.tensor([-math.log(0.375) / 2]))
    losses.backward()
    torch.testing.assert_close(x.grad, torch.tensor([[0.5, 0.0, 0.1666667]]))
    torch.testing.assert_close(chosen.grad, torch.tensor([-0.25]))


def test_worked_example_metrics():
    """The docstring pair plus its mirror image (policy prefers the rejected response by the same
    margin)."""
    pc, pr = torch.tensor([-10.0, -8.0]), torch.tensor([-12.0, -6.0])
    rc, rr = torch.tensor([-11.0, -7.0]), torch.tensor([-11.0, -7.0])
    out = dpo.dpo_loss(pc, pr, rc, rr, beta=0.5)
    metrics = dpo.dpo_metrics(*out, pc, pr)
    expected = {"loss": (0.3132617 + 1.3132617) / 2, "rewards/chosen": 0.0, "rewards/rejected": 0.0,
                "rewards/accuracies": 0.5, "rewards/margins": 0.0, "logps/chosen": -9.0,
                "logps/rejected": -9.0}
    assert set(metrics) == set(expected)
    for key, value in expected.items():
        assert isinstance(metrics[key], float)
        assert metrics[key] == pytest.approx(value, abs=1e-6), key


def test_metric_accuracy_is_strict():
    ties = torch.tensor([0.25, 0.25, 1.0])
    metrics = dpo.dpo_metrics(torch.zeros(3), ties, torch.tensor([0.25, 0.5, 0.0]), torch.zeros(3),
                              torch.zeros(3))
    assert metrics["rewards/accuracies"] == pytest.approx(1 / 3)
    assert metrics["rewards/margins"] == pytest.approx((0 - 0.25 + 1) / 3)


# --------------------------------------------------------------------------------------------------
# Input errors name the argument at fault.


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(loss_type="dpo"), ValueError, "loss_type"),
    (dict(beta=0.0), ValueError, "beta"),
    (dict(beta=-0.1), ValueError, "beta"),
    (dict(beta=float("nan")), ValueError, "beta"),
    (dict(beta="0.1"), TypeError, "beta"),
    (dict(label_smoothing=-0.01), ValueError, "label_smoothing"),
    (dict(label_smoothing=0.5), ValueError, "label_smoothing"),
    (dict(loss_type="ipo", label_smoothing=0.1), ValueError, "label_smoothing"),
    (dict(loss_type="hinge", label_smoothing=0.1), ValueError, "label_smoothing"),
    (dict(rpo_alpha=0.5), ValueError, "rpo_alpha=0.5 needs chosen_lengths"),
    (dict(rpo_alpha=-0.1, chosen_lengths=torch.ones(3)), ValueError, "rpo_alpha"),
    (dict(rpo_alpha=float("inf"), chosen_lengths=torch.ones(3)), ValueError, "rpo_alpha"),
    (dict(rpo_alpha=float("nan"), chosen_lengths=torch.ones(3)), ValueError, "rpo_alpha"),
    (dict(rpo_alpha="1", chosen_lengths=torch.ones(3)), TypeError, "rpo_alpha"),
    (dict(rpo_alpha=1.0, chosen_lengths=torch.tensor([4, 0, 2])), ValueError,
     "chosen_lengths must be > 0"),
    (dict(rpo_alpha=1.0, chosen_lengths=torch.tensor([4.0, -1.0, 2.0])), ValueError,
     "chosen_lengths must be > 0"),
    (dict(chosen_lengths=torch.zeros(3)), ValueError, "chosen_lengths must be > 0"),
    (dict(rpo_alpha=1.0, chosen_lengths=torch.ones(4)), ValueError,
     r"chosen_lengths must have shape \(B,\) = \(3,\)"),
    (dict(rpo_alpha=1.0, chosen_lengths=torch.ones(3, dtype=torch.bool)), TypeError,
     "chosen_lengths"),
    (dict(rpo_alpha=1.0, chosen_lengths=[1, 1, 1]), TypeError,
     "chosen_lengths must be a torch.Tensor"),
])
def test_bad_hyperparameters_raise(kwargs, error, match):
    x = torch.zeros(3)
    with pytest.raises(error, match=match):
        dpo.dpo_loss(x, x, x, x, **kwargs)


def test_bad_tensors_raise_naming_the_argument():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="reference_rejected_logps has shape"):
        dpo.dpo_loss(x, x, x, torch.zeros(4))
    with pytest.raises(ValueError, match=r"policy_chosen_logps must have shape \(B,\)"):
        dpo.dpo_loss(torch.zeros(3, 1), x, x, x)
    with pytest.raises(TypeError, match="reference_chosen_logps has dtype torch.float64"):
        dpo.dpo_loss(x, x, x.double(), x)
    with pytest.raises(TypeError, match="policy_rejected_logps must be a floating-point tensor"):
        dpo.dpo_loss(x, torch.zeros(3, dtype=torch.int64), x, x)
    with pytest.raises(TypeError, match="policy_chosen_logps must be a torch.Tensor"):
        dpo.dpo_loss([0.0, 0.0, 0.0], x, x, x)
    with pytest.raises(ValueError, match="empty batch"):
        dpo.dpo_metrics(*[torch.zeros(0)] * 5)
    with pytest.raises(ValueError, match="policy_rejected_logps has shape"):
        dpo.dpo_metrics(x, x, x, x, torch.zeros(2))


# --------------------------------------------------------------------------------------------------
# The concatenated forward pass, on a tiny GPT. Batches are built here by hand, following the
# data.dpo_collate contract (chosen rows first, right-padded, pre-shifted labels with -100 where no
# next token, bool mask on the positions whose label is a response token), so that these tests do
# not depend on data/.

VOCAB, PAD = 50, 0


def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=32, vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=16))


def collate_rows(rows):
    """rows: list of (prompt, response) token lists -> dict input_ids/labels (N, T) int64, mask (N,
    T) bool."""
    T = max(len(p) + len(y) for p, y in rows)
    input_ids = torch.full((len(rows), T), PAD, dtype=torch.int64)
    labels = torch.full((len(rows), T), -100, dtype=torch.int64)
    mask = torch.zeros((len(rows), T), dtype=torch.bool)
    for i, (prompt, response) in enumerate(rows):
        seq = prompt + response
        input_ids[i, :len(seq)] = torch.tensor(seq)
        labels[i, :len(seq) - 1] = torch.tensor(seq[1:])  # labels[t] = the token after input_ids[t]
        mask[i, len(prompt) - 1:len(seq) - 1] = True  # positions whose label is a response token
    return {"input_ids": input_ids, "labels": labels, "mask": mask}


def collate_pairs(pairs):
    """pairs: list of (prompt, chosen, rejected) -> the 2B-row DPO batch, chosen rows first."""
    return collate_rows([(p, c) for p, c, _ in pairs] + [(p, r) for p, _, r in pairs])


token_lists = st.lists(st.integers(1, VOCAB - 1), min_size=1, max_size=6)
pair_lists = st.lists(st.tuples(token_lists, token_lists, token_lists), min_size=1, max_size=4)


@settings(max_examples=10)
@given(pairs=pair_lists)
def test_concatenated_forward_equals_two_separate_forwards(pairs):
    model = tiny_gpt()
    batch = collate_pairs(pairs)
    out = dpo.concatenated_logps(model, batch)
    assert isinstance(out, dpo.PairLogps)
    assert out.chosen.dtype == out.rejected.dtype == torch.float32
    assert out.chosen_tokens.dtype == out.rejected_tokens.dtype == torch.int64

    grads = torch.autograd.grad(out.chosen.sum() - out.rejected.sum(), list(model.parameters()))
    separate = {}
    for name, column in (("chosen", 1), ("rejected", 2)):  # each half padded only to its own length
        half = collate_rows([(pair[0], pair[column]) for pair in pairs])
        separate[name] = naive_sequence_logprobs(model(half["input_ids"]), half["labels"],
                                                 half["mask"])  # (B,)
    torch.testing.assert_close(out.chosen, separate["chosen"])
    torch.testing.assert_close(out.rejected, separate["rejected"])
    separate_grads = torch.autograd.grad(separate["chosen"].sum() - separate["rejected"].sum(),
                                         list(model.parameters()))
    for g, expected in zip(grads, separate_grads):
        torch.testing.assert_close(g, expected)
    assert out.chosen_tokens.tolist() == [len(c) for _, c, _ in pairs]
    assert out.rejected_tokens.tolist() == [len(r) for _, _, r in pairs]
    chosen_means, rejected_means = out.mean_per_token()
    torch.testing.assert_close(chosen_means,
                               out.chosen / torch.tensor([float(len(c)) for _, c, _ in pairs]))
    torch.testing.assert_close(rejected_means,
                               out.rejected / torch.tensor([float(len(r)) for _, _, r in pairs]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_sgd_step_on_the_dpo_loss_raises_the_chosen_minus_rejected_log_ratio(seed):
    model = tiny_gpt(seed)
    reference = copy.deepcopy(model).requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    draw = lambda n: torch.randint(1, VOCAB, (n,), generator=g).tolist()  # noqa: E731
    batch = collate_pairs([(draw(4), draw(5), draw(3)) for _ in range(4)])
    with torch.no_grad():
        ref = dpo.concatenated_logps(reference, batch)

    policy = dpo.concatenated_logps(model, batch)
    losses, _, _ = dpo.dpo_loss(policy.chosen, policy.rejected, ref.chosen, ref.rejected, beta=0.1)
    # policy == reference at the start
    torch.testing.assert_close(losses, torch.full_like(losses, math.log(2)))
    before = (policy.chosen - policy.rejected).detach()  # (B,)
    losses.mean().backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()  # small: first-order regime

    with torch.no_grad():
        after_logps = dpo.concatenated_logps(model, batch)
        after_losses, chosen_rewards, rejected_rewards = dpo.dpo_loss(
            after_logps.chosen, after_logps.rejected, ref.chosen, ref.rejected, beta=0.1)
    after = after_logps.chosen - after_logps.rejected  # (B,)
    assert after.mean() > before.mean(), (before, after)
    assert after_losses.mean() < math.log(2)
    assert (chosen_rewards - rejected_rewards).mean() > 0


def test_concatenated_logps_passes_impl_to_the_kernel():
    """The fused Triton path (on CUDA, or its CPU interpreter, see conftest.py) gives the torch
    path's numbers."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = tiny_gpt().to(device)
    pairs = collate_pairs([([1, 2, 3], [4, 5], [6, 7, 8]), ([9], [10, 11], [12])])
    batch = {k: v.to(device) for k, v in pairs.items()}
    by_impl = {impl: dpo.concatenated_logps(model, batch, impl=impl) for impl in ("torch",
                                                                                  "triton")}
    for field in dpo.PairLogps._fields:
        torch.testing.assert_close(getattr(by_impl["triton"], field),
                                   getattr(by_impl["torch"], field))
    grads = {impl: torch.autograd.grad(out.chosen.sum() - out.rejected.sum(),
                                       model.transformer.wte.weight)[0]
             for impl, out in by_impl.items()}
    torch.testing.assert_close(grads["triton"], grads["torch"])
    with pytest.raises(ValueError, match="impl"):
        dpo.concatenated_logps(model, batch, impl="cuda")


def test_concatenated_logps_rejects_malformed_batches():
    model = tiny_gpt()
    batch = collate_pairs([([1, 2], [3], [4, 5])])
    with pytest.raises(KeyError, match="mask"):
        dpo.concatenated_logps(model, {k: v for k, v in batch.items() if k != "mask"})
    with pytest.raises(ValueError, match="chosen rows then rejected rows"):
        dpo.concatenated_logps(model, {k: v[:1] for k, v in batch.items()})
    with pytest.raises(ValueError, match=r"labels must have shape \(B, T\)"):
        dpo.concatenated_logps(model, {**batch, "labels": batch["labels"][:, :-1]})


def test_unlikelihood_bad_inputs_raise_naming_the_argument():
    c, n, x, mask = torch.zeros(2), torch.ones(2), -torch.ones(2, 3), torch.ones(2, 3,
                                                                                 dtype=torch.bool)
    for alpha, error in ((-0.1, ValueError), (1.5, ValueError), (math.nan, ValueError),
                         (math.inf, ValueError), ("1", TypeError), (True, TypeError)):
        with pytest.raises(error, match="alpha"):
            unlikelihood.unlikelihood_loss(c, n, x, mask, alpha=alpha)
    with pytest.raises(ValueError, match=r"rows \[1\] have none"):
        unlikelihood.unlikelihood_loss(c, n, x,
                                       torch.tensor([[True, False, False], [False, False, False]]))
    with pytest.raises(ValueError, match="rows"):
        unlikelihood.unlikelihood_loss(c, n, x[:, :0], mask[:, :0])
    with pytest.raises(ValueError, match=r"rejected_mask has shape \(2, 4\)"):
        unlikelihood.unlikelihood_loss(c, n, x, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError,
                       match=r"rejected_token_logps must have shape \(B, T\) with B = 2"):
        unlikelihood.unlikelihood_loss(c, n, -torch.ones(3, 3), mask)
    with pytest.raises(ValueError, match=r"rejected_token_logps must have shape \(B, T\)"):
        unlikelihood.unlikelihood_loss(c, n, -torch.ones(2), mask)
    with pytest.raises(ValueError, match=r"chosen_lengths must have shape \(B,\) = \(2,\)"):
        unlikelihood.unlikelihood_loss(c, torch.ones(3), x, mask)
    with pytest.raises(ValueError, match="chosen_lengths must be > 0"):
        unlikelihood.unlikelihood_loss(c, torch.tensor([3, 0]), x, mask)
    with pytest.raises(TypeError, match="rejected_mask must be a bool tensor"):
        unlikelihood.unlikelihood_loss(c, n, x, mask.float())
    with pytest.raises(TypeError, match="rejected_token_logps must be a floating-point tensor"):
        unlikelihood.unlikelihood_loss(c, n, x.long(), mask)
    with pytest.raises(TypeError, match="chosen_logps must be a floating-point tensor"):
        unlikelihood.unlikelihood_loss(c.long(), n, x, mask)
