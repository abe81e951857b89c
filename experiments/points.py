"""The frontier's and the study's building blocks: a run's configuration on the base, a cached run,
and a policy's point on the reward-KL plane (its samples on disk, cached).

    training_config  the TrainConfig of a run on the base model and pairs (experiments/base.py),
                     checkpoints kept
    train_cached     train it, unless its directory holds the finished run (its wall time in
                     wall_seconds.json)
    evaluate_point   reward, KL(pi || pi_ref) and fluency of one checkpoint from held-out samples
                     (95% CIs)
    run_points       evaluate_point for every kept checkpoint of a run
"""

import dataclasses
import glob
import hashlib
import json
import os
import time

import sentiment
from plumbing import commands
from plumbing.checkpoint import load_model
from plumbing.config import RL_COMMANDS, command_config


def training_config(command, out_dir, prepared, run_settings, checkpoints, **changes):
    """The TrainConfig of one frontier run of command `command` on the base model and pairs that
    base.prepare returned (`prepared`): the command's defaults, changed by `run_settings` (lr,
    steps, batch_size), a constant learning rate, `checkpoints` evenly spaced checkpoints kept, then
    `changes` (TrainConfig fields by name, e.g. beta, or init and data for a run from another
    model)."""
    steps = run_settings["steps"]
    # lengths given, not left to default, so the saved config is this one
    block = prepared.settings["block_size"]
    return command_config(command, **{
        "out_dir": out_dir, "init": prepared.reference_path, "data": prepared.pairs_train,
        "heldout_data": prepared.pairs_heldout, "tokenizer": prepared.settings["tokenizer"],
        "max_length": block, "max_prompt_length": block // 2, "steps": steps,
        "batch_size": run_settings["batch_size"], "lr": run_settings["lr"], "schedule": "constant",
        "warmup_steps": min(5, steps), "eval_every": max(1, steps // checkpoints),
        "save_every": max(1, steps // checkpoints), "keep_checkpoints": True,
        "seed": prepared.settings["seed"], **changes})


def train_cached(command, cfg, log):
    """commands.run_training (commands.run_rl for ppo, rloo), unless OUT_DIR already holds a
    finished run with exactly this configuration (KTO's automatic desirable weight, 0, matches the
    weight the run resolved it to). Returns True when it trained (and then writes its wall time to
    wall_seconds.json), False when it reused a finished run."""
    try:
        with open(os.path.join(cfg.out_dir, "config.json")) as f:
            saved = json.load(f)
        wanted = {"command": command, **json.loads(json.dumps(dataclasses.asdict(cfg)))}
        # 0 = balanced: the run saved the weight it resolved
        if command == "kto" and not cfg.desirable_weight:
            wanted["desirable_weight"] = saved.get("desirable_weight")
        # what the run was told to do with its directory, not its settings
        actions = ("resume", "overwrite")
        done = ({k: v for k, v in saved.items() if k not in actions}
                == {k: v for k, v in wanted.items()
                    if k not in actions}
                and os.path.isfile(os.path.join(cfg.out_dir, f"step_{cfg.steps:06d}.pt")))
    except (OSError, ValueError):
        done = False
    if done:
        log(f"{command}: reusing the finished run in {cfg.out_dir}")
        return False
    start = time.time()
    cfg = dataclasses.replace(cfg, overwrite=True)  # an unfinished or other run there is replaced
    (commands.run_rl if command in RL_COMMANDS else commands.run_training)(command, cfg, log=log)
    with open(os.path.join(cfg.out_dir, "wall_seconds.json"), "w") as f:
        json.dump(time.time() - start, f)  # for when the run is reused
    return True


def wall_seconds(cfg):
    """How long the finished run in cfg.out_dir trained (train_cached wrote it)."""
    with open(os.path.join(cfg.out_dir, "wall_seconds.json")) as f:
        return json.load(f)


def write_samples(path, prompts, scored):
    """One JSON line per sample: prompt, completion, reward and log pi/pi_ref (enough to re-measure
    a point)."""
    with open(path, "w") as f:
        for i, text, reward, logratio in zip(scored["prompt_index"], scored["texts"],
                                             scored["rewards"],
                                             scored["logratios"]):
            f.write(json.dumps({"prompt": prompts[i], "completion": text, "reward": reward,
                                "logratio": logratio}) + "\n")


def evaluate_point(name, method, setting, policy_path, prepared, frontier_settings, out_dir, log,
                   step=None,
                   train_seed=None, prompts="heldout", temperature=1.0):
    """Score one policy (a checkpoint path, or None for the reference) on the held-out prompts of
    `prepared` (what base.prepare returned; prompts="train": its training prompts, to choose
    settings without looking at the held-out ones; or (label, list of str): other prompts, e.g. the
    shifted ones of experiments/out_of_distribution.py) with the sampling of `frontier_settings`, at
    a temperature; cached. train_seed: the training run's seed, recorded in the point."""
    cache = os.path.join(out_dir, "points", f"{name}.json")
    if isinstance(prompts, tuple):
        prompts, prompt_list = prompts
    else:
        prompt_list = (prepared.heldout_prompts if prompts == "heldout"
                       else prepared.train_prompts[:len(prepared.heldout_prompts)])
    key = {"policy": policy_path, "samples_per_prompt": frontier_settings["samples_per_prompt"],
           "seed": frontier_settings["seed"], "max_new_tokens": prepared.settings["max_new_tokens"],
           "n_prompts": len(prepared.heldout_prompts)}
    if prompts != "heldout" or temperature != 1.0:
        key.update(prompts=prompts, temperature=temperature)
    if len(prompt_list) != len(prepared.heldout_prompts):
        key["n_prompts"] = len(prompt_list)
    if os.path.isfile(cache):
        with open(cache) as f:
            point = json.load(f)
        if point.pop("key") == key and (policy_path is None or os.path.getmtime(policy_path)
                                        <= point["time"]):
            return point
    policy = prepared.reference if policy_path is None else load_model(policy_path).eval()
    scored = sentiment.score_policy(policy, prepared.reference, prepared.tokenizer, prompt_list,
                                    sentiment.sentiment_reward,
                                    max_new_tokens=prepared.settings["max_new_tokens"],
                                    samples_per_prompt=frontier_settings["samples_per_prompt"],
                                    seed=frontier_settings["seed"], temperature=temperature)
    point = {"name": name, "method": method, "setting": setting, "step": step,
             **{k: v for k, v in scored.items() if isinstance(v, (int, float))},
             "time": time.time()}
    if train_seed is not None:
        point["train_seed"] = train_seed
    if prompts != "heldout" or temperature != 1.0:
        point.update(prompts=prompts, temperature=temperature)
    write_samples(os.path.join(out_dir, "samples", f"{name}.jsonl"), prompt_list, scored)
    with open(cache, "w") as f:
        json.dump({**point, "key": key}, f)
    log(f"{name:>24}: reward {point['reward']:+.3f} +- {point['reward_ci95']:.3f}   KL "
        f"{point['kl']:6.2f} +- {point['kl_ci95']:.2f}   fluency {point['fluency']:.3f} / "
        f"{point['bigram_fluency']:.3f}")
    return point


def with_provenance(points, out_dir):
    """`points` with what re-measuring each needs: "samples" (its samples file, relative to
    out_dir), "samples_sha256" (that file's SHA-256) and "train_seed" (the training run's seed;
    None for a point that trained nothing: the reference, Best-of-N). ValueError for a point whose
    samples file is missing."""
    return [{**point, "train_seed": point.get("train_seed"),
             **samples_provenance(point["name"], out_dir)} for point in points]


def samples_provenance(name, out_dir):
    """{"samples": the samples file of the point `name` (relative to out_dir), "samples_sha256":
    its SHA-256}: enough to re-measure the point with other code. ValueError when it is missing."""
    samples = os.path.join("samples", f"{name}.jsonl")
    path = os.path.join(out_dir, samples)
    if not os.path.isfile(path):
        raise ValueError(f"point {name}: no samples file {path}")
    with open(path, "rb") as f:
        return {"samples": samples, "samples_sha256": hashlib.sha256(f.read()).hexdigest()}


# What the open questions keep of a scored point: its numbers and its name (its samples file).
SCORES = ("reward", "reward_ci95", "kl", "kl_ci95", "fluency", "fluency_ci95", "bigram_fluency",
          "bigram_fluency_ci95", "name")


def scores_of(point):
    """A point's SCORES."""
    return {key: point[key] for key in SCORES}


def checkpoint_of(out_dir, point):
    """The checkpoint a point of run_points was scored from: OUT_DIR/runs/RUN/step_NNNNNN.pt."""
    run = point["name"].rsplit("-step", 1)[0]
    return os.path.join(out_dir, "runs", run, f"step_{point['step']:06d}.pt")


def run_points(method, setting, run_dir, prepared, frontier_settings, out_dir, log, train_seed=None,
               steps=None):
    """Evaluate every kept checkpoint (step_NNNNNN.pt) of a run, or those at `steps`, in step
    order."""
    points = []
    for path in sorted(glob.glob(os.path.join(run_dir, "step_*.pt"))):
        step = int(os.path.basename(path)[5:11])
        if steps is not None and step not in steps:
            continue
        points.append(evaluate_point(f"{os.path.basename(run_dir)}-step{step}", method, setting,
                                     path, prepared,
                                     frontier_settings, out_dir, log, step=step,
                                     train_seed=train_seed))
    return points
