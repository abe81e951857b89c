"""KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization"):
alignment from single completions marked desirable or undesirable, not pairs.

KTO keeps DPO's implicit reward r(x, y) = log pi(y|x) - log pi_ref(y|x) (Rafailov et al. 2023, Eq.
5, without beta) and compares it not with another response's but with a reference point z0, the
policy's KL from the reference, estimated on the batch without gradient and never below 0:

    loss(x, y) = desirable_weight   * (1 - sigma(beta * (r(x, y) - z0)))    for a desirable y
               = undesirable_weight * (1 - sigma(beta * (z0 - r(x, y))))    for an undesirable y

A desirable completion gains by rising above the reference point, an undesirable one by falling
below it, and each term saturates (KTO's value function is prospect theory's, concave in gains and
convex in losses). The estimate of z0 = KL(pi || pi_ref): the mean log-ratio of mismatched pairs,
each prompt with another example's completion (data.unpaired.kto_collate), computed by the trainer
without gradient and, under torchrun, over every process's examples. With imbalanced data the paper
sets the weights so that desirable_weight * n_D / (undesirable_weight * n_U) lies in [1, 4/3];
`balanced_weights` gives 1.

Worked example (beta = 0.1, kl = 2): a desirable completion with r = 12 and an undesirable one with
r = -8 both score beta * 10 = 1 beyond the reference point: each loss is 1 - sigma(1) = 0.2689414,
and d loss / d r is -beta * sigma(1) * sigma(-1) = -0.0196612 for the desirable one (+0.0196612 for
the other). With kl = -1 the reference point is 0. (tests/test_family.py asserts these numbers.)
Left out: KTO's sampling of the KL completions from a separate shuffled dataset (here: a fixed other
example's completion), and its use without an SFT stage.
"""

import functools

import torch

import data
import dpo
from plumbing import data_parallel
from tensor_checks import check_coefficient, check_logps, check_positive, math_dtype


def kto_loss(policy_logps: torch.Tensor, reference_logps: torch.Tensor, desirable: torch.Tensor, kl,
             *,
             beta: float = 0.1, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example KTO loss and the implicit rewards.

    Args:
        policy_logps, reference_logps: (B,) float, log pi(y|x) and log pi_ref(y|x) summed over the
            completion.
        desirable: (B,) bool, True for a desirable completion.
        kl: the batch's estimate of KL(pi || pi_ref), a float or a scalar tensor (detached here); z0
            = max(kl, 0).
        beta: > 0; desirable_weight, undesirable_weight: >= 0, finite.
    Returns: losses (B,) float32 (float64 for float64 log-probs), differentiable w.r.t.
    policy_logps; rewards (B,) = beta * r, detached.
    """
    check_logps({"policy_logps": policy_logps, "reference_logps": reference_logps})
    if not isinstance(desirable, torch.Tensor) or desirable.dtype != torch.bool \
            or desirable.shape != policy_logps.shape:
        raise TypeError(f"desirable must be a bool tensor of shape {tuple(policy_logps.shape)}, "
                        f"got {getattr(desirable, 'dtype', type(desirable).__name__)} "
                        f"{tuple(getattr(desirable, 'shape', ()))}")
    check_positive("beta", beta)
    check_coefficient("desirable_weight", desirable_weight)
    check_coefficient("undesirable_weight", undesirable_weight)
    dtype = math_dtype(policy_logps)  # float32 (float64 for float64 inputs)
    z0 = torch.as_tensor(kl, dtype=dtype, device=policy_logps.device).detach().clamp(min=0)  # ()
    r = policy_logps.to(dtype) - reference_logps.to(dtype)  # (B,) log pi / pi_ref
    losses = torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * (r - z0))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r))))  # (B,)
    return losses, (beta * r).detach()


def balanced_weights(n_desirable: int, n_undesirable: int) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight) with desirable_weight * n_D = undesirable_weight *
    n_U, the undesirable weight 1: the paper's recommendation for imbalanced data (a ratio in [1,
    4/3])."""
    if n_desirable < 1 or n_undesirable < 1:
        raise ValueError(f"KTO needs desirable and undesirable examples, got {n_desirable} and "
                         f"{n_undesirable}")
    return n_undesirable / n_desirable, 1.0


def batch_loss(model, batch: dict, reference, *, beta: float, desirable_weight: float,
               undesirable_weight: float, impl: str = "auto",
               fused_linear: bool = False) -> tuple[torch.Tensor,
                                                    dict]:
    """KTO on one data.unpaired.kto_collate batch (B examples, then their B mismatched rows): the
    loss summed over its examples, and each example's values for `metrics`.

    reference: pi_ref (reference.Reference): its logps(batch) gives the examples' and the mismatched
    rows' log-probs. The KL estimate is the mean log-ratio of the mismatched rows (no gradient); in
    training under torchrun it is the mean over every process's rows (an all-gather: every process
    trains in step), in evaluation, whose batches the processes take in turn, the batch's own."""
    B = batch["desirable"].shape[0]
    rows = {key: value[:B] for key, value in batch.items() if key in ("input_ids", "labels",
                                                                      "mask")}
    mismatched = {key: value[B:] for key, value in batch.items() if key in ("input_ids", "labels",
                                                                            "mask")}
    kernel = dict(impl=impl, fused_linear=fused_linear)
    # (B,)
    policy = dpo.sequence_logps(model, rows["input_ids"], rows["labels"], rows["mask"], **kernel)
    ref, ref_mismatched = reference.logps(batch)  # (B,), (B,)
    with torch.no_grad():
        kl_terms = dpo.sequence_logps(model, mismatched["input_ids"], mismatched["labels"],
                                      mismatched["mask"],
                                      **kernel) - ref_mismatched  # (B,)
        if model.training:
            kl_terms = data_parallel.all_gather_cat(kl_terms)
        kl = kl_terms.mean()
    losses, rewards = kto_loss(policy, ref, batch["desirable"], kl, beta=beta,
                               desirable_weight=desirable_weight,
                               undesirable_weight=undesirable_weight)
    per_example = {"losses": losses.detach(), "rewards": rewards,
                   "desirable": batch["desirable"].float(), "kl": kl.expand(B).float(),
                   "policy_logps": policy.detach()}  # (B,) each, float for all-gathers
    return losses.sum(), per_example


def metrics(per_example: dict) -> dict[str, float]:
    """Means over examples: loss, the KL estimate, and the rewards of the desirable and undesirable
    ones (`rewards/chosen`, `rewards/rejected` and their difference `rewards/margins`, named as
    DPO's)."""
    desirable, rewards = per_example["desirable"] > 0.5, per_example["rewards"]

    def mean(t):  # None for a batch with no example of one kind
        return t.float().mean().item() if t.numel() else None

    chosen, rejected = mean(rewards[desirable]), mean(rewards[~desirable])
    return {"loss": mean(per_example["losses"]), "kl": mean(per_example["kl"]),
            "rewards/chosen": chosen,
            "rewards/rejected": rejected,
            "rewards/margins": chosen - rejected if chosen is not None and rejected is not None
            else None,
            "logps/desirable": mean(per_example["policy_logps"][desirable]),
            "logps/undesirable": mean(per_example["policy_logps"][~desirable])}


def examples_in(batch: dict) -> int:
    """How many examples a data.kto_collate batch holds (its mismatched rows aside): what KTO's loss
    sums over."""
    return batch["desirable"].shape[0]


def objective(reference, *, beta: float, desirable_weight: float, undesirable_weight: float,
              pad_id: int,
              impl: str = "auto", fused_linear: bool = False) -> dpo.Objective:
    """KTO as the loop trains it: batch_loss against `reference` on data.kto_collate batches (padded
    with `pad_id`), summed over examples, logging `metrics`."""
    loss = functools.partial(batch_loss, reference=reference, beta=beta,
                             desirable_weight=desirable_weight,
                             undesirable_weight=undesirable_weight, impl=impl,
                             fused_linear=fused_linear)
    return dpo.Objective("kto", loss, examples_in, metrics,
                         functools.partial(data.kto_collate, pad_id=pad_id))
