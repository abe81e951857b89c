"""The DPO loss family (with RPO's NLL term), the implicit rewards, the concatenated forward, DPO's
loss on a batch, and DPO's objective: what the training loop (loop.py) trains for.

Paper: Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a
Reward Model" (arXiv 2305.18290). This module implements its Eq. 7:

    L_DPO(pi; pi_ref) = -E_(x, y_w, y_l) [ log sigma( beta * log pi(y_w|x)/pi_ref(y_w|x)
                                                      - beta * log pi(y_l|x)/pi_ref(y_l|x) ) ]

Where it comes from, in four steps:
  1. RLHF maximises E[r(x, y)] - beta * KL(pi || pi_ref) (Eq. 3). Its optimal policy is
     pi_r(y|x) = pi_ref(y|x) * exp(r(x, y) / beta) / Z(x) (Eq. 4).
  2. Solve that for the reward: r(x, y) = beta * log pi_r(y|x)/pi_ref(y|x) + beta * log Z(x) (Eq.
     5). So every policy defines an implicit reward r_hat(x, y) = beta * log pi(y|x)/pi_ref(y|x).
  3. The Bradley-Terry model says p(y_w > y_l | x) = sigma(r(x, y_w) - r(x, y_l)) (Eq. 1). Only
     reward differences appear, so the intractable beta * log Z(x) cancels (Eq. 6).
  4. Maximum likelihood of the observed preferences under Bradley-Terry with the implicit reward is
     Eq. 7: a binary cross-entropy with label 1 on the score beta * h, where
         h = (log pi(y_w) - log pi(y_l)) - (log pi_ref(y_w) - log pi_ref(y_l)).
     In code (names as in the authors' trainers.py): pi_logratios = chosen - rejected under the
     policy,
     ref_logratios = the same under the reference, and h = pi_logratios - ref_logratios (their
     `logits`).

The gradient (section 4, "What does the DPO update do?") is
    grad L = -beta * E[ sigma(r_hat(y_l) - r_hat(y_w)) * (grad log pi(y_w) - grad log pi(y_l)) ],
i.e. each pair pushes y_w up and y_l down, weighted by how wrongly the implicit reward orders them:
|dL/dh| = beta * sigma(-beta * h). A pair the policy already ranks correctly by a wide margin stops
contributing, which is what keeps DPO from the degeneration of plain unlikelihood training.

Worked example (beta = 0.5; log-probs summed over the response tokens):
    policy   chosen -10, rejected -12  ->  pi_logratios  = 2
    reference chosen -11, rejected -11  ->  ref_logratios = 0     so h = 2 and beta * h = 1
    sigmoid loss = -log sigma(1) = log(1 + e^-1)           = 0.3132617
    rewards: chosen 0.5 * (-10 - -11) = 0.5, rejected 0.5 * (-12 - -11) = -0.5
    dL/d(policy chosen) = -beta * sigma(r_rejected - r_chosen) = -0.5 * sigma(-1) = -0.1344707
    cDPO, eps = 0.1: -0.9 log sigma(1) - 0.1 log sigma(-1) = 0.3132617 + 0.1 * 1 = 0.4132617
    IPO:   (2 - 1 / (2 * 0.5))^2 = 1;   hinge: relu(1 - 1) = 0
    robust, eps = 0.1: (-0.9 log sigma(1) + 0.1 log sigma(-1)) / 0.8 = 0.1882617
    RPO, rpo_alpha = 1, chosen over 5 tokens: 0.3132617 + 1 * -(-10 / 5) = 2.3132617,
         dL/d(policy chosen) = -0.1344707 - 1 / 5 = -0.3344707
(tests/test_dpo.py asserts every one of these numbers.)

Besides Eq. 7 ("sigmoid"), three well-known variants that only change the function of h:
  "sigmoid" + label_smoothing eps: conservative DPO (cDPO; Mitchell 2023), which assumes each label
            is flipped with probability eps: -(1-eps) log sigma(beta h) - eps log sigma(-beta h).
  "ipo":    Azar et al. 2023: (h - 1/(2 beta))^2. IPO is defined on LENGTH-NORMALISED log-probs: the
            caller passes per-token means (PairLogps.mean_per_token()), not sums.
  "hinge":  SLiC (Zhao et al. 2023): relu(1 - beta h).
  "robust": Chowdhury et al. 2024, an unbiased loss under label noise eps:
            (-(1-eps) log sigma(beta h) + eps log sigma(-beta h)) / (1 - 2 eps).
RPO (Pang et al. 2024, "Iterative Reasoning Preference Optimization"; TRL's rpo_alpha) adds to any
of them alpha * the per-token NLL of the chosen response. DPO only raises the chosen-minus-rejected
margin, and in practice both log-probs often fall, the chosen one too ("likelihood displacement",
Razin et al. 2024); the NLL term holds the chosen likelihood up. TRL averages that NLL over all
chosen tokens of the batch instead of per pair: the same when lengths are equal, else longer
responses weigh more there. Reference-free DPO is any loss above with zero reference log-probs:
ref_logratios = 0, so h = pi_logratios.

Left out: the reduction over the batch (dpo_loss returns per-pair losses; the training loop
averages), and the later variants that change more than the function of h (SimPO, ORPO, KTO: files
of their own).
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

import data
import logprob_kernels
from tensor_checks import check_coefficient, check_lengths, check_logps, check_positive

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")
SMOOTHED_LOSS_TYPES = ("sigmoid", "robust")  # the variants that model label noise (label_smoothing)


def _losses_from_margin(h: torch.Tensor, beta: float, loss_type: str, eps: float) -> torch.Tensor:
    """Per-pair loss as a function of the margin h (B,) float32 (argument checks: dpo_loss's)."""
    if loss_type == "sigmoid":  # Eq. 7; with eps > 0, cDPO
        return -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    if loss_type == "ipo":  # regress h onto 1/(2 beta)
        return (h - 1 / (2 * beta)) ** 2
    if loss_type == "hinge":  # SLiC
        return torch.relu(1 - beta * h)
    if loss_type == "robust":  # unbiased under label flips with probability eps
        return (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    rpo_alpha: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss (Eq. 7) or one of its variants, optionally plus RPO's NLL term, and the
    implicit rewards.

    Args:
        policy_chosen_logps, policy_rejected_logps: (B,) float, log pi(y_w|x) and log pi(y_l|x)
            summed over the response tokens (for loss_type="ipo": per-token MEANS, the IPO paper's
            length normalisation).
        reference_chosen_logps, reference_rejected_logps: (B,) float, the same under pi_ref; zeros
            give reference-free DPO. All four share one shape and dtype (fp32/bf16/fp16/fp64); the
            math runs in fp32.
        beta: > 0, the KL strength of Eq. 3 (IPO's tau). Smaller beta lets the policy drift further.
        loss_type: "sigmoid" (DPO, cDPO), "ipo", "hinge" or "robust" (see the module docstring).
        label_smoothing: eps in [0, 0.5), the assumed label-flip rate; only for "sigmoid" and
            "robust".
        rpo_alpha: finite, >= 0: the loss becomes loss + rpo_alpha * (-policy_chosen_logps /
            chosen_lengths) (RPO); its gradient adds -rpo_alpha / chosen_lengths to d loss / d
            policy_chosen_logps. 0: no term.
        chosen_lengths: (B,) int or float, all > 0: the chosen responses' token counts, so that
            policy_chosen_logps / chosen_lengths is a per-token mean (ones when it already is one,
            as for IPO). Required when rpo_alpha != 0; checked whenever given.

    Returns:
        losses (B,) float32, differentiable w.r.t. the policy log-probs (the caller takes the mean);
        chosen_rewards (B,) float32 = beta * (policy_chosen - reference_chosen), detached;
        rejected_rewards (B,) float32 = beta * (policy_rejected - reference_rejected), detached.
    Stable (finite loss and gradients) for |h| up to at least 1e6: logsigmoid never forms exp(+x).
    """
    _check_dpo_arguments(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                         reference_rejected_logps, beta, loss_type, label_smoothing, rpo_alpha,
                         chosen_lengths)
    pc, pr = policy_chosen_logps.float(), policy_rejected_logps.float()  # (B,) float32
    rc, rr = reference_chosen_logps.float(), reference_rejected_logps.float()  # (B,) float32

    pi_logratios = pc - pr  # (B,) log pi(y_w)/pi(y_l)
    ref_logratios = rc - rr  # (B,) log pi_ref(y_w)/pi_ref(y_l)
    h = pi_logratios - ref_logratios  # (B,) the margin; beta * h: Eq. 6-7's Bradley-Terry score
    losses = _losses_from_margin(h, beta, loss_type, label_smoothing)  # (B,)
    if rpo_alpha != 0:  # RPO: + alpha * per-token NLL of y_w
        losses = losses + rpo_alpha * (-pc / chosen_lengths.float())  # (B,)

    chosen_rewards = beta * (pc - rc).detach()  # (B,) r_hat(x, y_w), Eq. 5 without beta log Z(x)
    rejected_rewards = beta * (pr - rr).detach()  # (B,) r_hat(x, y_l)
    return losses, chosen_rewards, rejected_rewards


def dpo_metrics(
    losses: torch.Tensor,
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
) -> dict[str, float]:
    """Batch means of the numbers every DPO run logs, under the names DPO users know.

    Args: five (B,) float tensors, B >= 1: dpo_loss's three outputs and the policy log-probs it got.
    Returns: {"loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies" (fraction of pairs
    with chosen_reward strictly greater than rejected_reward), "rewards/margins" (mean chosen -
    rejected), "logps/chosen", "logps/rejected"}, all Python floats. For IPO the training loop
    passes per-token mean log-probs (what IPO is defined on), so its rewards/* and logps/* are
    per-token; TRL logs beta * summed log-ratios for the same loss. SimPO and ORPO
    (methods/simpo.py, methods/orpo.py) pass per-token means too, the quantities their losses use,
    which is what TRL logs under these names for them.
    """
    check_logps({"losses": losses, "chosen_rewards": chosen_rewards,
                 "rejected_rewards": rejected_rewards, "policy_chosen_logps": policy_chosen_logps,
                 "policy_rejected_logps": policy_rejected_logps},
                same_dtype=False)
    if losses.numel() == 0:
        raise ValueError("dpo_metrics needs at least one pair, got an empty batch")

    def mean(t: torch.Tensor) -> float:
        return t.detach().float().mean().item()

    return {
        "loss": mean(losses),
        "rewards/chosen": mean(chosen_rewards),
        "rewards/rejected": mean(rejected_rewards),
        "rewards/accuracies": mean(chosen_rewards > rejected_rewards),
        "rewards/margins": mean(chosen_rewards.float() - rejected_rewards.float()),
        "logps/chosen": mean(policy_chosen_logps),
        "logps/rejected": mean(policy_rejected_logps),
    }


# -----------------------------------------------------------------------------
# log pi(y|x) of a batch of pairs, and DPO's loss on a batch

class PairLogps(NamedTuple):
    """Per-sequence log-probs of a batch of preference pairs, as concatenated_logps returns them."""

    chosen: torch.Tensor  # (B,) float32, sum of log pi over the chosen response tokens
    rejected: torch.Tensor  # (B,) float32, the same for the rejected response
    chosen_tokens: torch.Tensor  # (B,) int64, number of chosen response tokens (incl. EOS)
    rejected_tokens: torch.Tensor  # (B,) int64, the same for the rejected response

    def mean_per_token(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) log-probs averaged over response tokens, (B,) float32 each (IPO's)."""
        return self.chosen / self.chosen_tokens, self.rejected / self.rejected_tokens


def sequence_logps(model, input_ids: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, *,
                   impl: str = "auto", fused_linear: bool = False) -> torch.Tensor:
    """log pi(y | x) of each row under `model`: the masked sum of its label tokens' log-probs.

    Args:
        model: a model.GPT (or lora.BaseModelView): maps input_ids (N, T) int64 to logits (N, T, V);
            with fused_linear it must also have hidden_states(input_ids) -> (N, T, d) and
            lm_head.weight (V, d).
        input_ids, labels (N, T) int64 (labels pre-shifted), mask (N, T) bool: as in
            data.dpo_collate.
        impl: "auto", "torch" or "triton" (logprob_kernels).
        fused_linear: compute the log-probs from the last hidden states and the LM head's weight
            with logprob_kernels.linear_sequence_logprobs, never materialising the (N, T, V) logits;
            under autocast both are cast to the autocast dtype first, as the lm_head matmul is.
    Returns (N,) float32.
    """
    if not fused_linear:
        # logits (N, T, V)
        return logprob_kernels.sequence_logprobs(model(input_ids), labels, mask, impl=impl)
    hidden, weight = model.hidden_states(input_ids), model.lm_head.weight  # (N, T, d), (V, d)
    device_type = hidden.device.type
    dtype = (torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type)
             else weight.dtype)
    return logprob_kernels.linear_sequence_logprobs(hidden.to(dtype), weight.to(dtype), labels,
                                                    mask, impl=impl)


def concatenated_logps(model: torch.nn.Module, batch: dict, *, impl: str = "auto",
                       fused_linear: bool = False) -> PairLogps:
    """Log-probs of the chosen and the rejected responses, from one forward pass over both.

    Args:
        model: maps input_ids (N, T) int64 to logits (N, T, V), e.g. model.GPT.
        batch: the dict of data.dpo_collate, with 2B rows: 0..B-1 prompt+chosen, B..2B-1
            prompt+rejected.
            input_ids (2B, T) int64, right-padded (causal attention needs no mask for right pads);
            labels (2B, T) int64, PRE-SHIFTED: labels[:, t] is the token after input_ids[:, t],
            -100 if none;
            mask (2B, T) bool, True exactly on response tokens.
        impl: passed to logprob_kernels.sequence_logprobs ("auto", "torch" or "triton").
        fused_linear: log-probs from hidden states without the logits (see sequence_logps).

    Returns: PairLogps with chosen/rejected (B,) float32 sums and chosen_tokens/rejected_tokens
    (B,) int64.

    One forward over 2B rows instead of two over B: every weight is read once, and batch-dependent
    layers (none in GPT-2) would see both halves together, as in the authors' code. Because the
    labels are already shifted, logits[:, t] scores labels[:, t] as they are: no slicing, no copy.
    """
    input_ids, labels, mask = batch["input_ids"], batch["labels"], batch["mask"]  # (2B, T) each
    # labels and mask: checked by logprob_kernels
    if input_ids.dim() != 2 or input_ids.shape[0] % 2:
        raise ValueError("batch['input_ids'] must be (2B, T), chosen rows then rejected rows: "
                         f"{input_ids.shape}")
    B = input_ids.shape[0] // 2

    # (2B,) fp32
    logps = sequence_logps(model, input_ids, labels, mask, impl=impl, fused_linear=fused_linear)
    tokens = mask.sum(-1, dtype=torch.int64)  # (2B,) response tokens per row
    return PairLogps(chosen=logps[:B], rejected=logps[B:], chosen_tokens=tokens[:B],
                     rejected_tokens=tokens[B:])


def batch_loss(model, batch: dict, reference, *, beta: float, loss_type: str = "sigmoid",
               label_smoothing: float = 0.0, rpo_alpha: float = 0.0, impl: str = "auto",
               fused_linear: bool = False) -> tuple[torch.Tensor, dict]:
    """DPO on one batch of pairs: the loss summed over its B pairs, and each pair's values for
    dpo_metrics.

    Args:
        model: the policy pi_theta (see concatenated_logps). batch: data.dpo_collate's dict (2B
            rows), with "ids" (B,) for a precomputed reference. reference: pi_ref, anything with
            logps(batch) -> (chosen (B,), rejected (B,)) (reference.Reference).
        beta, loss_type, label_smoothing, rpo_alpha: as in dpo_loss. impl, fused_linear: as in
            sequence_logps.
    Returns: (scalar float32 tensor, {"losses", "chosen_rewards", "rejected_rewards",
        "policy_chosen_logps", "policy_rejected_logps"}: (B,) detached tensors, dpo_metrics'
        arguments).
    """
    # PairLogps, (B,) each
    policy = concatenated_logps(model, batch, impl=impl, fused_linear=fused_linear)
    pi_chosen, pi_rejected, chosen_lengths = policy.chosen, policy.rejected, policy.chosen_tokens
    ref_chosen, ref_rejected = reference.logps(batch)  # (B,) each, constants of the loss
    if loss_type == "ipo":
        # IPO is defined on length-normalised log-probs (per-token means); so are its rewards/* and
        # logps/* metrics here, where TRL logs beta * summed log-ratios for the same loss
        pi_chosen, pi_rejected = policy.mean_per_token()  # (B,) each
        ref_chosen, ref_rejected = (ref_chosen / policy.chosen_tokens,
                                    ref_rejected / policy.rejected_tokens)
        # RPO's NLL: pi_chosen already is a per-token mean
        chosen_lengths = torch.ones_like(pi_chosen)
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta=beta, loss_type=loss_type,
        label_smoothing=label_smoothing, rpo_alpha=rpo_alpha, chosen_lengths=chosen_lengths)
    per_example = dict(losses=losses.detach(), chosen_rewards=chosen_rewards,
                       rejected_rewards=rejected_rewards,
                       policy_chosen_logps=pi_chosen.detach(),
                       policy_rejected_logps=pi_rejected.detach())  # (B,) each
    return losses.sum(), per_example


# -----------------------------------------------------------------------------
# What the training loop trains for

@dataclasses.dataclass
class Objective:
    """What the training loop (loop.train) trains for: a method's loss on a batch, what that loss
    sums over, its metrics and how to batch its examples. DPO's is `objective` below; each other
    method builds its own (methods/)."""

    name: str  # the command: "dpo", "sft", ... (written to config.json as "command")
    # (model, batch) -> (loss summed over the batch: scalar tensor, {name: (b,) values per example})
    loss: Callable
    # batch -> int: how many units (pairs, or target tokens) the batch's loss sums over
    size: Callable
    # {name: (n,) tensor} -> {name: float}: what a step or evaluation logs
    metrics: Callable = lambda per_example: {}
    # a list of examples -> batch; None: windows of a token stream (pre-training)
    collate: Callable | None = None


def pairs_in(batch: dict) -> int:
    """How many pairs a data.dpo_collate batch holds (two rows each): what a pair method's loss sums
    over."""
    return batch["input_ids"].shape[0] // 2


def objective(reference, *, beta: float, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
              rpo_alpha: float = 0.0, pad_id: int, impl: str = "auto",
              fused_linear: bool = False) -> Objective:
    """DPO as the loop trains it: batch_loss against `reference` (reference.Reference: pi_ref's
    log-probs) on data.dpo_collate batches padded with `pad_id`, summed over pairs (the loop divides
    by the pairs of a step: Eq. 7's mean), logging dpo_metrics. beta, loss_type, label_smoothing,
    rpo_alpha: as in dpo_loss; impl, fused_linear: as in sequence_logps."""
    loss = functools.partial(batch_loss, reference=reference, beta=beta, loss_type=loss_type,
                             label_smoothing=label_smoothing, rpo_alpha=rpo_alpha, impl=impl,
                             fused_linear=fused_linear)
    return Objective("dpo", loss, pairs_in, lambda per_example: dpo_metrics(**per_example),
                     functools.partial(data.dpo_collate, pad_id=pad_id))


def check_settings(beta: float, loss_type: str, label_smoothing: float, rpo_alpha: float) -> None:
    """dpo_loss's hyper-parameters, checked here once for every caller (dpo_loss, and the command
    line before any work: plumbing/config.py names the flag): TypeError/ValueError whose message
    starts with the argument."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    check_positive("beta", beta)
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if label_smoothing != 0.0 and loss_type not in SMOOTHED_LOSS_TYPES:
        raise ValueError(f"label_smoothing={label_smoothing} has no meaning for "
                         f"loss_type={loss_type!r}; it applies to {SMOOTHED_LOSS_TYPES}")
    check_coefficient("rpo_alpha", rpo_alpha)


def _check_dpo_arguments(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                         reference_rejected_logps, beta, loss_type, label_smoothing, rpo_alpha,
                         chosen_lengths):
    """dpo_loss's checks: TypeError/ValueError naming the argument at fault (tensors, then
    hyper-parameters)."""
    check_logps({"policy_chosen_logps": policy_chosen_logps,
                 "policy_rejected_logps": policy_rejected_logps,
                 "reference_chosen_logps": reference_chosen_logps,
                 "reference_rejected_logps": reference_rejected_logps})
    check_settings(beta, loss_type, label_smoothing, rpo_alpha)
    if chosen_lengths is not None:
        check_lengths("chosen_lengths", chosen_lengths, policy_chosen_logps)
    elif rpo_alpha != 0:
        raise ValueError(f"rpo_alpha={rpo_alpha} needs chosen_lengths, the (B,) token counts of "
                         "the chosen responses")
