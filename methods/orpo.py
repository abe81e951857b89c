"""ORPO (Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model"):
supervised fine-tuning and preference optimisation in one loss, from the base model, with no
reference model.

With a = log pi(y|x) / |y| the per-token mean log-probability of a response (so that e^a is its
per-token probability, ORPO's length-normalised P(y|x)) and odds(y) = e^a / (1 - e^a):

    L_ORPO = -a_w  -  beta * log sigma( log odds(y_w) - log odds(y_l) ),   log odds(y) = a - log(1 -
                   e^a)

The first term is SFT's loss on the chosen response (which is why ORPO needs no separate SFT stage);
the second raises the odds ratio of chosen over rejected. beta is the paper's lambda. There is no
reference model, so nothing but the SFT term holds the policy near where it started. log(1 - e^a) is
computed as log1mexp, stable from a = -1e-7 (a response the model is sure of) to a = -100; a is
capped at -1e-7 first, since a = 0 exactly (float32 can round there) would make it -inf.

Worked example (beta = 0.1): chosen log-prob log(1/8) over 3 tokens, rejected log(1/16) over 2:
    a_w = log(1/2) = -0.6931472, odds 1, log odds 0;  a_l = log(1/4), odds 1/3, log odds -log 3 =
    -1.0986123
    loss = 0.6931472 - 0.1 * log sigma(log 3) = 0.6931472 - 0.1 * log(3/4) = 0.7219154
(tests/test_family.py asserts these numbers.)
Left out: ORPO's recommendation to train on the base model's instruction data (the frontier starts
from the same base as every method).
"""

import functools
import math

import torch
import torch.nn.functional as F

import data
import dpo
from tensor_checks import check_lengths, check_logps, check_positive, math_dtype

# a per-token mean log-prob is capped here: log(1 - e^a) stays finite (about -16.1)
MEAN_LOGP_CAP = -1e-7


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - e^x) for x < 0, accurate at both ends: log(-expm1(x)) near 0, log1p(-exp(x)) far
    below."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def log_odds(mean_logps: torch.Tensor) -> torch.Tensor:
    """log odds(y) = a - log(1 - e^a) of per-token mean log-probs a (B,), capped at
    MEAN_LOGP_CAP."""
    a = mean_logps.clamp(max=MEAN_LOGP_CAP)
    return a - log1mexp(a)


def orpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
              chosen_lengths: torch.Tensor, rejected_lengths: torch.Tensor, *,
              beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair ORPO loss: the chosen response's per-token NLL plus beta times the odds-ratio loss.

    Args:
        policy_chosen_logps, policy_rejected_logps: (B,) float, log pi(y|x) summed over the response
            tokens.
        chosen_lengths, rejected_lengths: (B,) int or float, all > 0: the responses' token counts.
        beta: > 0, the weight of the odds-ratio term (the paper's lambda).
    Returns: losses (B,) float32 (float64 for float64 log-probs), differentiable w.r.t. the
    log-probs; chosen_rewards, rejected_rewards (B,) = beta * a (TRL's convention for ORPO's
    rewards), detached.
    """
    check_logps({"policy_chosen_logps": policy_chosen_logps,
                 "policy_rejected_logps": policy_rejected_logps})
    check_lengths("chosen_lengths", chosen_lengths, policy_chosen_logps)
    check_lengths("rejected_lengths", rejected_lengths, policy_chosen_logps)
    check_positive("beta", beta)
    dtype = math_dtype(policy_chosen_logps)  # float32 (float64 for float64 inputs)
    chosen = policy_chosen_logps.to(dtype) / chosen_lengths.to(dtype)  # (B,) a_w
    rejected = policy_rejected_logps.to(dtype) / rejected_lengths.to(dtype)  # (B,) a_l
    odds_ratio = F.logsigmoid(log_odds(chosen) - log_odds(rejected))  # (B,)
    losses = -chosen - beta * odds_ratio  # (B,)
    return losses, (beta * chosen).detach(), (beta * rejected).detach()


def batch_loss(model, batch: dict, *, beta: float, impl: str = "auto",
               fused_linear: bool = False) -> tuple[torch.Tensor, dict]:
    """ORPO on one data.dpo_collate batch (B pairs): the loss summed over its pairs, and each pair's
    values for dpo.dpo_metrics (its logps/* are per-token means here, what the loss is defined on,
    as in TRL). No reference model."""
    # PairLogps, (B,) each
    policy = dpo.concatenated_logps(model, batch, impl=impl, fused_linear=fused_linear)
    losses, chosen_rewards, rejected_rewards = orpo_loss(policy.chosen, policy.rejected,
                                                         policy.chosen_tokens,
                                                         policy.rejected_tokens, beta=beta)
    per_example = dict(losses=losses.detach(), chosen_rewards=chosen_rewards,
                       rejected_rewards=rejected_rewards,
                       # per-token means, as TRL
                       policy_chosen_logps=(policy.chosen / policy.chosen_tokens).detach(),
                       # logs them here
                       policy_rejected_logps=(policy.rejected / policy.rejected_tokens).detach())
    return losses.sum(), per_example


def objective(*, beta: float, pad_id: int, impl: str = "auto",
              fused_linear: bool = False) -> dpo.Objective:
    """ORPO as the loop trains it: batch_loss on data.dpo_collate batches (padded with `pad_id`),
    summed over pairs, logging dpo.dpo_metrics; no reference."""
    loss = functools.partial(batch_loss, beta=beta, impl=impl, fused_linear=fused_linear)
    return dpo.Objective("orpo", loss, dpo.pairs_in,
                         lambda per_example: dpo.dpo_metrics(**per_example),
                         functools.partial(data.dpo_collate, pad_id=pad_id))
