"""The frontier's RLHF rows: what DPO replaces, trained on the same base, pairs and prompts
(experiments/base.py).

    reward model   Bradley-Terry on the DPO train pairs (methods/reward_model.py), best.pt by
                   held-out accuracy
    PPO            on the reward model's scores, at several KL coefficients (methods/ppo.py,
                   methods/rlhf.py)
    PPO-GT         on the ground-truth reward itself: the paper's oracle, which no method trained on
                   pairs sees
    RLOO           REINFORCE leave-one-out on the reward model, k samples a prompt, no value model

Every run keeps its checkpoints and every checkpoint becomes a frontier point with its samples on
disk (experiments/points.py). Runs and points are cached like the DPO rows. In the course kit's
student copy these rows wait for Assignment 5: a row whose training reaches one of its stubs is left
out of the frontier and named in its claims (`rl_sweeps`; the reward model in frontier.run).
"""

import json
import os

from experiments import points
from plumbing.config import command_config

RL_METHODS = {"PPO": "ppo", "PPO-GT": "ppo", "RLOO": "rloo"}  # frontier method -> command
# the RL methods trained on the reward model's scores (PPO-GT: on the ground truth)
NEEDS_REWARD_MODEL = ("PPO", "RLOO")


def reward_model_config(prepared, run_settings, out_dir):
    """The reward model's TrainConfig on the DPO train and held-out pairs of `prepared`
    (base.prepare)."""
    block = prepared.settings["block_size"]
    return command_config("reward-model", out_dir=out_dir, init=prepared.reference_path,
                          data=prepared.pairs_train,
                          heldout_data=prepared.pairs_heldout,
                          tokenizer=prepared.settings["tokenizer"],
                          max_length=block, max_prompt_length=block // 2,
                          steps=run_settings["steps"],
                          batch_size=run_settings["batch_size"], lr=run_settings["lr"],
                          warmup_steps=5,
                          eval_every=max(1, run_settings["steps"] // 8),
                          save_every=run_settings["steps"],
                          keep_checkpoints=True, eval_samples=0,
                          max_new_tokens=prepared.settings["max_new_tokens"],
                          seed=prepared.settings["seed"])


def train_reward_model(prepared, run_settings, runs_dir, log):
    """Train (or reuse) the reward model; returns (its best.pt, its held-out metrics rows)."""
    cfg = reward_model_config(prepared, run_settings, os.path.join(runs_dir, "reward-model"))
    points.train_cached("reward-model", cfg, log)
    with open(os.path.join(cfg.out_dir, "metrics.jsonl")) as f:
        rows = [row for row in map(json.loads, f) if row["split"] == "eval"]
    return os.path.join(cfg.out_dir, "best.pt"), rows


def rl_config(method, prepared, run_settings, checkpoints, out_dir, reward_model_path, kl_coef,
              seed):
    """The TrainConfig of one RL run: the command's defaults, changed by `run_settings` (lr, steps,
    batch_size, and k for RLOO), its reward (the reward model, or the ground truth for PPO-GT) and
    `checkpoints` kept. The lengths are given (the run would resolve them to the block size) so that
    config.json is this config."""
    steps, block = run_settings["steps"], prepared.settings["block_size"]
    changes = dict(out_dir=out_dir, init=prepared.reference_path,
                   tokenizer=prepared.settings["tokenizer"],
                   max_length=block, max_prompt_length=block // 2, steps=steps,
                   batch_size=run_settings["batch_size"], lr=run_settings["lr"], kl_coef=kl_coef,
                   max_new_tokens=prepared.settings["max_new_tokens"], eval_every=steps,
                   save_every=max(1, steps // checkpoints), keep_checkpoints=True, seed=seed)
    if method == "PPO-GT":
        changes["ground_truth_reward"] = True
    else:
        changes["reward_model"] = reward_model_path
    if method == "RLOO":
        changes["samples_per_prompt"] = run_settings["k"]
    return command_config(RL_METHODS[method], **changes)


def rl_run_name(method, kl_coef, seed, base_seed):
    """A run's directory name: method and KL coefficient, and the seed when it is not the base's."""
    return f"{method.lower()}-kl{kl_coef}" + ("" if seed == base_seed else f"-seed{seed}")


def train_rl(method, kl_coef, seed, prepared, frontier_settings, reward_model_path, runs_dir,
             out_dir, log,
             steps=None):
    """Train (or reuse) one RL run and evaluate its kept checkpoints (all, or those at `steps`).

    Returns (its TrainConfig, its points)."""
    run_settings = frontier_settings[method.lower().replace("-", "_")]
    name = rl_run_name(method, kl_coef, seed, prepared.settings["seed"])
    cfg = rl_config(method, prepared, run_settings, frontier_settings["rl_checkpoints"],
                    os.path.join(runs_dir, name), reward_model_path, kl_coef, seed)
    points.train_cached(RL_METHODS[method], cfg, log)
    return cfg, points.run_points(method, {"kl_coef": kl_coef}, cfg.out_dir, prepared,
                                  frontier_settings, out_dir,
                                  log, train_seed=seed, steps=steps)


def rl_sweeps(prepared, frontier_settings, reward_model_path, runs_dir, out_dir, log):
    """Every RL method at each of its KL coefficients, seed = the base's: ({method: [(cfg,
    points)]}, {method: why it was left out}). A method whose training reaches a stub of the course
    kit (NotImplementedError: Assignment 5) is left out, and so is every method that scores with the
    reward model when there is none (reward_model_path None)."""
    sweeps, left_out = {}, {}
    for method in RL_METHODS:
        if reward_model_path is None and method in NEEDS_REWARD_MODEL:
            left_out[method] = "needs the reward model"
            continue
        run_settings = frontier_settings[method.lower().replace("-", "_")]
        try:
            sweeps[method] = [train_rl(method, kl_coef, prepared.settings["seed"], prepared,
                                       frontier_settings,
                                       reward_model_path, runs_dir, out_dir, log)
                              for kl_coef in run_settings["kl_coefs"]]
        except NotImplementedError as e:
            left_out[method] = str(e)
            log(f"{method}: left out of the frontier, its code is not written yet ({e})")
    return sweeps, left_out
