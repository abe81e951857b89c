"""Next-token prediction: the loss of pre-training and of supervised fine-tuning (SFT), the paper's pi_SFT.

    loss = -(1/N) sum over the N target tokens of the step of log pi(y_t | x, y_<t)

Pre-training scores every position of a window of text; SFT scores the response tokens of prompt + response
(data.sft_collate's mask), never the prompt. The DPO paper starts from such a model, pi_SFT, and uses it as the
reference pi_ref. The loss is summed here and divided by the step's target tokens in the training loop, so
gradient accumulation gives the large-batch gradient.
"""

import torch

import dpo


def batch_loss(model, batch: dict, *, impl: str = "auto", fused_linear: bool = False) -> tuple[torch.Tensor, dict]:
    """The negative log-likelihood of the batch's target tokens, summed (a scalar float32 tensor), and no
    per-example values. batch: input_ids, labels (N, T) int64 and mask (N, T) bool, as data.sft_collate makes
    them; impl, fused_linear: as in dpo.sequence_logps."""
    logps = dpo.sequence_logps(model, batch["input_ids"], batch["labels"], batch["mask"], impl=impl,
                               fused_linear=fused_linear)  # (N,) float32
    return -logps.sum(), {}


def target_tokens(batch: dict) -> int:
    """How many tokens the batch's loss sums over: what a step's loss is averaged over."""
    return int(batch["mask"].sum())
