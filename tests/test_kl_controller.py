"""Tests of ppo.AdaptiveKL, Ziegler et al. (2019)'s controller of the KL coefficient: worked steps,
a finite positive penalty for any valid input, and the settings that could flip its sign refused.
(The rest of methods/ppo.py is tested in tests/test_ppo.py.)"""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from methods import ppo
from plumbing.config import MAX_KL_COEF


def test_the_kl_controller_worked_steps():
    controller = ppo.AdaptiveKL(0.1, target=6.0, horizon=1000, max_coef=1e6)
    # error clipped to +0.2
    assert controller.update(kl=12.0, n=100) == pytest.approx(0.1 * (1 + 0.2 * 0.1))
    assert controller.update(kl=6.0, n=100) == pytest.approx(0.1 * 1.02)  # on target: unchanged
    assert controller.update(kl=5.4, n=100) == pytest.approx(0.1 * 1.02 * (1 - 0.1 * 0.1))


@settings(derandomize=True, deadline=None, max_examples=200)
@given(kl_coef=st.floats(1e-8, MAX_KL_COEF), target=st.floats(1e-6, 1e6),
       rollouts=st.integers(1, 4096),
       horizon_over_rollouts=st.floats(1.0, 1e6),
       kls=st.lists(st.floats(-1e12, 1e12), min_size=1, max_size=50))
def test_the_kl_controller_stays_a_finite_penalty(kl_coef, target, rollouts, horizon_over_rollouts,
                                                  kls):
    """For every valid input (horizon >= rollouts per batch) and any finite measured KLs, every
    update multiplies the coefficient by a number in [0.8, 1.2] (or caps it), so it stays finite and
    > 0."""
    controller = ppo.AdaptiveKL(kl_coef, target, rollouts * horizon_over_rollouts, MAX_KL_COEF)
    for kl in kls:
        before = controller.kl_coef
        after = controller.update(kl, rollouts)
        assert math.isfinite(after) and 0 < after <= MAX_KL_COEF
        assert 0.8 * before * (1 - 1e-12) <= after <= min(1.2 * before * (1 + 1e-12), MAX_KL_COEF)


def test_the_kl_controller_refuses_what_could_flip_its_sign():
    with pytest.raises(ValueError, match=r"1 <= n <= horizon \(2\)"):
        # was: 0.05 * (1 - 0.2 * 8) < 0
        ppo.AdaptiveKL(0.05, 1.0, horizon=2, max_coef=1e6).update(kl=0.0, n=16)
    for args in ((0.0, 1.0, 10.0, 1e6), (0.05, 0.0, 10.0, 1e6), (0.05, 1.0, float("nan"), 1e6),
                 (-1.0, 1.0, 10.0, 1e6), (0.05, 1.0, 10.0, float("inf"))):
        with pytest.raises(ValueError, match="must be finite and > 0"):
            ppo.AdaptiveKL(*args)
    with pytest.raises(ValueError, match="the measured KL is nan"):
        ppo.AdaptiveKL(0.05, 1.0, 10.0, 1e6).update(kl=float("nan"), n=1)
