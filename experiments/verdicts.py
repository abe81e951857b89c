"""Each claim the docs make about the frontier (paper Figure 2) and DPO's family, computed from
frontier.json seed by seed, with the rule that decides whether it holds.

    python -m experiments.verdicts docs/frontier.json            print every claim and its verdict
    python -m experiments.verdicts docs/frontier.json --write    also rewrite the docs' blocks

The rules:

* A method's frontier on one training seed is the upper envelope of all its points of that seed
  (every setting, every checkpoint, and the reference at KL 0): the points that no point of smaller
  KL beats, joined by straight lines. Two methods are compared at matched KL by reading each
  envelope there (reward and its 95% interval interpolated alike); beyond a method's largest KL its
  envelope is undefined and no comparison is made.
* "A is ahead of B" means the intervals are apart: reward_A - ci_A > reward_B + ci_B. "A ties B"
  means they overlap.
* A claim is checked on every training seed that has the points it needs, and its verdict says on
  how many it holds ("holds on 3 of 3 seeds", "fails on 2 of 5 seeds: 1338, 1339"); a claim that
  rests on one training seed says so.

frontier.run writes the claims into frontier.json (claims["verdicts"]); docs/frontier.md and
docs/family.md show them between `<!-- verdicts:PAGE -->` and `<!-- /verdicts -->`, and
tests/test_verdicts.py fails when the JSON, these rules and the docs disagree.
"""

import argparse
import json
import os
import re
import sys

from experiments.claim_rules import (
    claim,
    compare,
    envelope,
    r,
    read,
    render,
    rewrite_blocks,
    small,
    wrap,
)

# The method of the points of DPO's sweep trained again on frontier_settings["perturbed_threads"]
# CPU threads (the frontier's own runs use torch's default): not drawn, compared seed by seed.
PERTURBED = "DPO (threads perturbed)"
RL = ("PPO", "PPO-GT", "RLOO")
# The pages whose blocks show this module's claims.
PAGES = ("frontier", "family", "study")


# -----------------------------------------------------------------------------
# Reading the points

def trained(points, method, seed=None):
    """The held-out points of `method` trained with `seed` (every seed when None), at T = 1."""
    return [p for p in points if p["method"] == method and p.get("train_seed") is not None
            and (seed is None or p["train_seed"] == seed) and not p.get("prompts")
            and not p.get("temperature")]


def seeds_of(points, *methods):
    """The training seeds that every one of `methods` has points for, sorted."""
    common = None
    for method in methods:
        seeds = {p["train_seed"] for p in trained(points, method)}
        common = seeds if common is None else common & seeds
    return sorted(common or ())


def reference(points):
    return next(p for p in points if p["method"] == "reference")


def final(points, setting=None):
    """The point of the last step among `points` (of one run: one setting when given)."""
    run = [p for p in points if setting is None or p["setting"] == setting]
    return max(run, key=lambda p: p["step"])


# -----------------------------------------------------------------------------
# The frontier (docs/frontier.md)

def method_frontiers(points, method, seeds):
    start = reference(points)
    return {seed: envelope(trained(points, method, seed), start) for seed in seeds}


def tie_near_one_nat(points, kl=1.0):
    seeds = seeds_of(points, "DPO", "PPO")
    dpo, ppo = method_frontiers(points, "DPO", seeds), method_frontiers(points, "PPO", seeds)
    rows = []
    for seed in seeds:
        a, b = read(dpo[seed], kl), read(ppo[seed], kl)
        outcome = None if a is None or b is None else compare(a, b)
        rows.append({"seed": seed, "holds": outcome == "tie", "dpo": a, "ppo": b,
                     "detail": f"{seed}: DPO {r(a)}, PPO {r(b)}" if outcome else
                     f"{seed}: not reached"})
    return claim("tie_near_one_nat", "frontier",
                 f"At {kl:g} nat DPO and PPO (on the learned reward model) tie",
                 "each seed's DPO and PPO envelopes read at 1 nat: intervals overlap", rows)


def dpo_passes_ppo(points):
    seeds = seeds_of(points, "DPO", "PPO")
    dpo = method_frontiers(points, "DPO", seeds)
    rows = []
    for seed in seeds:
        ppo_best = max(trained(points, "PPO", seed), key=lambda p: p["reward"])
        target = (ppo_best["reward"], ppo_best["reward_ci95"])
        passing = [k for k, *_ in dpo[seed] if compare(read(dpo[seed], k), target) == "ahead"]
        # the first envelope vertex past PPO's best, then bisection back to the vertex before
        at = None
        if passing:
            kls = [k for k, *_ in dpo[seed]]
            at = passing[0]
            lower = kls[kls.index(at) - 1] if kls.index(at) else at
            for _ in range(30):
                middle = (lower + at) / 2
                if compare(read(dpo[seed], middle), target) == "ahead":
                    at = middle
                else:
                    lower = middle
        rows.append({"seed": seed, "holds": at is not None, "ppo_best": target,
                     "ppo_best_kl": ppo_best["kl"], "dpo_ahead_from_kl": at,
                     "detail": f"{seed}: PPO's best {r(target)} at {ppo_best['kl']:.2f} nats, "
                     + (f"DPO ahead of it from {at:.2f} nats" if at is not None else
                        "DPO never ahead of it")})
    return claim("dpo_passes_ppo", "frontier",
                 "DPO's frontier goes past the best reward any PPO run reaches",
                 "per seed, the smallest KL where DPO's envelope is ahead of PPO's best point "
                 "(any κ, any checkpoint)", rows)


def best_point_against(points, method, other, wanted, label, keys):
    """Rows for claim(): on each seed both methods have, `method`'s best point (any setting, any
    checkpoint) against `other`'s envelope read at its KL; a row holds when compare(best, envelope)
    is one of `wanted`. label: how the detail names the best point; keys: the row's keys for the
    two rewards."""
    seeds = seeds_of(points, other, method)
    frontiers = method_frontiers(points, other, seeds)
    rows = []
    for seed in seeds:
        best = max(trained(points, method, seed), key=lambda p: p["reward"])
        a, b = (best["reward"], best["reward_ci95"]), read(frontiers[seed], best["kl"])
        outcome = None if b is None else compare(a, b)
        rows.append({"seed": seed, "holds": outcome in wanted, keys[0]: a, "kl": best["kl"],
                     keys[1]: b, "detail": f"{seed}: {label} {r(a)} at {best['kl']:.2f} nats, "
                     f"{other} " + (r(b) if b else "does not reach that KL")})
    return rows


def oracle_ahead_of_dpo(points):
    rows = best_point_against(points, "PPO-GT", "DPO", ("ahead",), "PPO-GT", ("ppo_gt", "dpo"))
    return claim("oracle_ahead_of_dpo", "frontier",
                 "PPO-GT (PPO on the ground truth, the oracle) is ahead of DPO at its KL",
                 "per seed, PPO-GT's best point against DPO's envelope at its KL: apart", rows)


def rloo_not_past_ppo(points):
    rows = best_point_against(points, "RLOO", "PPO", ("tie", "behind"), "RLOO", ("rloo", "ppo"))
    return claim("rloo_not_past_ppo", "frontier",
                 "RLOO, without a value model, gets no further than PPO at the same KL",
                 "per seed, RLOO's best point against PPO's envelope at its KL: tie or behind",
                 rows)


def baseline_within_dpo(points, method, cid, text):
    rows = best_point_against(points, method, "DPO", ("tie", "behind"), f"{method}'s best",
                              (method, "dpo"))
    return claim(cid, "frontier", text, f"per seed, {method}'s best point against DPO's envelope "
                 "at its KL: DPO ties or is ahead", rows)


def unlikelihood_degenerates(points):
    start = reference(points)
    rows = []
    for seed in seeds_of(points, "Unlikelihood"):
        end = final(trained(points, "Unlikelihood", seed))
        holds = (end["bigram_fluency"] + end["bigram_fluency_ci95"]
                 < start["bigram_fluency"] - start["bigram_fluency_ci95"])
        rows.append({"seed": seed, "holds": holds, "kl": end["kl"], "reward": end["reward"],
                     "bigram_fluency": end["bigram_fluency"],
                     "detail": f"{seed}: {end['kl']:.1f} nats, reward {end['reward']:+.2f}, bigram "
                     f"fluency {end['bigram_fluency']:.2f}"})
    return claim("unlikelihood_degenerates", "frontier",
                 "Unlikelihood degenerates: its final bigram fluency falls below the reference's",
                 "per seed, the final point's bigram fluency interval below the reference's", rows)


def best_of_n_dominates(points):
    best_of = sorted((p for p in points if p["method"] == "Best-of-N (oracle)"),
                     key=lambda p: p["setting"]["N"])
    methods = sorted({p["method"] for p in points if p.get("train_seed") is not None} - {PERTURBED})
    rows = []
    for seed in seeds_of(points, "DPO"):
        ahead = []
        for method in methods:
            if seed not in seeds_of(points, method):
                continue
            frontier = envelope(trained(points, method, seed), reference(points))
            for bon in best_of:
                value = read(frontier, bon["kl"])
                bon_reward = (bon["reward"], bon["reward_ci95"])
                if value is not None and compare(value, bon_reward) == "ahead":
                    ahead.append(f"{method} at N = {bon['setting']['N']}")
        rows.append({"seed": seed, "holds": not ahead, "ahead": ahead,
                     "detail": f"{seed}: " + (", ".join(ahead) + " ahead" if ahead else
                                              "none ahead")})
    return claim("best_of_n_dominates", "frontier",
                 "Best-of-N by the ground truth is not beaten by any trained method at its KL, for "
                 "any N (" + ", ".join(f"N = {p['setting']['N']}: "
                                      f"{r((p['reward'], p['reward_ci95']))} at {p['kl']:.2f} nats"
                                      for p in best_of) + ")",
                 "per seed, every trained method's envelope at each N's KL: none ahead", rows)


def same_start(points, step=8, betas=(0.03, 0.1, 0.3, 1.0)):
    rows = []
    for seed in seeds_of(points, "DPO"):
        at = [p for p in trained(points, "DPO", seed) if p["step"] == step
              and p["setting"].get("beta") in betas]
        if len(at) < 2:
            continue
        low = max(p["reward"] - p["reward_ci95"] for p in at)
        high = min(p["reward"] + p["reward_ci95"] for p in at)
        rows.append({"seed": seed, "holds": low <= high,
                     "rewards": [p["reward"] for p in at], "kls": [p["kl"] for p in at],
                     "detail": f"{seed}: {min(p['reward'] for p in at):+.2f} to "
                     f"{max(p['reward'] for p in at):+.2f} at {min(p['kl'] for p in at):.2f} to "
                     f"{max(p['kl'] for p in at):.2f} nats"})
    return claim("same_start", "frontier",
                 f"After half an epoch (step {step}) every β ≤ 1 gives the same point",
                 "per seed, the reward intervals of every β ≤ 1 at that step share a value", rows)


def final_kl_by_beta(points, method, seed):
    runs = {}
    for p in trained(points, method, seed):
        beta = p["setting"]["beta"]
        if p["step"] >= runs.get(beta, {"step": -1})["step"]:
            runs[beta] = p
    return {beta: runs[beta]["kl"] for beta in sorted(runs)}


def kl_falls_with_beta(points, betas=None, cid="kl_falls_with_beta", text=None):
    """Every run of DPO's sweep, on both thread settings: its final KL falls as β grows (across the
    betas given, default all)."""
    rows = []
    for method, threads in (("DPO", "default threads"), (PERTURBED, "perturbed threads")):
        for seed in seeds_of(points, method):
            kls = final_kl_by_beta(points, method, seed)
            chosen = [kls[b] for b in sorted(kls) if betas is None or b in betas]
            holds = all(a > b for a, b in zip(chosen, chosen[1:]))
            rows.append({"seed": f"{seed} ({threads})", "threads": threads, "holds": holds,
                         "final_kl": kls,
                         "detail": f"{seed} ({threads}): "
                         + ", ".join(f"{kls[b]:.1f}" for b in sorted(kls))})
    return claim(cid, "frontier", text or "After six epochs the final KL falls with β",
                 "per run of the sweep (each seed, on torch's default thread count and on "
                 "another): final KL strictly decreasing over " + ("every β" if betas is None else
                                                   "β = " + ", ".join(f"{b:g}" for b in betas)),
                 rows, unit="runs")


def thread_spread(points):
    """Per β: how far the final point moves between the two thread settings (same seed) against
    how far it spreads across seeds."""
    rows = []
    seeds = seeds_of(points, "DPO", PERTURBED)
    if not seeds:
        return claim("threads_within_intervals", "frontier", "", "", [])
    betas = sorted({p["setting"]["beta"] for p in trained(points, "DPO")})
    for beta in betas:
        ends = {(m, s): final(trained(points, m, s), {"beta": beta})
                for m in ("DPO", PERTURBED) for s in seeds}
        moves = [abs(ends["DPO", s]["kl"] - ends[PERTURBED, s]["kl"]) for s in seeds]
        within = [abs(ends["DPO", s]["kl"] - ends[PERTURBED, s]["kl"])
                  <= ends["DPO", s]["kl_ci95"] + ends[PERTURBED, s]["kl_ci95"] for s in seeds]
        spread = [ends["DPO", s]["kl"] for s in seeds]
        rows.append({"seed": f"β={beta:g}", "beta": beta, "holds": all(within),
                     "kl_moves": moves, "within_intervals": sum(within),
                     "seed_range": [min(spread), max(spread)],
                     "detail": f"β = {beta:g}: KL moves {small(min(moves))} to "
                     f"{small(max(moves))} nats between thread settings ({sum(within)} of "
                     f"{len(seeds)} seeds within the intervals); across seeds "
                     f"{min(spread):.1f} to {max(spread):.1f}"})
    return claim("threads_within_intervals", "frontier",
                 "Changing the thread count (the order of floating-point sums) moves a run's final "
                 "KL by less than its sampling interval",
                 "per β, on every seed, |KL(default threads) - KL(perturbed threads)| at the final "
                 "step within the two intervals; a row per β, not per seed", rows, unit="betas")


def bon_rm_saturates(points):
    """Best-of-N kept by the reward model against Best-of-N kept by the ground truth: from the N
    whose KL passes about 1 nat, the reward model's pick stops gaining while the truth's climbs."""
    rm = sorted((p for p in points if p["method"] == "BoN-RM"), key=lambda p: p["setting"]["N"])
    oracle = {p["setting"]["N"]: p for p in points if p["method"] == "Best-of-N (oracle)"}
    if len(rm) < 2:
        return claim("bon_rm_saturates", "frontier", "", "", [])
    middle = next((p for p in rm[:-1] if p["kl"] >= 1.0), rm[-2])
    last = rm[-1]
    flat = compare((last["reward"], last["reward_ci95"]),
                   (middle["reward"], middle["reward_ci95"])) == "tie"
    climbs = compare((oracle[last["setting"]["N"]]["reward"],
                      oracle[last["setting"]["N"]]["reward_ci95"]),
                     (oracle[middle["setting"]["N"]]["reward"],
                      oracle[middle["setting"]["N"]]["reward_ci95"])) == "ahead"
    n0, n1 = middle["setting"]["N"], last["setting"]["N"]
    row = {"seed": "one reward model, one training seed", "holds": flat and climbs,
           "detail": f"BoN-RM {r((middle['reward'], middle['reward_ci95']))} at N = {n0}, "
           f"{r((last['reward'], last['reward_ci95']))} at N = {n1}; by the ground truth "
           f"{r((oracle[n0]['reward'], oracle[n0]['reward_ci95']))} and "
           f"{r((oracle[n1]['reward'], oracle[n1]['reward_ci95']))}"}
    return claim("bon_rm_saturates", "frontier",
                 f"The reward model is a ceiling: Best-of-N kept by it gains nothing from N = {n0} "
                 f"to {n1}, where Best-of-N kept by the ground truth still gains",
                 "BoN-RM's rewards at the two N tie, the ground truth's are apart", [row],
                 unit="reward models")


def dpo_fluency_falls(points):
    start = reference(points)
    rows = []
    for seed in seeds_of(points, "DPO"):
        far = max(trained(points, "DPO", seed), key=lambda p: p["kl"])
        holds = (far["bigram_fluency"] + far["bigram_fluency_ci95"]
                 < start["bigram_fluency"] - start["bigram_fluency_ci95"])
        rows.append({"seed": seed, "holds": holds, "kl": far["kl"],
                     "bigram_fluency": far["bigram_fluency"],
                     "detail": f"{seed}: {far['bigram_fluency']:.3f} at {far['kl']:.1f} nats "
                     f"(reference {start['bigram_fluency']:.3f})"})
    return claim("dpo_fluency_falls", "frontier",
                 "DPO's bigram fluency falls where its KL is largest: the lexicon reward is hacked",
                 "per seed, the bigram fluency of DPO's largest-KL point below the reference's "
                 "(intervals apart)", rows)


def peak_memory(claims):
    cost = {row["method"]: row for row in claims.get("cost", [])}
    if set(cost) != {"DPO", "PPO"}:
        return claim("peak_memory", "frontier", "", "", [])
    rows = [{"seed": method, "holds": None, "peak_rss_mib": cost[method]["peak_rss_mib"],
             "detail": f"{method} {cost[method]['peak_rss_mib']:.0f} MiB"}
            for method in ("DPO", "PPO")]
    return {"id": "peak_memory", "page": "frontier",
            "claim": "Peak resident memory of the best settings' runs, each trained again in a "
            "fresh process (its own VmHWM; PPO's the larger of its reward model's and its own)",
            "rule": "one measurement each", "per_seed": rows, "holds_on": None, "seeds": 1,
            "verdict": "measured"}


def word_fluency(points, floor=0.99):
    rows = []
    for seed in seeds_of(points, "DPO"):
        own = [p for p in points if p.get("train_seed") == seed and not p.get("prompts")]
        low = min(own, key=lambda p: p["fluency"])
        rows.append({"seed": seed, "holds": low["fluency"] >= floor, "lowest": low["fluency"],
                     "detail": f"{seed}: lowest {low['fluency']:.3f} ({low['name']})"})
    return claim("word_fluency", "frontier",
                 f"Word fluency stays at or above {floor} for every trained point",
                 "per seed, the lowest word fluency of its points", rows)


def rl_keeps_bigrams(points, floor=0.97):
    rows = []
    for seed in seeds_of(points, *RL):
        own = [p for m in RL for p in trained(points, m, seed)]
        low = min(own, key=lambda p: p["bigram_fluency"])
        rows.append({"seed": seed, "holds": low["bigram_fluency"] >= floor,
                     "lowest": low["bigram_fluency"],
                     "detail": f"{seed}: lowest {low['bigram_fluency']:.3f} at "
                     f"{low['kl']:.2f} nats"})
    return claim("rl_keeps_bigrams", "frontier",
                 f"The RL methods keep bigram fluency at or above {floor}",
                 "per seed, the lowest bigram fluency of every PPO, PPO-GT and RLOO point", rows)


def temperature_flat(claims, tolerance=0.05):
    rows = []
    by_run = {}
    for row in claims.get("temperature", []):
        by_run.setdefault((row["method"], row["train_seed"]), []).append(row)
    for seed in sorted({seed for _, seed in by_run}):
        moves = {m: max(x["reward"] for x in rs) - min(x["reward"] for x in rs)
                 for (m, s), rs in by_run.items() if s == seed}
        rows.append({"seed": seed, "holds": max(moves.values()) <= tolerance, "moves": moves,
                     "detail": f"{seed}: " + ", ".join(f"{m} {v:.3f}" for m, v in moves.items())})
    return claim("temperature_flat", "frontier",
                 f"No best setting's reward moves by more than {tolerance} over the temperatures",
                 "per seed and method, max - min reward over T", rows)


def temperature_costs_kl(claims, methods):
    rows = []
    by_run = {}
    for row in claims.get("temperature", []):
        if row["method"] in methods:
            by_run.setdefault(row["train_seed"], {}).setdefault(row["method"], []).append(row)
    for seed, runs in sorted(by_run.items()):
        ok, parts = True, []
        for method, rs in runs.items():
            rs = sorted(rs, key=lambda x: x["temperature"])
            ok &= rs[0]["kl"] > rs[-1]["kl"]
            parts.append(f"{method} {rs[0]['kl']:.1f} at T = {rs[0]['temperature']:g}, "
                         f"{rs[-1]['kl']:.1f} at T = {rs[-1]['temperature']:g}")
        rows.append({"seed": seed, "holds": ok, "detail": f"{seed}: " + "; ".join(parts)})
    return claim("temperature_costs_kl_" + "_".join(m.lower() for m in methods), "frontier",
                 f"For {', '.join(methods)} the lowest temperature costs more KL than T = 1",
                 "per seed and method, KL at the lowest T above KL at T = 1", rows)


def implicit_reward_ranks(claims):
    rows = claims.get("secretly_a_reward_model", [])
    model = next((row for row in rows if row["model"].startswith("reward model")), None)
    if model is None:
        return claim("implicit_reward_ranks", "frontier", "", "", [])
    dpo = [row for row in rows if row is not model]
    better = [row for row in dpo if row["spearman"] > model["spearman"]]
    per = [{"seed": "first", "holds": len(better) == len(dpo),
            "detail": f"reward model: held-out accuracy {model['heldout_accuracy']:.3f}, "
            f"Spearman {model['spearman']:.3f}; "
            + "; ".join(f"{row['model'].split(' implicit')[0]}: accuracy "
                        f"{row['heldout_accuracy']:.3f}, Spearman {row['spearman']:.3f}"
                        for row in dpo)}]
    return claim("implicit_reward_ranks", "frontier",
                 "Every DPO run's implicit reward ranks fresh samples better (Spearman with the "
                 "ground truth) than the reward model trained for it",
                 "the first training seed only: every β's Spearman above the reward model's", per)


def ppo_costs_more_time(claims, seeds, factor=2.0):
    cost = {row["method"]: row for row in claims.get("cost", [])}
    if set(cost) != {"DPO", "PPO"}:
        return claim("ppo_costs_time", "frontier", "", "", [])
    rows = []
    for seed, a, b in zip(seeds, cost["DPO"]["wall_seconds_per_seed"],
                          cost["PPO"]["wall_seconds_per_seed"]):
        rows.append({"seed": seed, "holds": b > factor * a, "ratio": b / a,
                     "detail": f"{seed}: DPO {a:.0f} s, PPO {b:.0f} s ({b / a:.1f}x)"})
    return claim("ppo_costs_time", "frontier",
                 f"PPO (with its reward model) trains more than {factor:g}x as long as DPO",
                 "per training seed, the frontier's own runs of the best settings", rows)


# -----------------------------------------------------------------------------
# DPO's family (docs/family.md)

def family_against_dpo(points, method, wanted, cid, text):
    rows = best_point_against(points, method, "DPO", wanted, f"{method}'s best", (method, "dpo"))
    return claim(cid, "family", text, f"per seed, {method}'s best point (any β, any checkpoint) "
                 f"against DPO's envelope at its KL: {' or '.join(wanted)}", rows)


def stays_within(points, method, limit):
    rows = []
    for seed in seeds_of(points, method):
        top = max(trained(points, method, seed), key=lambda p: p["kl"])
        rows.append({"seed": seed, "holds": top["kl"] < limit, "largest_kl": top["kl"],
                     "detail": f"{seed}: largest {top['kl']:.2f} nats"})
    return claim(f"{method.lower()}_within_{limit:g}_nats", "family",
                 f"{method} stays within {limit:g} nats at every β and checkpoint",
                 "per seed, the largest KL of its points", rows)


def kto_ceiling(points):
    seeds = seeds_of(points, "DPO", "KTO")
    rows = []
    for seed in seeds:
        kto = max(trained(points, "KTO", seed), key=lambda p: p["reward"])
        dpo = max(trained(points, "DPO", seed), key=lambda p: p["reward"])
        a, b = (kto["reward"], kto["reward_ci95"]), (dpo["reward"], dpo["reward_ci95"])
        rows.append({"seed": seed, "holds": compare(b, a) == "ahead", "kto": a, "dpo": b,
                     "detail": f"{seed}: KTO's best {r(a)}, DPO's best {r(b)}"})
    return claim("kto_ceiling", "family", "KTO's best reward stays below DPO's best",
                 "per seed, the best point of each (any setting, any checkpoint): apart", rows)


def kto_imbalanced(points):
    seeds = seeds_of(points, "KTO", "KTO 10%")
    rows = []
    for seed in seeds:
        full = max(trained(points, "KTO", seed), key=lambda p: p["reward"])
        tenth = max(trained(points, "KTO 10%", seed), key=lambda p: p["reward"])
        a, b = (tenth["reward"], tenth["reward_ci95"]), (full["reward"], full["reward_ci95"])
        rows.append({"seed": seed, "holds": compare(a, b) != "behind", "kto_10pct": a, "kto": b,
                     "detail": f"{seed}: 10% {r(a)} at {tenth['kl']:.2f} nats, all {r(b)} at "
                     f"{full['kl']:.2f}"})
    return claim("kto_imbalanced", "family",
                 "KTO on 10% of the desirable examples reaches KTO's best reward",
                 "per seed, the best point of each: KTO 10% ties or is ahead", rows)


def kto_reference_point(claims):
    rows = []
    for run in claims.get("kto_reference_point", []):
        positive = run["positive_steps"] / run["steps"]
        rows.append({**run, "seed": f"{run['method']} β={run['beta']:g} seed {run['seed']}",
                     "train_seed": run["seed"], "holds": positive < 0.5,
                     "detail": f"{run['method']} β = {run['beta']:g}, seed {run['seed']}: positive "
                     f"on {run['positive_steps']} of {run['steps']} steps, median "
                     f"{run['median']:+.2f}"})
    return claim("kto_reference_point_mostly_zero", "family",
                 "KTO's reference point z₀ = max(KL estimate, 0) is zero on most training steps",
                 "per run, the estimate from mismatched pairs positive on fewer than half of the "
                 "steps; a row per run", rows, unit="runs")


# -----------------------------------------------------------------------------

def frontier_claims(frontier):
    """Every claim of docs/frontier.md and docs/family.md computed from a frontier.json dict."""
    points, claims = frontier["points"], frontier["claims"]
    rows = [tie_near_one_nat(points), dpo_passes_ppo(points), oracle_ahead_of_dpo(points),
            rloo_not_past_ppo(points),
            baseline_within_dpo(points, "Preferred-FT", "dpo_matches_preferred_ft",
                                "DPO ties or beats Preferred-FT's best point at its KL"),
            unlikelihood_degenerates(points), best_of_n_dominates(points), same_start(points),
            kl_falls_with_beta(points),
            kl_falls_with_beta(points, betas=(0.3, 1.0, 3.0), cid="kl_falls_with_beta_from_0.3",
                               text="After six epochs the final KL falls from β = 0.3 to 1 to 3"),
            thread_spread(points), bon_rm_saturates(points), word_fluency(points),
            dpo_fluency_falls(points), rl_keeps_bigrams(points),
            temperature_flat(claims), temperature_costs_kl(claims, RL),
            temperature_costs_kl(claims, ("DPO",)), implicit_reward_ranks(claims),
            ppo_costs_more_time(claims, (frontier["settings"]["base"]["seed"],
                                         *frontier["settings"]["frontier"]["train_seeds"])),
            peak_memory(claims),
            family_against_dpo(points, "SimPO", ("behind",), "simpo_behind_dpo",
                               "SimPO's best point is behind DPO at the same KL"),
            stays_within(points, "ORPO", 5.0),
            family_against_dpo(points, "ORPO", ("tie",), "orpo_on_dpo_curve",
                               "ORPO's best point is on DPO's curve (a tie at its KL)"),
            family_against_dpo(points, "KTO", ("tie", "ahead"), "kto_matches_dpo",
                               "KTO's best point ties or beats DPO at its KL"),
            kto_ceiling(points), kto_imbalanced(points), kto_reference_point(claims)]
    return [row for row in rows if row["claim"]]


def study_claims(seeds):
    """The claims of docs/study.md from the study's seeds.json ({"seeds", "claims": one dict per
    seed}): a yes/no claim holds on the seeds where it is yes; a number is shown per seed (verdict
    "measured")."""
    rows = []
    for key in seeds["claims"][0]:
        values = [claims.get(key) for claims in seeds["claims"]]
        question, _, text = key.partition(": ")
        shown = [("yes" if v else "no") if isinstance(v, bool) else
                 ", ".join(f"{x:+.4f}" for x in v) if isinstance(v, list) else
                 f"{v:.3g}" if isinstance(v, float) else str(v) for v in values]
        per_seed = [{"seed": seed, "holds": bool(v) if isinstance(v, bool) else None, "value": v,
                     "detail": f"{seed}: {text_value}"}
                    for seed, v, text_value in zip(seeds["seeds"], values, shown)]
        cid = re.sub(r"\W+", "_", key).strip("_").lower()
        if all(isinstance(v, bool) for v in values):
            rows.append(claim(cid, "study", f"({question}) {text}", "yes on each seed", per_seed))
        else:
            rows.append({"id": cid, "page": "study", "claim": f"({question}) {text}",
                         "rule": "a number per seed", "per_seed": per_seed,
                         "holds_on": None, "seeds": len(per_seed), "verdict": "measured"})
    return rows


# The claims the README summarises (its `<!-- verdicts:summary -->` block): claim and verdict only.
SUMMARY = ("tie_near_one_nat", "dpo_passes_ppo", "oracle_ahead_of_dpo", "same_start",
           "kl_falls_with_beta", "kl_falls_with_beta_from_0.3", "threads_within_intervals",
           "kto_matches_dpo", "simpo_behind_dpo")


def render_summary(verdicts):
    by_id = {v["id"]: v for v in verdicts}
    return "".join(wrap(f"* {by_id[cid]['claim']}: {by_id[cid]['verdict']}.") + "\n"
                   for cid in SUMMARY if cid in by_id)


def rewrite(text, verdicts):
    """`text` (a docs page or the README) with each `<!-- verdicts:PAGE -->` block replaced by
    render(PAGE) (`summary`: render_summary)."""
    def body(page):
        if page == "summary":
            return render_summary(verdicts)
        return render(verdicts, page) if page in PAGES else None  # another file's block: kept

    return rewrite_blocks(text, body)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("frontier_json")
    parser.add_argument("study_seeds_json", nargs="?",
                        help="the study's seeds.json (docs/study-seeds.json)")
    parser.add_argument("--write", action="store_true",
                        help="write the verdicts into the JSON files and the docs' blocks")
    args = parser.parse_args(argv)
    outputs = [(args.frontier_json, frontier_claims, ("frontier", "family"))]
    if args.study_seeds_json:
        outputs.append((args.study_seeds_json, study_claims, ("study",)))
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    docs = os.path.join(repo, "docs")
    for path, compute, pages in outputs:
        with open(path) as f:
            data = json.load(f)
        found = compute(data)
        for page in pages:
            print(f"== {page} ==\n" + render(found, page))
        if not args.write:
            continue
        if "claims" in data and isinstance(data["claims"], dict):
            data["claims"]["verdicts"] = found
        else:
            data["verdicts"] = found
        with open(path, "w") as f:
            json.dump(data, f, indent=1)
        readme = [os.path.join(repo, "README.md")] if "frontier" in pages else []
        for page_path in [os.path.join(docs, f"{page}.md") for page in pages] + readme:
            with open(page_path) as f:
                text = f.read()
            with open(page_path, "w") as f:
                f.write(rewrite(text, found))


if __name__ == "__main__":
    sys.exit(main())
