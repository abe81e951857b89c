"""A training run's state and files: the bookkeeping around training.py's loop.

    start_run    check the configuration, put the model on its device, build AdamW, write config.json, and
                 --resume (weights or LoRA adapters, AdamW's state, the step, early stopping, the generators)
    record       append a metrics row to metrics.jsonl (and TensorBoard, when it is installed)
    early_stop   keep best.pt at a better held-out score; say when --early-stop-patience has run out
    save         ckpt.pt (to resume bit for bit) and step_NNNNNN.pt (with --keep-checkpoints)

Under torchrun (data_parallel.py) rank 0 alone writes; every rank keeps the same state, since every rank computes
the same metrics from the same gathered values, and the checkpoint holds every rank's generator states.
"""

import dataclasses
import json
import math
import os
from collections.abc import Callable

import torch

import data_parallel
import lora
from checkpoint import CheckpointError, describe_lora_base, load_checkpoint, restore_rng, rng_state, save_checkpoint
from config import ConfigError, check_values, resolve_device


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


def start_run(stage, cfg, model, log):
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
            json.dump({"stage": stage, **dataclasses.asdict(cfg)}, f, indent=2)
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


def early_stop(run, eval_row, log):
    """Keep best.pt at a better held-out score (--early-stop-patience > 0 or --keep-best); True when it is time to
    stop."""
    best, patience = run.early_stopping, run.cfg.early_stop_patience
    score = eval_row.get("rewards/accuracies", -eval_row["loss"])  # next-token stages: lower loss is better
    if score > best.best_score:
        best.best_score, best.best_step, best.evals_since_best = score, run.step, 0
        if (patience or run.cfg.keep_best) and data_parallel.is_main():
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
