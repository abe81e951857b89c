"""Next-token prediction: the loss of pre-training and of supervised fine-tuning (SFT), the paper's
pi_SFT.

    loss = -(1/N) sum over the N target tokens of the step of log pi(y_t | x, y_<t)

Pre-training scores every position of a window of text; SFT scores the response tokens of prompt +
response (data.sft_collate's mask), never the prompt. The DPO paper starts from such a model,
pi_SFT, and uses it as the reference pi_ref. The loss is summed here and divided by the step's
target tokens in the training loop, so gradient accumulation gives the large-batch gradient.
"""

import functools

import torch

import data
import dpo


def batch_loss(model, batch: dict, *, impl: str = "auto",
               fused_linear: bool = False) -> tuple[torch.Tensor, dict]:
    """The negative log-likelihood of the batch's target tokens, summed (a scalar float32 tensor),
    and no per-example values. batch: input_ids, labels (N, T) int64 and mask (N, T) bool, as
    data.sft_collate makes them; impl, fused_linear: as in dpo.sequence_logps."""
    logps = dpo.sequence_logps(model, batch["input_ids"], batch["labels"], batch["mask"], impl=impl,
                               fused_linear=fused_linear)  # (N,) float32
    return -logps.sum(), {}


def target_tokens(batch: dict) -> int:
    """How many tokens the batch's loss sums over: what a step's loss is averaged over."""
    return int(batch["mask"].sum())


def objective(command: str, *, pad_id: int, impl: str = "auto",
              fused_linear: bool = False) -> dpo.Objective:
    """Next-token prediction as the loop trains it: "pretrain" on windows of a token stream (no
    collate), "sft" on data.sft_collate batches of prompt + chosen padded with `pad_id`; averaged
    over the step's target tokens."""
    collate = functools.partial(data.sft_collate, pad_id=pad_id) if command == "sft" else None
    return dpo.Objective(command,
                         functools.partial(batch_loss, impl=impl, fused_linear=fused_linear),
                         target_tokens,
                         collate=collate)
