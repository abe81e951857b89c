"""The three questions the paper leaves open (Rafailov et al. 2023, section 7), answered on the
sentiment task on top of the frontier's runs:

    python train.py open-questions [--quick] [--out-dir out/frontier]

1. Self-labeling (experiments/self_labeling.py): can the DPO policy's implicit reward label
   unlabeled prompts for a second and third round, against a reward model, an oracle and random
   labels?
2. Over-optimization (experiments/overoptimization.py): along KL, does the score each method
   optimizes keep rising while the ground truth falls? Gao et al. (2022)'s fits.
3. Out of distribution (experiments/out_of_distribution.py): every method's best setting on prompts
   of another kind.

It runs the frontier first (`experiments/frontier.py`, in the same OUT_DIR: every finished run and
scored point there is reused), then the three experiments, each caching its runs, pairs and scores
under OUT_DIR. Outputs: OUT_DIR/open_questions.json (each experiment's rows, settings and claims
with their per-seed verdicts), self_labeling.png, overoptimization.png and out_of_distribution.png.

    python -m experiments.open_questions docs/open_questions.json --write

recomputes the claims from a committed JSON, writes them into it and into the `<!--
verdicts:open-questions -->` block of docs/open-questions.md and the README's
`<!-- verdicts:open-questions-summary -->` block (tests/test_verdicts.py checks they agree).
"""

import argparse
import json
import math
import os
import sys
import time

from experiments import (
    base,
    claim_rules,
    frontier,
    out_of_distribution,
    overoptimization,
    plots,
    self_labeling,
)
from experiments.frontier import machine
from experiments.points import samples_provenance

# The claims the README's summary quotes.
SUMMARY = ("self_labels_agree", "reward_model_labels_agree", "self_labeling_beats_random",
           "self_labeling_beats_more_steps", "oracle_beats_self_labels", "self_labeling_round3",
           "dpo_overoptimizes", "ppo_overoptimizes", "bon-rm_overoptimizes", "dpo_vs_ppo_shifted",
           "dpo_keeps_gain_shifted")


def claims(result):
    """Every claim of the page, recomputed from an open_questions.json dict."""
    rows = (self_labeling.claims(result["self_labeling"])
            + overoptimization.claims(result["overoptimization"])
            + out_of_distribution.claims(result["out_of_distribution"]))
    return [row for row in rows if row["claim"]]


def run(out_dir="out/frontier", quick=False, log=print):
    """The frontier (cached), then the three experiments; returns the result dict (also
    OUT_DIR/open_questions.json) and writes the three plots."""
    start = time.time()
    result_of_frontier = frontier.run(out_dir=out_dir, quick=quick, log=log)
    frontier_seconds = time.time() - start
    settings = base.QUICK if quick else base.FULL
    frontier_settings = frontier.QUICK if quick else frontier.FULL
    prepared = base.prepare(os.path.join(out_dir, "base"), settings, log=log)
    times = {}
    log("== self-labeling: rounds 2 and 3 on unlabeled prompts ==")
    times["self_labeling"] = time.time()
    labeled = self_labeling.run(prepared, result_of_frontier, frontier_settings, out_dir, log,
                                quick)
    log("== over-optimization: each method's proxy against the gold reward ==")
    times["overoptimization"] = time.time()
    overoptimized = overoptimization.run(prepared, result_of_frontier, frontier_settings, out_dir,
                                         log)
    log("== out of distribution: every method's best setting on shifted prompts ==")
    times["out_of_distribution"] = time.time()
    shifted = out_of_distribution.run(prepared, result_of_frontier, frontier_settings, out_dir,
                                      log)
    end = time.time()
    for row in labeled["rows"]:
        row.update(samples_provenance(row["name"], out_dir))
    for row in [*shifted["rows"], shifted["reference"]]:
        for split in ("heldout", "shifted"):
            row[split].update(samples_provenance(row[split]["name"], out_dir))
    marks = [*times.values(), end]
    result = {"quick": quick, "machine": machine(),
              "wall_seconds": {"frontier (cached runs reused)": frontier_seconds,
                               **{name: b - a for name, a, b in zip(times, marks, marks[1:])}},
              "self_labeling": labeled, "overoptimization": overoptimized,
              "out_of_distribution": shifted}
    result["verdicts"] = claims(result)
    with open(os.path.join(out_dir, "open_questions.json"), "w") as f:
        json.dump(result, f, indent=1)
    plot_self_labeling(labeled, os.path.join(out_dir, "self_labeling.png"))
    plot_overoptimization(overoptimized, os.path.join(out_dir, "overoptimization.png"))
    plot_out_of_distribution(shifted, os.path.join(out_dir, "out_of_distribution.png"))
    log(claim_rules.render(result["verdicts"], "open-questions")
        + f"wall time {sum(result['wall_seconds'].values()):.0f} s "
        + json.dumps({k: round(v) for k, v in result["wall_seconds"].items()}))
    return result


# -----------------------------------------------------------------------------
# Plots

def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_self_labeling(result, path):
    """Held-out reward against KL to the base: round 1, then each labeler's rounds, per seed."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    labelers = ("implicit reward", "reward model", "ground truth", "random", "original pairs")
    for i, labeler in enumerate(labelers):
        for j, seed in enumerate(result["settings"]["seeds"]):
            chain = [r for r in result["rows"] if r["seed"] == seed
                     and r["labeler"] in ("round 1", labeler)]
            chain.sort(key=lambda r: r["round"])
            ax.errorbar([r["kl"] for r in chain], [r["reward"] for r in chain],
                        yerr=[r["reward_ci95"] for r in chain], fmt="o-", color=f"C{i}",
                        markersize=3, linewidth=1, label=labeler if j == 0 else None)
    ax.set_xlabel("KL(policy || base), nats")
    ax.set_ylabel("held-out reward")
    ax.set_title("Self-labeling: round 1 (DPO) -> rounds 2, 3; each line one seed")
    ax.legend(fontsize=8)
    plots.save(fig, path)


def plot_overoptimization(result, path):
    """Gold gain (left axis) and proxy gain (right axis) against sqrt(KL), a panel per method, with
    the fitted gold curve."""
    plt = pyplot()
    methods = list(result["fits"])
    fig, axes = plt.subplots(1, len(methods), figsize=(3.6 * len(methods), 3.4), squeeze=False)
    for ax, method in zip(axes[0], methods):
        rows = [r for r in result["rows"] if r["method"] == method]
        d = [math.sqrt(max(r["kl"], 0.0)) for r in rows]
        if result["methods"][method]["proxy"] != "ground truth":  # PPO-GT: proxy = gold
            proxy_axis = ax.twinx()  # the proxies' scales differ (implicit reward: tens)
            proxy_axis.scatter(d, [r["proxy"] for r in rows], s=6, color="C1")
            proxy_axis.set_ylabel(f"proxy: {result['methods'][method]['proxy']}", color="C1",
                                  fontsize=7)
            proxy_axis.tick_params(labelsize=7, colors="C1")
        ax.scatter(d, [r["gold"] for r in rows], s=8, color="C0", label="gold")
        fit = result["fits"][method]
        grid = [max(d) * i / 50 for i in range(1, 51)]
        curve = [x * (fit["alpha"] - fit["beta"] * (x if fit["form"] == "bon" else math.log(x)))
                 for x in grid]
        ax.plot(grid, curve, color="C0", linewidth=1, label="gold, Gao et al. fit")
        ax.set_title(method + (" (proxy = gold)" if method == "PPO-GT" else ""), fontsize=9)
        ax.set_xlabel("sqrt(KL)")
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("gain over the reference")
    plots.save(fig, path)


def plot_out_of_distribution(result, path):
    """Each method's gain over the reference, held-out against shifted prompts, a bar per seed."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    methods = list(dict.fromkeys(r["method"] for r in result["rows"]))
    for split, offset, colour in (("heldout", -0.2, "C0"), ("shifted", 0.2, "C3")):
        for i, method in enumerate(methods):
            rows = [r for r in result["rows"] if r["method"] == method]
            gains = [out_of_distribution.gain(r[split], result["reference"][split]) for r in rows]
            xs = [i + offset + 0.08 * (j - (len(rows) - 1) / 2) for j in range(len(rows))]
            ax.errorbar(xs, [g for g, _ in gains], yerr=[c for _, c in gains], fmt="o",
                        color=colour, markersize=3,
                        label=("held-out prompts" if split == "heldout" else "shifted prompts")
                        if i == 0 else None)
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylabel("reward gain over the reference")
    ax.set_title("Best setting of each method, final checkpoint, each training seed")
    ax.legend(fontsize=8)
    plots.save(fig, path)


# -----------------------------------------------------------------------------

def render_summary(verdicts):
    by_id = {v["id"]: v for v in verdicts}
    return "".join(claim_rules.wrap(f"* {by_id[cid]['claim']}: {by_id[cid]['verdict']}.") + "\n"
                   for cid in SUMMARY if cid in by_id)


def pm(value, ci, digits=3, sign="+"):
    return f"{value:{sign}.{digits}f} ± {ci:.{digits}f}"


def self_labeling_table(result):
    """Markdown: a row per labeler and round, the seeds side by side (held-out reward, KL to the
    base, agreement of the labels with the ground truth)."""
    seeds = result["settings"]["seeds"]
    lines = ["| labeler | round | " + " | ".join(f"reward, KL (seed {s})" for s in seeds)
             + " | labels agreeing with the ground truth |",
             "|---|---|" + "---|" * len(seeds) + "---|"]
    keys = list(dict.fromkeys((r["labeler"], r["round"]) for r in result["rows"]))
    for labeler, round_ in keys:
        rows = {r["seed"]: r for r in result["rows"]
                if r["labeler"] == labeler and r["round"] == round_}
        cells = [f"{pm(rows[s]['reward'], rows[s]['reward_ci95'])}, {rows[s]['kl']:.1f}"
                 if s in rows else "" for s in seeds]
        agreement = [f"{rows[s]['pairs']['agreement']:.2f}" for s in seeds
                     if s in rows and not math.isnan(rows[s].get("pairs", {}).get("agreement",
                                                                                   math.nan))]
        lines.append(f"| {labeler} | {round_} | " + " | ".join(cells) + " | "
                     + (", ".join(agreement) or "n/a") + " |")
    return "\n".join(lines) + "\n"


def fits_table(result):
    """Markdown: Gao et al.'s coefficients per method with their bootstrap intervals."""
    lines = ["| method | proxy | form | points | alpha | beta | gold peaks at KL |",
             "|---|---|---|---|---|---|---|"]
    for method, f in result["fits"].items():
        peak = "never (beta <= 0)" if f["peak_kl"] is None else f"{f['peak_kl']:.3g}"
        if f["peak_kl_ci"] is not None:
            peak += f" [{f['peak_kl_ci'][0]:.3g}, {f['peak_kl_ci'][1]:.3g}]"
        elif f["draws_without_peak"]:
            peak += f" ({f['draws_without_peak']} of {result['bootstrap']} draws never turn down)"
        lines.append(f"| {method} | {result['methods'][method]['proxy']} | "
                     f"{'d(α − β d)' if f['form'] == 'bon' else 'd(α − β log d)'} | "
                     f"{f['points']} | {f['alpha']:.3f} [{f['alpha_ci'][0]:.3f}, "
                     f"{f['alpha_ci'][1]:.3f}] | {f['beta']:.3f} [{f['beta_ci'][0]:.3f}, "
                     f"{f['beta_ci'][1]:.3f}] | {peak} |")
    return "\n".join(lines) + "\n"


def shifted_table(result):
    """Markdown: each method's gain over the reference, held out and shifted, and KL, per seed."""
    lines = ["| method | seed | gain held out | gain shifted | KL held out | KL shifted |",
             "|---|---|---|---|---|---|"]
    ref = result["reference"]
    lines.append(f"| reference | | {pm(ref['heldout']['reward'], ref['heldout']['reward_ci95'])} "
                 f"(its reward) | {pm(ref['shifted']['reward'], ref['shifted']['reward_ci95'])} "
                 "(its reward) | 0 | 0 |")
    for row in result["rows"]:
        held = out_of_distribution.gain(row["heldout"], ref["heldout"])
        moved = out_of_distribution.gain(row["shifted"], ref["shifted"])
        lines.append(f"| {row['method']} | {row['seed']} | {pm(*held)} | {pm(*moved)} | "
                     f"{row['heldout']['kl']:.2f} | {row['shifted']['kl']:.2f} |")
    loss = result["base_loss"]
    lines.append(f"\nThe base model's loss on the prompts: "
                 f"{pm(loss['heldout'], loss['heldout_ci95'], 2, '')} nats per token held out, "
                 f"{pm(loss['shifted'], loss['shifted_ci95'], 2, '')} shifted.")
    return "\n".join(lines) + "\n"


def render_page(result, page):
    """A verdict block's body for `page` (None: a block of another file's claims)."""
    verdicts = result["verdicts"]
    if page == "open-questions":
        return claim_rules.render(verdicts, page)
    if page == "open-questions-summary":
        return render_summary(verdicts)
    tables = {"self-labeling-table": lambda: self_labeling_table(result["self_labeling"]),
              "overoptimization-table": lambda: fits_table(result["overoptimization"]),
              "shifted-table": lambda: shifted_table(result["out_of_distribution"])}
    return tables[page]() if page in tables else None


def main(argv=None):
    parser = argparse.ArgumentParser(description="recompute the open questions' claims")
    parser.add_argument("json", help="an open_questions.json (docs/open_questions.json)")
    parser.add_argument("--write", action="store_true",
                        help="write the verdicts into the JSON, docs/open-questions.md and README")
    args = parser.parse_args(argv)
    with open(args.json) as f:
        result = json.load(f)
    found = claims(result)
    print(claim_rules.render(found, "open-questions"))
    if not args.write:
        return 0
    result["verdicts"] = found
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for path in (os.path.join(repo, "docs", "open-questions.md"), os.path.join(repo, "README.md")):
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(claim_rules.rewrite_blocks(text, lambda page: render_page(result, page)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
