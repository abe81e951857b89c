"""The questions of a single-GPU DPO user, answered in miniature on the embedded sentiment task
(after the BTLM-Chat DPO study, Cerebras, 2023).

    python train.py study [--quick] [--out-dir out/study]

Every DPO run starts from the base model and pairs of `experiments/base.py` (the demo's), and every
policy is judged on the same held-out prompts as the frontier (`points.evaluate_point`: 256 samples,
ground-truth reward, KL(pi || pi_ref) in nats, word and bigram fluency, each with a 95% confidence
interval) plus its win rate against the reference's samples of the same prompt and index (a binomial
95% interval).

(a) LoRA against full fine-tuning: the demo's DPO (beta 0.1, 16 steps of 32 pairs) with all weights,
    and with rank-8 adapters (alpha 16) at several learning rates; trainable parameters, the
    training state's memory (weights, reference copy, gradients, AdamW moments: counted), wall time,
    and the peak memory of one DPO step at GPT-2 124M shapes measured by bench/bench_lora_memory.py.
(b) fp32 against bf16 autocast (on a CPU too): the same run under torch.autocast(bfloat16).
(c) beta against forgetting: DPO for 3 epochs at several beta; forgetting = the rise of the
    next-token loss on the held-out part of the pre-training corpus (the split pre-training never
    saw), paired over the same 256
    windows for the policy and the base (mean difference, 95% interval). The BTLM-Chat DPO study:
    larger beta,
    less forgetting.
(d) Early stopping: one run of 6 epochs with a checkpoint every 4 steps; at each, the held-out
    implicit-reward accuracy and DPO loss (metrics.jsonl) beside the sampled win rate. Do their
    peaks coincide (the BTLM-Chat DPO study, Figures 3-4)?
(e) The base's quality: the same DPO from a base pre-trained 5x fewer steps (with its own pairs,
    sampled from it, as the pipeline would make them).
(f) A second round labelled by an oracle: pairs sampled from the round-1 policy (the run of (a))
    and labelled by the ground-truth reward, then a second round of DPO from it (iterative DPO with
    an oracle as the labeller, not the paper's open question of self-labelling, where the policy
    labels its own samples), with the round-1 policy as the reference (iterative DPO's choice: the
    KL is measured from the model whose samples made the pairs) and, for comparison, with the base
    as the reference. Control: the same number of steps on the original pairs.

Outputs in OUT_DIR: study.json (settings, and per question its rows), study.png (one panel per
question), runs/ (each run's config.json, metrics.jsonl, checkpoints), samples/NAME.jsonl (prompt,
completion, reward, log-ratio per sample: enough to re-measure any number), points/ (cached
evaluations), lm_nll/NAME.json (the per-window held-out losses of (c)), pairs_round2_*.jsonl. Runs
and evaluations are cached, so a rerun costs seconds.
"""

import copy
import dataclasses
import json
import math
import os
import subprocess
import sys
import time

import torch

import data
import logprob_kernels
import sentiment
from experiments import base, plots, points, verdicts
from plumbing import commands, lora
from plumbing.checkpoint import load_model
from plumbing.config import lora_targets, resolve_lengths

FULL = dict(dpo=dict(lr=2e-4, steps=16, batch_size=32, beta=0.1),  # the demo's DPO: one epoch
            lora=dict(rank=8, alpha=16.0, lrs=(2e-4, 1e-3, 3e-3)),
            betas=(0.03, 0.1, 0.3, 1.0, 3.0), forgetting=dict(lr=2e-4, steps=48, batch_size=32),
            early=dict(lr=2e-4, steps=96, batch_size=32, beta=0.1, checkpoints=24),
            weak_pretrain_steps=100, self_label=dict(k=4, seed=5),
            samples_per_prompt=2, seed=11, lm_windows=256, memory_bench=True)
QUICK = dict(FULL, dpo=dict(FULL["dpo"], steps=8), lora=dict(FULL["lora"], lrs=(3e-3,)),
             betas=(0.1, 1.0),
             forgetting=dict(FULL["forgetting"], steps=8),
             early=dict(FULL["early"], steps=8, checkpoints=2),
             weak_pretrain_steps=50, lm_windows=64, memory_bench=False)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dpo_run(name, prepared, study_settings, out_dir, log, run=None, checkpoints=1, **changes):
    """Train (or reuse) one DPO run of the study on `prepared` (what base.prepare returned): the
    study's DPO settings, updated by `run` (lr, steps, batch_size, beta), then `changes`
    (TrainConfig fields by name). Returns (cfg, wall seconds of its training)."""
    run = dict(study_settings["dpo"], **(run or {}))
    changes = {"beta": run.pop("beta"),
               "seed": study_settings.get("train_seed", prepared.settings["seed"]), **changes}
    cfg = points.training_config("dpo", os.path.join(out_dir, "runs", name), prepared, run,
                                 checkpoints,
                                 **changes)
    points.train_cached("dpo", cfg, log)
    return cfg, points.wall_seconds(cfg)


def eval_rows(run_dir):
    """{step: held-out metrics row} of a run's metrics.jsonl."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return {r["step"]: r for r in map(json.loads, f) if r["split"] == "eval"}


def rewards_of(out_dir, name):
    """The per-sample rewards of an evaluated point, read back from samples/NAME.jsonl."""
    with open(os.path.join(out_dir, "samples", f"{name}.jsonl")) as f:
        return [json.loads(line)["reward"] for line in f]


def row_path(cfg, step=None):
    """The checkpoint of a run at `step` (default: its last)."""
    return os.path.join(cfg.out_dir, f"step_{step or cfg.steps:06d}.pt")


def point(name, method, setting, cfg, prepared, study_settings, out_dir, log,
          reference_name="reference", step=None):
    """Evaluate a run's checkpoint (the last unless `step`): points.evaluate_point, plus the win
    rate against the reference point's samples and the run's held-out implicit-reward metrics at
    that step."""
    step = step or cfg.steps
    p = points.evaluate_point(name, method, setting, row_path(cfg, step), prepared, study_settings,
                              out_dir, log,
                              step=step)
    win, tie = sentiment.win_and_tie_rates(rewards_of(out_dir, name),
                                           rewards_of(out_dir, reference_name))
    heldout = eval_rows(cfg.out_dir)[step]
    return {**p, "win_rate": win, "tie_rate": tie,
            "win_rate_ci95": 1.96 * math.sqrt(win * (1 - win) / p["n_samples"]),
            "heldout_accuracy": heldout["rewards/accuracies"], "heldout_loss": heldout["loss"],
            "heldout_margin": heldout["rewards/margins"]}


# -----------------------------------------------------------------------------
# (a) LoRA against full fine-tuning, (b) fp32 against bf16

def state_bytes(cfg, prepared):
    """Bytes of the training state a DPO run keeps (fp32): weights, a reference copy (full
    fine-tuning with a live reference), gradients and AdamW's two moments of the trainable
    parameters. Counted, not measured."""
    model = copy.deepcopy(prepared.reference)
    if cfg.lora_rank:
        lora.apply_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, lora_targets(cfg))
    weights, trainable = sum(p.numel() for p in model.parameters()), lora.count_trainable(model)
    reference_copy = 0 if cfg.lora_rank else weights
    return {"trainable": trainable, "state_bytes": 4 * (weights + reference_copy + 3 * trainable)}


def memory_bench(out_dir, log):
    """bench/bench_lora_memory.py at GPT-2 124M shapes (each variant in its own process), cached."""
    path = os.path.join(out_dir, "lora_memory.json")
    if not os.path.isfile(path):
        log("== (a) peak memory of one DPO step at GPT-2 124M shapes "
            "(bench/bench_lora_memory.py) ==")
        subprocess.run([sys.executable, os.path.join(REPO, "bench", "bench_lora_memory.py"),
                        "--json", path],
                       check=True)
    with open(path) as f:
        return json.load(f)


def lora_and_precision(prepared, study_settings, out_dir, log):
    """(a) and (b): rows for full DPO, LoRA at each learning rate, and full DPO under bf16
    autocast."""
    rows = []
    lo = study_settings["lora"]
    variants = [("full", "full fine-tuning, fp32", {}, {})]
    variants += [(f"lora-r{lo['rank']}-lr{lr:g}",
                  f"LoRA r={lo['rank']} alpha={lo['alpha']:g}, lr {lr:g}", {"lr": lr},
                  {"lora_rank": lo["rank"], "lora_alpha": lo["alpha"]}) for lr in lo["lrs"]]
    variants += [("full-bf16", "full fine-tuning, bf16 autocast", {}, {"dtype": "bfloat16"})]
    for name, label, run, changes in variants:
        cfg, seconds = dpo_run(name, prepared, study_settings, out_dir, log, run=run, **changes)
        row = point(name, label, {"lr": cfg.lr, "lora_rank": cfg.lora_rank, "dtype": cfg.dtype},
                    cfg, prepared,
                    study_settings, out_dir, log)
        rows.append({**row, **state_bytes(cfg, prepared), "train_seconds": seconds,
                     "ckpt_bytes": os.path.getsize(os.path.join(cfg.out_dir, "ckpt.pt"))})
    return rows


def precision_gap(out_dir):
    """Largest |train loss fp32 - train loss bf16| over the steps of (b)'s two runs, and the final
    gap."""
    losses = []
    for name in ("full", "full-bf16"):
        with open(os.path.join(out_dir, "runs", name, "metrics.jsonl")) as f:
            losses.append([r["loss"] for r in map(json.loads, f) if r["split"] == "train"])
    gaps = [abs(fp32 - bf16) for fp32, bf16 in zip(*losses)]
    return {"max_train_loss_gap": max(gaps), "final_train_loss_gap": gaps[-1],
            "train_losses": losses}


# -----------------------------------------------------------------------------
# (c) beta against forgetting

def heldout_windows(prepared, n_windows):
    """n_windows fixed windows (x, y), each (32, T), of the corpus part that pre-training held
    out."""
    cfg = resolve_lengths(base.pretrain_config("", prepared.settings),
                          prepared.settings["block_size"])
    # the split pre-training evaluated on, never trained on
    _, heldout = commands.text_splits(cfg, prepared.tokenizer)
    return list(data.lm_batches(heldout, 32, cfg.max_length, num_batches=max(1, n_windows // 32),
                                generator=torch.Generator().manual_seed(0)))


@torch.no_grad()
def window_nlls(model, windows):
    """Mean next-token NLL (nats per token) of `model` on each window: a list of floats, one per
    window."""
    model.eval()
    out = []
    for x, y in windows:
        # (32, T) fp32
        logps = logprob_kernels.token_logprobs(model(x), y, torch.ones_like(y, dtype=torch.bool))
        out += (-logps.mean(dim=1)).tolist()
    return out


def forgetting(prepared, study_settings, out_dir, log):
    """(c): per beta, reward/KL/fluency and the paired rise of the held-out pre-training loss over
    the base."""
    windows = heldout_windows(prepared, study_settings["lm_windows"])
    base_nll = window_nlls(prepared.reference, windows)
    rows = []
    for beta in study_settings["betas"]:
        cfg, _ = dpo_run(f"forget-beta{beta}", prepared, study_settings, out_dir, log,
                         run=dict(study_settings["forgetting"], beta=beta))
        row = point(f"forget-beta{beta}", "DPO 3 epochs", {"beta": beta}, cfg, prepared,
                    study_settings, out_dir, log)
        nll = window_nlls(load_model(row_path(cfg)), windows)
        os.makedirs(os.path.join(out_dir, "lm_nll"), exist_ok=True)
        with open(os.path.join(out_dir, "lm_nll", f"forget-beta{beta}.json"), "w") as f:
            json.dump({"policy": nll, "base": base_nll}, f)
        rise, rise_ci = sentiment.mean_ci95([p - q for p, q in zip(nll, base_nll)])
        rows.append({**row, "beta": beta, "heldout_lm_nll": sum(nll) / len(nll),
                     "base_lm_nll": sum(base_nll) / len(base_nll), "nll_rise": rise,
                     "nll_rise_ci95": rise_ci})
        log(f"{'':>24}  held-out LM loss {rows[-1]['heldout_lm_nll']:.4f} (base "
            f"{rows[-1]['base_lm_nll']:.4f}): rise {rise:+.4f} +- {rise_ci:.4f} nats/token")
    return rows


# -----------------------------------------------------------------------------
# (d) early stopping, (e) a weaker base, (f) a second round labelled by an oracle

def early_stopping(prepared, study_settings, out_dir, log):
    """(d): every checkpoint of one long run, with its held-out accuracy/loss and sampled win
    rate."""
    early = study_settings["early"]
    cfg, _ = dpo_run("early", prepared, study_settings, out_dir, log,
                     checkpoints=early["checkpoints"],
                     run={key: early[key] for key in ("lr", "steps", "batch_size", "beta")})
    rows = [point(f"early-step{step}", "DPO along training", {"beta": early["beta"]}, cfg, prepared,
                  study_settings,
                  out_dir, log, step=step) for step in sorted(eval_rows(cfg.out_dir))]
    best = {key: max(rows, key=lambda r: sign * r[key])["step"]
            for key, sign in (("heldout_accuracy", 1), ("heldout_margin", 1), ("heldout_loss", -1),
                              ("win_rate", 1), ("reward", 1))}
    top_accuracy = max(row["heldout_accuracy"] for row in rows)
    first_top_accuracy = next(row["step"] for row in rows if row["heldout_accuracy"]
                              == top_accuracy)
    return {"rows": rows, "best_step": best, "first_step_at_top_accuracy": first_top_accuracy}


def weaker_base(prepared, study_settings, out_dir, base_dir, log, default_row):
    """(e): the same DPO as (a)'s full run (`default_row`), from a base pre-trained on fewer steps,
    with pairs sampled from that base (cached in BASE_DIR/base-weak)."""
    weak_steps = study_settings["weak_pretrain_steps"]
    weak = base.prepare(os.path.join(base_dir, "base-weak"),
                        dict(prepared.settings, pretrain_steps=weak_steps),
                        log=log)
    points.evaluate_point("weak-reference", "reference", {}, None, weak, study_settings, out_dir,
                          log)
    cfg, _ = dpo_run("weak-dpo", weak, study_settings, out_dir, log)
    weak_row = point("weak-dpo", f"base of {weak_steps} steps", {}, cfg, weak, study_settings,
                     out_dir, log,
                     reference_name="weak-reference")
    rows = []
    for row, base_run, reference_name in ((default_row, prepared, "reference"),
                                          (weak_row, weak, "weak-reference")):
        with open(os.path.join(out_dir, "points", f"{reference_name}.json")) as f:
            ref_point = json.load(f)
        pretrain_loss = [r["loss"]
                         for r in eval_rows(os.path.dirname(base_run.reference_path)).values()][-1]
        method = (row["method"] if base_run is weak
                  else f"base of {base_run.settings['pretrain_steps']} steps")
        rows.append({**row, "method": method, "pretrain_steps": base_run.settings["pretrain_steps"],
                     "base_heldout_lm_loss": pretrain_loss, "reference_reward": ref_point["reward"],
                     "reference_reward_ci95": ref_point["reward_ci95"],
                     "reference_bigram_fluency": ref_point["bigram_fluency"],
                     "train_pairs": base_run.pair_reports["train"]["n_pairs"]})
    return rows


def round2_pairs(policy_path, prepared, study_settings, out_dir, log):
    """Pairs sampled from the round-1 policy on the train and held-out prompts, labelled by the
    reward; cached."""
    paths = {}
    policy = None
    for split, prompts, seed in (("train", prepared.train_prompts,
                                  study_settings["self_label"]["seed"]),
                                 ("heldout", prepared.heldout_prompts,
                                  study_settings["self_label"]["seed"] + 1)):
        paths[split] = os.path.join(out_dir, f"pairs_round2_{split}.jsonl")
        key_path = paths[split] + ".source.json"
        key = {"policy": policy_path, "mtime": os.path.getmtime(policy_path),
               "k": study_settings["self_label"]["k"], "seed": seed}
        if os.path.isfile(key_path) and json.load(open(key_path)) == key:
            continue
        policy = policy or load_model(policy_path).eval()
        _, report = sentiment.build_preference_pairs(
            policy, prepared.tokenizer, prompts, k=study_settings["self_label"]["k"],
            min_reward_gap=prepared.settings["min_reward_gap"],
                                                     max_new_tokens=prepared.settings["max_new_tokens"],
            seed=seed, path=paths[split], return_report=True)
        log(f"round-2 pairs ({split}): {report.summary()}")
        with open(key_path, "w") as f:
            json.dump(key, f)
    return paths


def oracle_second_round(prepared, study_settings, out_dir, log, round1, early):
    """(f): a second DPO round on the round-1 policy's samples labelled by the ground truth (an
    oracle), against two references.

    round1: (a)'s full DPO row (its run is round 1); early: (d)'s result, whose checkpoint at twice
    round 1's steps is the control (the same number of DPO steps, all on the original pairs)."""
    round1_path = os.path.join(out_dir, "runs", "full",
                               f"step_{study_settings['dpo']['steps']:06d}.pt")
    paths = round2_pairs(round1_path, prepared, study_settings, out_dir, log)
    rows = [{**round1, "method": "round 1 (the run of (a))"}]
    for name, label, reference_init in (("round2-ref-round1", "round 2, reference = round-1 policy",
                                         ""),
                                        ("round2-ref-base", "round 2, reference = base",
                                         prepared.reference_path)):
        cfg, _ = dpo_run(name, prepared, study_settings, out_dir, log, init=round1_path,
                         reference_init=reference_init,
                         data=paths["train"], heldout_data=paths["heldout"])
        row = point(name, label, {"reference": "base" if reference_init else "round 1"}, cfg,
                    prepared,
                    study_settings, out_dir, log)
        # the same samples, log-ratios against round 1 instead
        round1_model = load_model(round1_path).eval()
        to_round1 = points.evaluate_point(f"{name}-vs-round1", label, row["setting"], row_path(cfg),
                                          dataclasses.replace(prepared, reference=round1_model),
                                          study_settings,
                                          out_dir, log)
        rows.append({**row, "kl_to_round1": to_round1["kl"],
                     "kl_to_round1_ci95": to_round1["kl_ci95"]})
    rows += [{**r, "method": "control: DPO on the original pairs, same steps as rounds 1 + 2"}
             for r in early["rows"] if r["step"] == 2 * study_settings["dpo"]["steps"]]
    return rows


# -----------------------------------------------------------------------------

def run(out_dir="out/study", quick=False, log=print, train_seed=None, base_dir=None):
    """Run every question of the study; returns the result dict (also OUT_DIR/study.json) and writes
    study.png.

    train_seed: the seed of every training run (default: the base's); base_dir: where the base
    models and their pairs are cached (default: OUT_DIR), so that several training seeds share
    them."""
    start = time.time()
    settings, study_settings = (base.QUICK, QUICK) if quick else (base.FULL, FULL)
    if train_seed is not None:
        study_settings = dict(study_settings, train_seed=train_seed)
    base_dir = base_dir or out_dir
    for sub in ("points", "samples", "runs"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    prepared = base.prepare(os.path.join(base_dir, "base"), settings, log=log)
    points.evaluate_point("reference", "reference", {}, None, prepared, study_settings, out_dir,
                          log)
    log("== (a) LoRA against full fine-tuning, (b) fp32 against bf16 autocast ==")
    runs_ab = lora_and_precision(prepared, study_settings, out_dir, log)
    result = {"settings": {"base": settings, "study": study_settings}, "quick": quick,
              "a_lora": [r for r in runs_ab if r["name"] != "full-bf16"],
              "a_memory_gpt2": memory_bench(out_dir, log) if study_settings["memory_bench"]
              else None,
              "b_precision": {"rows": [r for r in runs_ab if r["name"] in ("full", "full-bf16")],
                              **precision_gap(out_dir)}}
    log("== (c) beta against forgetting ==")
    result["c_forgetting"] = forgetting(prepared, study_settings, out_dir, log)
    log("== (d) early stopping: held-out accuracy against the sampled win rate ==")
    result["d_early_stopping"] = early_stopping(prepared, study_settings, out_dir, log)
    log("== (e) a weaker base ==")
    result["e_base_quality"] = weaker_base(prepared, study_settings, out_dir, base_dir, log,
                                           runs_ab[0])
    log("== (f) a second round on the round-1 policy's samples, labelled by the ground truth ==")
    result["f_second_round"] = oracle_second_round(prepared, study_settings, out_dir, log,
                                                   runs_ab[0], result["d_early_stopping"])
    result["wall_seconds"] = time.time() - start
    with open(os.path.join(out_dir, "study.json"), "w") as f:
        json.dump(result, f, indent=2)
    plots.plot_study(result, os.path.join(out_dir, "study.png"))
    log(format_study(result)
        + f"\nwall time {result['wall_seconds']:.0f} s; wrote {out_dir}/study.json, study.png")
    return result


def run_seeds(out_dir="out/study", quick=False, seeds=(), log=print):
    """The study again with other training seeds (OUT_DIR/seedN, sharing OUT_DIR's base models), and
    what each of its claims measures on every seed, beside the base seed's run in OUT_DIR (which
    must be there). Returns and writes OUT_DIR/seeds.json: {"seeds": [...], "claims": [one dict per
    seed], "verdicts": each claim's verdict over the seeds (experiments/verdicts.study_claims)}."""
    with open(os.path.join(out_dir, "study.json")) as f:
        results = [json.load(f)]
    for seed in seeds:
        log(f"== the study with training seed {seed} ==")
        results.append(run(os.path.join(out_dir, f"seed{seed}"), quick, log, train_seed=seed,
                           base_dir=out_dir))
    base_seed = results[0]["settings"]["base"]["seed"]
    summary = {"seeds": [base_seed, *seeds], "claims": [seed_claims(result) for result in results]}
    summary["verdicts"] = verdicts.study_claims(summary)
    with open(os.path.join(out_dir, "seeds.json"), "w") as f:
        json.dump(summary, f, indent=2)
    log(format_seed_claims(summary))
    return summary


def seed_claims(result):
    """What the claims of docs/study.md about a study result rest on, in numbers (one training
    seed)."""
    lora = {row["name"]: row for row in result["a_lora"]}
    along = result["d_early_stopping"]["rows"]  # the full run's checkpoints: its reward-KL curve
    claims = {}
    # (a) LoRA on full fine-tuning's curve: the checkpoint nearest in KL
    for name, row in lora.items():
        if name != "full":
            nearest = min(along, key=lambda point: abs(point["kl"] - row["kl"]))
            claims[f"a: {name}: its KL"] = row["kl"]
            claims[f"a: {name}: its reward minus full's at the nearest KL"] = (row["reward"]
                                                                               - nearest["reward"])
            claims[f"a: {name}: within the intervals"] = abs(row["reward"] - nearest["reward"]) <= (
                row["reward_ci95"] + nearest["reward_ci95"])
    fp32, bf16 = result["b_precision"]["rows"]
    claims["b: largest train-loss gap fp32 / bf16"] = result["b_precision"]["max_train_loss_gap"]
    claims["b: rewards within the intervals"] = abs(fp32["reward"] - bf16["reward"]) <= (
        fp32["reward_ci95"] + bf16["reward_ci95"])
    forgetting = sorted(result["c_forgetting"], key=lambda row: row["beta"])
    rises = [row["nll_rise"] for row in forgetting]
    claims["c: forgetting falls with beta at every step"] = all(a > b for a, b in zip(rises,
                                                                                      rises[1:]))
    claims["c: loss rise per beta"] = rises
    by_beta = {row["beta"]: row for row in forgetting}
    if 0.3 in by_beta:
        claims["c: smallest beta's reward below beta 0.3's"] = (forgetting[0]["reward"]
                                                                < by_beta[0.3]["reward"])
    early = result["d_early_stopping"]
    claims["d: first step at the top held-out accuracy"] = early["first_step_at_top_accuracy"]
    claims["d: step of the best win rate"] = early["best_step"]["win_rate"]
    claims["d: the peaks do not coincide"] = (early["first_step_at_top_accuracy"]
                                              != early["best_step"]["win_rate"])
    strong, weak = result["e_base_quality"]
    weak_gain = weak["reward"] - weak["reference_reward"]
    claims["e: the weaker base's gain over the stronger's"] = weak_gain / (
        strong["reward"] - strong["reference_reward"])
    rounds = {row["setting"].get("reference"): row for row in result["f_second_round"]
              if row.get("setting")}
    if {"round 1", "base"} <= rounds.keys():
        claims["f: KL from the base, reference = base over reference = round 1"] = \
            rounds["base"]["kl"] / rounds["round 1"]["kl"]
        claims["f: reward, reference = round 1 minus reference = base"] = \
            rounds["round 1"]["reward"] - rounds["base"]["reward"]
        claims["f: bigram fluency better with reference = base"] = \
            rounds["base"]["bigram_fluency"] > rounds["round 1"]["bigram_fluency"]
    return claims


def format_seed_claims(summary):
    """The claims' numbers side by side, one column per training seed."""
    lines = [f"{'claim':<66}" + "".join(f"{seed:>12}" for seed in summary["seeds"])]
    for claim in summary["claims"][0]:
        values = [claims.get(claim) for claims in summary["claims"]]
        shown = [("yes" if value else "no") if isinstance(value, bool) else
                 (" ".join(f"{v:+.2f}" for v in value) if isinstance(value, list) else
                  f"{value:.3g}" if isinstance(value, float) else str(value)) for value in values]
        lines.append(f"{claim[:66]:<66}" + "".join(f"{value:>12}" for value in shown))
    return "\n".join(lines)


def _pm(row, key, digits=3, sign=""):
    return f"{row[key]:{sign}.{digits}f} +- {row[key + '_ci95']:.{digits}f}"


def format_study(result):
    """The study's tables as text: one per question, every sampled number with its 95% interval."""
    lines = ["(a) LoRA against full DPO (demo settings: beta 0.1, 16 steps of 32 pairs)",
             f"{'run':<36} {'trainable':>9} {'state MiB':>9} {'ckpt MiB':>8} {'train s':>7} "
             f"{'reward':>15} {'KL':>14} {'bigram fl.':>14} {'win rate':>14} {'acc':>5}"]
    for x in result["a_lora"] + [result["b_precision"]["rows"][-1]]:
        lines.append(f"{x['method']:<36} {x['trainable']:>9,} {x['state_bytes'] / 2**20:>9.2f} "
                     f"{x['ckpt_bytes'] / 2**20:>8.2f} {x['train_seconds']:>7.1f} "
                     f"{_pm(x, 'reward', sign='+')} {_pm(x, 'kl', 2):>14} "
                     f"{_pm(x, 'bigram_fluency')} {_pm(x, 'win_rate')} "
                     f"{x['heldout_accuracy']:>5.3f}")
    if result["a_memory_gpt2"]:
        lines.append("peak memory of one DPO step at GPT-2 124M shapes "
                     "(bench/bench_lora_memory.py): " + ", ".join(
            f"{m['variant']} {m['peak_bytes'] / 2**20:.0f} MiB ({m['peak_vs_full_copy']:.2f}x)"
            for m in result["a_memory_gpt2"]["rows"]))
    p = result["b_precision"]
    lines += ["",
              "(b) bf16 autocast against fp32: largest train-loss gap over the steps "
              f"{p['max_train_loss_gap']:.2e}"
              f", at the end {p['final_train_loss_gap']:.2e} (rows: the last line of "
              "(a) and its first)", "",
              "(c) beta against forgetting (DPO 3 epochs; held-out pre-training loss, "
              "paired over windows)",
              f"{'beta':>6} {'reward':>15} {'KL':>14} {'bigram fl.':>14} "
              f"{'LM loss rise (nats/token)':>26}"]
    for x in result["c_forgetting"]:
        lines.append(f"{x['beta']:>6g} {_pm(x, 'reward', sign='+')} {_pm(x, 'kl', 2):>14} "
                     f"{_pm(x, 'bigram_fluency')} {_pm(x, 'nll_rise', 4, '+'):>26}")
    d = result["d_early_stopping"]
    lines += ["", "(d) early stopping: along one run (beta 0.1, 6 epochs)",
              f"{'step':>5} {'acc':>6} {'held-out loss':>13} {'margin':>7} {'win rate':>14} "
              f"{'reward':>15} {'KL':>14}"]
    for x in d["rows"]:
        lines.append(f"{x['step']:>5} {x['heldout_accuracy']:>6.3f} {x['heldout_loss']:>13.4f} "
                     f"{x['heldout_margin']:>7.3f} {_pm(x, 'win_rate')} "
                     f"{_pm(x, 'reward', sign='+')} {_pm(x, 'kl', 2):>14}")
    lines.append(f"best step by: {d['best_step']}; first step at the top accuracy: "
                 f"{d['first_step_at_top_accuracy']}")
    lines += ["", "(e) the base's quality (same DPO; pairs sampled from each base)",
              f"{'base':<24} {'base LM loss':>12} {'ref reward':>15} {'DPO reward':>15} {'KL':>14} "
              f"{'bigram fl.':>14} {'win rate':>14}"]
    for x in result["e_base_quality"]:
        lines.append(f"{x['method']:<24} {x['base_heldout_lm_loss']:>12.4f} "
                     f"{x['reference_reward']:+.3f} +- {x['reference_reward_ci95']:.3f} "
                     f"{_pm(x, 'reward', sign='+')} {_pm(x, 'kl', 2):>14} "
                     f"{_pm(x, 'bigram_fluency')} {_pm(x, 'win_rate')}")
    lines += ["", "(f) a second round labelled by the ground truth (KL against the base; 'KL to "
              "round 1' for round 2)",
              f"{'run':<62} {'reward':>15} {'KL':>14} {'KL to round 1':>14} {'bigram fl.':>14} "
              f"{'win rate':>14}"]
    for x in result["f_second_round"]:
        to_round1 = _pm(x, "kl_to_round1", 2) if "kl_to_round1" in x else ""
        lines.append(f"{x['method']:<62} {_pm(x, 'reward', sign='+')} {_pm(x, 'kl', 2):>14} "
                     f"{to_round1:>14} {_pm(x, 'bigram_fluency')} {_pm(x, 'win_rate')}")
    return "\n".join(lines)
