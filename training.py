"""The training loop: language-model pre-training, SFT and DPO (paper Eq. 7), with evaluation and exact resume.

One loop serves every stage (`train` below); only the loss differs:
    pretrain, sft   -(1/N) sum over target tokens of log pi(y_t | y_<t, x)      N = target tokens in the step
    dpo             mean over pairs of dpo.dpo_loss(...)                        the paper's Eq. 7 and variants
    unlikelihood    mean over pairs of dpo.unlikelihood_loss(...)               the paper's baseline (section 6)

`config.TrainConfig` holds the settings (`config.py` also validates them).

The data order, the learning rate and the pre-training windows are pure functions of (seed, step), and the
checkpoint holds the model, AdamW state and RNG states, so `--resume` continues bit for bit. Gradient
accumulation divides each micro-batch's summed loss by the size of the whole step (pairs or tokens), so the
accumulated gradient equals the large-batch gradient.

Data-parallel (`torchrun --nproc_per_node N train.py ...`, see data_parallel.py): --batch-size stays the whole
step; each of the N processes takes a contiguous 1/N of the step's examples, its losses are still divided by
the whole step's size, and the gradients are summed over the processes before clipping, so the update is the
single-process one (up to float rounding). Metrics, the DPO reference log-probs and the held-out evaluation
are shared out and gathered, so every process holds the global numbers; rank 0 alone writes files and prints.
--resume: every rank loads ckpt.pt and restores its own generator states (the checkpoint holds every rank's);
a rank the checkpoint has no state for (resuming with more processes) keeps its fresh seed, seed + rank, which
only changes dropout masks. Simplifications: no packing; gradients are all-reduced after the backward pass,
not overlapped with it as DistributedDataParallel would.
"""

import dataclasses
import json
import math
import os

import torch
from tqdm.auto import tqdm

import data
import data_parallel
import dpo
import logprob_kernels
import lora
from checkpoint import CheckpointError, describe_lora_base, load_checkpoint, restore_rng, rng_state, save_checkpoint
from config import TRAINING_STAGES, ConfigError, check_values, resolve_device


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or gradient; the last good checkpoint was left untouched."""


def learning_rate(cfg, step):
    """Linear warm-up over `warmup_steps`, then constant or cosine decay to `min_lr_ratio * lr` at `steps`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def make_optimizer(model, cfg):
    """AdamW; weight decay on weight matrices and embeddings (dim >= 2), none on biases and LayerNorm gains."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


# -----------------------------------------------------------------------------
# Which examples make up optimizer step `step`: a pure function of (seed, step), so resume needs no data state

def example_indices(n_examples, batch_size, step, seed):
    """Indices of the `batch_size` examples of step `step`: epochs of fresh permutations, read in order."""
    indices, position = [], step * batch_size
    while len(indices) < batch_size:
        epoch, offset = divmod(position + len(indices), n_examples)
        order = torch.randperm(n_examples, generator=torch.Generator().manual_seed(seed + 7919 * epoch))
        indices += order[offset:offset + batch_size - len(indices)].tolist()
    return indices


def lm_batch(x, y):
    """A language-modelling batch in the collate layout: every position of the window is a target."""
    return {"input_ids": x, "labels": y, "mask": torch.ones_like(y, dtype=torch.bool)}


def pair_batch(stage, examples, indices, pad_id):
    """Collate examples[indices] for `stage`, keeping their indices (to look up precomputed reference log-probs)."""
    collate = data.sft_collate if stage == "sft" else data.dpo_collate
    batch = collate([examples[i] for i in indices], pad_id)
    batch["index"] = torch.tensor(indices)
    return batch


def in_order(n_examples, batch_size):
    """Index lists covering 0..n_examples-1 in order, batch_size at a time (evaluation, precomputation)."""
    return [list(range(start, min(start + batch_size, n_examples))) for start in range(0, n_examples, batch_size)]


def step_batches(stage, cfg, train_set, step, pad_id):
    """The micro-batches (dicts of tensors) of one optimizer step: this process's share of the step's examples,
    a contiguous 1/world_size of them (rank 0 the first), in grad_accum micro-batches; all of them in one process."""
    world_size, rank = data_parallel.world_size(), data_parallel.rank()
    share = cfg.batch_size // world_size  # examples (or windows) of this process
    micro = share // cfg.grad_accum
    if stage == "pretrain":  # random windows of max_length tokens, drawn from a per-step generator
        windows = list(data.lm_batches(train_set, micro, cfg.max_length, num_batches=world_size * cfg.grad_accum,
                                       generator=torch.Generator().manual_seed(cfg.seed * 100_003 + step)))
        return [lm_batch(x, y) for x, y in windows[rank * cfg.grad_accum:(rank + 1) * cfg.grad_accum]]  # (micro, T)
    indices = example_indices(len(train_set), cfg.batch_size, step, cfg.seed)[rank * share:(rank + 1) * share]
    return [pair_batch(stage, train_set, indices[start:start + micro], pad_id) for start in range(0, share, micro)]


# -----------------------------------------------------------------------------
# Losses

def lm_loss(model, batch, tokens_in_step, cfg):
    """Summed next-token NLL over the batch's target tokens, divided by the whole step's target tokens.

    With cfg.fused_linear the log-probs come from the hidden states, without the (B, T, V) logits."""
    logps = dpo.sequence_logps(model, batch["input_ids"], batch["labels"], batch["mask"], impl=cfg.impl,
                               fused_linear=cfg.fused_linear)  # (B,) fp32
    return -logps.sum() / tokens_in_step


@torch.no_grad()
def reference_logps(reference, pairs, cfg, pad_id, device, autocast, desc="reference log-probs"):
    """log pi_ref(y_w|x) and log pi_ref(y_l|x) of every pair: (N, 2) float32 on the CPU (summed, not means).

    Computed under the same `autocast` as the policy's forward, so that the reference sees exactly what the
    policy sees: at step 0 (policy == reference) the implicit rewards are 0 and the loss is log 2.
    `reference`: a frozen model, or a lora.BaseModelView (the policy with its adapters off; it sets eval itself).
    Data-parallel: the processes take the batches in turn and gather the rows, so each holds the whole table."""
    if isinstance(reference, torch.nn.Module):
        reference.eval()
    rows = []
    for indices in tqdm(data_parallel.in_turn(in_order(len(pairs), cfg.batch_size)), desc=desc, leave=False,
                        disable=not data_parallel.is_main()):
        batch = pair_batch("dpo", pairs, indices, pad_id)
        with autocast():
            ref = dpo.concatenated_logps(reference, {k: v.to(device) for k, v in batch.items()}, impl=cfg.impl,
                                         fused_linear=cfg.fused_linear)
        rows.append(torch.stack([ref.chosen, ref.rejected], dim=1).float().cpu())  # (b, 2)
    return torch.cat(data_parallel.gather_in_turn(rows))  # (N, 2)


def dpo_batch_loss(model, batch, cfg, pairs_in_step, ref_table=None, reference=None):
    """DPO loss of one micro-batch, scaled by its share of the step; also the per-pair values for metrics."""
    policy = dpo.concatenated_logps(model, batch, impl=cfg.impl, fused_linear=cfg.fused_linear)  # PairLogps (b,)
    if reference is not None:  # live reference
        with torch.no_grad():
            ref = dpo.concatenated_logps(reference, batch, impl=cfg.impl, fused_linear=cfg.fused_linear)
        ref_chosen, ref_rejected = ref.chosen, ref.rejected
    else:  # precomputed once before training
        ref_chosen, ref_rejected = ref_table[batch["index"].cpu()].to(policy.chosen.device).unbind(dim=1)
    pi_chosen, pi_rejected = policy.chosen, policy.rejected
    if cfg.loss == "ipo":  # IPO is defined on length-normalised log-probs (per-token means); so are its
        # rewards/* and logps/* metrics here, where TRL logs beta * summed log-ratios for the same loss
        pi_chosen, ref_chosen = pi_chosen / policy.chosen_tokens, ref_chosen / policy.chosen_tokens
        pi_rejected, ref_rejected = pi_rejected / policy.rejected_tokens, ref_rejected / policy.rejected_tokens
    chosen_lengths = torch.ones_like(pi_chosen) if cfg.loss == "ipo" else policy.chosen_tokens  # for RPO's NLL
    losses, chosen_rewards, rejected_rewards = dpo.dpo_loss(
        pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta=cfg.beta, loss_type=cfg.loss,
        label_smoothing=cfg.label_smoothing, rpo_alpha=cfg.rpo_alpha, chosen_lengths=chosen_lengths)
    per_pair = dict(losses=losses.detach(), chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards,
                    policy_chosen_logps=pi_chosen.detach(), policy_rejected_logps=pi_rejected.detach())  # (b,) each
    return losses.sum() / pairs_in_step, per_pair


def unlikelihood_batch_loss(model, batch, cfg, pairs_in_step):
    """The paper's Unlikelihood baseline on one micro-batch (dpo.unlikelihood_loss), scaled by its share of the
    step; also the per-pair values for metrics. No reference model."""
    logits = model(batch["input_ids"])  # (2b, T, V): b chosen rows, then b rejected rows
    token_logps = logprob_kernels.token_logprobs(logits, batch["labels"], batch["mask"], impl=cfg.impl)  # (2b, T) fp32
    b = token_logps.shape[0] // 2
    chosen_logps, chosen_tokens = token_logps[:b].sum(dim=1), batch["mask"][:b].sum(dim=1)  # (b,), (b,)
    losses = dpo.unlikelihood_loss(chosen_logps, chosen_tokens, token_logps[b:], batch["mask"][b:],
                                   alpha=cfg.unlikelihood_alpha)  # (b,)
    per_pair = {"loss": losses.detach(), "logps/chosen": chosen_logps.detach(),
                "logps/rejected": token_logps[b:].detach().sum(dim=1)}  # (b,) each
    return losses.sum() / pairs_in_step, per_pair


def pair_loss(stage, model, batch, cfg, pairs_in_step, ref_table=None, reference=None):
    """The loss of a preference-pair stage ("dpo" or "unlikelihood") on one micro-batch, and per-pair values."""
    if stage == "dpo":
        return dpo_batch_loss(model, batch, cfg, pairs_in_step, ref_table, reference)
    return unlikelihood_batch_loss(model, batch, cfg, pairs_in_step)


def cat_pair_values(per_pair_values):
    """Several micro-batches' per-pair dicts (of pair_loss) as one dict of concatenated (n,) tensors."""
    return {k: torch.cat([v[k] for v in per_pair_values]) for k in per_pair_values[0]}


def pair_metrics(stage, values):
    """Metrics of a dict of per-pair (n,) tensors (cat_pair_values): dpo.dpo_metrics for DPO, means else."""
    if stage == "dpo":
        return dpo.dpo_metrics(**values)
    return {k: v.float().mean().item() for k, v in values.items()}


def step_pair_values(per_pair_values):
    """The per-pair values of the whole step from this process's micro-batches: every process's, gathered in
    the order of the step's examples (as step_batches shares them out). One dict of (batch_size,) tensors."""
    mine = cat_pair_values(per_pair_values)  # (batch_size / N,) each
    return {k: data_parallel.all_gather_cat(v) for k, v in mine.items()}  # (batch_size,) each


@torch.no_grad()
def evaluate_heldout(stage, model, heldout_set, cfg, pad_id, device, ref_table=None, reference=None):
    """Held-out metrics: token-mean NLL as "loss" for pretrain/sft; the pair_metrics keys for dpo/unlikelihood.

    Data-parallel: the processes take the batches in turn and gather the results in order, so every process
    gets the single-process numbers."""
    model.eval()
    if stage == "pretrain":  # a fixed set of windows from the held-out stream
        windows = data.lm_batches(heldout_set, cfg.batch_size, cfg.max_length, num_batches=4,
                                  generator=torch.Generator().manual_seed(cfg.seed))
        batches = [lm_batch(x, y) for x, y in windows]
    else:
        batches = [pair_batch(stage, heldout_set, indices, pad_id)
                   for indices in in_order(len(heldout_set), cfg.batch_size)]
    total_tokens = sum(int(b["mask"].sum()) for b in batches)
    mine = [{k: v.to(device) for k, v in b.items()} for b in data_parallel.in_turn(batches)]
    if stage in ("dpo", "unlikelihood"):
        return pair_metrics(stage, cat_pair_values(data_parallel.gather_in_turn(
            [pair_loss(stage, model, b, cfg, 1, ref_table, reference)[1] for b in mine])))
    return {"loss": sum(data_parallel.gather_in_turn([lm_loss(model, b, total_tokens, cfg).item() for b in mine]))}


# -----------------------------------------------------------------------------
# The training loop

def train(stage, cfg, model, train_set, heldout_set, *, pad_id=0, reference=None, log=print):
    """Train `model` in place for `cfg.steps` optimizer steps and return the last held-out metrics.

    stage: "pretrain" (train_set, heldout_set: 1-D int64 token streams), "sft", "dpo" or "unlikelihood"
    (lists of data.EncodedPair; pad_id pads their batches, e.g. the tokenizer's EOS). For DPO, `reference` is
    the frozen reference model (required): a copy of the initial model, or for a model with LoRA adapters
    lora.BaseModelView(model), the same network with its adapters off.
    A model with LoRA adapters (lora.apply_lora) trains only them; its checkpoints hold only them, with
    the sha256 of the base weights (loaded from cfg.init), and --resume checks that the base is the same.
    Writes cfg.out_dir/{config.json, metrics.jsonl, ckpt.pt, best.pt (with early stopping), step_NNNNNN.pt
    (the weights at every checkpoint, with keep_checkpoints)}.
    In a torch.distributed process group (torchrun), every process calls it with the same arguments and they
    train data-parallel (see the module's docstring); only rank 0 writes and logs.
    """
    assert stage in TRAINING_STAGES, stage
    cfg = dataclasses.replace(cfg, world_size=data_parallel.world_size())
    check_values(cfg)
    rank, main, log = data_parallel.rank(), data_parallel.is_main(), data_parallel.main_only(log)
    if not cfg.max_length:
        raise ConfigError("--max-length: resolve it first (resolve_lengths), train() needs a number")
    if stage == "dpo" and reference is None:
        raise ValueError("DPO needs a reference model")
    ckpt_path, best_path = os.path.join(cfg.out_dir, "ckpt.pt"), os.path.join(cfg.out_dir, "best.pt")
    resume_state = load_checkpoint(ckpt_path) if cfg.resume else None  # a bad checkpoint fails before any write
    base = describe_lora_base(cfg.init, model) if lora.lora_layers(model) else None  # LoRA: the frozen base
    if resume_state is not None:  # adapters resume only onto their own base; full weights only without LoRA
        saved = resume_state.get("lora", {}).get("base", {}).get("sha256")  # None: a full fine-tuning checkpoint
        if saved != (base["sha256"] if base else None):
            written_by = ("LoRA on other base weights" if base else "LoRA") if saved else "full fine-tuning"
            raise CheckpointError(f"--resume {ckpt_path}: written by a {written_by} run; this one is "
                                  f"{'LoRA on ' + repr(cfg.init) if base else 'full fine-tuning'}")
    device, autocast, scaler = resolve_device(cfg)
    if main:
        os.makedirs(cfg.out_dir, exist_ok=True)
        with open(os.path.join(cfg.out_dir, "config.json"), "w") as f:
            json.dump({"stage": stage, **dataclasses.asdict(cfg)}, f, indent=2)
    model.to(device)
    torch.manual_seed(cfg.seed + rank)  # dropout: a stream of its own on each process (rank 0: the usual one)

    # DPO: the reference's log-probs, precomputed once under the policy's autocast (then the reference is
    # dropped: this function held the last reference to it), or computed live every step.
    ref_table = heldout_ref_table = live_reference = None
    if stage == "dpo":
        is_copy = isinstance(reference, torch.nn.Module)  # else a lora.BaseModelView of model: nothing to move
        if is_copy:
            reference.to(device).eval().requires_grad_(False)
        if cfg.reference == "precompute":
            ref_table = reference_logps(reference, train_set, cfg, pad_id, device, autocast)  # (N, 2)
            heldout_ref_table = reference_logps(reference, heldout_set, cfg, pad_id, device, autocast,
                                                "held-out reference")
            if is_copy:
                reference.to("cpu")  # off the accelerator even if the caller keeps a reference to it
            reference = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
        else:
            live_reference = reference

    optimizer = make_optimizer(model, cfg)
    metrics_path = os.path.join(cfg.out_dir, "metrics.jsonl")
    step, extra, eval_row = 0, {"best_score": -math.inf, "evals_since_best": 0}, {}
    if resume_state is not None:
        state = resume_state
        if base:
            lora.load_lora_state_dict(model, state["model"])
        else:
            model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, extra = state["step"], state["extra"]
        saved_rngs = state.get("rng_by_rank", [state["rng"]])  # one per rank of the run that saved it
        if rank < len(saved_rngs):  # else this process keeps its fresh seed
            restore_rng(saved_rngs[rank])
        log(f"resumed from {ckpt_path} at step {step}")
    if main:  # metrics.jsonl: keep rows up to the resumed step (later ones are recomputed), else start it anew
        rows = []
        if cfg.resume and os.path.exists(metrics_path):
            with open(metrics_path) as f:
                rows = [r for r in map(json.loads, f) if r["step"] <= step]
        with open(metrics_path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    writer = tensorboard_writer(cfg.out_dir) if main else None

    def record(row):
        if not main:
            return
        with open(metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if writer is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    writer.add_scalar(f"{row['split']}/{k}", v, row["step"])

    step_model = torch.compile(model) if cfg.compile else model
    progress = tqdm(total=cfg.steps, initial=step, desc=stage, dynamic_ncols=True, disable=not main)
    while step < cfg.steps:
        # -- one optimizer step: accumulate the micro-batches' gradients, then clip and update
        lr = learning_rate(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batches = [{k: v.to(device) for k, v in b.items()}
                   for b in step_batches(stage, cfg, train_set, step, pad_id)]
        model.train()
        step_loss, per_pair_values = 0.0, []
        tokens_in_step = data_parallel.all_reduce_sum(sum(int(b["mask"].sum()) for b in batches))  # every process's
        for batch in batches:
            with autocast():
                if stage in ("dpo", "unlikelihood"):
                    loss, per_pair = pair_loss(stage, step_model, batch, cfg, cfg.batch_size, ref_table,
                                               live_reference)
                    per_pair_values.append(per_pair)
                else:
                    loss = lm_loss(step_model, batch, max(1, tokens_in_step), cfg)
            (scaler.scale(loss) if scaler else loss).backward()
            step_loss += loss.item()
        # data-parallel: each process holds the gradient of its share of the step's loss; their sum is the step's
        data_parallel.sum_gradients(model)
        step_loss = data_parallel.all_reduce_sum(step_loss)
        if scaler:
            scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).item()
        if not (math.isfinite(step_loss) and (math.isfinite(grad_norm) or scaler)):
            progress.close()
            where = f"{ckpt_path} (step {extra.get('saved_step', 0)})" if os.path.exists(ckpt_path) else "none"
            raise NonFiniteLossError(f"step {step + 1}: non-finite loss {step_loss} or gradient norm {grad_norm}; "
                                     f"stopped without saving. Last good checkpoint: {where}. Try a lower --lr.")
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        # -- logging, evaluation, checkpoints
        row = {"split": "train", "step": step, "lr": lr, "grad_norm": grad_norm}
        row.update(pair_metrics(stage, step_pair_values(per_pair_values)) if per_pair_values else {"loss": step_loss})
        record(row)
        progress.update(1)
        progress.set_postfix({k: f"{row[k]:.3f}" for k in ("loss", "rewards/accuracies") if k in row})
        stop = False
        if step % cfg.eval_every == 0 or step == cfg.steps:
            with autocast():
                eval_row = {"split": "eval", "step": step, **evaluate_heldout(
                    stage, model, heldout_set, cfg, pad_id, device, heldout_ref_table, live_reference)}
            record(eval_row)
            log(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in eval_row.items()))
            score = eval_row.get("rewards/accuracies", -eval_row["loss"])  # LM stages: lower loss is better
            if score > extra["best_score"]:
                extra.update(best_score=score, evals_since_best=0, best_step=step)
                if cfg.early_stop_patience and main:
                    save_checkpoint(best_path, model, None, step, dataclasses.asdict(cfg), extra, base)
            else:
                extra["evals_since_best"] += 1
                stop = 0 < cfg.early_stop_patience <= extra["evals_since_best"]
                if stop:
                    log(f"early stop at step {step}: no better held-out score for {cfg.early_stop_patience} "
                        f"evaluations; the best (step {extra['best_step']}) is in {best_path}")
        if step % cfg.save_every == 0 or step == cfg.steps or stop:
            extra["saved_step"] = step
            rng_by_rank = data_parallel.gather_objects(rng_state())  # --resume gives each process its own back
            if main:
                save_checkpoint(ckpt_path, model, optimizer, step, dataclasses.asdict(cfg), extra, base, rng_by_rank)
            if main and cfg.keep_checkpoints:
                save_checkpoint(os.path.join(cfg.out_dir, f"step_{step:06d}.pt"), model, None, step,
                                dataclasses.asdict(cfg), extra, base)
        if stop:
            break
    progress.close()
    if writer is not None:
        writer.close()
    data_parallel.barrier()  # every process returns once rank 0's files are written
    return eval_row


def tensorboard_writer(out_dir):
    """A TensorBoard SummaryWriter when the tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(os.path.join(out_dir, "tb"))
