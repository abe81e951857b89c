"""The DPO paper's three claims about RLHF, measured on the embedded task beside the frontier.

1. "Your language model is secretly a reward model" (section 5): on the same held-out pairs, the
   pairwise accuracy of the learned reward model and of each DPO run's implicit reward beta log
   pi/pi_ref, and the correlation of each with the ground truth on fresh samples of the reference
   (`secretly_a_reward_model`).
2. Robustness to the sampling temperature (Figure 2, right): each method's best setting, chosen by
   reward on the training prompts (never the held-out ones: `best_settings`), sampled at several
   temperatures (`temperature_panel`); the KL is that of the tempered policy.
3. What RLHF costs (sections 1 and 4): DPO and PPO at their best settings side by side, each trained
   again in a fresh process to measure its wall time and peak memory, with the models it holds, the
   tokens it samples, its hyper-parameters and the lines of code of its path (`cost_table`).
"""

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

import sentiment
from experiments import points
from methods import reward_model
from plumbing.checkpoint import load_model
from plumbing.config import COMMAND_DEFAULTS, TrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORWARD_ENDS = "    # ---- the forward pass ends here"  # model.py: sampling and checkpoints follow
# The files each method's training runs, from the data to the update (model.py: the forward alone
# for DPO).
METHOD_PATHS = {
    "DPO": ("data/batches.py", "model.py (forward)", "logprob_kernels/__init__.py",
            "logprob_kernels/checks.py", "logprob_kernels/logprobs_torch.py", "dpo.py",
            "tensor_checks.py", "reference.py", "loop.py"),
    "PPO": ("data/batches.py", "model.py", "logprob_kernels/__init__.py",
            "logprob_kernels/checks.py", "logprob_kernels/logprobs_torch.py", "tensor_checks.py",
            "methods/reward_model.py", "loop.py", "sentiment/task.py", "methods/ppo.py",
            "methods/rlhf.py"),
}
# The hyper-parameters (flags) of each method's training, and those the frontier sweeps.
HYPER_PARAMETERS = {
    "DPO": (("beta", "lr", "steps", "batch_size"), ("beta",)),
    "PPO": (("reward model: lr", "reward model: steps", "kl_coef", "lr", "value_lr", "steps",
             "batch_size", "clip", "value_clip", "gamma", "lam", "ppo_epochs", "minibatches"),
            ("kl_coef",)),
}


def code_lines(entry):
    """Lines of a file of METHOD_PATHS; "model.py (forward)" counts model.py up to the end of its
    forward."""
    path = entry.split(" ")[0]
    with open(os.path.join(REPO, path)) as f:
        text = f.read()
    if entry.endswith("(forward)"):
        text = text[:text.index(FORWARD_ENDS)].rstrip("\n") + "\n"
    return text.count("\n")


# -----------------------------------------------------------------------------
# Choosing each method's best setting without the held-out prompts

def best_settings(candidates, prepared, frontier_settings, out_dir, log):
    """The final checkpoint of each candidate run scored on as many training prompts as there are
    held-out ones; per method the run with the highest reward there. candidates: {method: [(setting
    dict, cfg)]}. Returns {method: {"setting", "cfg", "train_rows": every candidate's train-prompt
    point}}."""
    best = {}
    for method, runs in candidates.items():
        rows = []
        for setting, cfg in runs:
            final = os.path.join(cfg.out_dir, f"step_{cfg.steps:06d}.pt")
            rows.append(points.evaluate_point(f"train-{os.path.basename(cfg.out_dir)}", method,
                                              setting, final,
                                              prepared, frontier_settings, out_dir, log,
                                              step=cfg.steps,
                                              prompts="train"))
        top = max(range(len(runs)), key=lambda i: rows[i]["reward"])
        best[method] = {"setting": runs[top][0], "cfg": runs[top][1], "train_rows": rows}
    return best


# -----------------------------------------------------------------------------
# 1. Secretly a reward model

def secretly_a_reward_model(prepared, frontier_settings, pool, pool_rewards, rm_path, rm_rows,
                            dpo_runs, log):
    """Pairwise accuracy on the held-out pairs and correlation with the ground truth on fresh
    samples (the first `fresh_samples` of the Best-of-N pool per held-out prompt: samples of the
    reference) of the reward model (when there is one: rm_path not None) and of each DPO run's
    implicit reward. dpo_runs: [(beta, cfg)] of the beta sweep."""
    k, fresh = len(pool.texts[0]), frontier_settings["fresh_samples"]
    index = [i * k + j for i in range(len(pool.texts)) for j in range(fresh)]  # prompt-major
    prompt_ids = [pool.prompt_ids[i] for i in range(len(pool.texts)) for _ in range(fresh)]
    completion_ids = [pool.token_ids[i][j] for i in range(len(pool.texts)) for j in range(fresh)]
    truth = [pool_rewards[i] for i in index]
    eos = prepared.tokenizer.eot_token
    reference_logps = sentiment.completion_logps(prepared.reference, prompt_ids, completion_ids,
                                                 eos)  # (n,)
    rows = []
    if rm_path is not None:  # None: left out of the frontier (the course kit, before Assignment 5)
        scorer = reward_model.load_reward_model(rm_path).eval()
        best_row = max(rm_rows, key=lambda row: row["rewards/accuracies"])
        rows.append({"model": "reward model (best.pt)",
                     "heldout_accuracy": best_row["rewards/accuracies"],
                     "heldout_accuracy_at_end": rm_rows[-1]["rewards/accuracies"],
                     "step": best_row["step"],
                     **correlations(reward_model.score_texts(scorer, prompt_ids, completion_ids,
                                                             eos), truth)})
    for beta, cfg in dpo_runs:
        policy = load_model(os.path.join(cfg.out_dir, f"step_{cfg.steps:06d}.pt")).eval()
        implicit = beta * (sentiment.completion_logps(policy, prompt_ids, completion_ids, eos)
                           - reference_logps)
        with open(os.path.join(cfg.out_dir, "metrics.jsonl")) as f:
            final = [row for row in map(json.loads, f) if row["split"] == "eval"][-1]
        rows.append({"model": f"DPO beta={beta} implicit reward",
                     "heldout_accuracy": final["rewards/accuracies"], "step": final["step"],
                     **correlations(implicit.tolist(), truth)})
    for row in rows:
        log(f"{row['model']:>32}: held-out pairwise accuracy {row['heldout_accuracy']:.3f}, on "
            f"{len(truth)} fresh samples Pearson {row['pearson']:.3f}, Spearman "
            f"{row['spearman']:.3f}")
    return rows


def correlations(scores, truth):
    return {"pearson": sentiment.pearson(scores, truth),
            "spearman": sentiment.spearman(scores, truth), "n_samples": len(truth)}


# -----------------------------------------------------------------------------
# 2. Temperature

def seed_run_dirs(cfg, seeds, base_seed):
    """The directories of a run and of its reruns with other training seeds (named DIR-seedN)."""
    return {seed: cfg.out_dir if seed == base_seed else f"{cfg.out_dir}-seed{seed}"
            for seed in seeds}


def temperature_panel(best, prepared, frontier_settings, out_dir, log):
    """The final policy of each method's best setting, of every training seed, sampled at each
    temperature of frontier_settings: reward and KL of the tempered policy (95% CIs), as points with
    their samples on disk."""
    base_seed = prepared.settings["seed"]
    rows = []
    for method, chosen in best.items():
        cfg = chosen["cfg"]
        for seed, run_dir in seed_run_dirs(cfg, (base_seed, *frontier_settings["train_seeds"]),
                                           base_seed).items():
            final = os.path.join(run_dir, f"step_{cfg.steps:06d}.pt")
            for temperature in frontier_settings["temperatures"]:
                name = f"temperature-{os.path.basename(run_dir)}-T{temperature}"
                point = points.evaluate_point(name, method,
                                              chosen["setting"], final, prepared, frontier_settings,
                                              out_dir, log,
                                              step=cfg.steps, train_seed=seed,
                                              temperature=temperature)
                rows.append({**point, "temperature": temperature, "train_seed": seed})
    return rows


# -----------------------------------------------------------------------------
# 3. Cost

def command_line(command, cfg):
    """The `python train.py STAGE ...` arguments that rebuild `cfg` (every flag whose value differs
    from the command's default)."""
    defaults = dataclasses.asdict(TrainConfig(**COMMAND_DEFAULTS.get(command, {})))
    argv = [command]
    for field in dataclasses.fields(TrainConfig):
        value, flag = getattr(cfg, field.name), field.metadata["flag"]
        if (flag is None or command not in field.metadata["commands"] or value
            == defaults[field.name]):
            continue
        argv += ([flag if value else "--no-" + flag[2:]] if isinstance(value, bool)
                 else [flag, str(value)])
    return argv


# Runs the script sys.argv[2] with the arguments after it and, at exit, writes the process's own
# peak resident set (VmHWM, kB) to the file sys.argv[1]. Not ru_maxrss: on Linux a child starts with
# its parent's high-water mark (a `python -c pass` under a 614 MiB parent reports 613.8 MiB).
OWN_PEAK = """
import atexit, runpy, sys
def report(path=sys.argv[1]):
    with open("/proc/self/status") as status:
        peak_kb = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(path, "w") as f:
        f.write(peak_kb)
atexit.register(report)
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_with_own_peak(argv, cwd=REPO):
    """Run `python argv...` (argv[0] a script) in a fresh process; (wall seconds, its own peak
    resident memory in MiB from /proc's VmHWM). RuntimeError with the end of its stderr if it
    fails."""
    with tempfile.TemporaryDirectory() as tmp:
        peak_file = os.path.join(tmp, "peak_kb")
        start = time.time()
        process = subprocess.run([sys.executable, "-c", OWN_PEAK, peak_file, *argv], cwd=cwd,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        seconds = time.time() - start
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {process.stderr.decode()[-2000:]}")
        with open(peak_file) as f:
            return seconds, int(f.read()) / 1024


def measured_run(command, cfg, out_dir):
    """Train `cfg` again in a fresh process (into out_dir); its wall time and its own peak resident
    memory (run_with_own_peak)."""
    argv = [os.path.join(REPO, "train.py"), *command_line(command, dataclasses.replace(
        cfg, out_dir=out_dir, keep_checkpoints=False, overwrite=True))]
    seconds, peak_mib = run_with_own_peak(argv)
    return {"wall_seconds": seconds, "peak_rss_mib": peak_mib}


def cost_table(best, rm_cfg, seeds, out_dir, log):
    """DPO's and PPO's best runs trained again side by side: wall time and peak memory (fresh
    processes; PPO's includes training the reward model), models held, tokens sampled in training,
    hyper-parameters, code; and the wall time of the frontier's own runs of each training seed
    (wall_seconds.json)."""
    cache = os.path.join(out_dir, "cost.json")
    key = {method: dataclasses.asdict(best[method]["cfg"]) for method in ("DPO", "PPO")}
    if os.path.isfile(cache):
        with open(cache) as f:
            saved = json.load(f)
        if saved.pop("key") == json.loads(json.dumps(key)):
            return with_seed_times(saved["rows"], best, rm_cfg, seeds)
    rows = []
    for method, command in (("DPO", "dpo"), ("PPO", "ppo")):
        cfg = best[method]["cfg"]
        run = measured_run(command, cfg, os.path.join(out_dir, "cost", method.lower()))
        if method == "PPO":  # RLHF's first stage is part of its cost
            rm_run = measured_run("reward-model", rm_cfg,
                                  os.path.join(out_dir, "cost", "reward-model"))
            run = {"wall_seconds": run["wall_seconds"] + rm_run["wall_seconds"],
                   "reward_model_wall_seconds": rm_run["wall_seconds"],
                   "peak_rss_mib": max(run["peak_rss_mib"], rm_run["peak_rss_mib"])}
        with open(os.path.join(cfg.out_dir, "metrics.jsonl")) as f:
            train_rows = [row for row in map(json.loads, f) if row["split"] == "train"]
        names, swept = HYPER_PARAMETERS[method]
        rows.append({"method": method, "setting": best[method]["setting"], **run,
                     "models_held": ["policy", "reference (precomputed, then freed)"] if method
                     == "DPO" else
                     ["policy", "reference", "reward model", "value model"],
                     "tokens_sampled": sum(row.get("tokens", 0) for row in train_rows),
                     "hyper_parameters": list(names), "swept": list(swept),
                     "lines_of_code": sum(code_lines(entry) for entry in METHOD_PATHS[method]),
                     "path": list(METHOD_PATHS[method])})
        log(f"cost of {method}: {rows[-1]['wall_seconds']:.0f} s, peak "
            f"{rows[-1]['peak_rss_mib']:.0f} MiB, {len(rows[-1]['models_held'])} models, "
            f"{rows[-1]['tokens_sampled']:,} tokens sampled, {len(names)} hyper-parameters, "
            f"{rows[-1]['lines_of_code']} lines")
    with open(cache, "w") as f:
        json.dump({"rows": rows, "key": key}, f, indent=2)
    return with_seed_times(rows, best, rm_cfg, seeds)


def with_seed_times(rows, best, rm_cfg, seeds):
    """The cost rows with the training time of each seed's run in the frontier (PPO's with the
    reward model's)."""
    rm_seconds = points.wall_seconds(rm_cfg)
    for row in rows:
        cfg = best[row["method"]]["cfg"]
        times = []
        for run_dir in seed_run_dirs(cfg, seeds, seeds[0]).values():
            seconds = points.wall_seconds(dataclasses.replace(cfg, out_dir=run_dir))
            times.append(seconds + (rm_seconds if row["method"] == "PPO" else 0.0))
        row["wall_seconds_per_seed"] = times
    return rows
