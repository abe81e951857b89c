"""The reward-KL frontier (the paper's Figure 2) on the embedded sentiment task: DPO beside the
baselines, beside RLHF (what DPO replaces) and beside the oracles, with the paper's three claims
measured.

    python train.py frontier [--quick] [--out-dir out/frontier]

Every policy is judged by the expected ground-truth reward of its samples against KL(pi || pi_ref),
both measured on the same held-out prompts (`experiments/points.py`: 256 samples, a 95% confidence
interval on each number), as in the paper. The points:

* DPO (Eq. 7) at several beta, each evaluated at intermediate checkpoints: the paper traces its
  curve that way, one run per beta, several points per run.
* Preferred-FT: SFT on the chosen responses of the same pairs (the paper's baseline).
* Unlikelihood: maximise log p of the chosen response and log(1 - p) of each rejected token (the
  paper's baseline; `methods/unlikelihood.py`), on the same pairs.
* RLHF (`experiments/rl_runs.py`): a reward model fitted to the same pairs (Eq. 2), then PPO on its
  scores at several KL coefficients, and RLOO (no value model); PPO-GT, PPO on the ground-truth
  reward itself: the
  paper's oracle, which no method trained on the pairs can see.
* DPO's family since the paper (`experiments/family_runs.py`): SimPO, ORPO and KTO at several beta
  each, and KTO with 10% of the desirable examples, with DPO's learning rate, steps and batch size.
* Best-of-N from the reference, N = 1 ... 32, kept by the reward model (BoN-RM) or by the ground
  truth (Best-of-N (oracle)). Its KL is exactly sum_l q_l log(q_l / p_l) over the selector's levels
  l among the
  reference's completions (p_l their probability, q_l = F(l)^N - F(l-)^N with F the CDF), estimated
  per prompt
  from the reference's samples; with no ties it is log N - (N - 1) / N, which the plot shows too.
* The reference itself (KL 0).

Training seeds: the sampling interval of a point says nothing about another training run. Each
method's best setting (by reward on the training prompts) and every DPO beta are trained again with
more seeds (`train_seeds`), so that a conclusion can be checked against every seed. The claims
(experiments/ paper_claims.py): the implicit reward as a reward model, robustness to temperature,
and what RLHF costs.

The base model and the pairs come from `experiments/base.py` (cached under OUT_DIR/base/); every
training run keeps its checkpoints and every point its samples (OUT_DIR/samples/NAME.jsonl: prompt,
completion, reward, log-ratio), and a point already evaluated with the same settings is not
evaluated again, so a rerun is cheap. In the course kit's student copy, the rows whose code is still
a stub (RLHF before Assignment 5; SimPO, ORPO and KTO before A1's extra credit) are left out and
named in the claims (`left_out`). Outputs: frontier.json (settings, points, claims),
frontier.png (DPO, its baselines, RLHF), family.png (DPO beside SimPO, ORPO and KTO) and
temperature.png.
"""

import json
import math
import os
import platform
import time

import torch

import sentiment
from experiments import base, family_runs, paper_claims, plots, rl_runs, verdicts
from experiments.points import (
    evaluate_point,
    run_points,
    train_cached,
    training_config,
    with_provenance,
)
from methods import reward_model

# Six epochs per run over the ~500 pairs, evaluated every half epoch: long enough for beta to act
# (with Adam, whose steps do not scale with the gradient, beta matters only once beta * h saturates
# the sigmoid). The RL runs: 40 iterations of 64 rollouts (RLOO: 16 prompts x 4), 4 checkpoints
# each. The family: DPO's run settings, 4 checkpoints each, the beta of each chosen by a pilot run
# to span the KL that DPO's sweep spans (SimPO and ORPO's beta are not DPO's: SimPO's scales a mean
# per token, ORPO's weighs a term beside the SFT loss).
FULL = dict(betas=(0.03, 0.1, 0.3, 1.0, 3.0), dpo=dict(lr=2e-4, steps=96, batch_size=32),
            preferred_ft=dict(lr=2e-4, steps=96, batch_size=32),
            unlikelihood=dict(lr=2e-4, steps=96, batch_size=32, alpha=1.0),
            checkpoints=12, best_of=(1, 2, 4, 8, 16, 32), samples_per_prompt=2, seed=11,
            reward_model=dict(lr=1e-4, steps=64, batch_size=32),
            ppo=dict(kl_coefs=(0.01, 0.03, 0.1, 0.3), lr=1e-4, steps=40, batch_size=64),
            ppo_gt=dict(kl_coefs=(0.03, 0.1, 0.3), lr=1e-4, steps=40, batch_size=64),
            rloo=dict(kl_coefs=(0.03, 0.1, 0.3), lr=1e-4, steps=40, batch_size=16, k=4),
            rl_checkpoints=4, family={"SimPO": dict(betas=(2.0, 8.0, 32.0), gamma_over_beta=0.5),
                                      "ORPO": dict(betas=(0.1, 1.0, 10.0)),
                                      "KTO": dict(betas=(0.03, 0.1, 0.3)),
                                      "KTO 10%": dict(betas=(0.03, 0.1, 0.3),
                                                      desirable_fraction=0.1)},
            family_checkpoints=4, train_seeds=(1338, 1339), dpo_seeds=(1340, 1341),
            perturbed_threads=1, fresh_samples=4, temperatures=(0.25, 0.5, 0.75, 1.0))
QUICK = dict(FULL, betas=(0.03, 3.0), dpo=dict(FULL["dpo"], steps=24),
             preferred_ft=dict(FULL["preferred_ft"], steps=8),
             unlikelihood=dict(FULL["unlikelihood"], steps=8), checkpoints=2, best_of=(1, 4, 16),
             reward_model=dict(lr=1e-3, steps=16, batch_size=32),
             ppo=dict(FULL["ppo"], kl_coefs=(0.03, 0.3), steps=4),
             ppo_gt=dict(FULL["ppo_gt"], kl_coefs=(0.1,), steps=4),
             rloo=dict(FULL["rloo"], kl_coefs=(0.1,), steps=4),
             rl_checkpoints=2, family_checkpoints=2,
             family={method: dict(own, betas=own["betas"][1:2])
                     for method, own in FULL["family"].items()},
             train_seeds=(1338,), dpo_seeds=(), fresh_samples=2, temperatures=(0.5, 1.0))


def best_of_n_kl(rewards, n):
    """KL(best-of-n || pi) of one prompt, from the rewards of the reference's samples for it (in
    nats).

    With p_l the empirical probability of reward level l and F its CDF, best-of-n picks level l with
    probability q_l = F(l)^n - F(l-)^n (ties broken at random), so KL = sum_l q_l log(q_l / p_l).
    Example: rewards [0, 0, 1, 1], n = 2: p = (1/2, 1/2), q = (1/4, 3/4), KL = 1/4 log(1/2) + 3/4
    log(3/2)."""
    levels = sorted(set(rewards))
    kl, below = 0.0, 0.0
    for level in levels:
        p = sum(r == level for r in rewards) / len(rewards)
        q = (below + p) ** n - below ** n
        kl += q * math.log(q / p) if q > 0 else 0.0
        below += p
    return kl


def best_of_n_choices(rewards, n, n_max):
    """Best-of-n from one prompt's pool of samples: the pool holds draws of n_max samples each (draw
    d is rewards[d * n_max:(d + 1) * n_max]); each draw keeps the best of its first n (the first on
    ties). Returns the chosen index of every draw. Example: rewards [0.1, 0.5, 0.9, -1, 0.7, 0.7], n
    2, n_max 3 -> draws [0.1, 0.5, 0.9] and [-1, 0.7, 0.7] -> best of the first 2: indices [1,
    4]."""
    return ([max(range(d * n_max, d * n_max + n), key=lambda j: rewards[j])
             for d in range(len(rewards) // n_max)])


def best_of_n_pool(prepared, frontier_settings):
    """One pool of reference samples serves every N: n_max x samples_per_prompt completions per
    held-out prompt (prompt-major), and their ground-truth rewards."""
    n_max, draws = max(frontier_settings["best_of"]), frontier_settings["samples_per_prompt"]
    pool = sentiment.sample_completions(prepared.reference, prepared.tokenizer,
                                        prepared.heldout_prompts,
                                        k=n_max * draws,
                                        max_new_tokens=prepared.settings["max_new_tokens"],
                                        seed=frontier_settings["seed"] + 1)
    return pool, sentiment.sentiment_reward([t for group in pool.texts for t in group])


def best_of_n_points(prepared, frontier_settings, out_dir, log, pool, pool_rewards, selector=None,
                     method="Best-of-N", prefix="best-of"):
    """Best-of-N from the reference's `pool` for each N in frontier_settings["best_of"]: each draw
    of N samples keeps the one `selector` scores highest (default: the ground-truth reward itself,
    the oracle; or a reward model's scores of the pool). Reports the ground-truth reward of the kept
    samples, and the exact KL of the selection from the selector's levels. Writes
    samples/PREFIX-N.jsonl (prompt, completion, reward, selector)."""
    n_max = max(frontier_settings["best_of"])
    k = n_max * frontier_settings["samples_per_prompt"]
    selector = pool_rewards if selector is None else selector
    points = []
    for n in frontier_settings["best_of"]:
        rewards, texts, kls, rows = [], [], [], []
        for i, prompt in enumerate(prepared.heldout_prompts):
            prompt_scores = selector[i * k:(i + 1) * k]
            kls.append(best_of_n_kl(prompt_scores, n))
            for best in best_of_n_choices(prompt_scores, n, n_max):
                rewards.append(pool_rewards[i * k + best])
                texts.append(pool.texts[i][best])
                rows.append({"prompt": prompt, "completion": texts[-1], "reward": rewards[-1],
                             "selector": prompt_scores[best]})
        (reward, reward_ci), (kl, kl_ci) = sentiment.mean_ci95(rewards), sentiment.mean_ci95(kls)
        name = f"{prefix}-{n}"
        points.append({"name": name, "method": method, "setting": {"N": n}, "step": None,
                       "reward": reward, "reward_ci95": reward_ci, "kl": kl, "kl_ci95": kl_ci,
                       "kl_analytic": math.log(n) - (n - 1) / n, **sentiment.fluency_numbers(texts),
                       "n_samples": len(rewards)})
        with open(os.path.join(out_dir, "samples", f"{name}.jsonl"), "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        log(f"{name:>24}: reward {reward:+.3f} +- {reward_ci:.3f}   KL {kl:6.2f} (analytic "
            f"{points[-1]['kl_analytic']:.2f})   fluency {points[-1]['fluency']:.3f} / "
            f"{points[-1]['bigram_fluency']:.3f}")
    return points


def run(out_dir="out/frontier", quick=False, log=print):
    """Train and evaluate every point of the frontier and the claims; returns the frontier dict
    (also OUT_DIR/frontier.json), and writes frontier.png, family.png and temperature.png."""
    start = time.time()
    settings, frontier_settings = (base.QUICK, QUICK) if quick else (base.FULL, FULL)
    for sub in ("points", "samples", "runs"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    prepared = base.prepare(os.path.join(out_dir, "base"), settings, log=log)
    runs, checkpoints = os.path.join(out_dir, "runs"), frontier_settings["checkpoints"]
    base_seed = prepared.settings["seed"]

    def trained_points(command, method, name, setting, run_settings, seed=base_seed, **changes):
        name += "" if seed == base_seed else f"-seed{seed}"
        cfg = training_config(command, os.path.join(runs, name), prepared, run_settings,
                              checkpoints, seed=seed,
                              **changes)
        train_cached(command, cfg, log)
        return cfg, run_points(method, setting, cfg.out_dir, prepared, frontier_settings, out_dir,
                               log,
                               train_seed=seed)

    points = [evaluate_point("reference", "reference", {}, None, prepared, frontier_settings,
                             out_dir, log)]
    dpo_runs = []
    for beta in frontier_settings["betas"]:
        cfg, run = trained_points("dpo", "DPO", f"dpo-beta{beta}", {"beta": beta},
                                  frontier_settings["dpo"],
                                  beta=beta)
        dpo_runs.append((beta, cfg))
        points += run
    points += trained_points("sft", "Preferred-FT", "preferred-ft", {},
                             frontier_settings["preferred_ft"])[1]
    unlikelihood = frontier_settings["unlikelihood"]
    points += trained_points("unlikelihood", "Unlikelihood", "unlikelihood",
                             {"alpha": unlikelihood["alpha"]},
                             unlikelihood, unlikelihood_alpha=unlikelihood["alpha"])[1]
    pool, pool_rewards = best_of_n_pool(prepared, frontier_settings)
    points += best_of_n_points(prepared, frontier_settings, out_dir, log, pool, pool_rewards,
                               method="Best-of-N (oracle)")

    log("== RLHF on the same pairs: a reward model, then PPO, PPO-GT (the oracle) and RLOO ==")
    left_out = {}  # {rows: why}: the rows whose code is a stub of the course kit, not written yet
    try:
        rm_path, rm_rows = rl_runs.train_reward_model(prepared, frontier_settings["reward_model"],
                                                      runs, log)
    except NotImplementedError as e:  # the student copy of the course kit, before Assignment 5
        rm_path, rm_rows = None, []
        left_out.update({"reward model": str(e), "BoN-RM": "needs the reward model"})
        log(f"reward model: left out of the frontier, its loss is not written yet ({e})")
    if rm_path is not None:
        points += best_of_n_points(prepared, frontier_settings, out_dir, log, pool, pool_rewards,
                                   selector=pool_scores(rm_path, pool, prepared, out_dir),
                                   method="BoN-RM",
                                   prefix="bon-rm")
    sweeps, rl_left_out = rl_runs.rl_sweeps(prepared, frontier_settings, rm_path, runs, out_dir,
                                            log)
    left_out.update(rl_left_out)
    points += [point for runs_of_method in sweeps.values() for _, run in runs_of_method
               for point in run]

    log("== DPO's family since the paper: SimPO, ORPO, KTO and KTO on 10% of the "
        "desirable examples ==")
    family, family_left_out = family_runs.family_sweeps(prepared, frontier_settings, runs, out_dir,
                                                        log)
    points += [point for runs_of_method in family.values() for _, run in runs_of_method
               for point in run]

    log("== each method's best setting, chosen on the training prompts ==")
    candidates = {"DPO": [({"beta": beta}, cfg) for beta, cfg in dpo_runs],
                  **{method: [({"kl_coef": cfg.kl_coef}, cfg) for cfg, _ in runs_of_method]
                     for method, runs_of_method in sweeps.items()},
                  **{method: [({"beta": cfg.beta}, cfg) for cfg, _ in runs_of_method]
                     for method, runs_of_method in family.items()}}
    best = paper_claims.best_settings(candidates, prepared, frontier_settings, out_dir, log)

    log("== more training seeds: every setting again, at the same checkpoints; DPO's sweep with "
        "five seeds ==")
    dpo_seeds = (*frontier_settings["train_seeds"], *frontier_settings["dpo_seeds"])
    for seed in dpo_seeds:
        for beta in frontier_settings["betas"]:
            points += trained_points("dpo", "DPO", f"dpo-beta{beta}", {"beta": beta},
                                     frontier_settings["dpo"], seed=seed, beta=beta)[1]
    for seed in frontier_settings["train_seeds"]:
        points += trained_points("sft", "Preferred-FT", "preferred-ft", {},
                                 frontier_settings["preferred_ft"], seed=seed)[1]
        points += trained_points("unlikelihood", "Unlikelihood", "unlikelihood",
                                 {"alpha": unlikelihood["alpha"]}, unlikelihood, seed=seed,
                                 unlikelihood_alpha=unlikelihood["alpha"])[1]
        for method, runs_of_method in sweeps.items():
            for cfg, _ in runs_of_method:
                points += rl_runs.train_rl(method, cfg.kl_coef, seed, prepared, frontier_settings,
                                           rm_path, runs, out_dir, log)[1]
        for method, runs_of_method in family.items():
            for cfg, _ in runs_of_method:
                points += family_runs.train_family(method, cfg.beta, seed, prepared,
                                                   frontier_settings, runs, out_dir, log)[1]

    default_threads, threads = torch.get_num_threads(), frontier_settings["perturbed_threads"]
    if threads == default_threads:  # one core, or a test worker's one thread: another count
        threads += 1
    log(f"== DPO's sweep again on {threads} CPU thread(s) instead of {default_threads}: the same "
        "runs with the floating-point sums in another order ==")
    for seed in (base_seed, *dpo_seeds):
        for beta in frontier_settings["betas"]:
            points += trained_points("dpo", verdicts.PERTURBED, f"dpo-beta{beta}-threads{threads}",
                                     {"beta": beta}, frontier_settings["dpo"], seed=seed,
                                     beta=beta, threads=threads)[1]

    log("== the paper's claims: the implicit reward as a reward model, temperature, cost ==")
    claims = {"best_settings": {method: {"setting": chosen["setting"],
                                         "train_rows": chosen["train_rows"]}
                                for method, chosen in best.items()},
              "secretly_a_reward_model": paper_claims.secretly_a_reward_model(
                  prepared, frontier_settings, pool, pool_rewards, rm_path, rm_rows, dpo_runs, log),
              # the paper's methods: DPO's and RLHF's
              "temperature": paper_claims.temperature_panel(
                  {method: chosen for method, chosen in best.items()
                   if method not in family_runs.FAMILY_METHODS},
                  prepared, frontier_settings, out_dir, log),
              "cost": paper_claims.cost_table(best, rl_runs.reward_model_config(
                  prepared, frontier_settings["reward_model"], os.path.join(runs, "reward-model")),
                                              (base_seed, *frontier_settings["train_seeds"]),
                                              out_dir, log) if "PPO" in best else []}
    claims["seeds"] = seed_spread(points)
    claims["threads"] = {"default": default_threads, "perturbed": threads}
    claims["kto_reference_point"] = (family_runs.kto_reference_points(runs) if "KTO" in family
                                     else [])
    claims["left_out"] = {**left_out, **family_left_out}
    claims["verdicts"] = verdicts.frontier_claims({"settings": {"base": settings,
                                                                "frontier": frontier_settings},
                                                   "points": points, "claims": claims})
    points = with_provenance(points, out_dir)
    result = {"settings": {"base": settings, "frontier": frontier_settings}, "points": points,
              "claims": claims, "quick": quick, "machine": machine(),
              "wall_seconds": time.time() - start}
    write_outputs(result, out_dir, log)
    return result


def machine():
    """What the numbers depend on beyond the seeds: the CPU, the platform, torch's version, its
    default thread count (runs differ in their last bits between machines, and then diverge) and
    OpenMP's wait policy (train.py sets PASSIVE; it changes the time, not the numbers)."""
    cpu = platform.processor()
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset")}


def write_outputs(result, out_dir, log):
    """OUT_DIR/frontier.json, frontier.png (DPO, its baselines, RLHF), family.png (DPO beside its
    family) and temperature.png from run's result; logs the table and the claims."""
    points, claims = result["points"], result["claims"]
    with open(os.path.join(out_dir, "frontier.json"), "w") as f:
        json.dump(result, f, indent=2)
    plots.plot_frontier(points, os.path.join(out_dir, "frontier.png"),
                        methods=[method for method in plots.METHOD_STYLES
                                 if method not in family_runs.FAMILY_METHODS])
    plots.plot_frontier(points, os.path.join(out_dir, "family.png"),
                        methods=("DPO", "Preferred-FT", *family_runs.FAMILY_METHODS),
                        reward_range=(0.55, 0.97),
                        title="DPO and its family since the paper on the embedded sentiment task "
                        "(reward from 0.55)")
    plots.plot_temperature(claims["temperature"], os.path.join(out_dir, "temperature.png"))
    log(format_table(points) + "\n" + format_claims(claims) +
        f"\nwall time {result['wall_seconds']:.0f} s; wrote {out_dir}/frontier.json, "
        "frontier.png, family.png, "
        "temperature.png")


def pool_scores(rm_path, pool, prepared, out_dir):
    """The reward model's scores of the Best-of-N pool, prompt-major (cached with the checkpoint's
    time)."""
    cache = os.path.join(out_dir, "points", "pool-reward-model-scores.json")
    key = {"reward_model": rm_path, "time": os.path.getmtime(rm_path),
           "n": sum(map(len, pool.token_ids))}
    if os.path.isfile(cache):
        with open(cache) as f:
            saved = json.load(f)
        if saved["key"] == key:
            return saved["scores"]
    scorer = reward_model.load_reward_model(rm_path)
    k = len(pool.token_ids[0])
    scores = reward_model.score_texts(scorer, [ids for ids in pool.prompt_ids for _ in range(k)],
                                      [ids for group in pool.token_ids for ids in group],
                                      prepared.tokenizer.eot_token)
    with open(cache, "w") as f:
        json.dump({"key": key, "scores": scores}, f)
    return scores


def seed_spread(points):
    """Per setting trained with more than one seed (every method's, and DPO's sweep on perturbed
    threads) and per checkpoint: every seed's reward and KL beside its sampling interval, and the
    range across seeds. Points of the training prompts or of another temperature are not
    counted."""
    groups = {}
    for p in points:
        if p.get("train_seed") is None or p.get("prompts") or p.get("temperature"):
            continue
        key = (p["method"], json.dumps(p["setting"], sort_keys=True), p["step"])
        groups.setdefault(key, {})[p["train_seed"]] = p
    rows = []
    for (method, setting, step), by_seed in groups.items():
        if len(by_seed) < 2:
            continue
        seeds = sorted(by_seed)
        per_seed = [by_seed[seed] for seed in seeds]
        rows.append({"method": method, "setting": json.loads(setting), "step": step,
                     "seeds": seeds,
                     **{f"{key}_per_seed": [p[key] for p in per_seed] for key in ("reward", "kl")},
                     **{f"{key}_ci95_per_seed": [p[key + "_ci95"] for p in per_seed]
                        for key in ("reward", "kl")},
                     **{f"{key}_range": [min(p[key] for p in per_seed),
                                         max(p[key] for p in per_seed)]
                        for key in ("reward", "kl")}})
    return rows


def format_table(points):
    """The frontier as a text table: method, setting, step, reward, KL, fluency, bigram fluency (+-
    95% CI)."""
    lines = [f"{'method':<13} {'setting':<12} {'step':>4}  {'reward':>15}  {'KL (nats)':>15}  "
             f"{'fluency':>13}  {'bigram fluency':>14}"]
    for p in points:
        setting = ", ".join(f"{k}={v}" for k, v in p["setting"].items())
        lines.append(f"{p['method']:<13} {setting:<12} {p['step'] or '':>4}  {p['reward']:+.3f} +- "
                     f"{p['reward_ci95']:.3f}  {p['kl']:6.2f} +- {p['kl_ci95']:5.2f}  "
                     f"{p['fluency']:.3f} +- {p['fluency_ci95']:.3f}  {p['bigram_fluency']:.3f} +- "
                     f"{p['bigram_fluency_ci95']:.3f}")
    return "\n".join(lines)


def format_claims(claims):
    """The claims as text: the implicit reward as a reward model, temperature, cost, and the spread
    over seeds."""
    lines = ["== secretly a reward model: held-out pairwise accuracy, correlation with the "
             "ground truth =="]
    lines += [f"{row['model']:<34} accuracy {row['heldout_accuracy']:.3f}   Pearson "
              f"{row['pearson']:.3f}   Spearman {row['spearman']:.3f}"
              for row in claims["secretly_a_reward_model"]]
    lines.append("== temperature: each method's best setting ==")
    lines += [f"{row['method']:<8} seed {row['train_seed']} T={row['temperature']:<5} reward "
              f"{row['reward']:+.3f} +- {row['reward_ci95']:.3f}   KL {row['kl']:6.2f} +- "
              f"{row['kl_ci95']:.2f}"
              for row in claims["temperature"]]
    lines.append("== cost ==")
    lines += [f"{row['method']:<4} {row['wall_seconds']:6.0f} s   peak {row['peak_rss_mib']:5.0f} "
              f"MiB   {len(row['models_held'])} models   {row['tokens_sampled']:>9,} tokens "
              f"sampled   {len(row['hyper_parameters'])} hyper-parameters   {row['lines_of_code']} "
              f"lines   training seconds of each seed's run "
              + " ".join(f"{seconds:.0f}" for seconds in row["wall_seconds_per_seed"])
              for row in claims["cost"]]
    lines.append("== training seeds: reward and KL of each seed ==")
    lines += [f"{row['method']:<7} {json.dumps(row['setting']):<18} step {row['step']:>3}   reward "
              + " ".join(f"{value:+.3f}" for value in row["reward_per_seed"]) + "   KL "
              + " ".join(f"{value:.2f}" for value in row["kl_per_seed"]) for row in claims["seeds"]]
    lines += [f"left out: {method} ({why})" for method, why in claims.get("left_out", {}).items()]
    return "\n".join(lines)
