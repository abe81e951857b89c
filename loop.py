"""The training loop: one loop for every method (pre-training, SFT, DPO, ...), with held-out
evaluation.

A method reaches the loop as a `dpo.Objective`: its loss on a batch, what that loss sums over, its
metrics, and how to batch its examples (DPO's is `dpo.objective`, the paper's Eq. 7; each other
method's is in methods/). The loop is the same for all:

    for step in range(steps):
        batches = step_batches(...)       the step's examples: a pure function of (seed, step)
        sum over the micro-batches of objective.loss(model, batch) / (pairs or tokens in the step);
        backward
        clip the gradient norm; AdamW step
        log; every --eval-every steps: held-out metrics and early stopping; every --save-every: a
        checkpoint

Gradient accumulation divides each micro-batch's summed loss by the size of the whole step, so the
accumulated gradient equals the large-batch gradient. The data order, the learning rate and the
pre-training windows are pure functions of (seed, step), and the checkpoint holds everything else,
so `--resume` continues bit for bit. The run's bookkeeping (setting up, --resume, metrics.jsonl,
early stopping, checkpoints) is plumbing/run_dir.py.

Data-parallel (`torchrun`, plumbing/data_parallel.py): --batch-size stays the whole step; each
process takes a contiguous 1/N of the step's examples and divides its loss by the whole step's size,
and the gradients are summed over the processes before clipping: the single-process update, up to
float rounding.
"""

import math
import os

import torch
from tqdm.auto import tqdm

import data
from plumbing import data_parallel
from plumbing.run_dir import early_stop, record, save, start_run

# The generators of a step are seeded by pure functions of (--seed, epoch or step), so that --resume
# needs no generator state for them: seed * STRIDE + step (or seed + STRIDE * epoch). Within a run
# they never repeat; the prime strides keep runs whose --seed differs by less than a stride from
# sharing a step's (or epoch's) seed.
# the data order's permutation of each epoch (example_indices); RL: minibatch orders
EPOCH_SEED_STRIDE = 7919
STEP_SEED_STRIDE = 100_003  # the pre-training windows of each step; RL: each iteration's rollouts


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or gradient; the last good checkpoint was left untouched."""


def train(objective, cfg, model, train_set, heldout_set, *, log=print):
    """Train `model` in place for `cfg.steps` optimizer steps of `objective`; return the last
    held-out metrics.

    train_set, heldout_set: 1-D int64 token streams (pre-training, objective.collate None) or lists
    of examples (data.EncodedPair). Writes cfg.out_dir/{config.json, metrics.jsonl, ckpt.pt, best.pt
    (with early stopping), step_NNNNNN.pt (with --keep-checkpoints)}. A model with LoRA adapters
    trains only them, and its checkpoints hold only them (with the sha256 of the base from
    cfg.init). Under torchrun every process calls it alike.
    """
    run = start_run(objective.name, cfg, model, log)
    progress = tqdm(total=run.cfg.steps, initial=run.step, desc=objective.name, dynamic_ncols=True,
                    disable=not data_parallel.is_main())
    eval_row, stop = {}, False
    while run.step < run.cfg.steps and not stop:
        lr = set_learning_rate(run)
        batches = step_batches(objective, run.cfg, train_set, run.step)
        step_loss, per_example = accumulate_gradients(run, objective, batches)
        grad_norm = clip_and_update(run, step_loss)
        run.step += 1
        row = {"split": "train", "step": run.step, "lr": lr, "grad_norm": grad_norm,
               "loss": step_loss, **objective.metrics(per_example)}
        record(run, row)
        progress.update(1)
        progress.set_postfix({k: f"{row[k]:.3f}" for k in ("loss", "rewards/accuracies")
                              if k in row})
        if run.step % run.cfg.eval_every == 0 or run.step == run.cfg.steps:
            metrics = heldout_metrics(run, objective, heldout_set, first_id=len(train_set))
            eval_row = {"split": "eval", "step": run.step, **metrics}
            record(run, eval_row)
            log(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in eval_row.items()))
            stop = early_stop(run, eval_row, log)
        if run.step % run.cfg.save_every == 0 or run.step == run.cfg.steps or stop:
            save(run)
    progress.close()
    if run.writer is not None:
        run.writer.close()
    data_parallel.barrier()  # every process returns once rank 0's files are written
    return eval_row


# -----------------------------------------------------------------------------
# One optimizer step

def learning_rate(cfg, step):
    """Linear warm-up over `warmup_steps`, then constant or cosine decay to `min_lr_ratio * lr` at
    `steps`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5
                     * (1 + math.cos(math.pi * min(1.0, progress))))


def set_learning_rate(run):
    """Set the learning rate of the coming step on every parameter group; return it."""
    lr = learning_rate(run.cfg, run.step)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    return lr


def example_indices(n_examples, batch_size, step, seed):
    """Indices of the `batch_size` examples of step `step`: epochs of fresh permutations, read in
    order."""
    indices, position = [], step * batch_size
    while len(indices) < batch_size:
        epoch, offset = divmod(position + len(indices), n_examples)
        order = torch.randperm(n_examples,
                               generator=torch.Generator().manual_seed(seed + EPOCH_SEED_STRIDE
                                                                       * epoch))
        indices += order[offset:offset + batch_size - len(indices)].tolist()
    return indices


def example_batch(objective, examples, indices, first_id=0):
    """Collate examples[indices], with their ids (first_id + index) as "ids" (b,): the precomputed
    reference reads its rows by them (training examples have ids 0..N-1, held-out ones N, N+1,
    ...)."""
    batch = objective.collate([examples[i] for i in indices])
    batch["ids"] = torch.tensor(list(indices)) + first_id  # (b,) int64
    return batch


def window_batch(x, y):
    """A language-modelling batch in the collate layout: every position of a window is a target."""
    return {"input_ids": x, "labels": y, "mask": torch.ones_like(y, dtype=torch.bool)}


def step_batches(objective, cfg, train_set, step):
    """The micro-batches of one optimizer step: this process's contiguous 1/world_size share of the
    step's examples (rank 0 the first), in --grad-accum micro-batches."""
    world_size, rank = data_parallel.world_size(), data_parallel.rank()
    share = cfg.batch_size // world_size  # examples (or windows) of this process
    micro = share // cfg.grad_accum
    # random windows of max_length tokens, drawn from a per-step generator
    if objective.collate is None:
        windows = list(data.lm_batches(train_set, micro, cfg.max_length,
                                       num_batches=world_size * cfg.grad_accum,
                                       generator=torch.Generator().manual_seed(
                                           cfg.seed * STEP_SEED_STRIDE + step)))
        return ([window_batch(x, y)
                 for x, y in windows[rank * cfg.grad_accum:(rank + 1) * cfg.grad_accum]])
    indices = example_indices(len(train_set), cfg.batch_size, step,
                              cfg.seed)[rank * share:(rank + 1) * share]
    return ([example_batch(objective, train_set, indices[start:start + micro])
             for start in range(0, share, micro)])


def to_device(batch, device):
    """The batch's tensors on `device`."""
    return {key: value.to(device) for key, value in batch.items()}


def accumulate_gradients(run, objective, batches):
    """Forward and backward over the step's micro-batches, each loss divided by the whole step's
    size (pairs or tokens, over every process). Returns the step's loss and its per-example values,
    gathered from every process."""
    run.model.train()
    step_size = data_parallel.all_reduce_sum(sum(objective.size(batch) for batch in batches))
    step_loss, per_example = 0.0, []
    for batch in batches:
        with run.autocast():
            loss_sum, batch_per_example = objective.loss(run.forward_model,
                                                         to_device(batch, run.device))
            loss = loss_sum / max(1, step_size)
        (run.scaler.scale(loss) if run.scaler else loss).backward()
        step_loss += loss.item()
        per_example.append(batch_per_example)
    # each process holds its share's gradient; their sum is the step's
    data_parallel.sum_gradients(run.model)
    gathered = {key: data_parallel.all_gather_cat(value)
                for key, value in concatenate(per_example).items()}
    return data_parallel.all_reduce_sum(step_loss), gathered


def concatenate(per_example):
    """Several batches' per-example values ({name: (b,) tensor} each) as one dict of concatenated
    tensors."""
    return {key: torch.cat([v[key] for v in per_example]) for key in per_example[0]}


def clip_and_update(run, step_loss):
    """clip_and_step for the run's model and AdamW: the norm before clipping. Raises
    NonFiniteLossError (nothing saved) for a NaN/inf loss, or gradient without a float16 scaler,
    naming the last good checkpoint."""
    where = (f"{run.path('ckpt.pt')} (step {run.saved_step})"
             if os.path.exists(run.path("ckpt.pt")) else "none")
    return clip_and_step(run.model, run.optimizer, run.cfg.grad_clip, run.scaler, step_loss,
                         f"step {run.step + 1}: ",
                         f"; stopped without saving. Last good checkpoint: {where}")


def clip_and_step(model, optimizer, grad_clip, scaler=None, loss=0.0, before="", after=""):
    """Clip the gradient's global norm (float16: unscaled first), take the optimizer step, zero the
    gradients; return the norm before clipping. Raises NonFiniteLossError before the step for a
    NaN/inf `loss` (a float), or gradient norm without a scaler (the scaler skips such a step
    itself); `before`, `after`: its context."""
    if scaler:
        scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip).item()
    if not (math.isfinite(loss) and (math.isfinite(grad_norm) or scaler)):
        raise NonFiniteLossError(f"{before}non-finite loss {loss} or gradient norm "
                                 f"{grad_norm}{after}. Try a lower --lr.")
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


# -----------------------------------------------------------------------------
# Held-out evaluation

@torch.no_grad()
def heldout_metrics(run, objective, heldout_set, first_id):
    """Held-out metrics: the loss averaged over every held-out unit (pairs or tokens), and the
    objective's metrics. Held-out pairs have the ids first_id, first_id + 1, ...; pre-training reads
    4 fixed windows of the held-out stream. The processes take the batches in turn and gather the
    results in order: single-process numbers."""
    run.model.eval()
    cfg = run.cfg
    if objective.collate is None:
        windows = data.lm_batches(heldout_set, cfg.batch_size, cfg.max_length, num_batches=4,
                                  generator=torch.Generator().manual_seed(cfg.seed))
        batches = [window_batch(x, y) for x, y in windows]
    else:
        # in order, --batch-size examples at a time
        starts = range(0, len(heldout_set), cfg.batch_size)
        batches = [example_batch(objective, heldout_set,
                                 range(start, min(start + cfg.batch_size, len(heldout_set))),
                                 first_id) for start in starts]
    size = sum(objective.size(batch) for batch in batches)
    losses, per_example = [], []
    for batch in data_parallel.in_turn(batches):
        with run.autocast():
            loss_sum, batch_per_example = objective.loss(run.model, to_device(batch, run.device))
        losses.append((loss_sum / max(1, size)).item())
        per_example.append(batch_per_example)
    metrics = objective.metrics(concatenate(data_parallel.gather_in_turn(per_example)))
    return {"loss": sum(data_parallel.gather_in_turn(losses)), **metrics}
