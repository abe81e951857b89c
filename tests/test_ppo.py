"""Tests of methods/ppo.py against naive Python loops (hypothesis; masks with holes and empty rows),
the docstring's worked example, and properties of the math: the rewards sum to the score minus the
KL penalty, returns are advantages plus values, the clipped loss has no gradient where the ratio is
clipped on the side of the advantage, and RLOO's baseline leaves the sample itself out."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from methods import ppo

SETTINGS = settings(derandomize=True, deadline=None, max_examples=60)


@st.composite
def rollouts(draw, max_rows=4, max_len=6):
    """(mask (B, T) bool with holes and maybe empty rows, and a float (B, T) tensor generator)."""
    B, T = draw(st.integers(1, max_rows)), draw(st.integers(1, max_len))
    mask = torch.tensor(draw(st.lists(st.lists(st.booleans(), min_size=T, max_size=T), min_size=B,
                                      max_size=B)))
    seed = draw(st.integers(0, 2**16))
    return mask, torch.Generator().manual_seed(seed)


def naive_gae(rewards, values, mask, gamma, lam):
    """The textbook backward recursion, one row and one position at a time, over the unmasked
    positions."""
    B, T = len(mask), len(mask[0])
    advantages = [[0.0] * T for _ in range(B)]
    for b in range(B):
        positions = [t for t in range(T) if mask[b][t]]
        next_value = next_advantage = 0.0
        for t in reversed(positions):
            delta = rewards[b][t] + gamma * next_value - values[b][t]
            next_advantage = delta + gamma * lam * next_advantage
            advantages[b][t], next_value = next_advantage, values[b][t]
    returns = [[advantages[b][t] + values[b][t] if mask[b][t] else 0.0 for t in range(T)]
               for b in range(B)]
    return advantages, returns


def test_worked_example():
    mask = torch.ones(1, 3, dtype=torch.bool)
    old, ref = torch.tensor([[-1.0, -2, -1]]), torch.tensor([[-1.5, -2, -0.5]])
    rewards = ppo.token_rewards(torch.tensor([1.0]), old, ref, mask, kl_coef=0.1)
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.0, 1.05]]))
    values = torch.tensor([[0.5, 0.6, 0.7]])
    advantages, returns = ppo.gae(rewards, values, mask, gamma=1.0, lam=0.95)
    torch.testing.assert_close(advantages, torch.tensor([[0.460875, 0.4325, 0.35]]))
    torch.testing.assert_close(returns, torch.tensor([[0.960875, 1.0325, 1.05]]))
    new = old + torch.tensor([[0.3, 0.0, -0.3]])
    assert ppo.policy_loss(new, old, advantages, mask, clip=0.2).item() == pytest.approx(-0.4149454,
                                                                                         abs=1e-6)
    new_values = torch.tensor([[0.6, 0.6, 1.0]])
    assert ppo.value_loss(new_values, values, returns, mask,
                          clip=0.2).item() == pytest.approx(0.0566311, abs=1e-6)
    torch.testing.assert_close(ppo.rloo_advantages(torch.tensor([[1.0, 2.0, 3.0]])),
                               torch.tensor([[-1.5, 0., 1.5]]))


@SETTINGS
@given(rollouts(), st.floats(0, 2), st.floats(-3, 3))
def test_token_rewards_sum_to_the_score_minus_the_kl_penalty(shape, kl_coef, score):
    mask, g = shape
    B, T = mask.shape
    logprobs, ref = -torch.rand(B, T, generator=g) * 3, -torch.rand(B, T, generator=g) * 3
    scores = torch.full((B,), score)
    rewards = ppo.token_rewards(scores, logprobs, ref, mask, kl_coef)
    for b in range(B):
        positions = [t for t in range(T) if mask[b, t]]
        expected = (score if positions else 0.0) - kl_coef * sum(float(logprobs[b, t] - ref[b, t])
                                                                 for t in positions)
        assert rewards[b].sum().item() == pytest.approx(expected, abs=1e-4)
        assert all(rewards[b, t] == 0 for t in range(T) if not mask[b, t])
        if positions:  # the score is paid at the last response token only
            t = positions[-1]
            assert rewards[b, t].item() == pytest.approx(score - kl_coef
                                                         * float(logprobs[b, t] - ref[b, t]),
                                                         abs=1e-5)


@SETTINGS
@given(rollouts(), st.floats(0, 1), st.floats(0, 1))
def test_gae_is_the_textbook_recursion(shape, gamma, lam):
    mask, g = shape
    B, T = mask.shape
    rewards, values = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    advantages, returns = ppo.gae(rewards, values, mask, gamma, lam)
    expected_adv, expected_ret = naive_gae(rewards.tolist(), values.tolist(), mask.tolist(), gamma,
                                           lam)
    torch.testing.assert_close(advantages, torch.tensor(expected_adv), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(returns, torch.tensor(expected_ret), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(returns, torch.where(mask, advantages + values, 0.0))


@SETTINGS
@given(rollouts(), st.floats(0.05, 0.5))
def test_policy_loss_is_the_formula_and_clipped_tokens_get_no_gradient(shape, clip):
    mask, g = shape
    B, T = mask.shape
    old = -torch.rand(B, T, generator=g) * 3
    new = (old + torch.randn(B, T, generator=g) * 0.5).requires_grad_(True)
    advantages = torch.randn(B, T, generator=g)
    loss = ppo.policy_loss(new, old, advantages, mask, clip)
    loss.backward()
    terms = []
    for b in range(B):
        for t in range(T):
            if mask[b, t]:
                ratio, a = math.exp(float(new.detach()[b, t] - old[b, t])), float(advantages[b, t])
                terms.append(max(-a * ratio, -a * min(max(ratio, 1 - clip), 1 + clip)))
                clipped_past = (a > 0 and ratio > 1 + clip) or (a < 0 and ratio < 1 - clip)
                if clipped_past:  # moving further would only help: the clip holds the update back
                    assert new.grad[b, t] == 0
                else:
                    assert new.grad[b, t] == pytest.approx(-a * ratio
                                                           / len([1 for row in mask for m in row
                                                                  if m]),
                                                           rel=1e-4, abs=1e-7)
            else:
                assert new.grad[b, t] == 0
    assert loss.item() == pytest.approx(sum(terms) / len(terms) if terms else 0.0, rel=1e-4,
                                        abs=1e-6)


@SETTINGS
@given(rollouts(), st.floats(0.05, 1.0))
def test_value_loss_is_the_formula(shape, clip):
    mask, g = shape
    B, T = mask.shape
    old, new, returns = (torch.randn(B, T, generator=g) for _ in range(3))
    loss = ppo.value_loss(new, old, returns, mask, clip)
    terms = [0.5 * max((float(new[b, t] - returns[b, t])) ** 2,
                       (float(old[b, t]) + min(max(float(new[b, t] - old[b, t]), -clip), clip)
                        - float(returns[b, t])) ** 2)
             for b in range(B) for t in range(T) if mask[b, t]]
    assert loss.item() == pytest.approx(sum(terms) / len(terms) if terms else 0.0, rel=1e-4,
                                        abs=1e-6)


@SETTINGS
@given(st.integers(1, 5), st.integers(2, 6), st.integers(0, 2**16))
def test_rloo_baseline_leaves_the_sample_out(prompts, k, seed):
    scores = torch.randn(prompts, k, generator=torch.Generator().manual_seed(seed))
    advantages = ppo.rloo_advantages(scores)
    for p in range(prompts):
        for i in range(k):
            others = [float(scores[p, j]) for j in range(k) if j != i]
            assert advantages[p, i].item() == pytest.approx(float(scores[p, i]) - sum(others)
                                                            / len(others),
                                                            abs=1e-5)
    # zero mean
    torch.testing.assert_close(advantages.sum(dim=1), torch.zeros(prompts), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="k >= 2"):
        ppo.rloo_advantages(torch.zeros(3, 1))


def test_whiten():
    mask = torch.tensor([[True, True, False], [True, False, False]])
    values = torch.tensor([[1.0, 2.0, 100.0], [3.0, -7.0, 5.0]])
    white = ppo.whiten(values, mask)
    assert ppo.masked_mean(white, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert ppo.masked_mean(white ** 2, mask).item() == pytest.approx(1.0, abs=1e-5)
    assert white[0, 2] == 0 and white[1, 1] == 0
