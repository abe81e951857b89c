"""Plots of the experiments: training curves from metrics.jsonl and reward histograms, written as PNGs."""

import math


def plot_training(rows, path, title="DPO training"):
    """Plot DPO loss and rewards/accuracies and margins against the step, train and held-out, to a PNG.

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
        axes[0].axhline(math.log(2), color="gray", linestyle=":", linewidth=1)  # the loss at policy == reference
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_rewards(rewards_reference, rewards_policy, path):
    """Histogram of the ground-truth reward of reference vs policy samples on held-out prompts, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    bins = [i / 10 for i in range(-10, 11)]
    ax.hist(rewards_reference, bins=bins, alpha=0.6, label=f"reference (mean {sum(rewards_reference) / len(rewards_reference):+.2f})")
    ax.hist(rewards_policy, bins=bins, alpha=0.6, label=f"DPO policy (mean {sum(rewards_policy) / len(rewards_policy):+.2f})")
    ax.set_xlabel("ground-truth reward (VADER compound)")
    ax.set_ylabel("held-out prompts")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
