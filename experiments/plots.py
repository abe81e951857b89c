"""Plots of the experiments: training curves from metrics.jsonl and reward histograms, written as
PNGs."""

import math


def save(fig, path, dpi=100, rect=None):
    """Lay out `fig` (rect: tight_layout's (left, bottom, right, top) box, to leave room for a
    figure legend), write it to `path` as a PNG at `dpi` and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def plot_training(rows, path, title="DPO training"):
    """Plot DPO loss and rewards/accuracies and margins against the step, train and held-out, to a
    PNG.

    rows: the dicts written to metrics.jsonl (keys "step", "split" and the dpo.dpo_metrics names).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ["loss", "rewards/accuracies", "rewards/margins"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, key in zip(axes, panels):
        for split, style in (("train", "-"), ("eval", "o-")):
            points = [(r["step"], r[key]) for r in rows if r.get("split") == split and key in r]
            if points:
                ax.plot(*zip(*points), style, label=split, markersize=3)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.legend()
    if "loss" in panels:
        # the loss at policy == reference
        axes[0].axhline(math.log(2), color="gray", linestyle=":", linewidth=1)
    fig.suptitle(title)
    save(fig, path)


def plot_rewards(rewards_reference, rewards_policy, path):
    """Histogram of the ground-truth reward of reference vs policy samples on held-out prompts, to a
    PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    bins = [i / 10 for i in range(-10, 11)]
    for rewards, name in ((rewards_reference, "reference"), (rewards_policy, "DPO policy")):
        ax.hist(rewards, bins=bins, alpha=0.6,
                label=f"{name} (mean {sum(rewards) / len(rewards):+.2f})")
    ax.set_xlabel("ground-truth reward (VADER compound)")
    ax.set_ylabel("held-out prompts")
    ax.legend(fontsize=8)
    save(fig, path)


METHOD_STYLES = {"DPO": "o-", "Preferred-FT": "s--", "Unlikelihood": "^--",
                 "Best-of-N (oracle)": "D-", "BoN-RM": "d-", "PPO": "P-", "PPO-GT": "X-",
                 "RLOO": "v-", "reference": "*", "SimPO": "h-", "ORPO": "p-", "KTO": "<-",
                 "KTO 10%": ">--"}
# One colour family per method, a shade per setting (the darkest the first), so that a curve's
# method shows.
METHOD_COLOURS = {"DPO": "Blues", "PPO": "Oranges", "PPO-GT": "Reds", "RLOO": "Greens",
                  "Preferred-FT": "Purples", "Unlikelihood": "RdPu", "Best-of-N (oracle)": "Greys",
                  "BoN-RM": "copper", "SimPO": "Greens", "ORPO": "Oranges", "KTO": "Reds",
                  "KTO 10%": "RdPu"}
# one curve per setting
SWEPT_METHODS = ("DPO", "PPO", "PPO-GT", "RLOO", "SimPO", "ORPO", "KTO", "KTO 10%")


def method_colours(labels_by_method):
    """{label: colour}: the settings of one method in shades of its colour family
    (METHOD_COLOURS)."""
    import matplotlib

    colours = {"reference": "black"}
    for method, labels in labels_by_method.items():
        if method not in METHOD_COLOURS:
            continue
        cmap = matplotlib.colormaps[METHOD_COLOURS[method]]
        for i, label in enumerate(labels):
            colours[label] = cmap(0.9 - 0.5 * i / max(1, len(labels) - 1) if len(labels) > 1
                                  else 0.75)
    return colours


def plot_frontier(points, path, methods=None,
                  title="Reward-KL frontier on the embedded sentiment task",
                  reward_range=None):
    """The reward-KL frontier (paper Figure 2, left), and word and bigram fluency against KL, with
    95% CIs.

    points: frontier.json's points (method, setting, reward, reward_ci95, kl, kl_ci95, fluency,
    fluency_ci95; Best-of-N points also kl_analytic; runs with another training seed, train_seed);
    methods: plot only these (default all); reward_range: (low, high) of the reward axis (default:
    all points). One line per run through its checkpoints (runs of other seeds hollow, without error
    bars); KL on a symlog axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("reward", "fluency", "bigram_fluency")
    fig, axes = plt.subplots(1, len(keys), figsize=(16, 5.8))
    base_seed = next((p["train_seed"] for p in points
                      if p["method"] == "DPO" and "train_seed" in p), None)
    curves = {}
    for p in points:
        if methods is not None and p["method"] not in methods:
            continue
        label = p["method"] + ("".join(f" {k}={v}" for k, v in p["setting"].items())
                               if p["method"] in SWEPT_METHODS else "")
        seed = p.get("train_seed", base_seed)
        curves.setdefault((label, seed != base_seed), []).append(p)
    labels_by_method = {}
    for (label, _), curve in curves.items():
        labels = labels_by_method.setdefault(curve[0]["method"], [])
        if label not in labels:
            labels.append(label)
    colors = method_colours(labels_by_method)
    for (label, other_seed), curve in curves.items():
        style = METHOD_STYLES[curve[0]["method"]]
        color = colors.get(label)
        for ax, key in zip(axes, keys):
            if other_seed:  # another training seed of a headline setting: hollow, same colour
                ax.plot([p["kl"] for p in curve], [p[key] for p in curve], style[0], color=color,
                        alpha=0.6,
                        markerfacecolor="none", markersize=5)
                continue
            line = ax.errorbar([p["kl"] for p in curve], [p[key] for p in curve],
                               xerr=[p["kl_ci95"] for p in curve],
                               yerr=[p[key + "_ci95"] for p in curve], fmt=style, markersize=4,
                               capsize=2,
                               label=label, **({"color": color} if color else {}))
            # the same colour for the hollow markers of its seeds
            colors[label] = color = line[0].get_color()
        if curve[0]["method"] == "Best-of-N (oracle)":
            axes[0].plot([p["kl_analytic"] for p in curve], [p["reward"] for p in curve], "D:",
                         color="gray",
                         markerfacecolor="none", markersize=4, label="Best-of-N at log N - (N-1)/N")
    for ax, ylabel in zip(axes, ("expected ground-truth reward",
                                 "fluency (share of words of the corpus)",
                                 "bigram fluency (share of word pairs of the corpus)")):
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel("KL(policy || reference), nats per completion")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    if reward_range is not None:
        axes[0].set_ylim(*reward_range)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=7, frameon=False)
    fig.suptitle(f"{title} (95% CIs over held-out samples; hollow: other training seeds)")
    save(fig, path, dpi=110, rect=(0, 0.16, 1, 1))


def plot_temperature(rows, path):
    """Reward and KL of each method's best policy against the sampling temperature (paper Figure 2,
    right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    methods = list(dict.fromkeys(row["method"] for row in rows))
    colours = method_colours({method: [method] for method in methods})
    base_seed = min(row["train_seed"] for row in rows)
    for method in methods:
        for seed in sorted({row["train_seed"] for row in rows if row["method"] == method}):
            curve = sorted((row for row in rows if row["method"] == method and row["train_seed"]
                            == seed),
                           key=lambda row: row["temperature"])
            setting = "".join(f" {k}={v}" for k, v in curve[0]["setting"].items())
            for ax, key in zip(axes, ("reward", "kl")):
                temperatures, values = [row["temperature"] for row in curve], [row[key]
                                                                               for row in curve]
                if seed != base_seed:  # other training seeds: hollow markers, no interval
                    ax.plot(temperatures, values, METHOD_STYLES[method][0] + ":",
                            color=colours[method], alpha=0.6,
                            markerfacecolor="none", markersize=5)
                    continue
                ax.errorbar(temperatures, values, yerr=[row[key + "_ci95"] for row in curve],
                            fmt=METHOD_STYLES[method], markersize=4, capsize=2,
                            label=method + setting,
                            color=colours[method])
    for ax, ylabel in zip(axes,
                          ("expected ground-truth reward", "KL(policy at T || reference), nats")):
        ax.set_xlabel("sampling temperature")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Each method's best setting sampled at several temperatures (95% CIs over "
                 "held-out samples; dotted: other training seeds)")
    save(fig, path, dpi=110)


def plot_study(result, path):
    """The study's six questions (experiments/study.py), one panel each, with 95% intervals, to a
    PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(17, 9.5))
    (ax_a, ax_b, ax_c), (ax_d, ax_e, ax_f) = axes

    def reward_vs_kl(ax, rows, title):
        for row in rows:
            ax.errorbar(row["kl"], row["reward"], xerr=row["kl_ci95"], yerr=row["reward_ci95"],
                        fmt="o", capsize=2,
                        label=row["method"])
        ax.set_xlabel("KL(policy || base) (nats)")
        ax.set_ylabel("ground-truth reward")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)

    reward_vs_kl(ax_a, result["a_lora"] + result["b_precision"]["rows"][-1:],
                 "(a) LoRA vs full DPO; (b) bf16")
    for losses, label in zip(result["b_precision"]["train_losses"], ("fp32", "bf16 autocast")):
        ax_b.plot(range(1, len(losses) + 1), losses, "o-", markersize=3, label=label)
    ax_b.set(xlabel="step", ylabel="train DPO loss",
             title="(b) fp32 vs bf16 autocast: training loss")
    ax_b.legend(fontsize=8)

    rows = result["c_forgetting"]
    betas = [r["beta"] for r in rows]
    ax_c.errorbar(betas, [r["nll_rise"] for r in rows], yerr=[r["nll_rise_ci95"] for r in rows],
                  fmt="o-",
                  capsize=2, label="held-out LM loss rise")
    ax_c.set(xscale="log", xlabel="beta", ylabel="rise of held-out pre-training loss (nats/token)",
             title="(c) beta vs forgetting (3 epochs)")
    twin = ax_c.twinx()
    twin.errorbar(betas, [r["reward"] for r in rows], yerr=[r["reward_ci95"] for r in rows],
                  fmt="s--",
                  color="tab:orange", capsize=2, label="reward")
    twin.set_ylabel("ground-truth reward", color="tab:orange")

    rows = result["d_early_stopping"]["rows"]
    steps = [r["step"] for r in rows]
    ax_d.plot(steps, [r["heldout_accuracy"] for r in rows], "o-", markersize=3,
              label="held-out accuracy")
    ax_d.errorbar(steps, [r["win_rate"] for r in rows], yerr=[r["win_rate_ci95"] for r in rows],
                  fmt="s-",
                  markersize=3, capsize=2, label="win rate vs base (samples)")
    ax_d.plot(steps, [r["heldout_loss"] for r in rows], "^:", markersize=3,
              label="held-out DPO loss")
    ax_d.set(xlabel="step", title="(d) early stopping: held-out metrics vs win rate")
    ax_d.legend(fontsize=7)

    rows = result["e_base_quality"]
    xs = range(len(rows))
    ax_e.bar([x - 0.2 for x in xs], [r["reference_reward"] for r in rows], 0.4,
             yerr=[r["reference_reward_ci95"] for r in rows], capsize=3, label="base")
    ax_e.bar([x + 0.2 for x in xs], [r["reward"] for r in rows], 0.4,
             yerr=[r["reward_ci95"] for r in rows],
             capsize=3, label="after DPO")
    ax_e.set_xticks(list(xs), [r["method"] for r in rows], fontsize=8)
    ax_e.set(ylabel="ground-truth reward", title="(e) the base's quality")
    ax_e.legend(fontsize=8)

    reward_vs_kl(ax_f, result["f_second_round"], "(f) a second DPO round, labelled by the truth")
    save(fig, path, dpi=90)
