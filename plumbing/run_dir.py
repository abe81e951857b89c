"""A training run's state and files: the bookkeeping around loop.py's loop.

    claim_directory  before anything is written: OUT_DIR may hold this run (a new run, --overwrite,
                 or --resume of
                 the same command, kind of model, architecture and tokenizer); returns the
                 checkpoint to resume
    start_run    check the configuration, claim OUT_DIR, put the model on its device, build AdamW,
                 --resume (weights or LoRA adapters, AdamW's state, the step, early stopping, the
                 generators), and only
                 then write: config.json (atomically) and metrics.jsonl (the rows up to the resumed
                 step)
    record       append a metrics row to metrics.jsonl (and TensorBoard, when it is installed)
    early_stop   keep best.pt at a better held-out score; say when --early-stop-patience has run out
    save         ckpt.pt (to resume bit for bit) and step_NNNNNN.pt (with --keep-checkpoints)

A run directory holds one run. Every file is replaced atomically (written beside, then renamed) or
appended to, so a run killed at any moment (SIGKILL, an out-of-memory kill, Ctrl-C) resumes with
`--resume` exactly where its last checkpoint left it, and ends as the uninterrupted run would
(tests/test_kill_resume.py). A run killed before its first checkpoint starts again from step 0 on
--resume.

Under torchrun (plumbing/data_parallel.py) rank 0 alone writes; every rank keeps the same state,
since every rank computes the same metrics from the same gathered values, and the checkpoint holds
every rank's generator states.
"""

import dataclasses
import glob
import json
import math
import os
import shutil
from collections.abc import Callable

import torch

import data
from plumbing import data_parallel, lora
from plumbing.checkpoint import (
    LANGUAGE_MODEL,
    CheckpointError,
    architecture_of,
    describe_lora_base,
    load_checkpoint,
    restore_rng,
    rng_state,
    save_checkpoint,
    seed_generators,
)
from plumbing.config import ConfigError, check_values, resolve_device


@dataclasses.dataclass
class EarlyStopping:
    """The best held-out score so far (the implicit reward's accuracy, or minus the loss) and how
    long ago it was."""

    best_score: float = -math.inf
    best_step: int = 0
    evals_since_best: int = 0


@dataclasses.dataclass
class Run:
    """What the loop carries from step to step."""

    command: str  # the command ("dpo", ...), recorded in config.json and the checkpoints
    cfg: object  # config.TrainConfig, with world_size set
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    autocast: Callable  # () -> a context manager: torch.autocast, or nothing for float32
    scaler: object  # torch.amp.GradScaler for float16, else None
    lora_base: dict | None  # LoRA: where the frozen base comes from (checkpoint.describe_lora_base)
    # what the training forward runs: the model, or torch.compile of it
    forward_model: torch.nn.Module = None
    step: int = 0
    saved_step: int = 0  # the step of the last checkpoint written
    early_stopping: EarlyStopping = dataclasses.field(default_factory=EarlyStopping)
    writer: object = None  # a TensorBoard SummaryWriter, when tensorboard is installed
    # --resume: the "extra" state a method saved
    resumed_extra: dict = dataclasses.field(default_factory=dict)

    def path(self, name):
        return os.path.join(self.cfg.out_dir, name)


def start_run(command, cfg, model, log):
    """Check the configuration, claim OUT_DIR (claim_directory), put the model on its device, build
    AdamW, resume (--resume), and only then write config.json and start metrics.jsonl: a run that
    cannot start writes nothing."""
    cfg = dataclasses.replace(cfg, world_size=data_parallel.world_size())
    check_values(cfg)
    if not cfg.max_length:
        raise ConfigError("--max-length: resolve it first (config.resolve_lengths), "
                          "train() needs a number")
    saved = claim_directory(command, cfg, model, log)
    data_parallel.barrier()  # every process has checked OUT_DIR before the main one writes there
    lora_base = describe_lora_base(cfg.init, model) if lora.lora_layers(model) else None
    device, autocast, scaler = resolve_device(cfg)
    model.to(device)
    seed_generators(cfg.seed + data_parallel.rank())  # dropout: a stream of its own on each process
    run = Run(command, cfg, model, make_optimizer(model, cfg), device, autocast, scaler, lora_base,
              forward_model=torch.compile(model) if cfg.compile else model)
    if saved is not None:
        resume(run, saved, log)
    if data_parallel.is_main():
        if cfg.overwrite:
            remove_run_files(cfg.out_dir, log)
        os.makedirs(cfg.out_dir, exist_ok=True)
        write_atomically(run.path("config.json"), json.dumps(run_config(run), indent=2))
    start_metrics_file(run)
    return run


# -----------------------------------------------------------------------------
# One run per directory

# and below
RUN_FILES = ("config.json", "metrics.jsonl", "ckpt.pt", "best.pt", "hf", "tb", "reward_eval.json")
# kept checkpoints, unfinished atomic writes
RUN_FILE_PATTERNS = ("step_*.pt", ".ckpt-*.tmp", ".*.partial")


def run_files(out_dir):
    """The names of the run files (RUN_FILES, RUN_FILE_PATTERNS) present in out_dir, sorted."""
    if not os.path.isdir(out_dir):
        return []
    names = set(RUN_FILES) & set(os.listdir(out_dir))
    for pattern in RUN_FILE_PATTERNS:
        names |= {os.path.basename(path) for path in glob.glob(os.path.join(glob.escape(out_dir),
                                                                            pattern))}
    return sorted(names)


def recorded_command(out_dir):
    """The command recorded in out_dir/config.json (None when there is no config.json). Raises
    CheckpointError for a config.json that is not a run's (unreadable, or no "command"): a directory
    of something else. Runs written before the key was "command" say "stage"."""
    path = os.path.join(out_dir, "config.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            recorded = json.load(f)
        return recorded["command"] if "command" in recorded else recorded["stage"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"--out-dir {out_dir}: its config.json is not a training run's (no "
                              f"readable 'command'): choose another --out-dir") from None


def claim_directory(command, cfg, model, log=print, mmap=False):
    """Check, before anything is written, that cfg.out_dir may hold this run of command `command`;
    return the checkpoint to resume from (--resume; None for a new run, or a run killed before its
    first checkpoint).

    A new run needs a directory without a run in it (or --overwrite: start_run then removes the old
    run's files). --resume needs the same command, a checkpoint of the same kind (language model,
    reward model), the same architecture (GPT or Llama, and its config, dropout aside) and the same
    tokenizer. Anything else raises CheckpointError naming --out-dir, --resume or --overwrite and
    what the directory holds. mmap: read the checkpoint's tensors lazily (a check that keeps
    nothing)."""
    out_dir, ckpt = cfg.out_dir, os.path.join(cfg.out_dir, "ckpt.pt")
    found = run_files(out_dir)
    held = recorded_command(out_dir)
    saved = load_checkpoint(ckpt, mmap=mmap) if cfg.resume and os.path.isfile(ckpt) else None
    held = held or (saved or {}).get("config", {}).get("command")
    what = f"a {held} run" if held else f"a run's files ({', '.join(found)})"
    if not cfg.resume:
        if found and not cfg.overwrite:
            raise CheckpointError(f"--out-dir {out_dir}: holds {what}; --resume continues it, "
                                  f"--overwrite replaces it (removing {', '.join(found)}), or "
                                  f"choose another --out-dir")
        return None
    if held is None:
        raise CheckpointError(f"--resume: {out_dir} holds no run to resume (no "
                              "config.json or ckpt.pt)")
    if held != command:
        raise CheckpointError(f"--resume: {out_dir} holds {what}, not a {command} run: resume it "
                              f"with `train.py {held} --resume`, or choose another --out-dir")
    if saved is None:
        log(f"resume: {out_dir} holds no checkpoint yet (the run stopped before its first): "
            "starting from step 0")
        return None
    check_same_model(saved, model, cfg, ckpt)
    check_same_base(saved, describe_lora_base(cfg.init, model) if lora.lora_layers(model) else None,
                    cfg)
    return saved


def check_same_model(saved, model, cfg, ckpt):
    """--resume: CheckpointError unless the checkpoint holds the same kind of model, architecture
    and tokenizer (check_same_base then checks LoRA against full fine-tuning, and the base of the
    adapters)."""
    kind, saved_kind = getattr(model, "KIND", LANGUAGE_MODEL), saved.get("kind", LANGUAGE_MODEL)
    if saved_kind != kind:
        raise CheckpointError(f"--resume {ckpt}: holds a {saved_kind}, this command trains a "
                              f"{kind}; choose another --out-dir")
    network, saved_network = architecture_of(model), saved.get("architecture", "gpt2")
    if saved_network != network:
        raise CheckpointError(f"--resume {ckpt}: holds a {saved_network} model, --init "
                              f"{cfg.init or '(a fresh model)'} is a {network}; resume with the "
                              f"--init the run started with")
    architecture = {key: value for key, value in vars(model.config).items() if key != "dropout"}
    differ = {key: (saved["model_config"].get(key), value) for key, value in architecture.items()
              if saved["model_config"].get(key) != value}
    if differ:
        changes = ", ".join(f"{key} {old} (the checkpoint) vs {new}"
                            for key, (old, new) in sorted(differ.items()))
        raise CheckpointError(f"--resume {ckpt}: another architecture than --init "
                              f"{cfg.init or '(a fresh model)'}: {changes}; resume with the --init "
                              f"(and model flags) the run started with")
    saved_tokenizer = (saved.get("config") or {}).get("tokenizer", cfg.tokenizer)
    if same_tokenizer(saved_tokenizer) != same_tokenizer(cfg.tokenizer):
        raise CheckpointError(f"--resume {ckpt}: the run used --tokenizer {saved_tokenizer}, not "
                              f"{cfg.tokenizer}")


def same_tokenizer(name):
    """A --tokenizer value in a form that compares: a path (.tiktoken file, Hugging Face
    tokenizer) made absolute, a name as it is."""
    return name if name in data.TOKENIZER_NAMES else os.path.abspath(name)


def remove_run_files(out_dir, log=print):
    """--overwrite: remove the old run's files (run_files) from out_dir; other files stay."""
    removed = run_files(out_dir)
    for name in removed:
        path = os.path.join(out_dir, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    if removed:
        log(f"--overwrite: removed {', '.join(removed)} from {out_dir}")


def write_atomically(path, text):
    """Write `text` to `path` through a temporary file renamed over it: readers see the old file or
    the new one."""
    tmp_path = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.partial")
    with open(tmp_path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp_path, path)


def run_config(run):
    """What config.json and every checkpoint record of the run: {"command": its name, **the
    TrainConfig}."""
    return {"command": run.command, **dataclasses.asdict(run.cfg)}


def check_same_base(saved, lora_base, cfg):
    """--resume: adapters continue only on their own base weights, full weights only without
    LoRA."""
    if saved is None:
        return
    # None: a full fine-tuning checkpoint
    saved_base = saved.get("lora", {}).get("base", {}).get("sha256")
    if saved_base != (lora_base["sha256"] if lora_base else None):
        written_by = ("LoRA on "
                      "other base "
                      "weights" if lora_base else "LoRA") if saved_base else "full fine-tuning"
        raise CheckpointError(f"--resume {os.path.join(cfg.out_dir, 'ckpt.pt')}: written by a "
                              f"{written_by} run; this one is "
                              f"{'LoRA on ' + repr(cfg.init) if lora_base else 'full fine-tuning'}")


def make_optimizer(model, cfg):
    """AdamW; weight decay on weight matrices and embeddings (dim >= 2), none on biases and
    LayerNorm gains."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def resume(run, saved, log):
    """Put back the weights (or adapters), AdamW's state, the step, early stopping and this rank's
    generators."""
    if "early_stopping" not in saved or saved.get("optimizer") is None:
        raise CheckpointError(f"--resume {run.path('ckpt.pt')}: written by an older version of "
                              f"this code, or not by a training run (no early-stopping or "
                              f"optimizer state); start the run again")
    try:
        if run.lora_base:
            lora.load_lora_state_dict(run.model, saved["model"])
        else:
            run.model.load_state_dict(saved["model"])
        run.optimizer.load_state_dict(saved["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"--resume {run.path('ckpt.pt')}: its weights do not fit this model "
                              f"({' '.join(str(e).split())[:300]})") from None
    run.resumed_extra = saved.get("extra") or {}
    run.step = run.saved_step = saved["step"]
    run.early_stopping = EarlyStopping(**saved["early_stopping"])
    saved_rngs = saved.get("rng_by_rank", [saved["rng"]])  # one per rank of the run that saved it
    if data_parallel.rank() < len(saved_rngs):  # else this process keeps its fresh seed
        restore_rng(saved_rngs[data_parallel.rank()])
    log(f"resumed from {run.path('ckpt.pt')} at step {run.step}")


def start_metrics_file(run):
    """metrics.jsonl: on --resume keep exactly the rows up to the resumed step (later ones are
    recomputed; a line cut short by a kill is one of them), else start it anew; replaced atomically.
    And a TensorBoard writer beside it when tensorboard is installed. Rank 0 only."""
    if not data_parallel.is_main():
        return
    rows = []
    if run.cfg.resume and os.path.exists(run.path("metrics.jsonl")):
        with open(run.path("metrics.jsonl")) as f:
            lines = f.read().split("\n")
        for number, line in enumerate(lines, start=1):
            try:
                row = json.loads(line) if line.strip() else None
            except ValueError:
                # only the last line can be cut short (by a kill mid-append)
                if number < len(lines):
                    raise CheckpointError(f"--resume: {run.path('metrics.jsonl')}, line {number}: "
                                          f"not a JSON row; the file was changed by something "
                                          f"else than this run") from None
                continue
            if row is not None and row["step"] <= run.step:
                rows.append(line + "\n")
    write_atomically(run.path("metrics.jsonl"), "".join(rows))
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
    """Keep best.pt at a better held-out score (--early-stop-patience > 0 or --keep-best); True when
    it is time to stop."""
    best, patience = run.early_stopping, run.cfg.early_stop_patience
    # next-token commands: lower loss is better
    score = eval_row.get("rewards/accuracies", -eval_row["loss"])
    if score > best.best_score:
        best.best_score, best.best_step, best.evals_since_best = score, run.step, 0
        if (patience or run.cfg.keep_best) and data_parallel.is_main():
            save_checkpoint(run.path("best.pt"), run.model, None, run.step, run_config(run),
                            dataclasses.asdict(best),
                            run.lora_base)
        return False
    best.evals_since_best += 1
    if 0 < patience <= best.evals_since_best:
        log(f"early stop at step {run.step}: no better held-out score for {patience} evaluations; "
            f"the best (step {best.best_step}) is in {run.path('best.pt')}")
        return True
    return False


def save(run, extra=None):
    """ckpt.pt (to resume; every rank's generator states), and step_NNNNNN.pt with
    --keep-checkpoints. extra: what else the method needs to resume (methods/rlhf.py: the value
    model, the KL coefficient), a dict."""
    run.saved_step = run.step
    # --resume gives each process its own back
    rng_by_rank = data_parallel.gather_objects(rng_state())
    if not data_parallel.is_main():
        return
    config, early_stopping = run_config(run), dataclasses.asdict(run.early_stopping)
    save_checkpoint(run.path("ckpt.pt"), run.model, run.optimizer, run.step, config, early_stopping,
                    run.lora_base,
                    rng_by_rank, extra)
    if run.cfg.keep_checkpoints:
        save_checkpoint(run.path(f"step_{run.step:06d}.pt"), run.model, None, run.step, config,
                        early_stopping,
                        run.lora_base)
