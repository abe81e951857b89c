"""SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward"):
DPO without the reference model, on length-normalised log-probs, with a target margin.

DPO's implicit reward is beta * log pi(y|x)/pi_ref(y|x) (Rafailov et al. 2023, Eq. 5). SimPO changes
two things: the reward is the policy's average log-probability per token, beta * log pi(y|x) / |y|,
which needs no reference model and does not favour long responses; and Bradley-Terry is asked for a
margin gamma between the rewards:

    L_SimPO = -E log sigma( beta * log pi(y_w|x) / |y_w|  -  beta * log pi(y_l|x) / |y_l|  -  gamma
    )

Without a reference model nothing holds the policy near where it started but the learning rate and
the number of steps: the KL from pi_SFT is not part of the objective (the frontier measures it
anyway).

Worked example (beta = 2, gamma = 1): chosen log-prob -10 over 5 tokens, rejected -12 over 4:
    mean log-probs -2 and -3, rewards beta * mean = -4 and -6; the score 2 * (-2 - -3) - 1 = 1
    loss = -log sigma(1) = 0.3132617;  d loss / d(chosen log-prob) = -sigma(-1) * beta / 5 =
    -0.1075766
(tests/test_family.py asserts these numbers.)
Left out: SimPO's recommended learning-rate search (the frontier sweeps beta at gamma / beta fixed).
"""

import functools

import torch
import torch.nn.functional as F

import data
import dpo
from tensor_checks import check_coefficient, check_lengths, check_logps, check_positive, math_dtype


def simpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
               chosen_lengths: torch.Tensor, rejected_lengths: torch.Tensor, *, beta: float = 2.0,
               gamma: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair SimPO loss and its rewards.

    Args:
        policy_chosen_logps, policy_rejected_logps: (B,) float, log pi(y|x) summed over the response
            tokens.
        chosen_lengths, rejected_lengths: (B,) int or float, all > 0: the responses' token counts.
        beta: > 0, the scale of the reward; gamma: >= 0, the target margin between the rewards.
    Returns: losses (B,) float32 (float64 for float64 log-probs), differentiable w.r.t. the
    log-probs; chosen_rewards, rejected_rewards (B,) = beta * log pi / |y|, detached. Finite with
    finite gradients for any log-probs (logsigmoid never forms exp(+large)).
    """
    check_logps({"policy_chosen_logps": policy_chosen_logps,
                 "policy_rejected_logps": policy_rejected_logps})
    check_lengths("chosen_lengths", chosen_lengths, policy_chosen_logps)
    check_lengths("rejected_lengths", rejected_lengths, policy_chosen_logps)
    check_positive("beta", beta)
    check_coefficient("gamma", gamma)
    dtype = math_dtype(policy_chosen_logps)  # float32 (float64 for float64 inputs)
    # (B,) beta * mean log-prob
    chosen_rewards = beta * policy_chosen_logps.to(dtype) / chosen_lengths.to(dtype)
    rejected_rewards = beta * policy_rejected_logps.to(dtype) / rejected_lengths.to(dtype)  # (B,)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)  # (B,)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


def batch_loss(model, batch: dict, *, beta: float, gamma: float, impl: str = "auto",
               fused_linear: bool = False) -> tuple[torch.Tensor, dict]:
    """SimPO on one data.dpo_collate batch (B pairs): the loss summed over its pairs, and each
    pair's values for dpo.dpo_metrics (its logps/* are per-token means here, what the loss is
    defined on, as in TRL). No reference model."""
    # PairLogps, (B,) each
    policy = dpo.concatenated_logps(model, batch, impl=impl, fused_linear=fused_linear)
    losses, chosen_rewards, rejected_rewards = simpo_loss(policy.chosen, policy.rejected,
                                                          policy.chosen_tokens,
                                                          policy.rejected_tokens, beta=beta,
                                                          gamma=gamma)
    per_example = dict(losses=losses.detach(), chosen_rewards=chosen_rewards,
                       rejected_rewards=rejected_rewards,
                       # per-token means, as TRL
                       policy_chosen_logps=(policy.chosen / policy.chosen_tokens).detach(),
                       # logs them here
                       policy_rejected_logps=(policy.rejected / policy.rejected_tokens).detach())
    return losses.sum(), per_example


def objective(*, beta: float, gamma: float, pad_id: int, impl: str = "auto",
              fused_linear: bool = False) -> dpo.Objective:
    """SimPO as the loop trains it: batch_loss on data.dpo_collate batches (padded with `pad_id`),
    summed over pairs, logging dpo.dpo_metrics; no reference."""
    loss = functools.partial(batch_loss, beta=beta, gamma=gamma, impl=impl,
                             fused_linear=fused_linear)
    return dpo.Objective("simpo", loss, dpo.pairs_in,
                         lambda per_example: dpo.dpo_metrics(**per_example),
                         functools.partial(data.dpo_collate, pad_id=pad_id))
