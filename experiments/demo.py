"""The embedded demo: the paper's controlled-sentiment experiment (section 6.1), end to end, offline, on a CPU.

    python train.py              # or: python train.py demo [--quick] [--out-dir out/demo]

1. Pre-train a small byte-level GPT on generated movie reviews (`sentiment/`). In the paper's setup this is the SFT model
   pi_SFT (GPT-2 fine-tuned on IMDb); it is also the frozen reference pi_ref of step 3.
2. Sample 4 completions per training prompt (a review opening) from pi_SFT, score them with the ground-truth
   reward (VADER sentiment of the completion), and pair the best with the worst: the preference data D.
3. Train DPO (Eq. 7) on D, starting from pi_SFT.
4. On held-out prompts, compare samples of the policy and the reference: ground-truth reward, win rate,
   KL(policy || reference) from policy samples, and the implicit-reward accuracy on held-out pairs.

Outputs in OUT_DIR: pretrain/ and dpo/ (checkpoints, metrics.jsonl, config.json, hf/ weights),
pairs_train.jsonl, pairs_heldout.jsonl, dpo_training.png, rewards.png, samples.txt and summary.json.

Left out relative to the paper: the sweep over beta (and the reward/KL frontier it traces), the PPO baseline,
and GPT-2 scale; VADER stands in for the paper's sentiment classifier.
"""

import dataclasses
import json
import os
import time

import data
import sentiment
import stages
from config import TrainConfig, check_values
from experiments import plots

# The demo's settings; `--quick` shrinks them so the whole pipeline runs in about half a minute (for tests) and
# still learns (measured: held-out DPO loss 0.63 -> 0.45, reward gain +0.34 on 64 prompts, 34 s on 2 cores).
# Sizes: prompts are at most 64 bytes and completions at most max_new_tokens, so block_size = 64 +
# max_new_tokens covers every position the demo samples at; pre-training uses windows of that same length.
FULL = dict(pretrain_steps=500, prompts=(512, 128), k=4, dpo_steps=48, n_layer=4, n_embd=128, block_size=160,
            max_new_tokens=96)
QUICK = dict(pretrain_steps=600, prompts=(256, 64), k=4, dpo_steps=16, n_layer=2, n_embd=96, block_size=112,
             max_new_tokens=48)


def stage_configs(out_dir, quick):
    """The TrainConfig of the pre-training and of the DPO stage."""
    s = QUICK if quick else FULL
    common = dict(tokenizer="bytes", block_size=s["block_size"], max_length=s["block_size"], max_prompt_length=64,
                  seed=1337)
    pretrain_cfg = TrainConfig(
        out_dir=os.path.join(out_dir, "pretrain"), n_layer=s["n_layer"], n_head=4, n_embd=s["n_embd"],
        steps=s["pretrain_steps"], batch_size=16, lr=3e-3, warmup_steps=30,
        eval_every=max(10, s["pretrain_steps"] // 5), save_every=10**9, **common)
    # DPO: 48 steps of 32 pairs is about 3 epochs over the ~500 training pairs.
    dpo_cfg = TrainConfig(
        out_dir=os.path.join(out_dir, "dpo"), init=os.path.join(out_dir, "pretrain", "ckpt.pt"),
        data=os.path.join(out_dir, "pairs_train.jsonl"), heldout_data=os.path.join(out_dir, "pairs_heldout.jsonl"),
        steps=s["dpo_steps"], batch_size=32, lr=2e-4, schedule="constant", warmup_steps=5, beta=0.1,
        eval_every=max(4, s["dpo_steps"] // 8), save_every=10**9, **common)
    return pretrain_cfg, dpo_cfg


def run(out_dir="out/demo", quick=False, log=print):
    """Run the whole experiment; returns the summary dict (also written to OUT_DIR/summary.json)."""
    start = time.time()
    pretrain_cfg, dpo_cfg = stage_configs(out_dir, quick)
    check_values(pretrain_cfg)  # before any work (the DPO stage's files are checked when it starts)
    check_values(dpo_cfg)
    os.makedirs(out_dir, exist_ok=True)
    tokenizer = data.get_tokenizer("bytes")
    settings = QUICK if quick else FULL
    (n_train_prompts, n_heldout_prompts), max_new_tokens = settings["prompts"], settings["max_new_tokens"]

    log("== 1/4 pre-training the base model (the paper's SFT model and DPO's reference) ==")
    reference, _ = stages.run_stage("pretrain", pretrain_cfg, log=log)

    log(f"== 2/4 preference pairs: {settings['k']} samples per prompt, best vs worst by the ground-truth reward ==")
    train_prompts, heldout_prompts = sentiment.make_prompts(n_train_prompts, n_heldout_prompts, seed=0)
    pair_reports = {}
    for split, prompts, seed in (("train", train_prompts, 1), ("heldout", heldout_prompts, 2)):
        _, report = sentiment.build_preference_pairs(
            reference, tokenizer, prompts, k=settings["k"], min_reward_gap=0.1, max_new_tokens=max_new_tokens, seed=seed,
            path=os.path.join(out_dir, f"pairs_{split}.jsonl"), return_report=True)
        log(f"{split}: {report.summary()}")
        pair_reports[split] = dataclasses.asdict(report)

    log("== 3/4 DPO against the frozen reference ==")
    policy, heldout_metrics = stages.run_stage("dpo", dpo_cfg, log=log)

    log("== 4/4 held-out evaluation from samples ==")
    # `reference` is still the pre-trained model of step 1: the weights in dpo_cfg.init, untouched by DPO
    report = sentiment.sample_report(policy, reference, tokenizer, heldout_prompts, sentiment.sentiment_reward,
                                     max_new_tokens=max_new_tokens, seed=3)
    summary = {
        "reward_reference": report["reward_reference"],
        "reward_policy": report["reward_policy"],
        "win_rate": report["win_rate"],
        "tie_rate": report["tie_rate"],
        "kl_policy_reference": report["kl_policy_reference"],
        "heldout_reward_accuracy": heldout_metrics["rewards/accuracies"],
        "heldout_reward_margin": heldout_metrics["rewards/margins"],
        "heldout_dpo_loss": heldout_metrics["loss"],
        "n_heldout_prompts": len(heldout_prompts),
        "pairs": pair_reports,
        "beta": dpo_cfg.beta,
        "quick": quick,
        "wall_seconds": time.time() - start,
    }
    write_outputs(out_dir, summary, report, heldout_prompts)
    log(format_summary(summary))
    return summary


def write_outputs(out_dir, summary, report, prompts):
    """summary.json, the two plots, and a few side-by-side samples."""
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(out_dir, "dpo", "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    plots.plot_training(rows, os.path.join(out_dir, "dpo_training.png"))
    plots.plot_rewards(report["rewards_reference"], report["rewards_policy"], os.path.join(out_dir, "rewards.png"))
    with open(os.path.join(out_dir, "samples.txt"), "w") as f:
        for i in range(min(20, len(prompts))):
            f.write(f"PROMPT    {prompts[i]}\n"
                    f"reference {report['rewards_reference'][i]:+.2f} {report['samples_reference'][i]!r}\n"
                    f"policy    {report['rewards_policy'][i]:+.2f} {report['samples_policy'][i]!r}\n\n")


def format_summary(s):
    return "\n".join([
        "== report (held-out prompts) ==",
        f"ground-truth reward   reference {s['reward_reference']:+.3f}   DPO policy {s['reward_policy']:+.3f}   "
        f"(gain {s['reward_policy'] - s['reward_reference']:+.3f})",
        f"win rate vs reference {s['win_rate']:.3f}  (ties {s['tie_rate']:.3f})",
        f"KL(policy || ref)     {s['kl_policy_reference']:.2f} nats per completion",
        f"implicit-reward accuracy on held-out pairs {s['heldout_reward_accuracy']:.3f}",
        f"wall time {s['wall_seconds']:.0f} s",
    ])
