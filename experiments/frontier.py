"""The reward-KL frontier (the paper's Figure 2, left) on the embedded sentiment task.

    python train.py frontier [--quick] [--out-dir out/frontier]

Every policy is judged by the expected ground-truth reward of its samples against KL(pi || pi_ref), both
measured on the same held-out prompts (`sentiment.score_policy`: 256 samples, a 95% confidence interval on
each number), as in the paper. The points:

* DPO (Eq. 7) at several beta, each evaluated at intermediate checkpoints: the paper traces its curve that
  way, one run per beta, several points per run.
* Preferred-FT: SFT on the chosen responses of the same pairs (the paper's baseline).
* Unlikelihood: maximise log p of the chosen response and log(1 - p) of each rejected token (the paper's
  baseline; `dpo.unlikelihood_loss`), on the same pairs.
* Best-of-N from the reference, N = 1 ... 32: sample N completions, keep the one with the highest reward.
  Its KL is exactly sum_l q_l log(q_l / p_l) over the reward levels l of the reference's completions
  (p_l their probability, q_l = F(l)^N - F(l-)^N with F the reward's CDF), estimated here per prompt from
  the empirical distribution of the reference's samples. With no ties this is the analytic value
  log N - (N - 1) / N, which is also an upper bound; the plot shows both.
* The reference itself (KL 0).

A second panel plots fluency (the share of generated words that are words of the corpus) against KL: where
it falls, the reward is being hacked. PPO, the paper's other baseline, is left out: it needs a learned
reward model, a value head, rollouts and its own hyper-parameter search, which would more than double the
code of this project for one curve; Best-of-N is the usual stand-in for what a reward-maximising sampler
reaches at a given KL.

The base model and the pairs come from `experiments/base.py` (cached under OUT_DIR/base/); every training
run keeps its checkpoints and every point its samples (OUT_DIR/samples/NAME.jsonl: prompt, completion,
reward, log-ratio), and a point already evaluated with the same settings is not evaluated again, so a rerun
is cheap. Outputs: frontier.json (settings and points) and frontier.png.
"""

import dataclasses
import glob
import json
import math
import os
import time

import sentiment
import stages
from checkpoint import load_model
from config import stage_config
from experiments import base, plots

# Six epochs per run over the ~500 pairs, evaluated every half epoch: long enough for beta to act (with Adam,
# whose steps do not scale with the gradient, beta matters only once beta * h saturates the sigmoid).
FULL = dict(betas=(0.03, 0.1, 0.3, 1.0, 3.0), dpo=dict(lr=2e-4, steps=96, batch_size=32),
            preferred_ft=dict(lr=2e-4, steps=96, batch_size=32),
            unlikelihood=dict(lr=2e-4, steps=96, batch_size=32, alpha=1.0),
            checkpoints=12, best_of=(1, 2, 4, 8, 16, 32), samples_per_prompt=2, seed=11)
QUICK = dict(FULL, betas=(0.03, 3.0), dpo=dict(FULL["dpo"], steps=24), preferred_ft=dict(FULL["preferred_ft"], steps=8),
             unlikelihood=dict(FULL["unlikelihood"], steps=8), checkpoints=2, best_of=(1, 4, 16))


def training_config(stage, out_dir, prepared, run_settings, checkpoints, **changes):
    """The TrainConfig of one frontier run of command `stage` on the base model and pairs that base.prepare
    returned (`prepared`): the command's defaults, changed by `run_settings` (lr, steps, batch_size), a constant
    learning rate, `checkpoints` evenly spaced checkpoints kept, then `changes` (TrainConfig fields by name, e.g.
    beta, or init and data for a run from another model)."""
    steps = run_settings["steps"]
    block = prepared.settings["block_size"]  # lengths given, not left to default, so the saved config is this one
    return stage_config(stage, **{
        "out_dir": out_dir, "init": prepared.reference_path, "data": prepared.pairs_train,
        "heldout_data": prepared.pairs_heldout, "tokenizer": prepared.settings["tokenizer"], "max_length": block,
        "max_prompt_length": block // 2, "steps": steps, "batch_size": run_settings["batch_size"],
        "lr": run_settings["lr"], "schedule": "constant", "warmup_steps": min(5, steps),
        "eval_every": max(1, steps // checkpoints), "save_every": max(1, steps // checkpoints),
        "keep_checkpoints": True, "seed": prepared.settings["seed"], **changes})


def train_cached(stage, cfg, log):
    """stages.run_stage, unless OUT_DIR already holds a finished run with exactly this configuration.

    Returns True when it trained, False when it reused a finished run."""
    try:
        with open(os.path.join(cfg.out_dir, "config.json")) as f:
            saved = json.load(f)
        done = saved == {"stage": stage, **json.loads(json.dumps(dataclasses.asdict(cfg)))} and \
            os.path.isfile(os.path.join(cfg.out_dir, f"step_{cfg.steps:06d}.pt"))
    except (OSError, ValueError):
        done = False
    if done:
        log(f"{stage}: reusing the finished run in {cfg.out_dir}")
    else:
        stages.run_stage(stage, cfg, log=log)
    return not done


def write_samples(path, prompts, scored):
    """One JSON line per sample: prompt, completion, reward and log pi/pi_ref (enough to re-measure a point)."""
    with open(path, "w") as f:
        for i, text, reward, logratio in zip(scored["prompt_index"], scored["texts"], scored["rewards"],
                                             scored["logratios"]):
            f.write(json.dumps({"prompt": prompts[i], "completion": text, "reward": reward,
                                "logratio": logratio}) + "\n")


def evaluate_point(name, method, setting, policy_path, prepared, frontier_settings, out_dir, log, step=None):
    """Score one policy (a checkpoint path, or None for the reference) on the held-out prompts of `prepared`
    (what base.prepare returned) with the sampling of `frontier_settings`; cached."""
    cache = os.path.join(out_dir, "points", f"{name}.json")
    key = {"policy": policy_path, "samples_per_prompt": frontier_settings["samples_per_prompt"],
           "seed": frontier_settings["seed"],
           "max_new_tokens": prepared.settings["max_new_tokens"], "n_prompts": len(prepared.heldout_prompts)}
    if os.path.isfile(cache):
        with open(cache) as f:
            point = json.load(f)
        if point.pop("key") == key and (policy_path is None or os.path.getmtime(policy_path) <= point["time"]):
            return point
    policy = prepared.reference if policy_path is None else load_model(policy_path).eval()
    scored = sentiment.score_policy(policy, prepared.reference, prepared.tokenizer, prepared.heldout_prompts,
                                    sentiment.sentiment_reward, max_new_tokens=prepared.settings["max_new_tokens"],
                                    samples_per_prompt=frontier_settings["samples_per_prompt"],
                                    seed=frontier_settings["seed"])
    point = {"name": name, "method": method, "setting": setting, "step": step,
             **{k: v for k, v in scored.items() if isinstance(v, (int, float))}, "time": time.time()}
    write_samples(os.path.join(out_dir, "samples", f"{name}.jsonl"), prepared.heldout_prompts, scored)
    with open(cache, "w") as f:
        json.dump({**point, "key": key}, f)
    log(f"{name:>24}: reward {point['reward']:+.3f} +- {point['reward_ci95']:.3f}   KL {point['kl']:6.2f} +- "
        f"{point['kl_ci95']:.2f}   fluency {point['fluency']:.3f} / {point['bigram_fluency']:.3f}")
    return point


def run_points(method, setting, run_dir, prepared, frontier_settings, out_dir, log):
    """Evaluate every kept checkpoint (step_NNNNNN.pt) of a run, in step order."""
    points = []
    for path in sorted(glob.glob(os.path.join(run_dir, "step_*.pt"))):
        step = int(os.path.basename(path)[5:11])
        points.append(evaluate_point(f"{os.path.basename(run_dir)}-step{step}", method, setting, path, prepared,
                                     frontier_settings, out_dir, log, step=step))
    return points


def best_of_n_kl(rewards, n):
    """KL(best-of-n || pi) of one prompt, from the rewards of the reference's samples for it (in nats).

    With p_l the empirical probability of reward level l and F its CDF, best-of-n picks level l with
    probability q_l = F(l)^n - F(l-)^n (ties broken at random), so KL = sum_l q_l log(q_l / p_l).
    Example: rewards [0, 0, 1, 1], n = 2: p = (1/2, 1/2), q = (1/4, 3/4), KL = 1/4 log(1/2) + 3/4 log(3/2)."""
    levels = sorted(set(rewards))
    kl, below = 0.0, 0.0
    for level in levels:
        p = sum(r == level for r in rewards) / len(rewards)
        q = (below + p) ** n - below ** n
        kl += q * math.log(q / p) if q > 0 else 0.0
        below += p
    return kl


def best_of_n_choices(rewards, n, n_max):
    """Best-of-n from one prompt's pool of samples: the pool holds draws of n_max samples each (draw d is
    rewards[d * n_max:(d + 1) * n_max]); each draw keeps the best of its first n (the first on ties).
    Returns the chosen index of every draw. Example: rewards [0.1, 0.5, 0.9, -1, 0.7, 0.7], n 2, n_max 3
    -> draws [0.1, 0.5, 0.9] and [-1, 0.7, 0.7] -> best of the first 2: indices [1, 4]."""
    return [max(range(d * n_max, d * n_max + n), key=lambda j: rewards[j]) for d in range(len(rewards) // n_max)]


def best_of_n_points(prepared, frontier_settings, out_dir, log):
    """Best-of-N from the reference for each N in fs["best_of"]: one pool of samples serves every N."""
    n_max, draws = max(frontier_settings["best_of"]), frontier_settings["samples_per_prompt"]
    pool = sentiment.sample_completions(prepared.reference, prepared.tokenizer, prepared.heldout_prompts,
                                        k=n_max * draws, max_new_tokens=prepared.settings["max_new_tokens"],
                                        seed=frontier_settings["seed"] + 1)
    pool_rewards = sentiment.sentiment_reward([t for group in pool.texts for t in group])
    k = n_max * draws
    points = []
    for n in frontier_settings["best_of"]:
        rewards, texts, kls = [], [], []
        for i in range(len(prepared.heldout_prompts)):
            prompt_rewards = pool_rewards[i * k:(i + 1) * k]
            kls.append(best_of_n_kl(prompt_rewards, n))
            for best in best_of_n_choices(prompt_rewards, n, n_max):
                rewards.append(prompt_rewards[best])
                texts.append(pool.texts[i][best])
        (reward, reward_ci), (kl, kl_ci) = sentiment.mean_ci95(rewards), sentiment.mean_ci95(kls)
        points.append({"name": f"best-of-{n}", "method": "Best-of-N", "setting": {"N": n}, "step": None,
                       "reward": reward, "reward_ci95": reward_ci, "kl": kl, "kl_ci95": kl_ci,
                       "kl_analytic": math.log(n) - (n - 1) / n, **sentiment.fluency_numbers(texts),
                       "n_samples": len(rewards)})
        log(f"{'best-of-' + str(n):>24}: reward {reward:+.3f} +- {reward_ci:.3f}   KL {kl:6.2f} (analytic "
            f"{points[-1]['kl_analytic']:.2f})   fluency {points[-1]['fluency']:.3f} / "
            f"{points[-1]['bigram_fluency']:.3f}")
    return points


def run(out_dir="out/frontier", quick=False, log=print):
    """Train and evaluate every point of the frontier; returns the frontier dict (also OUT_DIR/frontier.json)."""
    start = time.time()
    settings, frontier_settings = (base.QUICK, QUICK) if quick else (base.FULL, FULL)
    for sub in ("points", "samples", "runs"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    prepared = base.prepare(os.path.join(out_dir, "base"), settings, log=log)
    runs, checkpoints = os.path.join(out_dir, "runs"), frontier_settings["checkpoints"]

    def trained_points(stage, method, name, setting, run_settings, **changes):
        cfg = training_config(stage, os.path.join(runs, name), prepared, run_settings, checkpoints, **changes)
        train_cached(stage, cfg, log)
        return run_points(method, setting, cfg.out_dir, prepared, frontier_settings, out_dir, log)

    points = [evaluate_point("reference", "reference", {}, None, prepared, frontier_settings, out_dir, log)]
    for beta in frontier_settings["betas"]:
        points += trained_points("dpo", "DPO", f"dpo-beta{beta}", {"beta": beta}, frontier_settings["dpo"], beta=beta)
    points += trained_points("sft", "Preferred-FT", "preferred-ft", {}, frontier_settings["preferred_ft"])
    unlikelihood = frontier_settings["unlikelihood"]
    points += trained_points("unlikelihood", "Unlikelihood", "unlikelihood", {"alpha": unlikelihood["alpha"]},
                             unlikelihood, unlikelihood_alpha=unlikelihood["alpha"])
    points += best_of_n_points(prepared, frontier_settings, out_dir, log)
    result = {"settings": {"base": settings, "frontier": frontier_settings}, "points": points, "quick": quick,
              "wall_seconds": time.time() - start}
    with open(os.path.join(out_dir, "frontier.json"), "w") as f:
        json.dump(result, f, indent=2)
    plots.plot_frontier(points, os.path.join(out_dir, "frontier.png"))
    log(format_table(points) + f"\nwall time {result['wall_seconds']:.0f} s; wrote {out_dir}/frontier.json, "
        f"frontier.png")
    return result


def format_table(points):
    """The frontier as a text table: method, setting, step, reward, KL, fluency, bigram fluency (+- 95% CI)."""
    lines = [f"{'method':<13} {'setting':<12} {'step':>4}  {'reward':>15}  {'KL (nats)':>15}  {'fluency':>13}  "
             f"{'bigram fluency':>14}"]
    for p in points:
        setting = ", ".join(f"{k}={v}" for k, v in p["setting"].items())
        lines.append(f"{p['method']:<13} {setting:<12} {p['step'] or '':>4}  {p['reward']:+.3f} +- "
                     f"{p['reward_ci95']:.3f}  {p['kl']:6.2f} +- {p['kl_ci95']:5.2f}  {p['fluency']:.3f} +- "
                     f"{p['fluency_ci95']:.3f}  {p['bigram_fluency']:.3f} +- {p['bigram_fluency_ci95']:.3f}")
    return "\n".join(lines)
