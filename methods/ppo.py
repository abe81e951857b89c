"""PPO and RLOO for RLHF: the reinforcement learning that DPO replaces (Rafailov et al. 2023, Eq.
3).

RLHF's second stage maximises a learned reward under a KL penalty that keeps the policy near the
reference:

    max_pi  E_{x ~ D, y ~ pi(.|x)} [ r_phi(x, y) ] - beta * KL(pi(.|x) || pi_ref(.|x))
            (Eq. 3)

It cannot be done by gradient descent on a loss over a fixed dataset, as DPO's can: y is sampled
from the policy being trained, and r_phi is a black box. The standard recipe (Ziegler et al. 2019;
Stiennon et al. 2020; Ouyang et al. 2022) is PPO (Schulman et al. 2017) on the tokens of the
response, one action per token:

1. Rewards. The KL penalty is spread over the tokens with the sampled tokens' log-ratios, and the
   score of the whole response is paid at its last token (`token_rewards`):
       r_t = -kl_coef * (log pi(y_t | s_t) - log pi_ref(y_t | s_t))  +  [t = last] * r_phi(x, y)
   Summed over t: r_phi(x, y) - kl_coef * log pi(y|x)/pi_ref(y|x), a one-sample estimate of Eq. 3's
   objective.
2. Advantages. A value model V(s_t) estimates the return from each state; generalised advantage
   estimation (Schulman et al. 2016; `gae`) mixes its temporal differences delta_t = r_t + gamma
       V(s_t+1) - V(s_t):
       A_t = sum_l (gamma lam)^l delta_{t+l},   returns R_t = A_t + V(s_t)
   The advantages are whitened over the batch (`whiten`: mean 0, variance 1).
3. Updates. Several epochs of minibatches over the same rollouts, each bounded by the clipped ratio
   rho_t = pi(y_t|s_t) / pi_old(y_t|s_t) so that the policy cannot move far from the one that
       sampled them:
       policy loss = mean_t max(-A_t rho_t, -A_t clip(rho_t, 1 - eps, 1 + eps))
       (`policy_loss`)
       value loss  = mean_t 1/2 max((V - R_t)^2, (V_old + clip(V - V_old, -eps_v, eps_v) - R_t)^2)
                   (`value_loss`)
4. Optionally an adaptive KL coefficient (Ziegler et al. 2019; `AdaptiveKL`) that steers the
   measured KL toward a target.

The value model is a network of its own (reward_model.RewardModel read at every position),
initialised from the reward model as InstructGPT does, not a head on the policy's trunk: a shared
trunk saves memory, but the value loss then pulls on the policy's features and the two losses need a
weight tuned against each other. The cost of the separate model is part of what RLHF costs: PPO
holds four networks (policy, reference, reward model, value model) where DPO holds one or two.

RLOO (REINFORCE leave-one-out; Ahmadian et al. 2024) drops the value model: it samples k responses
per prompt, gives each the sequence-level reward R_i = r_phi(x, y_i) - kl_coef * log
pi(y_i|x)/pi_ref(y_i|x), and uses the mean of the other k - 1 as the baseline (`rloo_advantages`):
A_i = R_i - mean_{j != i} R_j. The loss is REINFORCE's, -mean_i A_i log pi(y_i|x), one gradient step
per batch of rollouts (it stays on-policy).

Shapes: B rollouts, T positions in the data.collate_responses layout (position t scores labels[:,
t]), `mask` (B, T) bool True on the response tokens. Masked positions may be holes inside a row:
they are skipped (a masked position has no reward, advantage or return, and the recursion of `gae`
jumps over it).

Worked example (one rollout of three response tokens, kl_coef = 0.1, score 1, gamma = 1, lam = 0.95,
    eps = 0.2):
    log pi = (-1, -2, -1), log pi_ref = (-1.5, -2, -0.5)  ->  log-ratios (0.5, 0, -0.5)
    token_rewards  = (-0.05, 0, 0.05 + 1) = (-0.05, 0, 1.05): they sum to 1 - 0.1 * 0 = 1
    values (0.5, 0.6, 0.7): deltas (0.05, 0.1, 0.35), advantages (0.460875, 0.4325, 0.35),
        returns (0.960875, 1.0325, 1.05)
    new log pi = old + (0.3, 0, -0.3): ratios (1.3498588, 1, 0.7408182), clipped (1.2, 1, 0.8), so
        policy_loss = -(0.460875 * 1.2 + 0.4325 * 1 + 0.35 * 0.7408182) / 3 = -0.4149454
    new values (0.6, 0.6, 1.0) from old (0.5, 0.6, 0.7): the clipped third value is 0.9, farther
        from its return (1.05) than 1.0 is, so value_loss = 1/2 mean((0.360875^2, 0.4325^2, 0.15^2))
        = 0.0566311
    rloo_advantages of scores (1, 2, 3) for one prompt: (1 - 2.5, 2 - 2, 3 - 1.5) = (-1.5, 0, 1.5)
(tests/test_ppo.py asserts every one of these numbers.)

Left out: PPO's entropy bonus, reward whitening and a reference-free KL estimator other than the
sampled log-ratio (k1); rollouts and updates are in methods/rlhf.py.
"""

import math

import torch

import data


def token_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                  mask: torch.Tensor,
                  kl_coef: float) -> torch.Tensor:
    """Per-token rewards (B, T) float32: -kl_coef * (logprobs - ref_logprobs) on the response
    tokens, plus the score (B,) of each rollout at its last response token; exactly 0 at masked
    positions (and in empty rows).

    logprobs, ref_logprobs: (B, T) float, the sampled tokens' log-probs under pi_old and pi_ref."""
    # (B, T) per-token log-ratio
    kl = torch.where(mask, logprobs.float() - ref_logprobs.float(), 0.0)
    rewards = -kl_coef * kl  # (B, T)
    last, nonempty = data.last_masked_position(mask), mask.any(dim=1)  # (B,) int64, (B,) bool
    rows = torch.arange(mask.shape[0], device=mask.device)
    # the score at the last response token
    rewards[rows, last] += torch.where(nonempty, scores.float(), 0.0)
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the response tokens of each row, from the last
    backwards:

        delta_t = r_t + gamma * V_next - V_t,   A_t = delta_t + gamma * lam * A_next

    where "next" is the next unmasked position of the row (V_next = A_next = 0 after the last one).
    Returns (advantages (B, T), returns = advantages + values (B, T)), float32, exactly 0 at masked
    positions."""
    B, T = rewards.shape
    rewards, values = rewards.float(), values.float()
    advantages = torch.zeros_like(rewards)  # (B, T)
    next_value = torch.zeros(B, device=rewards.device)  # (B,) V of the next unmasked position
    next_advantage = torch.zeros(B, device=rewards.device)  # (B,)
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        advantage = delta + gamma * lam * next_advantage  # (B,)
        keep = mask[:, t]  # (B,) a masked position changes nothing
        advantages[:, t] = torch.where(keep, advantage, 0.0)
        next_value = torch.where(keep, values[:, t], next_value)
        next_advantage = torch.where(keep, advantage, next_advantage)
    returns = torch.where(mask, advantages + values, 0.0)  # (B, T)
    return advantages, returns


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of `values` (B, T) over the True positions of `mask` (B, T): a scalar (0 when there
    are none)."""
    return torch.where(mask, values, 0.0).sum() / mask.sum().clamp(min=1)


def whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """`values` (B, T) shifted and scaled to mean 0 and variance 1 over the True positions of mask
    (all of the batch's together), 0 elsewhere: (values - mean) / sqrt(variance + eps), where the
    variance is the mean squared deviation from the mean (divided by n, not n - 1)."""
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    return torch.where(mask, (values - mean) / torch.sqrt(variance + eps), 0.0)


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor,
                clip: float) -> torch.Tensor:
    """PPO's clipped surrogate, averaged over the batch's response tokens (masked_mean): a scalar,
    differentiable w.r.t. logprobs.

    logprobs (B, T): the current policy's; old_logprobs, advantages (B, T): constants of the
    rollout."""
    ratio = torch.exp(logprobs.float() - old_logprobs.float())  # (B, T) pi / pi_old
    unclipped = -advantages * ratio  # (B, T)
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)  # (B, T)
    return masked_mean(torch.maximum(unclipped, clipped), mask)


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor,
               clip: float) -> torch.Tensor:
    """The clipped value loss, 1/2 max((V - R)^2, (V_clipped - R)^2) averaged over the batch's
    response tokens (masked_mean), where V_clipped = V_old + clip(V - V_old, -clip, clip): a scalar,
    differentiable w.r.t. values (B, T)."""
    values = values.float()
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)  # (B, T)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


def rloo_advantages(scores: torch.Tensor) -> torch.Tensor:
    """REINFORCE leave-one-out: each of the k samples of a prompt minus the mean of the other k - 1.

    scores (P, k) float, k >= 2 -> (P, k) float32; ValueError for any other shape."""
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError("scores must be (prompts, k) with k >= 2 samples per prompt, got "
                         f"{tuple(scores.shape)}")
    scores = scores.float()
    k = scores.shape[1]
    baseline = (scores.sum(dim=1, keepdim=True) - scores) / (k - 1)  # (P, k) the others' mean
    return scores - baseline


class AdaptiveKL:
    """Ziegler et al. (2019)'s controller of kl_coef: after each batch of n rollouts with measured
    KL,

        kl_coef *= 1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon

    A KL above target raises the penalty. The horizon counts rollouts, as in Ziegler et al. (their
    10,000): the coefficient moves by e-fold over about horizon / 0.2 rollouts of a consistent
    error. It must be at least the rollouts of one batch (n <= horizon), so that each multiplier
    lies in [0.8, 1.2]: with n > 5 x horizon it could go negative and turn the penalty into a bonus.
    The coefficient is capped at `max_coef`, so it stays finite and > 0 for any sequence of finite
    measurements."""

    def __init__(self, kl_coef: float, target: float, horizon: float, max_coef: float):
        for name, value in (("kl_coef", kl_coef), ("target", target), ("horizon", horizon),
                            ("max_coef", max_coef)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"AdaptiveKL: {name} must be finite and > 0, got {value}")
        if kl_coef > max_coef:
            raise ValueError("AdaptiveKL: kl_coef must be <= max_coef "
                             f"({max_coef:g}), got {kl_coef}")
        self.kl_coef, self.target, self.horizon, self.max_coef = kl_coef, target, horizon, max_coef

    def update(self, kl: float, n: int) -> float:
        """Move kl_coef after a batch of `n` rollouts (1 <= n <= horizon) whose mean KL was `kl`
        (finite); returns the new coefficient."""
        if not 1 <= n <= self.horizon:
            raise ValueError(f"AdaptiveKL: a batch of {n} rollouts needs 1 <= n <= horizon "
                             f"({self.horizon:g})")
        if not math.isfinite(kl):
            raise ValueError(f"the measured KL is {kl}: the policy diverged; try a lower --lr")
        error = min(max(kl / self.target - 1, -0.2), 0.2)
        self.kl_coef = min(self.kl_coef * (1 + error * n / self.horizon), self.max_coef)
        return self.kl_coef
