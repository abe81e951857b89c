"""Graded tests of Assignment 5: what DPO replaced, the reward model and PPO
(reward_model.bradley_terry_loss; ppo.token_rewards, ppo.gae, ppo.whiten, ppo.policy_loss,
ppo.value_loss and ppo.rloo_advantages).

Four kinds of evidence, none of which contains a solution: literal expected values written once
from the instructor's solution (course/fixtures/a5_rlhf.json; the inputs' masked positions hold
arbitrary values, which must not matter), properties that follow from the math (checked on inputs
hypothesis draws, with masks that have holes and empty rows), the worked example of methods/ppo.py's
docstring, and one end-to-end check: a tiny PPO-GT run, through methods/rlhf.py's own update, raises
the ground-truth reward. 36 points.

Nothing here needs another assignment: the end-to-end check builds its rollouts at one length (no
collate, A3's) and scores them with logprob_kernels/naive.py (not A2's backward).
"""

import contextlib
import copy
import json
import math
import os
import types

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import data
import sentiment
from logprob_kernels.naive import naive_token_logprobs
from methods import ppo, reward_model, rlhf
from model import GPT, GPTConfig
from plumbing.config import command_config
from plumbing.run_dir import make_optimizer
from sentiment.tokenizer import TOKENIZER_FILE

SETTINGS = settings(derandomize=True, deadline=None, max_examples=40, database=None)
FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures",
                        "a5_rlhf.json")


def cases(name):
    with open(FIXTURES) as f:
        return json.load(f)["cases"][name]


def close(actual, expected, tol=1e-5):
    """A float32 result against the fixture's numbers (also float32 results, written as floats)."""
    assert actual.dtype == torch.float32, f"expected float32, got {actual.dtype}"
    torch.testing.assert_close(actual.double(), torch.tensor(expected, dtype=torch.float64),
                               rtol=tol, atol=tol)


def leaf(values):
    return torch.tensor(values, dtype=torch.float32, requires_grad=True)


@st.composite
def masked(draw, max_rows=4, max_len=8):
    """(mask (B, T) bool, rows of any pattern: holes, empty rows, full rows; a seeded generator for
    the values)."""
    B, T = draw(st.integers(1, max_rows)), draw(st.integers(1, max_len))
    mask = torch.tensor(draw(st.lists(st.lists(st.booleans(), min_size=T, max_size=T), min_size=B,
                                      max_size=B)))
    return mask, torch.Generator().manual_seed(draw(st.integers(0, 2**16)))


def garbage_where_masked(values, mask, generator):
    """values with large arbitrary numbers at the masked positions: they must change nothing."""
    noise = 1000 * torch.randn(values.shape, generator=generator)
    return torch.where(mask, values, noise)


def positions(mask_row):
    """The unmasked positions of one row, in order."""
    return [t for t in range(len(mask_row)) if mask_row[t]]


# ------------------------------------------------------------------------------------------------
# The reward model: Bradley-Terry (methods/reward_model.py)

@pytest.mark.points(2)
def test_bradley_terry_matches_the_reference_values():
    """24 literal cases: the per-pair losses and the gradients of their sum with respect to both
    scores."""
    for case in cases("bradley_terry"):
        chosen, rejected = leaf(case["chosen_rewards"]), leaf(case["rejected_rewards"])
        losses = reward_model.bradley_terry_loss(chosen, rejected)
        assert losses.shape == chosen.shape
        close(losses, case["losses"])
        losses.sum().backward()
        close(chosen.grad, case["grad_chosen"])
        close(rejected.grad, case["grad_rejected"])


@pytest.mark.points(1)
def test_bradley_terry_is_finite_at_extreme_margins():
    """Margins of +-1e4 and +-1e30, in float32 and float64: a loss of about max(0, -margin), and a
    gradient -sigma(-margin) (-1 or 0), finite (-log(sigmoid(m)) gives inf for m = -1e4, NaN
    gradients)."""
    for dtype in (torch.float32, torch.float64):
        for margin in (1e4, -1e4, 1e30, -1e30):
            chosen = torch.tensor([margin / 2], dtype=dtype, requires_grad=True)
            rejected = torch.tensor([-margin / 2], dtype=dtype, requires_grad=True)
            loss = reward_model.bradley_terry_loss(chosen, rejected)
            loss.sum().backward()
            assert torch.isfinite(loss).all() and torch.isfinite(chosen.grad).all(), (dtype,
                                                                                      margin)
            assert loss.item() == pytest.approx(max(0.0, -margin), rel=1e-6), (dtype, margin)
            assert chosen.grad.item() == pytest.approx(-1.0 if margin < 0 else 0.0, abs=1e-6)
            assert rejected.grad.item() == pytest.approx(-chosen.grad.item(), abs=1e-6)


@pytest.mark.points(1)
@SETTINGS
@given(st.lists(st.tuples(st.floats(-50, 50), st.floats(-50, 50)), min_size=1, max_size=8),
       st.floats(-100, 100))
def test_bradley_terry_depends_on_the_margin_only(pairs, shift):
    """The worked example of the docstring (margin 1: 0.3132617, d/dr_w = -0.2689414); adding the
    same number to both scores changes nothing; and loss(m) - loss(-m) = -m (log sigma(m) - log
    sigma(-m) = m); float64 scores give float32 losses."""
    chosen = torch.tensor([1.5], requires_grad=True)
    loss = reward_model.bradley_terry_loss(chosen, torch.tensor([0.5]))
    loss.sum().backward()
    assert loss.item() == pytest.approx(0.3132617, abs=1e-6)
    assert chosen.grad.item() == pytest.approx(-0.2689414, abs=1e-6)
    c = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    r = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    losses = reward_model.bradley_terry_loss(c, r)
    assert losses.dtype == torch.float32
    torch.testing.assert_close(reward_model.bradley_terry_loss(c + shift, r + shift), losses,
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(losses - reward_model.bradley_terry_loss(r, c), (r - c).float(),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.points(1)
def test_bradley_terry_checks_its_arguments():
    """tensor_checks.check_logps: scores of different shapes, or not (B,), raise ValueError;
    integer scores or different dtypes raise TypeError."""
    with pytest.raises(ValueError):
        reward_model.bradley_terry_loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError):
        reward_model.bradley_terry_loss(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(TypeError):
        reward_model.bradley_terry_loss(torch.zeros(3, dtype=torch.int64), torch.zeros(3))
    with pytest.raises(TypeError):
        reward_model.bradley_terry_loss(torch.zeros(3), torch.zeros(3, dtype=torch.float64))


# ------------------------------------------------------------------------------------------------
# PPO's rewards, advantages and returns (methods/ppo.py)

@pytest.mark.points(2)
def test_token_rewards_match_the_reference_values():
    """24 literal cases: masks with holes and empty rows, arbitrary log-probs at masked positions,
    kl_coef from 0 to 0.5."""
    for case in cases("token_rewards"):
        mask = torch.tensor(case["mask"])
        rewards = ppo.token_rewards(torch.tensor(case["scores"]), torch.tensor(case["logprobs"]),
                                    torch.tensor(case["ref_logprobs"]), mask, case["kl_coef"])
        assert rewards.shape == mask.shape
        close(rewards, case["rewards"])


@pytest.mark.points(2)
@SETTINGS
@given(masked(), st.floats(0, 2), st.floats(-3, 3))
def test_token_rewards_sum_to_the_score_minus_the_kl_penalty(shape, kl_coef, score):
    """Each row's rewards sum to score - kl_coef * (the sum of its log-ratios), Eq. 3's objective
    for one sample; the score is paid at the row's last unmasked position only; masked positions
    and empty rows get exactly 0 (an empty row gets no score)."""
    mask, g = shape
    B, T = mask.shape
    logprobs, ref = -3 * torch.rand(B, T, generator=g), -3 * torch.rand(B, T, generator=g)
    scores = score + torch.randn(B, generator=g)
    rewards = ppo.token_rewards(scores, garbage_where_masked(logprobs, mask, g),
                                garbage_where_masked(ref, mask, g), mask, kl_coef)
    assert rewards.dtype == torch.float32 and rewards.shape == (B, T)
    assert torch.all(rewards[~mask] == 0), "exactly 0 at masked positions"
    penalty = -kl_coef * (logprobs - ref)  # (B, T)
    for b in range(B):
        kept = positions(mask[b].tolist())
        expected = (scores[b].item() if kept else 0.0) + sum(penalty[b, t].item() for t in kept)
        assert rewards[b].sum().item() == pytest.approx(expected, abs=1e-4), b
        for t in kept:  # without the KL penalty: the score at the last position, 0 before it
            paid = scores[b].item() if t == kept[-1] else 0.0
            assert rewards[b, t].item() - penalty[b, t].item() == pytest.approx(paid, abs=1e-5)


@pytest.mark.points(2)
def test_gae_matches_the_reference_values():
    """24 literal cases: gamma from 0.5 to 1, lambda from 0 to 1, masks with holes and empty
    rows."""
    for case in cases("gae"):
        mask = torch.tensor(case["mask"])
        advantages, returns = ppo.gae(torch.tensor(case["rewards"]), torch.tensor(case["values"]),
                                      mask, case["gamma"], case["lam"])
        assert advantages.shape == returns.shape == mask.shape
        close(advantages, case["advantages"])
        close(returns, case["returns"])


@pytest.mark.points(2)
@SETTINGS
@given(masked(), st.floats(0, 1), st.floats(0, 1))
def test_gae_is_the_backward_recursion(shape, gamma, lam):
    """At each unmasked position t, with t' the next unmasked position of its row (V and A taken as
    0 after the last): A_t = r_t + gamma V_t' - V_t + gamma lambda A_t'. Returns = advantages +
    values on unmasked positions; both exactly 0 on masked ones."""
    mask, g = shape
    B, T = mask.shape
    rewards, values = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    advantages, returns = ppo.gae(rewards, values, mask, gamma, lam)
    assert advantages.dtype == returns.dtype == torch.float32
    assert torch.all(advantages[~mask] == 0) and torch.all(returns[~mask] == 0)
    torch.testing.assert_close(returns[mask], (advantages + values)[mask], rtol=1e-5, atol=1e-5)
    for b in range(B):
        kept = positions(mask[b].tolist())
        for t, after in zip(kept, kept[1:] + [None]):
            next_value = values[b, after].item() if after is not None else 0.0
            next_advantage = advantages[b, after].item() if after is not None else 0.0
            expected = (rewards[b, t].item() + gamma * next_value - values[b, t].item()
                        + gamma * lam * next_advantage)
            assert advantages[b, t].item() == pytest.approx(expected, rel=1e-4, abs=1e-4), (b, t)


@pytest.mark.points(2)
@SETTINGS
@given(masked(), st.floats(0, 1), st.floats(0, 1))
def test_gae_skips_the_holes_of_the_mask(shape, gamma, lam):
    """A row with holes gives, on its unmasked positions, what the same row without the holes gives
    (the holes removed, not zeroed: a hole is not a step); rewards and values at masked positions
    change nothing."""
    mask, g = shape
    B, T = mask.shape
    rewards, values = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    advantages, returns = ppo.gae(garbage_where_masked(rewards, mask, g),
                                  garbage_where_masked(values, mask, g), mask, gamma, lam)
    for b in range(B):
        kept = positions(mask[b].tolist())
        if not kept:
            assert torch.all(advantages[b] == 0) and torch.all(returns[b] == 0), "an empty row"
            continue
        compact_mask = torch.ones(1, len(kept), dtype=torch.bool)
        compact = ppo.gae(rewards[b:b + 1, kept], values[b:b + 1, kept], compact_mask, gamma, lam)
        torch.testing.assert_close(advantages[b, kept], compact[0][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(returns[b, kept], compact[1][0], rtol=1e-5, atol=1e-5)


@pytest.mark.points(1)
def test_gae_at_the_ends_of_lambda():
    """lambda = 0: the one-step TD error r_t + gamma V_t+1 - V_t. gamma = lambda = 1: the returns
    are the sums of the rewards still to come, whatever the values (Monte Carlo)."""
    rewards = torch.tensor([[0.5, -1.0, 2.0, 0.25], [1.0, 0.0, -0.5, 3.0]])
    values = torch.tensor([[0.1, 0.2, -0.3, 0.4], [-1.0, 0.5, 0.5, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, False, True, True]])
    advantages, _ = ppo.gae(rewards, values, mask, gamma=0.9, lam=0.0)
    expected = torch.tensor([[0.5 + 0.9 * 0.2 - 0.1, -1.0 - 0.9 * 0.3 - 0.2, 2.0 + 0.3, 0.0],
                             [1.0 + 0.9 * 0.5 + 1.0, 0.0, -0.5 + 0.0 - 0.5, 3.0]])
    torch.testing.assert_close(advantages, expected)
    for values in (values, 10 * values - 1):
        _, returns = ppo.gae(rewards, values, mask, gamma=1.0, lam=1.0)
        torch.testing.assert_close(returns, torch.tensor([[1.5, 1.0, 2.0, 0.0],
                                                          [3.5, 0.0, 2.5, 3.0]]))


@pytest.mark.points(1)
def test_whiten_matches_the_reference_values():
    """16 literal cases: masks with holes and empty rows; the masked positions hold values far from
    the others (padding must not enter the mean or the variance)."""
    for case in cases("whiten"):
        whitened = ppo.whiten(torch.tensor(case["values"]), torch.tensor(case["mask"]))
        close(whitened, case["whitened"], tol=1e-4)


@pytest.mark.points(2)
@SETTINGS
@given(masked(), st.floats(0.01, 100), st.floats(-100, 100))
def test_whiten_uses_the_masked_positions_only(shape, scale, shift):
    """Over the True positions of the mask (all rows together): mean 0 and mean square 1 (the
    variance divided by n); exactly 0 elsewhere; values at masked positions change nothing; and
    shifting and scaling the values changes nothing."""
    mask, g = shape
    assume(mask.sum() >= 2)
    values = torch.randn(mask.shape, generator=g)
    whitened = ppo.whiten(garbage_where_masked(values, mask, g), mask)
    assert whitened.shape == mask.shape and torch.all(whitened[~mask] == 0)
    assert whitened[mask].mean().item() == pytest.approx(0.0, abs=1e-5)
    assert (whitened[mask] ** 2).mean().item() == pytest.approx(1.0, abs=1e-3)
    torch.testing.assert_close(ppo.whiten(values * scale + shift, mask), whitened, rtol=1e-3,
                               atol=1e-3)


# ------------------------------------------------------------------------------------------------
# PPO's losses (methods/ppo.py)

@pytest.mark.points(2)
def test_policy_loss_matches_the_reference_values():
    """24 literal cases, ratios clipped on both sides: the loss, and its gradient with respect to
    the current log-probs (exactly 0 at masked positions)."""
    for case in cases("policy_loss"):
        logprobs = leaf(case["logprobs"])
        loss = ppo.policy_loss(logprobs, torch.tensor(case["old_logprobs"]),
                               torch.tensor(case["advantages"]), torch.tensor(case["mask"]),
                               case["clip"])
        assert loss.dim() == 0
        close(loss, case["loss"])
        loss.backward()
        close(logprobs.grad, case["grad"])


@pytest.mark.points(2)
@SETTINGS
@given(masked(), st.floats(0.05, 0.5))
def test_policy_loss_has_no_gradient_where_the_ratio_is_clipped_on_the_side_of_the_advantage(
        shape, clip):
    """With rho = exp(log pi - log pi_old) and n response tokens: d loss / d log pi_t = 0 where the
    ratio is past the clip on the side the advantage pushes it to (A > 0 and rho > 1 + eps, or A < 0
    and rho < 1 - eps) and at masked positions; -A_t rho_t / n everywhere else. The loss is never
    below the unclipped surrogate's mean, and at rho = 1 it is -mean(A)."""
    mask, g = shape
    B, T = mask.shape
    old = -3 * torch.rand(B, T, generator=g)
    new = old + 0.5 * torch.randn(B, T, generator=g)
    advantages = torch.randn(B, T, generator=g)
    logprobs = new.clone().requires_grad_(True)
    loss = ppo.policy_loss(logprobs, old, advantages, mask, clip)
    loss.backward()
    n = max(int(mask.sum()), 1)
    ratio = torch.exp(new - old)
    past = ((advantages > 0) & (ratio > 1 + clip)) | ((advantages < 0) & (ratio < 1 - clip))
    expected = torch.where(mask & ~past, -advantages * ratio / n, 0.0)
    torch.testing.assert_close(logprobs.grad, expected, rtol=1e-4, atol=1e-6)
    unclipped = torch.where(mask, -advantages * ratio, 0.0).sum() / n
    assert loss.item() >= unclipped.item() - 1e-5
    at_one = ppo.policy_loss(old, old, advantages, mask, clip)
    assert at_one.item() == pytest.approx(-torch.where(mask, advantages, 0.0).sum().item() / n,
                                          abs=1e-5)


@pytest.mark.points(2)
def test_value_loss_matches_the_reference_values():
    """24 literal cases, the clipped term the larger one at about a third of the positions: the
    loss, and its gradient with respect to the values."""
    for case in cases("value_loss"):
        values = leaf(case["values"])
        loss = ppo.value_loss(values, torch.tensor(case["old_values"]),
                              torch.tensor(case["returns"]), torch.tensor(case["mask"]),
                              case["clip"])
        assert loss.dim() == 0
        close(loss, case["loss"])
        loss.backward()
        close(values.grad, case["grad"])


@pytest.mark.points(1)
@SETTINGS
@given(masked(), st.floats(0.05, 1.0))
def test_value_loss_is_the_pessimistic_one(shape, clip):
    """Never below 1/2 mean (V - R)^2, and equal to it where every value moved less than the clip;
    no gradient where the clipped value is the farther from its return (the update went past the
    clip), (V - R) / n elsewhere."""
    mask, g = shape
    B, T = mask.shape
    old, returns = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    new = old + 2 * clip * torch.randn(B, T, generator=g)
    values = new.clone().requires_grad_(True)
    loss = ppo.value_loss(values, old, returns, mask, clip)
    loss.backward()
    n = max(int(mask.sum()), 1)
    squared = torch.where(mask, (new - returns) ** 2, 0.0)
    assert loss.item() >= 0.5 * squared.sum().item() / n - 1e-5
    clipped = old + torch.clamp(new - old, -clip, clip)
    farther = (clipped - returns) ** 2 > (new - returns) ** 2
    expected = torch.where(mask & ~farther, (new - returns) / n, 0.0)
    torch.testing.assert_close(values.grad, expected, rtol=1e-4, atol=1e-6)
    near = old + clip * (2 * torch.rand(B, T, generator=g) - 1) * 0.99
    assert ppo.value_loss(near, old, returns, mask, clip).item() == pytest.approx(
        0.5 * torch.where(mask, (near - returns) ** 2, 0.0).sum().item() / n, rel=1e-4, abs=1e-6)


# ------------------------------------------------------------------------------------------------
# RLOO (methods/ppo.py)

@pytest.mark.points(1)
def test_rloo_advantages_match_the_reference_values():
    """16 literal cases of 1 to 4 prompts and k = 2 to 6 samples each."""
    for case in cases("rloo"):
        close(ppo.rloo_advantages(torch.tensor(case["scores"])), case["advantages"])


@pytest.mark.points(2)
@SETTINGS
@given(st.integers(1, 5), st.integers(2, 6), st.integers(0, 2**16))
def test_rloo_baseline_leaves_the_sample_out(prompts, k, seed):
    """Raising one sample's score by 1 raises its own advantage by exactly 1 (its baseline does not
    hold it), lowers each other sample's of the same prompt by 1/(k - 1), and leaves the other
    prompts alone; each prompt's advantages sum to 0; float64 in, float32 out; ValueError for k < 2
    or scores that are not (prompts, k)."""
    scores = torch.randn(prompts, k, generator=torch.Generator().manual_seed(seed),
                         dtype=torch.float64)
    advantages = ppo.rloo_advantages(scores)
    assert advantages.dtype == torch.float32 and advantages.shape == (prompts, k)
    torch.testing.assert_close(advantages.sum(dim=1), torch.zeros(prompts), rtol=0, atol=1e-5)
    for p in range(prompts):
        for i in range(k):
            raised = scores.clone()
            raised[p, i] += 1
            change = ppo.rloo_advantages(raised) - advantages
            expected = torch.zeros(prompts, k)
            expected[p] = -1 / (k - 1)
            expected[p, i] = 1.0
            torch.testing.assert_close(change, expected, rtol=0, atol=1e-5)
    for bad in (torch.zeros(3, 1), torch.zeros(4), torch.zeros(2, 3, 4)):
        with pytest.raises(ValueError):
            ppo.rloo_advantages(bad)


# ------------------------------------------------------------------------------------------------
# All together

@pytest.mark.points(1)
def test_worked_example():
    """The worked example of methods/ppo.py's docstring, every number of it."""
    mask = torch.ones(1, 3, dtype=torch.bool)
    old, ref = torch.tensor([[-1.0, -2, -1]]), torch.tensor([[-1.5, -2, -0.5]])
    rewards = ppo.token_rewards(torch.tensor([1.0]), old, ref, mask, kl_coef=0.1)
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.0, 1.05]]))
    values = torch.tensor([[0.5, 0.6, 0.7]])
    advantages, returns = ppo.gae(rewards, values, mask, gamma=1.0, lam=0.95)
    torch.testing.assert_close(advantages, torch.tensor([[0.460875, 0.4325, 0.35]]))
    torch.testing.assert_close(returns, torch.tensor([[0.960875, 1.0325, 1.05]]))
    new = old + torch.tensor([[0.3, 0.0, -0.3]])
    assert ppo.policy_loss(new, old, advantages, mask, clip=0.2).item() == pytest.approx(
        -0.4149454, abs=1e-6)
    assert ppo.value_loss(torch.tensor([[0.6, 0.6, 1.0]]), values, returns, mask,
                          clip=0.2).item() == pytest.approx(0.0566311, abs=1e-6)
    torch.testing.assert_close(ppo.rloo_advantages(torch.tensor([[1.0, 2.0, 3.0]])),
                               torch.tensor([[-1.5, 0.0, 1.5]]))


@pytest.mark.points(2)
def test_no_response_token_at_all():
    """A batch whose rows are all empty (every position masked) and one with a single empty row:
    rewards, advantages, returns and whitened values exactly 0 there, losses 0 with zero gradients
    when there is no token at all, nothing NaN."""
    g = torch.Generator().manual_seed(0)
    for mask in (torch.zeros(3, 5, dtype=torch.bool),
                 torch.tensor([[True, False, True, True, False], [False] * 5,
                               [False, True, True, True, True]])):
        empty = ~mask.any(dim=1)
        x = torch.randn(3, 5, generator=g)
        rewards = ppo.token_rewards(torch.ones(3), x, x - 1, mask, 0.1)
        advantages, returns = ppo.gae(x, x + 1, mask, 1.0, 0.95)
        whitened = ppo.whiten(x, mask)
        for name, out in (("token_rewards", rewards), ("advantages", advantages),
                          ("returns", returns), ("whiten", whitened)):
            assert torch.isfinite(out).all() and torch.all(out[empty] == 0), name
        logprobs, values = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        losses = (ppo.policy_loss(logprobs, x - 0.5, x, mask, 0.2),
                  ppo.value_loss(values, x - 0.5, x + 1, mask, 0.2))
        (losses[0] + losses[1]).backward()
        for grad in (logprobs.grad, values.grad):
            assert torch.isfinite(grad).all() and torch.all(grad[empty] == 0)
        if not mask.any():
            assert losses[0].item() == 0.0 and losses[1].item() == 0.0, "no token: a loss of 0"


# ------------------------------------------------------------------------------------------------
# End to end: PPO on the ground-truth reward (PPO-GT), through methods/rlhf.py's update

PROMPT_TOKENS, NEW_TOKENS = 8, 6  # every rollout: 8 prompt tokens, 6 sampled ones
PPO_GT = dict(iterations=10, prompts=16, k=4, lr=1e-2, kl_coef=0.05, seed=0)


def fixed_length_rollouts(model, tokenizer, prompt_ids, k, seed):
    """k completions of NEW_TOKENS tokens (no stop at EOS) of each prompt, in the layout
    data.collate_responses writes, which at one length needs no padding: input_ids (N, T), labels
    (N, T) the next token (-100 at the end), mask (N, T) True at the positions whose label is a
    response token. Returns (batch, the ground-truth reward of each completion (N,))."""
    prompts = [ids for ids in prompt_ids for _ in range(k)]
    model.eval()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        completions = model.complete(prompts, NEW_TOKENS)
    texts = [tokenizer.decode([t for t in ids if t != tokenizer.eot_token])
             for ids in completions]
    input_ids = torch.tensor([p + c for p, c in zip(prompts, completions)])  # (N, T)
    labels = torch.cat([input_ids[:, 1:], torch.full((len(prompts), 1), -100)], dim=1)  # (N, T)
    mask = torch.zeros(input_ids.shape, dtype=torch.bool)
    mask[:, PROMPT_TOKENS - 1:-1] = True  # (N, T)
    return ({"input_ids": input_ids, "labels": labels, "mask": mask},
            torch.tensor(sentiment.sentiment_reward(texts)))


@pytest.fixture
def one_thread():
    """Tiny matrices: one thread is the fastest (threads beside a busy process wait on each other),
    and gives the same run on a machine of any number of cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.points(4)
def test_ppo_on_the_ground_truth_raises_it(monkeypatch, one_thread):
    """A fresh one-layer GPT on the sentiment task's vocabulary, 16 of its training prompts: 10
    iterations of 64 rollouts of 6 tokens, scored by the ground truth (VADER), each followed by
    methods/rlhf.py's ppo_update (your token_rewards, gae, whiten, policy_loss, value_loss; 4 epochs
    of 4 minibatches, clip 0.2, kl_coef 0.05, AdamW at 1e-2). The mean ground-truth reward of 128
    fresh samples starts near 0 (a random policy rarely writes a sentiment word) and must rise by at
    least 0.3; every loss finite. The solution: +0.013 to +0.593 in 2 to 4 s; a rise of 0.58 to 0.70
    with seeds 0 to 7 (8 iterations: 0.44 to 0.59; 6: 0.18 to 0.43)."""
    tokenizer = data.get_tokenizer(TOKENIZER_FILE)
    train_prompts, _ = sentiment.make_prompts(seed=0)
    prompt_ids = [ids for ids in map(tokenizer.encode_ordinary, train_prompts)
                  if len(ids) == PROMPT_TOKENS][:PPO_GT["prompts"]]
    torch.manual_seed(PPO_GT["seed"])
    policy = GPT(GPTConfig(block_size=PROMPT_TOKENS + NEW_TOKENS, vocab_size=tokenizer.n_vocab,
                           n_layer=1, n_head=2, n_embd=32))
    reference = copy.deepcopy(policy).requires_grad_(False).eval()
    value_model = reward_model.RewardModel(copy.deepcopy(policy))  # PPO-GT's, as rlhf.train_rl's
    cfg = command_config("ppo", ground_truth_reward=True, batch_size=PPO_GT["prompts"],
                         samples_per_prompt=PPO_GT["k"], lr=PPO_GT["lr"], value_lr=PPO_GT["lr"],
                         kl_coef=PPO_GT["kl_coef"], seed=PPO_GT["seed"])
    run = types.SimpleNamespace(cfg=cfg, model=policy, optimizer=make_optimizer(policy, cfg),
                                autocast=contextlib.nullcontext, step=0)
    value_optimizer = torch.optim.AdamW(value_model.parameters(), lr=cfg.value_lr,
                                        betas=(0.9, 0.95))
    # log pi from the naive log-softmax-and-gather, with autograd's backward (not A2's)
    monkeypatch.setattr(rlhf, "rollout_logprobs", lambda model, batch, impl="auto":
                        naive_token_logprobs(model(batch["input_ids"]), batch["labels"],
                                             batch["mask"]))

    def mean_reward(model):
        return fixed_length_rollouts(model, tokenizer, prompt_ids, 8, seed=12345)[1].mean().item()

    before = mean_reward(policy)
    for iteration in range(PPO_GT["iterations"]):
        batch, truth = fixed_length_rollouts(policy, tokenizer, prompt_ids, PPO_GT["k"],
                                             seed=1000 + iteration)
        with torch.no_grad():
            old, ref = rlhf.rollout_logprobs(policy, batch), rlhf.rollout_logprobs(reference, batch)
        run.step = iteration
        losses = rlhf.ppo_update(run, value_model, value_optimizer,
                                 rlhf.Rollouts(batch, truth, truth, old, ref), cfg.kl_coef)
        assert all(math.isfinite(value) for value in losses.values()), (iteration, losses)
    after = mean_reward(policy)
    assert after > before + 0.3, (f"the ground-truth reward went from {before:+.3f} to "
                                  f"{after:+.3f}; expected a rise of at least 0.3")
