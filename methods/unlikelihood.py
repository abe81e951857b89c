"""The Unlikelihood baseline of the DPO paper (section 6; Welleck et al. 2019): raise log pi(y_w),
push down the probability of every token of y_l, with no reference model.

    loss = -log pi(y_w|x) / |y_w|  -  alpha / |y_l| * sum_t log(1 - pi(y_l,t | x, y_l,<t))

It trains from the command line as `train.py unlikelihood`, on the same pairs as DPO, and it
degenerates (the paper's Appendix C.3): see unlikelihood_loss.
"""

import functools
import math

import torch

import data
import dpo
import logprob_kernels
from tensor_checks import check_coefficient, check_lengths, check_logps

# log p of a rejected token is clamped to <= this: -log(1 - p) <= 13.8155
UNLIKELIHOOD_CLAMP = -1e-6


def unlikelihood_loss(
    chosen_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_token_logps: torch.Tensor,
    rejected_mask: torch.Tensor,
    *,
    alpha: float = 1.0,
) -> torch.Tensor:
    """Per-pair loss of the Unlikelihood baseline of the DPO paper (section 6; Welleck et al. 2019).

    "Unlikelihood simply optimizes the policy to maximize the probability assigned to y_w and
    minimize the probability assigned to y_l; we use an optional coefficient alpha in [0, 1] on the
    unlikelihood term":

        loss_i = -log pi(y_w,i) / |y_w,i|  -  alpha / |y_l,i| * sum_t mask_it * log(1 - pi(y_l,i,t))

    the per-token NLL of the chosen response plus alpha times the per-token mean unlikelihood of the
    rejected one, where pi(y_l,i,t) = p = exp(x_t) is the probability of its t-th token and |y_l,i|
    its length.

    Each -log(1 - p) >= 0 is bounded below (unlike minimising log pi(y_l), which runs to -inf) and
    self-limiting: d/dx_t = alpha / |y_l| * p / (1 - p) pushes p toward 0 and vanishes there. But it
    acts on every token of y_l separately, with no reference model and no comparison with y_w:
    tokens y_l shares with good text (grammar, common words) are pushed down as hard as the bad
    ones, and nothing anchors the rest of the distribution. So it degenerates; the paper's Appendix
    C.3 (Table 3) finds it "fails to generate meaningful responses" for summarization and dialogue,
    where DPO's per-pair weight sigma(r_hat(y_l) - r_hat(y_w)) and its reference model avoid that.

    log(1 - e^x) for x <= 0 is computed as log1mexp: log(-expm1(x)) for x > -log 2, else
    log1p(-exp(x)), accurate at both ends. x is first clamped to <= UNLIKELIHOOD_CLAMP = -1e-6: a
    token with p = 1 exactly (x = 0, which float32 log_softmax does return for a dominant logit)
    would give -log(0) = inf. Clamped, it costs at most -log(1 - e^-1e-6) = 13.8155 and, as past any
    torch.clamp (and as in Welleck et al.'s code, which clamps 1 - p at 1e-5), has zero gradient:
    the gradient just inside is already ~1e6 / |y_l|. Values > 0 (not log-probs) are clamped alike.

    Args:
        chosen_logps: (B,) float, log pi(y_w|x) summed over the chosen response tokens.
        chosen_lengths: (B,) int or float, all > 0, |y_w|, the number of chosen response tokens.
        rejected_token_logps: (B, T) float, log pi of each rejected response token, as
            logprob_kernels.token_logprobs returns them (fp32, 0 at masked positions); masked
            positions may hold anything, even NaN.
        rejected_mask: (B, T) bool, True on the rejected response tokens; at least one per row.
        alpha: in [0, 1], the weight of the unlikelihood term; 0 leaves the chosen NLL (SFT on y_w).

    Returns: losses (B,) float32 (the math runs in float32), differentiable w.r.t. both log-prob
    inputs; masked positions contribute exactly 0 and get exactly 0 gradient.

    Worked example (alpha = 1): chosen log-prob -2 over 4 tokens; two rejected tokens with p = 0.5,
        0.25:
        NLL of y_w = 2 / 4 = 0.5;  unlikelihood = -(log 0.5 + log 0.75) / 2 = -log(0.375) / 2 =
        0.4904146
        loss = 0.9904146;  d loss / d x = (0.5 / 0.5, 0.25 / 0.75) / 2 = (0.5, 0.1666667);  d / d
                           chosen = -0.25
    (tests/test_dpo.py asserts these numbers.)
    """
    _check_unlikelihood_arguments(chosen_logps, chosen_lengths, rejected_token_logps, rejected_mask,
                                  alpha)
    rejected_lengths = rejected_mask.sum(-1)  # (B,) int64, |y_l|
    nll = -chosen_logps.float() / chosen_lengths.float()  # (B,) per-token NLL of y_w
    # (B, T) masked: a harmless constant
    x = rejected_token_logps.float().masked_fill(~rejected_mask, -1.0)
    x = x.clamp(max=UNLIKELIHOOD_CLAMP)  # p <= 1 - 1e-6: finite log(1 - p)
    # (B, T)
    log1mp = torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))
    # (B, T) exactly 0, and 0 gradient, off the mask
    log1mp = torch.where(rejected_mask, log1mp, 0.0)
    unlikelihood = -log1mp.sum(-1) / rejected_lengths  # (B,) per-token mean of -log(1 - p) over y_l
    return nll + alpha * unlikelihood  # (B,)


def batch_loss(model, batch: dict, *, alpha: float = 1.0,
               impl: str = "auto") -> tuple[torch.Tensor, dict]:
    """Unlikelihood on one batch of pairs (data.dpo_collate: b chosen rows, then b rejected rows):
    the loss summed over its pairs, and per pair {"loss", "logps/chosen", "logps/rejected"} ((b,)
    each, detached)."""
    logits = model(batch["input_ids"])  # (2b, T, V)
    # (2b, T) fp32
    token_logps = logprob_kernels.token_logprobs(logits, batch["labels"], batch["mask"], impl=impl)
    b = token_logps.shape[0] // 2
    # (b,), (b,)
    chosen_logps, chosen_tokens = token_logps[:b].sum(dim=1), batch["mask"][:b].sum(dim=1)
    losses = unlikelihood_loss(chosen_logps, chosen_tokens, token_logps[b:], batch["mask"][b:],
                               alpha=alpha)  # (b,)
    per_example = {"loss": losses.detach(), "logps/chosen": chosen_logps.detach(),
                   "logps/rejected": token_logps[b:].detach().sum(dim=1)}  # (b,) each
    return losses.sum(), per_example


def metrics(per_example: dict) -> dict[str, float]:
    """The means of batch_loss's per-pair values ({name: (n,) tensor})."""
    return {name: value.float().mean().item() for name, value in per_example.items()}


def _check_unlikelihood_arguments(chosen_logps, chosen_lengths, rejected_token_logps, rejected_mask,
                                  alpha):
    """unlikelihood_loss's checks: a TypeError/ValueError naming the argument at fault."""
    check_logps({"chosen_logps": chosen_logps})
    check_lengths("chosen_lengths", chosen_lengths, chosen_logps)
    check_coefficient("alpha", alpha, high=1.0)
    B = chosen_logps.shape[0]
    for name, t in (("rejected_token_logps", rejected_token_logps),
                    ("rejected_mask", rejected_mask)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (B, T), got "
                            f"{type(t).__name__}")
        if t.dim() != 2 or t.shape[0] != B:
            raise ValueError(f"{name} must have shape (B, T) with B = {B}, got {tuple(t.shape)}")
        if t.device != chosen_logps.device:
            raise ValueError(f"{name} is on {t.device} but chosen_logps is on "
                             f"{chosen_logps.device}")
    if not rejected_token_logps.is_floating_point():
        raise TypeError("rejected_token_logps must be a floating-point tensor, got dtype "
                        f"{rejected_token_logps.dtype}")
    if rejected_mask.dtype != torch.bool:
        raise TypeError(f"rejected_mask must be a bool tensor, got dtype {rejected_mask.dtype}")
    if rejected_mask.shape != rejected_token_logps.shape:
        raise ValueError(f"rejected_mask has shape {tuple(rejected_mask.shape)} "
                         f"but rejected_token_logps has {tuple(rejected_token_logps.shape)}")
    rejected_lengths = rejected_mask.sum(-1)  # (B,) int64, |y_l|
    if not bool((rejected_lengths > 0).all()):
        raise ValueError(f"every row of rejected_mask needs a True (a rejected token); rows "
                         f"{(rejected_lengths == 0).nonzero().flatten().tolist()} have none")


def objective(*, alpha: float, pad_id: int, impl: str = "auto") -> dpo.Objective:
    """Unlikelihood as the loop trains it: batch_loss on data.dpo_collate batches (padded with
    `pad_id`), summed over pairs, logging `metrics`."""
    return dpo.Objective("unlikelihood", functools.partial(batch_loss, alpha=alpha, impl=impl),
                         dpo.pairs_in,
                         metrics, functools.partial(data.dpo_collate, pad_id=pad_id))
