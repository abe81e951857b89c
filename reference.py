"""The reference model pi_ref of DPO (Rafailov et al. 2023, Eq. 7): log pi_ref(y_w|x) and log
pi_ref(y_l|x).

DPO keeps the policy close to a frozen reference: the loss compares the policy's log-ratio of chosen
to rejected with the reference's. The reference never changes, so its log-probs are constants of the
loss, and a `Reference` is whatever returns them for a batch of pairs:

    reference.logps(batch) -> (chosen (B,), rejected (B,))      float32, no gradient

Three ways to build one, all giving the same numbers (the tests check that they give the same
losses):

    Reference.frozen(model)          a frozen model (a copy of the starting point), run on every
                                     batch
    Reference.adapters_off(policy)   with LoRA: the policy itself with its adapters switched off (no
                                     copy)
    Reference.precomputed(...)       one of those run once over every pair before training, then
                                     dropped: a table of two numbers per pair (`--reference
                                     precompute`, the default)

A precomputed table is read by the batch's pair ids (`batch["ids"]`, see loop.example_batch):
training pairs have the ids 0..N-1 and held-out pairs N, N+1, ..., so one table serves training and
evaluation alike. Whatever its form, the reference runs under the policy's autocast: at step 0
(policy == reference) every implicit reward is 0 and the loss is log 2.
"""

import torch
from tqdm.auto import tqdm

import dpo
from plumbing import data_parallel, lora

# --reference: a table computed before training, or the frozen model every step
MODES = ("precompute", "live")


class Reference:
    """pi_ref of DPO: `logps(batch)` gives log pi_ref of the batch's chosen and rejected responses.

    Build one with Reference.frozen, Reference.adapters_off or Reference.precomputed (see the module
    docstring).
    """

    def __init__(self, model=None, table=None, impl="auto", fused_linear=False):
        self.model = model  # a network to run on every batch (GPT or lora.BaseModelView), or None
        self.table = table  # (n_pairs, 2) float32 log-probs on the CPU, or None
        self.impl, self.fused_linear = impl, fused_linear

    @classmethod
    def frozen(cls, model, impl="auto", fused_linear=False):
        """A model that no longer trains (no gradients, eval mode: no dropout), run on every
        batch."""
        return cls(model=model.requires_grad_(False).eval(), impl=impl, fused_linear=fused_linear)

    @classmethod
    def adapters_off(cls, policy, impl="auto", fused_linear=False):
        """The LoRA policy run with its adapters switched off: its base model, without a second
        copy."""
        return cls(model=lora.BaseModelView(policy), impl=impl, fused_linear=fused_linear)

    @classmethod
    @torch.no_grad()
    def precomputed(cls, reference, pair_sets, *, batch_size, collate, device, autocast):
        """The table of `reference` (a frozen or adapters-off Reference, on `device`) over every
        pair of `pair_sets` (the training pairs, then the held-out ones): ids count on from one set
        to the next.

        collate: a list of pairs -> batch (data.dpo_collate with the pad id). autocast: () -> a
        context manager, the policy's. Each set is read in order, batch_size pairs at a time; under
        torchrun the processes take the batches in turn and gather the rows, so each holds the whole
        table."""
        chunks = [pairs[start:start + batch_size] for pairs in pair_sets
                  for start in range(0, len(pairs), batch_size)]
        rows = []
        for chunk in tqdm(data_parallel.in_turn(chunks), desc="reference log-probs", leave=False,
                          disable=not data_parallel.is_main()):
            batch = {key: value.to(device) for key, value in collate(chunk).items()}
            with autocast():
                chosen, rejected = reference.logps(batch)  # (b,), (b,)
            rows.append(torch.stack([chosen, rejected], dim=1).float().cpu())  # (b, 2)
        return cls(table=torch.cat(data_parallel.gather_in_turn(rows)))  # (n_pairs, 2)

    def logps(self, batch):
        """log pi_ref(y_w|x), log pi_ref(y_l|x) for the pairs of data.dpo_collate's batch (2B rows):
        (B,) float32 each, on the batch's device. The precomputed form reads rows batch["ids"] (B,)
        of its table."""
        if self.table is not None:
            rows = self.table[batch["ids"].cpu()].to(batch["input_ids"].device)  # (B, 2)
            chosen, rejected = rows.unbind(dim=1)
            return chosen, rejected
        with torch.no_grad():
            logps = dpo.concatenated_logps(self.model, batch, impl=self.impl,
                                           fused_linear=self.fused_linear)
        return logps.chosen, logps.rejected
