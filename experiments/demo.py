"""The embedded demo: the paper's controlled-sentiment experiment (section 6.1), end to end,
offline, on a CPU.

    python train.py              # or: python train.py demo [--quick] [--out-dir out/demo]

1-2. The base model and its preference pairs (`experiments/base.py`): pre-train a small GPT on
   generated movie reviews (pi_SFT, also the frozen reference pi_ref), sample k completions per
   training prompt, and pair the best with the worst by the ground-truth reward (VADER).
3. Train DPO (Eq. 7) on the pairs, starting from pi_SFT.
4. On held-out prompts, compare samples of the policy and the reference: ground-truth reward, win
   rate, KL(policy || reference) from policy samples, fluency (`sentiment/fluency.py`), and the
   implicit-reward accuracy on held-out pairs. The KL-regularised objective (Eq. 3) with a reward in
   [-1, 1] has an optimum pi* with KL(pi* || pi_ref) <= (max r - E_ref[r]) / beta: the report prints
   that bound beside the measured KL.

Outputs in OUT_DIR: pretrain/ and dpo/ (checkpoints, metrics.jsonl, config.json, hf/ weights in the
Hugging Face GPT-2 layout), pairs_train.jsonl, pairs_heldout.jsonl, base.json, dpo_training.png,
rewards.png, samples.txt and summary.json (every number, with the sampling settings and the
tokenizer).

Left out relative to the paper: the PPO baseline and GPT-2 scale; VADER stands in for the paper's
sentiment classifier. `python train.py frontier` traces the reward/KL frontier over beta (Figure 2,
left).
"""

import json
import os
import time

import sentiment
from experiments import base, plots
from plumbing import commands
from plumbing.config import check_values, command_config

# DPO's settings, on top of the base's (base.FULL / base.QUICK).
# One epoch: 16 steps of 32 pairs cover the ~500 training pairs once (docs/experiment.md: what each
# lever did).
DPO_FULL = dict(beta=0.1, lr=2e-4, steps=16, batch_size=32, warmup_steps=5, samples_per_prompt=2)
DPO_QUICK = dict(DPO_FULL, steps=8)


def dpo_config(out_dir, prepared, settings):
    """The TrainConfig of the demo's DPO stage: the dpo command's defaults, changed by the DPO
    `settings` (DPO_FULL or DPO_QUICK) on the base model and pairs that base.prepare returned
    (`prepared`)."""
    return command_config("dpo", out_dir=os.path.join(out_dir, "dpo"), init=prepared.reference_path,
                          data=prepared.pairs_train, heldout_data=prepared.pairs_heldout,
                          tokenizer=prepared.settings["tokenizer"], steps=settings["steps"],
                          batch_size=settings["batch_size"], lr=settings["lr"],
                          warmup_steps=settings["warmup_steps"],
                          beta=settings["beta"], eval_every=max(4, settings["steps"] // 8),
                          save_every=10**9,
                          # the demo retrains on every run
                          seed=prepared.settings["seed"], overwrite=True)


def run(out_dir="out/demo", quick=False, log=print):
    """Run the whole experiment; returns the summary dict (also written to OUT_DIR/summary.json)."""
    start = time.time()
    settings, dpo_settings = (base.QUICK, DPO_QUICK) if quick else (base.FULL, DPO_FULL)
    check_values(command_config("dpo",
                                **{name: dpo_settings[name] for name in ("beta", "lr", "steps",
                                                                         "batch_size",
                                                                         # before any work
                                                                         "warmup_steps")}))
    prepared = base.prepare(out_dir, settings, log=log)

    log("== DPO against the frozen reference ==")
    policy, heldout_metrics = commands.run_training("dpo",
                                                    dpo_config(out_dir, prepared, dpo_settings),
                                                    log=log)

    log("== held-out evaluation from samples ==")
    sampling = dict(max_new_tokens=settings["max_new_tokens"], temperature=1.0, top_k=None,
                    # what sample_report does
                    samples_per_prompt=dpo_settings["samples_per_prompt"], seed=3)
    report = sentiment.sample_report(policy, prepared.reference, prepared.tokenizer,
                                     prepared.heldout_prompts,
                                     sentiment.sentiment_reward,
                                     max_new_tokens=sampling["max_new_tokens"],
                                     seed=sampling["seed"],
                                     samples_per_prompt=sampling["samples_per_prompt"])
    numbers = {k: v for k, v in report.items() if isinstance(v, (int, float))}
    summary = {
        **numbers,
        "kl_bound_at_optimum": (1.0 - report["reward_reference"]) / dpo_settings["beta"],
        "heldout_reward_accuracy": heldout_metrics["rewards/accuracies"],
        "heldout_reward_margin": heldout_metrics["rewards/margins"],
        "heldout_dpo_loss": heldout_metrics["loss"],
        "n_heldout_prompts": len(prepared.heldout_prompts),
        "sampling": sampling,
        "tokenizer": base.tokenizer_record(settings["tokenizer"], prepared.tokenizer),
        "base": settings,
        "dpo": dpo_settings,
        "pairs": prepared.pair_reports,
        "quick": quick,
        "wall_seconds": time.time() - start,
    }
    write_outputs(out_dir, summary, report, prepared.heldout_prompts,
                  dpo_settings["samples_per_prompt"])
    log(format_summary(summary))
    return summary


def write_outputs(out_dir, summary, report, prompts, samples_per_prompt):
    """summary.json, the two plots, and a few side-by-side samples."""
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(out_dir, "dpo", "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    plots.plot_training(rows, os.path.join(out_dir, "dpo_training.png"))
    plots.plot_rewards(report["rewards_reference"], report["rewards_policy"],
                       os.path.join(out_dir, "rewards.png"))
    with open(os.path.join(out_dir, "samples.txt"), "w") as f:
        for i in range(min(20, len(prompts))):
            j = i * samples_per_prompt  # the first sample of prompt i
            f.write(f"PROMPT    {prompts[i]}\nreference {report['rewards_reference'][j]:+.2f} "
                    f"{report['samples_reference'][j]!r}\npolicy    "
                    f"{report['rewards_policy'][j]:+.2f} {report['samples_policy'][j]!r}\n\n")


def format_summary(summary):
    """The printed report: every number with its 95% confidence interval where it is sampled."""
    s = summary
    return "\n".join([
        f"== report ({s['n_samples']} samples on {s['n_heldout_prompts']} held-out prompts; "
                      "+- = 95% CI) ==",
        f"ground-truth reward   reference {s['reward_reference']:+.3f} +- "
        f"{s['reward_reference_ci95']:.3f}   DPO policy {s['reward_policy']:+.3f} +- "
        f"{s['reward_policy_ci95']:.3f}   (gain {s['reward_policy'] - s['reward_reference']:+.3f})",
        f"win rate vs reference {s['win_rate']:.3f}  (ties {s['tie_rate']:.3f})",
        f"KL(policy || ref)     {s['kl_policy_reference']:.2f} +- "
        f"{s['kl_policy_reference_ci95']:.2f} nats (Eq. 3's optimum at beta "
        f"{s['dpo']['beta']}: <= {s['kl_bound_at_optimum']:.2f})",
        f"fluency               reference {s['fluency_reference']:.3f} +- "
        f"{s['fluency_reference_ci95']:.3f}   DPO policy {s['fluency_policy']:.3f} +- "
        f"{s['fluency_policy_ci95']:.3f}  (words of the corpus)",
        f"bigram fluency        reference {s['bigram_fluency_reference']:.3f} +- "
        f"{s['bigram_fluency_reference_ci95']:.3f}   DPO policy {s['bigram_fluency_policy']:.3f} "
        f"+- {s['bigram_fluency_policy_ci95']:.3f}  (bigrams of the corpus)",
        f"implicit-reward accuracy on held-out pairs {s['heldout_reward_accuracy']:.3f}",
        f"wall time {s['wall_seconds']:.0f} s",
    ])
