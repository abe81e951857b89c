"""The frontier's rows for DPO's family since the paper, trained on the same base, pairs and prompts
as DPO (experiments/base.py) with DPO's learning rate, steps and batch size, at several beta each:

    SimPO    methods/simpo.py: no reference model; the reward is beta times the mean log-prob per
             token, and the loss asks for a margin gamma between the two rewards (gamma / beta fixed
             across the sweep)
    ORPO     methods/orpo.py: no reference model and no SFT stage; the SFT loss on the chosen
             response plus beta times an odds-ratio term, from the base model (here the base is also
             every other method's start)
    KTO      methods/kto.py: the pairs split in two, one desirable and one undesirable example each,
             no pairing
    KTO 10%  KTO with 10% of the desirable examples kept, the weights rebalanced: its paper's claim
             that it copes with imbalanced data

A KTO batch of B examples runs 2B sequences (each example and its mismatched completion for the KL
reference point), as a DPO batch of B pairs does. Every run keeps its checkpoints and every
checkpoint becomes a frontier point with its samples on disk (experiments/points.py); runs and
points are cached like the DPO rows. A method whose loss is still a stub (the course kit's student
copy: A1's extra credit) is left out, and the frontier says so.
"""

import glob
import json
import os
import statistics

from experiments import points

# frontier method -> command
FAMILY_METHODS = {"SimPO": "simpo", "ORPO": "orpo", "KTO": "kto", "KTO 10%": "kto"}


def family_run_name(method, beta, seed, base_seed):
    """A run's directory name, e.g. kto-10pct-beta0.1-seed1338 (the seed only when it is not the
    base's)."""
    return (method.lower().replace(" ", "-").replace("%", "pct") + f"-beta{beta}" +
            ("" if seed == base_seed else f"-seed{seed}"))


def family_config(method, beta, seed, prepared, frontier_settings, out_dir):
    """The TrainConfig of one run of a family method at `beta`: DPO's run settings
    (frontier_settings["dpo"]: lr, steps, batch_size), frontier_settings["family_checkpoints"]
    checkpoints kept, and the method's own settings from frontier_settings["family"][method] (SimPO:
    gamma_over_beta; KTO 10%: desirable_fraction)."""
    own = frontier_settings["family"][method]
    changes = {"beta": beta, "seed": seed}
    if "gamma_over_beta" in own:
        changes["simpo_gamma"] = own["gamma_over_beta"] * beta
    if "desirable_fraction" in own:
        changes["desirable_fraction"] = own["desirable_fraction"]
    return points.training_config(FAMILY_METHODS[method], out_dir, prepared,
                                  frontier_settings["dpo"],
                                  frontier_settings["family_checkpoints"], **changes)


def train_family(method, beta, seed, prepared, frontier_settings, runs_dir, out_dir, log,
                 steps=None):
    """Train (or reuse) one run of a family method and evaluate its kept checkpoints (all, or those
    at `steps`).

    Returns (its TrainConfig, its points)."""
    name = family_run_name(method, beta, seed, prepared.settings["seed"])
    cfg = family_config(method, beta, seed, prepared, frontier_settings,
                        os.path.join(runs_dir, name))
    points.train_cached(FAMILY_METHODS[method], cfg, log)
    return cfg, points.run_points(method, {"beta": beta}, cfg.out_dir, prepared, frontier_settings,
                                  out_dir, log,
                                  train_seed=seed, steps=steps)


def family_sweeps(prepared, frontier_settings, runs_dir, out_dir, log):
    """Every family method at each of its beta, seed = the base's: ({method: [(cfg, points)]},
    {method: why it was left out}). A method whose loss raises NotImplementedError (a stub of the
    course kit) is left out."""
    sweeps, left_out = {}, {}
    for method in FAMILY_METHODS:
        try:
            sweeps[method] = [train_family(method, beta, prepared.settings["seed"], prepared,
                                           frontier_settings,
                                           runs_dir, out_dir, log)
                              for beta in frontier_settings["family"][method]["betas"]]
        except NotImplementedError as e:
            left_out[method] = str(e)
            log(f"{method}: left out of the frontier, its loss is not written yet ({e})")
    return sweeps, left_out


def kto_reference_points(runs_dir):
    """Per KTO run in runs_dir (KTO and KTO 10%, every beta and seed): how often the KL estimate
    from mismatched pairs, whose positive part is the reference point z0, was positive over the
    training steps, and its median (from each run's metrics.jsonl)."""
    rows = []
    for path in sorted(glob.glob(os.path.join(runs_dir, "kto-*", "config.json"))):
        with open(path) as f:
            cfg = json.load(f)
        with open(os.path.join(os.path.dirname(path), "metrics.jsonl")) as f:
            estimates = [row["kl"] for row in map(json.loads, f) if row["split"] == "train"]
        rows.append({"method": "KTO 10%" if cfg["desirable_fraction"] < 1 else "KTO",
                     "beta": cfg["beta"], "seed": cfg["seed"], "steps": len(estimates),
                     "positive_steps": sum(e > 0 for e in estimates),
                     "median": statistics.median(estimates)})
    return rows
