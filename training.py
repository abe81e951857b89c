"""The training loop: one loop for every method (pre-training, SFT, DPO, ...), with held-out evaluation, early
stopping and exact resume.

A method reaches the loop as an `Objective`: how to batch its examples, its loss on a batch, its metrics
(`stages.objective` builds them; DPO's loss is `dpo.batch_loss`, the paper's Eq. 7). The loop is the same for all:

    for step in range(steps):
        batches = step_batches(...)       the step's examples: a pure function of (seed, step)
        sum over the micro-batches of objective.loss(model, batch) / (pairs or tokens in the step); backward
        clip the gradient norm; AdamW step
        log; every --eval-every steps: held-out metrics and early stopping; every --save-every: a checkpoint

Gradient accumulation divides each micro-batch's summed loss by the size of the whole step, so the accumulated
gradient equals the large-batch gradient. The data order, the learning rate and the pre-training windows are
pure functions of (seed, step), and the checkpoint holds the model, AdamW's state and the generators' states,
so `--resume` continues bit for bit.

Data-parallel (`torchrun --nproc_per_node N train.py ...`, see data_parallel.py): --batch-size stays the whole
step; each process takes a contiguous 1/N of the step's examples, divides its loss by the whole step's size,
and the gradients are summed over the processes before clipping, so the update is the single-process one (up
to float rounding). Metrics and the held-out evaluation are shared out and gathered, so every process holds
the global numbers; rank 0 alone writes files and prints. --resume: every rank restores its own generator
states (the checkpoint holds every rank's); a rank the checkpoint has none for keeps its fresh seed,
seed + rank, which only changes dropout masks. Left out: packing; overlapping the gradient all-reduce with
the backward pass (as DistributedDataParallel does).
"""

import dataclasses
import json
import math
import os
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

import data
import data_parallel
import lora
from checkpoint import CheckpointError, describe_lora_base, load_checkpoint, restore_rng, rng_state, save_checkpoint
from config import ConfigError, check_values, resolve_device


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or gradient; the last good checkpoint was left untouched."""


@dataclasses.dataclass
class Objective:
    """What the loop trains for: a method's loss on a batch, what that loss is summed over, and its metrics."""

    name: str  # the command: "pretrain", "sft", "dpo", "unlikelihood" (written to config.json as "stage")
    loss: Callable  # (model, batch) -> (loss summed over the batch: scalar tensor, {name: (b,) values per example})
    size: Callable  # batch -> int: how many units (pairs, or target tokens) the batch's loss sums over
    metrics: Callable = lambda values: {}  # {name: (n,) tensor} -> {name: float}: what a step or evaluation logs
    collate: Callable | None = None  # a list of examples -> batch; None: windows of a token stream (pre-training)


@dataclasses.dataclass
class EarlyStopping:
    """The best held-out score so far (the implicit reward's accuracy, or minus the loss) and how long ago it was."""

    best_score: float = -math.inf
    best_step: int = 0
    evals_since_best: int = 0


@dataclasses.dataclass
class Run:
    """What the loop carries from step to step."""

    cfg: object  # config.TrainConfig, with world_size set
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    autocast: Callable  # () -> a context manager: torch.autocast, or nothing for float32
    scaler: object  # torch.amp.GradScaler for float16, else None
    lora_base: dict | None  # LoRA: where the frozen base comes from (checkpoint.describe_lora_base)
    forward_model: torch.nn.Module = None  # what the training forward runs: the model, or torch.compile of it
    step: int = 0
    saved_step: int = 0  # the step of the last checkpoint written
    early_stopping: EarlyStopping = dataclasses.field(default_factory=EarlyStopping)
    writer: object = None  # a TensorBoard SummaryWriter, when tensorboard is installed

    def path(self, name):
        return os.path.join(self.cfg.out_dir, name)


def train(objective, cfg, model, train_set, heldout_set, *, log=print):
    """Train `model` in place for `cfg.steps` optimizer steps of `objective`; return the last held-out metrics.

    train_set, heldout_set: 1-D int64 token streams (pre-training, objective.collate None) or lists of examples
    (data.EncodedPair). Writes cfg.out_dir/{config.json, metrics.jsonl, ckpt.pt, best.pt (with early stopping),
    step_NNNNNN.pt (with --keep-checkpoints)}. A model with LoRA adapters trains only them, and its checkpoints
    hold only them (with the sha256 of the base from cfg.init). Under torchrun every process calls it alike.
    """
    run = start_run(objective, cfg, model, log)
    progress = tqdm(total=run.cfg.steps, initial=run.step, desc=objective.name, dynamic_ncols=True,
                    disable=not data_parallel.is_main())
    eval_row, stop = {}, False
    while run.step < run.cfg.steps and not stop:
        lr = set_learning_rate(run)
        batches = step_batches(objective, run.cfg, train_set, run.step)
        step_loss, values = accumulate_gradients(run, objective, batches)
        grad_norm = clip_and_update(run, step_loss)
        run.step += 1
        row = {"split": "train", "step": run.step, "lr": lr, "grad_norm": grad_norm, "loss": step_loss,
               **objective.metrics(values)}
        record(run, row)
        progress.update(1)
        progress.set_postfix({k: f"{row[k]:.3f}" for k in ("loss", "rewards/accuracies") if k in row})
        if run.step % run.cfg.eval_every == 0 or run.step == run.cfg.steps:
            eval_row = {"split": "eval", "step": run.step, **evaluate(run, objective, heldout_set, len(train_set))}
            record(run, eval_row)
            log(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in eval_row.items()))
            stop = early_stop(run, eval_row, log)
        if run.step % run.cfg.save_every == 0 or run.step == run.cfg.steps or stop:
            save(run)
    progress.close()
    if run.writer is not None:
        run.writer.close()
    data_parallel.barrier()  # every process returns once rank 0's files are written
    return eval_row


# -----------------------------------------------------------------------------
# Setting up: checks, the device, the optimizer, and --resume

def start_run(objective, cfg, model, log):
    """Check the configuration, put the model on its device, build AdamW, and resume or start the run's files."""
    cfg = dataclasses.replace(cfg, world_size=data_parallel.world_size())
    check_values(cfg)
    if not cfg.max_length:
        raise ConfigError("--max-length: resolve it first (config.resolve_lengths), train() needs a number")
    saved = load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt")) if cfg.resume else None  # fails before a write
    lora_base = describe_lora_base(cfg.init, model) if lora.lora_layers(model) else None
    check_same_base(saved, lora_base, cfg)
    device, autocast, scaler = resolve_device(cfg)
    if data_parallel.is_main():
        os.makedirs(cfg.out_dir, exist_ok=True)
        with open(os.path.join(cfg.out_dir, "config.json"), "w") as f:
            json.dump({"stage": objective.name, **dataclasses.asdict(cfg)}, f, indent=2)
    model.to(device)
    torch.manual_seed(cfg.seed + data_parallel.rank())  # dropout: a stream of its own on each process
    run = Run(cfg, model, make_optimizer(model, cfg), device, autocast, scaler, lora_base,
              forward_model=torch.compile(model) if cfg.compile else model)
    if saved is not None:
        resume(run, saved, log)
    start_metrics_file(run)
    return run


def check_same_base(saved, lora_base, cfg):
    """--resume: adapters continue only on their own base weights, full weights only without LoRA."""
    if saved is None:
        return
    saved_base = saved.get("lora", {}).get("base", {}).get("sha256")  # None: a full fine-tuning checkpoint
    if saved_base != (lora_base["sha256"] if lora_base else None):
        written_by = ("LoRA on other base weights" if lora_base else "LoRA") if saved_base else "full fine-tuning"
        raise CheckpointError(f"--resume {os.path.join(cfg.out_dir, 'ckpt.pt')}: written by a {written_by} run; "
                              f"this one is {'LoRA on ' + repr(cfg.init) if lora_base else 'full fine-tuning'}")


def make_optimizer(model, cfg):
    """AdamW; weight decay on weight matrices and embeddings (dim >= 2), none on biases and LayerNorm gains."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def resume(run, saved, log):
    """Put back the weights (or adapters), AdamW's state, the step, early stopping and this rank's generators."""
    if run.lora_base:
        lora.load_lora_state_dict(run.model, saved["model"])
    else:
        run.model.load_state_dict(saved["model"])
    run.optimizer.load_state_dict(saved["optimizer"])
    if "early_stopping" not in saved:
        raise CheckpointError(f"--resume {run.path('ckpt.pt')}: written by an older version of this code (no "
                              f"early-stopping state); start the run again")
    run.step = run.saved_step = saved["step"]
    run.early_stopping = EarlyStopping(**saved["early_stopping"])
    saved_rngs = saved.get("rng_by_rank", [saved["rng"]])  # one per rank of the run that saved it
    if data_parallel.rank() < len(saved_rngs):  # else this process keeps its fresh seed
        restore_rng(saved_rngs[data_parallel.rank()])
    log(f"resumed from {run.path('ckpt.pt')} at step {run.step}")


def start_metrics_file(run):
    """metrics.jsonl: on --resume keep the rows up to the resumed step (later ones are recomputed), else start
    it anew; and a TensorBoard writer beside it when tensorboard is installed. Rank 0 only."""
    if not data_parallel.is_main():
        return
    rows = []
    if run.cfg.resume and os.path.exists(run.path("metrics.jsonl")):
        with open(run.path("metrics.jsonl")) as f:
            rows = [row for row in map(json.loads, f) if row["step"] <= run.step]
    with open(run.path("metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return
    run.writer = SummaryWriter(run.path("tb"))


# -----------------------------------------------------------------------------
# One optimizer step

def learning_rate(cfg, step):
    """Linear warm-up over `warmup_steps`, then constant or cosine decay to `min_lr_ratio * lr` at `steps`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def set_learning_rate(run):
    """Set the learning rate of the coming step on every parameter group; return it."""
    lr = learning_rate(run.cfg, run.step)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    return lr


def example_indices(n_examples, batch_size, step, seed):
    """Indices of the `batch_size` examples of step `step`: epochs of fresh permutations, read in order."""
    indices, position = [], step * batch_size
    while len(indices) < batch_size:
        epoch, offset = divmod(position + len(indices), n_examples)
        order = torch.randperm(n_examples, generator=torch.Generator().manual_seed(seed + 7919 * epoch))
        indices += order[offset:offset + batch_size - len(indices)].tolist()
    return indices


def example_batch(objective, examples, indices, first_id=0):
    """Collate examples[indices], with their ids (first_id + index) as "ids" (b,): the precomputed reference reads
    its rows by them (training examples have ids 0..N-1, held-out ones N, N+1, ...)."""
    batch = objective.collate([examples[i] for i in indices])
    batch["ids"] = torch.tensor(indices) + first_id  # (b,) int64
    return batch


def window_batch(x, y):
    """A language-modelling batch in the collate layout: every position of a window is a target."""
    return {"input_ids": x, "labels": y, "mask": torch.ones_like(y, dtype=torch.bool)}


def step_batches(objective, cfg, train_set, step):
    """The micro-batches of one optimizer step: this process's contiguous 1/world_size share of the step's
    examples (rank 0 the first), in --grad-accum micro-batches."""
    world_size, rank = data_parallel.world_size(), data_parallel.rank()
    share = cfg.batch_size // world_size  # examples (or windows) of this process
    micro = share // cfg.grad_accum
    if objective.collate is None:  # random windows of max_length tokens, drawn from a per-step generator
        windows = list(data.lm_batches(train_set, micro, cfg.max_length, num_batches=world_size * cfg.grad_accum,
                                       generator=torch.Generator().manual_seed(cfg.seed * 100_003 + step)))
        return [window_batch(x, y) for x, y in windows[rank * cfg.grad_accum:(rank + 1) * cfg.grad_accum]]
    indices = example_indices(len(train_set), cfg.batch_size, step, cfg.seed)[rank * share:(rank + 1) * share]
    return [example_batch(objective, train_set, indices[start:start + micro]) for start in range(0, share, micro)]


def to_device(batch, device):
    return {key: value.to(device) for key, value in batch.items()}


def accumulate_gradients(run, objective, batches):
    """Forward and backward over the step's micro-batches, each loss divided by the whole step's size (pairs or
    tokens, over every process). Returns the step's loss and its per-example values, gathered from every process."""
    run.model.train()
    step_size = data_parallel.all_reduce_sum(sum(objective.size(batch) for batch in batches))
    step_loss, values = 0.0, []
    for batch in batches:
        with run.autocast():
            loss_sum, batch_values = objective.loss(run.forward_model, to_device(batch, run.device))
            loss = loss_sum / max(1, step_size)
        (run.scaler.scale(loss) if run.scaler else loss).backward()
        step_loss += loss.item()
        values.append(batch_values)
    data_parallel.sum_gradients(run.model)  # each process holds its share's gradient; their sum is the step's
    gathered = {key: data_parallel.all_gather_cat(value) for key, value in concatenate(values).items()}
    return data_parallel.all_reduce_sum(step_loss), gathered


def concatenate(values):
    """Several batches' per-example values ({name: (b,) tensor} each) as one dict of concatenated tensors."""
    return {key: torch.cat([v[key] for v in values]) for key in values[0]}


def clip_and_update(run, step_loss):
    """Clip the gradient's global norm, take the AdamW step, zero the gradients; return the norm before clipping.
    Raises NonFiniteLossError (nothing saved) for a NaN/inf loss, or gradient without a float16 scaler."""
    if run.scaler:
        run.scaler.unscale_(run.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.grad_clip).item()
    if not (math.isfinite(step_loss) and (math.isfinite(grad_norm) or run.scaler)):
        where = f"{run.path('ckpt.pt')} (step {run.saved_step})" if os.path.exists(run.path("ckpt.pt")) else "none"
        raise NonFiniteLossError(f"step {run.step + 1}: non-finite loss {step_loss} or gradient norm {grad_norm}; "
                                 f"stopped without saving. Last good checkpoint: {where}. Try a lower --lr.")
    if run.scaler:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return grad_norm


# -----------------------------------------------------------------------------
# Logging, evaluation, early stopping, checkpoints

def record(run, row):
    """Append a metrics row to metrics.jsonl (and TensorBoard). Rank 0 only."""
    if not data_parallel.is_main():
        return
    with open(run.path("metrics.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")
    if run.writer is not None:
        for key, value in row.items():
            if isinstance(value, (int, float)) and key != "step":
                run.writer.add_scalar(f"{row['split']}/{key}", value, row["step"])


@torch.no_grad()
def evaluate(run, objective, heldout_set, first_id):
    """Held-out metrics: the loss averaged over every held-out unit (pairs or tokens), and the objective's
    metrics (held-out pairs have the ids first_id, first_id + 1, ...). Pre-training: 4 fixed windows of the held-out stream. The processes take the batches in turn and
    gather the results in order, so every process gets the single-process numbers."""
    run.model.eval()
    cfg = run.cfg
    if objective.collate is None:
        windows = data.lm_batches(heldout_set, cfg.batch_size, cfg.max_length, num_batches=4,
                                  generator=torch.Generator().manual_seed(cfg.seed))
        batches = [window_batch(x, y) for x, y in windows]
    else:
        batches = [example_batch(objective, heldout_set, list(range(start, min(start + cfg.batch_size,
                                                                                len(heldout_set)))), first_id)
                   for start in range(0, len(heldout_set), cfg.batch_size)]
    size = sum(objective.size(batch) for batch in batches)
    losses, values = [], []
    for batch in data_parallel.in_turn(batches):
        with run.autocast():
            loss_sum, batch_values = objective.loss(run.model, to_device(batch, run.device))
        losses.append((loss_sum / max(1, size)).item())
        values.append(batch_values)
    metrics = objective.metrics(concatenate(data_parallel.gather_in_turn(values)))
    return {"loss": sum(data_parallel.gather_in_turn(losses)), **metrics}


def early_stop(run, eval_row, log):
    """Keep best.pt at a better held-out score (--early-stop-patience > 0); True when it is time to stop."""
    best, patience = run.early_stopping, run.cfg.early_stop_patience
    score = eval_row.get("rewards/accuracies", -eval_row["loss"])  # next-token stages: lower loss is better
    if score > best.best_score:
        best.best_score, best.best_step, best.evals_since_best = score, run.step, 0
        if patience and data_parallel.is_main():
            save_checkpoint(run.path("best.pt"), run.model, None, run.step, dataclasses.asdict(run.cfg),
                            dataclasses.asdict(best), run.lora_base)
        return False
    best.evals_since_best += 1
    if 0 < patience <= best.evals_since_best:
        log(f"early stop at step {run.step}: no better held-out score for {patience} evaluations; the best "
            f"(step {best.best_step}) is in {run.path('best.pt')}")
        return True
    return False


def save(run):
    """ckpt.pt (to resume; every rank's generator states), and step_NNNNNN.pt with --keep-checkpoints."""
    run.saved_step = run.step
    rng_by_rank = data_parallel.gather_objects(rng_state())  # --resume gives each process its own back
    if not data_parallel.is_main():
        return
    config, early_stopping = dataclasses.asdict(run.cfg), dataclasses.asdict(run.early_stopping)
    save_checkpoint(run.path("ckpt.pt"), run.model, run.optimizer, run.step, config, early_stopping, run.lora_base,
                    rng_by_rank)
    if run.cfg.keep_checkpoints:
        save_checkpoint(run.path(f"step_{run.step:06d}.pt"), run.model, None, run.step, config, early_stopping,
                        run.lora_base)
