"""Graded tests of Assignment 1: the DPO loss family (dpo._losses_from_margin, dpo.dpo_loss,
dpo._check_dpo_arguments, dpo.dpo_metrics), and its optional extra credit: simpo.simpo_loss,
orpo.log1mexp and orpo.orpo_loss, kto.kto_loss.

Three kinds of evidence, none of which contains a solution: literal expected values from the
instructor's naive references (course/fixtures/a1_dpo_loss.json, a1_family_losses.json), properties
that follow from the math (checked on inputs hypothesis draws), and the modules' hand-derived worked
examples. 28 points, and 6 points of extra credit (`extra_credit` tests: not counted in the total).
"""

import json
import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dpo
from methods import kto, orpo, simpo

SETTINGS = settings(derandomize=True, deadline=None, max_examples=40)
FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures",
                        "a1_dpo_loss.json")
NAMES = ("policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps",
         "reference_rejected_logps")


def load_cases():
    with open(FIXTURES) as f:
        return json.load(f)["cases"]


def run_case(case):
    """dpo_loss on a fixture case, inputs as float32 leaves; returns (losses, chosen, rejected,
    grads)."""
    inputs = {name: torch.tensor(case["inputs"][name], dtype=torch.float32, requires_grad=True)
              for name in NAMES}
    losses, chosen, rejected = dpo.dpo_loss(
        *inputs.values(), beta=case["beta"], loss_type=case["loss_type"],
                                            label_smoothing=case["label_smoothing"],
        rpo_alpha=case["rpo_alpha"], chosen_lengths=torch.tensor(case["chosen_lengths"]))
    losses.sum().backward()
    return losses, chosen, rejected, {name: t.grad for name, t in inputs.items()}


def close(actual, expected, tol=1e-5):
    torch.testing.assert_close(actual.double(), torch.tensor(expected, dtype=torch.float64),
                               rtol=tol, atol=tol)


@pytest.mark.points(5)
def test_losses_and_rewards_match_the_reference_values():
    """96 cases: every loss type, beta from 0.01 to 10, label smoothing, RPO; losses and detached
    rewards."""
    for case in load_cases():
        losses, chosen, rejected, _ = run_case(case)
        assert losses.dtype == torch.float32 and losses.shape == (len(case["losses"]),)
        close(losses, case["losses"])
        close(chosen, case["chosen_rewards"])
        close(rejected, case["rejected_rewards"])
        assert not chosen.requires_grad and not rejected.requires_grad, (
            "rewards are returned detached")


@pytest.mark.points(4)
def test_gradients_match_the_reference_values():
    """d(sum of losses) / d(each of the four log-probs), hand-derived by the reference, on the 96
    cases."""
    for case in load_cases():
        *_, grads = run_case(case)
        for name in NAMES:
            close(grads[name], case["grads"][name], tol=1e-4)


logps = st.lists(st.floats(-200, 0, width=32), min_size=4, max_size=4)
batches = st.lists(logps, min_size=1,
                   max_size=6).map(lambda rows: [torch.tensor(c) for c in zip(*rows)])
betas = st.sampled_from([0.01, 0.1, 0.5, 1.0, 5.0])


@pytest.mark.points(2)
@SETTINGS
@given(batches, betas)
def test_policy_equal_to_reference_gives_log_2(cols, beta):
    pc, pr, _, _ = cols
    losses, chosen, rejected = dpo.dpo_loss(pc, pr, pc.clone(), pr.clone(), beta=beta)
    torch.testing.assert_close(losses, torch.full_like(losses, math.log(2)))
    assert torch.all(chosen == 0) and torch.all(rejected == 0)


@pytest.mark.points(2)
@SETTINGS
@given(batches, betas, st.sampled_from(dpo.LOSS_TYPES), st.floats(-30, 30))
def test_loss_depends_only_on_h(cols, beta, loss_type, shift):
    """Adding the same amount to all four log-probs, or to a chosen/rejected pair of one model,
    changes nothing."""
    a = dpo.dpo_loss(*cols, beta=beta, loss_type=loss_type)[0]
    pc, pr, rc, rr = cols
    b = dpo.dpo_loss(pc + shift, pr + shift, rc + shift, rr + shift, beta=beta,
                     loss_type=loss_type)[0]
    c = dpo.dpo_loss(pc + shift, pr, rc + shift, rr, beta=beta, loss_type=loss_type)[0]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-3)


@pytest.mark.points(2)
@SETTINGS
@given(batches, betas)
def test_gradient_weight_is_beta_sigmoid_of_minus_beta_h(cols, beta):
    """The paper's section 4: |dL/d log pi(y_w)| = beta * sigma(-beta h) for the sigmoid loss."""
    pc = cols[0].clone().requires_grad_(True)
    losses, _, _ = dpo.dpo_loss(pc, *cols[1:], beta=beta)
    losses.sum().backward()
    h = (cols[0] - cols[1]) - (cols[2] - cols[3])
    torch.testing.assert_close(pc.grad, -beta * torch.sigmoid(-beta * h), rtol=1e-4, atol=1e-6)


@pytest.mark.points(1)
@SETTINGS
@given(batches, betas, st.sampled_from([0.0, 0.1, 0.3]))
def test_sigmoid_loss_is_binary_cross_entropy_on_beta_h(cols, beta, eps):
    losses = dpo.dpo_loss(*cols, beta=beta, label_smoothing=eps)[0]
    h = (cols[0] - cols[1]) - (cols[2] - cols[3])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(beta * h,
                                                                    torch.full_like(h, 1 - eps),
                                                                    reduction="none")
    torch.testing.assert_close(losses, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.points(1)
@pytest.mark.parametrize("loss_type", dpo.LOSS_TYPES)
def test_finite_at_huge_h(loss_type):
    """|beta h| of a million: no overflow, finite gradients (a log of a sigmoid that underflowed is
    -inf)."""
    for sign in (1, -1):
        pc = torch.tensor([sign * 1e6], requires_grad=True)
        losses, _, _ = dpo.dpo_loss(pc, torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=1.0,
                                    loss_type=loss_type)
        losses.sum().backward()
        assert torch.isfinite(losses).all() and torch.isfinite(pc.grad).all()


@pytest.mark.points(1)
def test_worked_example():
    """The module docstring's example: beta 0.5, h = 2."""
    args = [torch.tensor([v]) for v in (-10.0, -12.0, -11.0, -11.0)]
    expected = {("sigmoid", 0.0): 0.3132617, ("sigmoid", 0.1): 0.4132617, ("ipo", 0.0): 1.0,
                ("hinge", 0.0): 0.0, ("robust", 0.1): 0.1882617}
    for (loss_type, eps), value in expected.items():
        loss = dpo.dpo_loss(*args, beta=0.5, loss_type=loss_type, label_smoothing=eps)[0]
        assert loss.item() == pytest.approx(value, abs=1e-6), (loss_type, eps)
    loss = dpo.dpo_loss(*args, beta=0.5, rpo_alpha=1.0, chosen_lengths=torch.tensor([5]))[0]
    assert loss.item() == pytest.approx(2.3132617, abs=1e-6)


@pytest.mark.points(1)
def test_metrics_worked_example():
    """Two pairs, one ordered right (0.5 > -0.5) and one tied (0.2 = 0.2: not counted as right)."""
    metrics = dpo.dpo_metrics(torch.tensor([0.3, 0.7]), torch.tensor([0.5, 0.2]),
                              torch.tensor([-0.5, 0.2]),
                              torch.tensor([-10.0, -20.0]), torch.tensor([-12.0, -30.0]))
    expected = {"loss": 0.5, "rewards/chosen": 0.35, "rewards/rejected": -0.15,
                "rewards/accuracies": 0.5, "rewards/margins": 0.5, "logps/chosen": -15.0,
                "logps/rejected": -21.0}
    assert metrics.keys() == expected.keys()
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-6), key
        assert isinstance(metrics[key], float), key


@pytest.mark.points(1)
@pytest.mark.parametrize("kwargs", [dict(beta=0.0), dict(beta=-1.0), dict(loss_type="kto"),
                                    dict(label_smoothing=0.5),
                                    dict(loss_type="ipo", label_smoothing=0.1),
                                    dict(rpo_alpha=1.0)])
def test_bad_hyperparameters_raise(kwargs):
    args = [torch.zeros(2)] * 4
    with pytest.raises((ValueError, TypeError)):
        dpo.dpo_loss(*args, **kwargs)


# -----------------------------------------------------------------------------
# Extra credit: DPO's family since the paper (methods/simpo.py, methods/orpo.py, methods/kto.py)

FAMILY_FIXTURES = os.path.join(os.path.dirname(FIXTURES), "a1_family_losses.json")


def family_cases(name):
    with open(FAMILY_FIXTURES) as f:
        return json.load(f)["cases"][name]


def pair_inputs(case):
    """A fixture case's log-probs (float32 leaves) and lengths."""
    return ([torch.tensor(case[key], dtype=torch.float32, requires_grad=True)
             for key in ("policy_chosen_logps", "policy_rejected_logps")],
            [torch.tensor(case[key]) for key in ("chosen_lengths", "rejected_lengths")])


@pytest.mark.extra_credit
@pytest.mark.points(2)
def test_extra_simpo_loss():
    """24 literal cases, the docstring's worked example (losses, rewards, gradient), and float64 in,
    float64 out."""
    for case in family_cases("simpo"):
        logps, lengths = pair_inputs(case)
        losses, chosen_rewards, _ = simpo.simpo_loss(*logps, *lengths, beta=case["beta"],
                                                     gamma=case["gamma"])
        assert losses.dtype == torch.float32 and not chosen_rewards.requires_grad
        close(losses, case["losses"])
    chosen = torch.tensor([-10.0], requires_grad=True)
    losses, chosen_rewards, rejected_rewards = simpo.simpo_loss(chosen, torch.tensor([-12.0]),
                                                                torch.tensor([5]),
                                                                torch.tensor([4]), beta=2.0,
                                                                gamma=1.0)
    losses.sum().backward()
    assert losses.item() == pytest.approx(0.3132617, abs=1e-6)
    assert (chosen_rewards.item(), rejected_rewards.item()) == (-4.0, -6.0)
    assert chosen.grad.item() == pytest.approx(-0.1075766, abs=1e-6)
    double = simpo.simpo_loss(torch.tensor([-10.0], dtype=torch.float64),
                              torch.tensor([-12.0], dtype=torch.float64),
                              torch.tensor([5]), torch.tensor([4]))[0]
    assert double.dtype == torch.float64


@pytest.mark.extra_credit
@pytest.mark.points(2)
def test_extra_orpo_loss_and_log1mexp():
    """24 literal cases, the worked example, log1mexp to 1e-12 relative at both ends, and finite
    losses and gradients from a sure response (mean log-prob 0 or -1e-7) to an unlikely one
    (-100)."""
    for case in family_cases("orpo"):
        logps, lengths = pair_inputs(case)
        losses, chosen_rewards, _ = orpo.orpo_loss(*logps, *lengths, beta=case["beta"])
        assert losses.dtype == torch.float32 and not chosen_rewards.requires_grad
        close(losses, case["losses"], tol=1e-4)
    losses, _, _ = orpo.orpo_loss(torch.tensor([math.log(1 / 8)]), torch.tensor([math.log(1 / 16)]),
                                  torch.tensor([3]), torch.tensor([2]), beta=0.1)
    assert losses.item() == pytest.approx(0.7219154, abs=1e-6)
    x = torch.tensor([-1e-10, -1e-7, -0.3, -0.7, -5.0, -40.0], dtype=torch.float64)
    expected = torch.tensor([-23.025850929990458, -16.11809570095832, -1.3502256128148467,
                             -0.6863410028083852, -0.006760749449488557, -4.248354255291589e-18],
                            dtype=torch.float64)  # to 16 digits
    torch.testing.assert_close(orpo.log1mexp(x), expected, rtol=1e-12, atol=0.0)
    for a in (0.0, -1e-7, -1e-3, -0.5, -10.0, -100.0):
        chosen = torch.tensor([a], requires_grad=True)
        rejected = torch.tensor([-100.0 if a > -50 else -1e-7], requires_grad=True)
        losses, _, _ = orpo.orpo_loss(chosen, rejected, torch.tensor([1]), torch.tensor([1]),
                                      beta=1.0)
        losses.sum().backward()
        assert torch.isfinite(losses).all() and torch.isfinite(chosen.grad).all(), a
        assert torch.isfinite(rejected.grad).all(), a


@pytest.mark.extra_credit
@pytest.mark.points(2)
def test_extra_kto_loss():
    """24 literal cases, the worked example (losses, rewards, gradient), the reference point never
    below 0, and no gradient through kl."""
    for case in family_cases("kto"):
        policy = torch.tensor(case["policy_logps"], dtype=torch.float32, requires_grad=True)
        losses, rewards = kto.kto_loss(policy, torch.tensor(case["reference_logps"]),
                                       torch.tensor(case["desirable"]),
                                       case["kl"], beta=case["beta"],
                                       desirable_weight=case["desirable_weight"],
                                       undesirable_weight=case["undesirable_weight"])
        assert losses.dtype == torch.float32 and not rewards.requires_grad
        close(losses, case["losses"])
    policy = torch.tensor([-8.0, -30.0], requires_grad=True)
    kl = torch.tensor(2.0, requires_grad=True)
    losses, rewards = kto.kto_loss(policy, torch.tensor([-20.0, -22.0]),
                                   torch.tensor([True, False]), kl, beta=0.1)
    losses.sum().backward()
    torch.testing.assert_close(losses, torch.tensor([0.2689414, 0.2689414]))
    torch.testing.assert_close(rewards, torch.tensor([1.2, -0.8]))
    torch.testing.assert_close(policy.grad, torch.tensor([-0.0196612, 0.0196612]))
    assert kl.grad is None, "the reference point is detached"
    zero_point, _ = kto.kto_loss(torch.tensor([-20.0]), torch.tensor([-20.0]), torch.tensor([True]),
                                 -1.0, beta=0.1)
    assert zero_point.item() == pytest.approx(0.5)
