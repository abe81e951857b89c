"""Tests of the experiments: the frontier's pieces (Best-of-N selection and its KL, cached runs);
the quick demo, frontier and open questions end to end, and A4's grade of them; the Unlikelihood
stage and kept checkpoints through the command line; the quick study."""

import hashlib
import json
import math
import os
import random
from pathlib import Path

import pytest
import torch

import data
import sentiment
import train
from course_grading import grade
from experiments import base, family_runs, frontier, verdicts
from plumbing.checkpoint import load_checkpoint, load_model

REPO = Path(__file__).resolve().parents[1]


def test_best_of_n_kl_hand_derived():
    # rewards [0, 0, 1, 1], n = 2: p = (1/2, 1/2), q = (1/4, 3/4)
    assert frontier.best_of_n_kl([0, 0, 1, 1], 2) == pytest.approx(0.25 * math.log(0.5) + 0.75
                                                                   * math.log(1.5))
    # best-of-1 is the reference
    assert frontier.best_of_n_kl([0.3, -0.2, 0.9], 1) == pytest.approx(0.0)
    assert frontier.best_of_n_kl([0.5] * 8, 16) == pytest.approx(0.0)  # all tied: nothing to select
    rng = random.Random(0)
    # no ties: the analytic log N - (N-1)/N, as M grows
    distinct = [rng.random() for _ in range(4000)]
    for n in (2, 4, 8, 32):
        exact = frontier.best_of_n_kl(distinct, n)
        assert exact <= math.log(n) - (n - 1) / n and exact == pytest.approx(math.log(n) - (n - 1)
                                                                             / n, rel=1e-2)
    # half the samples tie at the top: far below the bound
    ties = [1.0] * 50 + [rng.random() for _ in range(50)]
    assert 0 < frontier.best_of_n_kl(ties, 8) < math.log(8) - 7 / 8 - 0.1


def test_best_of_n_selection():
    rewards = [0.1, 0.5, 0.9, -1.0, 0.7, 0.7]  # two draws of three samples
    assert frontier.best_of_n_choices(rewards, 2, 3) == [1, 4]
    assert frontier.best_of_n_choices(rewards, 3, 3) == [2, 4]  # ties: the first
    # best-of-1: the first sample of each draw
    assert frontier.best_of_n_choices(rewards, 1, 3) == [0, 3]
    rng = random.Random(3)
    pool = [rng.choice([-1.0, 0.0, 0.5, 1.0]) for _ in range(32 * 50)]
    for n in (1, 2, 8, 32):  # the chosen reward is the max of the draw's first n
        chosen = frontier.best_of_n_choices(pool, n, 32)
        assert [pool[j] for j in chosen] == [max(pool[d * 32:d * 32 + n]) for d in range(50)]


def test_best_of_n_kl_matches_simulation():
    """Monte Carlo: draw n of the rewards with replacement, keep the max level; KL of that level
    distribution."""
    rewards = [0, 0, 0, 1, 1, 2]
    rng, n, trials = random.Random(2), 3, 200_000
    counts = {0: 0, 1: 0, 2: 0}
    for _ in range(trials):
        counts[max(rng.choice(rewards) for _ in range(n))] += 1
    p = {0: 0.5, 1: 1 / 3, 2: 1 / 6}
    simulated = sum(c / trials * math.log(c / trials / p[level]) for level, c in counts.items())
    assert frontier.best_of_n_kl(rewards, n) == pytest.approx(simulated, abs=0.01)


def test_unlikelihood_stage_and_kept_checkpoints(tmp_path):
    """train.py unlikelihood: the chosen log-prob rises, and more than the rejected one; every
    checkpoint is kept."""
    torch.manual_seed(0)
    prefs = tmp_path / "prefs.jsonl"
    data.save_preferences([data.PreferenceRecord(f"Q{i}: how was it? ", "great, great!",
                                                 "awful, awful.")
                           for i in range(24)], prefs)
    common = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "48"]
    assert train.main(["sft", "--data", str(prefs), "--out-dir", str(tmp_path / "sft"), "--steps",
                       "2", "--batch-size", "4", *common]) == 0
    assert train.main(["unlikelihood", "--init", str(tmp_path / "sft"), "--data", str(prefs),
                       "--steps", "12", "--lr", "3e-3", "--batch-size", "8", "--eval-every", "4",
                       "--save-every", "4", "--keep-checkpoints",
                       "--out-dir", str(tmp_path / "ul")]) == 0
    rows = [json.loads(line) for line in open(tmp_path / "ul" / "metrics.jsonl")]
    evals = [r for r in rows if r["split"] == "eval"]
    assert set(evals[0]) == {"split", "step", "loss", "logps/chosen", "logps/rejected"}
    margins = [r["logps/chosen"] - r["logps/rejected"] for r in evals]
    assert evals[-1]["logps/chosen"] > evals[0]["logps/chosen"] and margins[-1] > margins[0] + 1
    assert {f for f in os.listdir(tmp_path / "ul") if f.startswith("step_")} == {
        "step_000004.pt", "step_000008.pt", "step_000012.pt"}


@pytest.mark.slow
def test_quick_demo_and_frontier(tmp_path):
    """The quick demo and the quick frontier end to end, in one test since three checks read the
    same two minutes of runs: the demo's outputs (check_quick_demo), the frontier's (structure,
    methods, a rerun from the caches, the quick open questions on top: check_quick_frontier), and
    this repository's full marks on A4's graded tests of these runs (`course grade A4 --runs`)."""
    from experiments import demo

    check_quick_demo(tmp_path / "demo", demo.run(out_dir=str(tmp_path / "demo"), quick=True,
                                                 log=lambda *_: None))
    result = frontier.run(out_dir=str(tmp_path / "frontier"), quick=True, log=lambda *_: None)
    check_quick_frontier(tmp_path / "frontier", result)
    results, table = grade(REPO, "A4", tmp_path, runs=tmp_path)
    assert results["points"] == results["total"] > 0, table


def check_quick_demo(out_dir, summary):
    """The demo's quick run in OUT_DIR (summary: what demo.run returned): every output is written
    and sensible, and every number can be re-measured from the saved files (here with transformers
    and tiktoken directly)."""
    for key in ("reward_reference", "reward_policy", "win_rate", "kl_policy_reference",
                "heldout_reward_accuracy", "fluency_policy", "fluency_reference",
                "bigram_fluency_policy", "kl_bound_at_optimum", "wall_seconds"):
        assert math.isfinite(summary[key]), key
    assert -1 <= summary["reward_policy"] <= 1 and 0 <= summary["win_rate"] <= 1
    # a KL estimate: non-negative up to Monte Carlo noise
    assert summary["kl_policy_reference"] > -0.5
    # DPO learned something that carries to held-out pairs
    assert summary["heldout_dpo_loss"] < math.log(2)
    assert summary["heldout_reward_accuracy"] > 0.5 and summary["heldout_reward_margin"] > 0
    # and the ground-truth reward rose
    assert summary["reward_policy"] > summary["reward_reference"]
    assert (summary["fluency_policy"] > 0.9 and summary["n_samples"] == 2
            * summary["n_heldout_prompts"])
    assert summary["sampling"] == {"max_new_tokens": base.QUICK["max_new_tokens"],
                                   "temperature": 1.0, "top_k": None, "samples_per_prompt": 2,
                                   "seed": 3}
    for name in ("summary.json", "dpo_training.png", "rewards.png", "samples.txt",
                 "pairs_train.jsonl", "dpo/metrics.jsonl", "dpo/ckpt.pt", "pretrain/ckpt.pt",
                 "dpo/hf/model.safetensors", "pretrain/hf/model.safetensors"):
        assert os.path.isfile(out_dir / name), name
    assert (len(data.load_preferences(str(out_dir / "pairs_train.jsonl")))
            == summary["pairs"]["train"]["n_pairs"])

    # Someone else's code: tiktoken from the recorded description, transformers from the hf/
    # directories.
    import tiktoken
    import transformers

    from data.tokenizer import load_ranks
    description = summary["tokenizer"]
    ranks = load_ranks(os.path.join(os.path.dirname(os.path.dirname(__file__)),
                                    description["ranks_file"]))
    enc = tiktoken.Encoding(name="rebuilt", pat_str=description["pat_str"], mergeable_ranks=ranks,
                            special_tokens=description["special_tokens"])
    with open(out_dir / "pairs_heldout.jsonl") as f:
        pair = json.loads(f.readline())
    ids = enc.encode_ordinary(pair["prompt"] + pair["chosen"])
    policy = transformers.GPT2LMHeadModel.from_pretrained(out_dir / "dpo" / "hf").eval()
    with torch.no_grad():
        logits = policy(torch.tensor([ids])).logits
    ours = load_model(str(out_dir / "dpo" / "ckpt.pt")).eval()
    with torch.no_grad():
        torch.testing.assert_close(logits, ours(torch.tensor([ids])), rtol=1e-4, atol=1e-4)


def check_quick_frontier(frontier_dir, result):
    """frontier --quick's run in FRONTIER_DIR (result: what frontier.run returned): the structure of
    frontier.json, the methods, and a rerun from the caches, then the quick open questions."""
    log = []
    points = result["points"]
    methods = {p["method"] for p in points}
    assert methods == {"reference", "DPO", "Preferred-FT", "Unlikelihood", "Best-of-N (oracle)",
                       "BoN-RM", "PPO", "PPO-GT", "RLOO", "SimPO", "ORPO", "KTO", "KTO 10%",
                       verdicts.PERTURBED}
    for p in points:
        for key in ("reward", "reward_ci95", "kl", "kl_ci95", "fluency", "fluency_ci95",
                    "bigram_fluency"):
            assert math.isfinite(p[key]), (p["name"], key)
        assert p["n_samples"] >= 128 and -1 <= p["reward"] <= 1
    reference = [p for p in points if p["method"] == "reference"][0]
    assert reference["kl"] == 0.0
    bon = {p["setting"]["N"]: p for p in points if p["method"] == "Best-of-N (oracle)"}
    assert bon[1]["kl"] == pytest.approx(0.0) and bon[1]["kl_analytic"] == 0.0
    assert bon[16]["reward"] > bon[4]["reward"] > bon[1]["reward"]  # more samples, a better best
    for n, p in bon.items():
        assert p["kl"] <= p["kl_analytic"] + 1e-9  # the analytic value bounds the exact KL
    final = {p["setting"]["beta"]: p for p in points if p["method"] == "DPO" and p["step"] == max(
        q["step"] for q in points if q["method"] == "DPO")}
    betas = sorted(final)
    # larger beta, smaller KL
    assert final[betas[-1]]["kl"] < final[betas[0]]["kl"] + final[betas[0]]["kl_ci95"]
    for name in ("frontier.png", "family.png", "frontier.json", "temperature.png"):
        assert os.path.isfile(frontier_dir / name), name
    for p in points:  # every point's samples are on disk, named with their SHA-256 in the point
        with open(frontier_dir / p["samples"], "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == p["samples_sha256"], p["name"]
        trained = p["method"] not in ("reference", "Best-of-N (oracle)", "BoN-RM")
        assert isinstance(p["train_seed"], int) if trained else p["train_seed"] is None, p["name"]
        with open(frontier_dir / "samples" / f"{p['name']}.jsonl") as f:
            rows = [json.loads(line) for line in f]
        assert len(rows) == p["n_samples"], p["name"]
        assert {"prompt", "completion", "reward"} <= set(rows[0]), p["name"]
    with open(frontier_dir / "samples" / f"{points[1]['name']}.jsonl") as f:
        assert set(json.loads(f.readline())) == {"prompt", "completion", "reward", "logratio"}
    ppo_runs = {p["setting"]["kl_coef"] for p in points if p["method"] == "PPO"}
    assert len(ppo_runs) == 2 and all(p["step"] for p in points if p["method"] in ("PPO", "PPO-GT",
                                                                                   "RLOO"))
    runs = frontier_dir / "runs"
    for method, run_name in (("SimPO", "simpo-beta8.0"), ("ORPO", "orpo-beta1.0"),
                             # one beta each, checkpoints on the frontier
                             ("KTO", "kto-beta0.1"), ("KTO 10%", "kto-10pct-beta0.1")):
        steps = {p["step"] for p in points if p["method"] == method and p["train_seed"] == 1337}
        assert steps == {12, 24}, method
        saved = json.load(open(runs / run_name / "config.json"))
        assert saved["command"] == family_runs.FAMILY_METHODS[method]
    # gamma / beta = 0.5
    assert json.load(open(runs / "simpo-beta8.0" / "config.json"))["simpo_gamma"] == 4.0
    unpaired = json.load(open(runs / "kto-10pct-beta0.1" / "config.json"))
    # rebalanced, resolved
    assert unpaired["desirable_fraction"] == 0.1 and unpaired["desirable_weight"] > 1
    claims = result["claims"]
    assert {row["method"] for row in claims["temperature"]} == {"DPO", "PPO", "PPO-GT", "RLOO"}
    # methods x seeds x T
    assert len(claims["temperature"]) == 4 * 2 * len(frontier.QUICK["temperatures"])
    assert [row["method"] for row in claims["cost"]] == ["DPO", "PPO"]
    assert claims["cost"][1]["tokens_sampled"] > 0 == claims["cost"][0]["tokens_sampled"]
    assert len(claims["secretly_a_reward_model"]) == 1 + len(frontier.QUICK["betas"])
    for row in claims["seeds"]:  # every setting, at every checkpoint, with every training seed
        assert len(row["reward_per_seed"]) == 1 + len(frontier.QUICK["train_seeds"]), row
    assert {row["method"] for row in claims["seeds"]} == {
        "DPO", "Preferred-FT", "Unlikelihood", "PPO", "PPO-GT", "RLOO", "SimPO", "ORPO", "KTO",
        "KTO 10%", verdicts.PERTURBED}
    assert {row["step"] for row in claims["seeds"] if row["method"] == "DPO"} == {12, 24}
    # the KL estimate of every KTO run (2 methods x 2 seeds), and the claims with their verdicts
    assert [row["steps"] for row in claims["kto_reference_point"]] == [24] * 4
    assert {v["id"] for v in claims["verdicts"]} >= {"tie_near_one_nat", "dpo_passes_ppo",
                                                     "kl_falls_with_beta",
                                                     "threads_within_intervals", "kto_ceiling"}
    assert claims["verdicts"] == verdicts.frontier_claims(result)
    # the sweep again on another thread count: the same run with its sums in another order, so its
    # weights differ in their last bits; the verdict reports how far the endpoints moved
    threads = claims["threads"]
    assert threads["perturbed"] != threads["default"]
    default, perturbed = (load_checkpoint(str(runs / name))["model"]
                          for name in ("dpo-beta3.0", f"dpo-beta3.0-threads{threads['perturbed']}"))
    assert any(not torch.equal(default[key], perturbed[key]) for key in default)
    moved = next(v for v in claims["verdicts"] if v["id"] == "threads_within_intervals")
    assert [row["beta"] for row in moved["per_seed"]] == list(frontier.QUICK["betas"])
    assert all(0 <= move < 0.5 for row in moved["per_seed"] for move in row["kl_moves"]), moved
    assert claims["left_out"] == {}
    log.clear()
    again = frontier.run(out_dir=str(frontier_dir), quick=True, log=log.append)  # everything cached
    assert [p["reward"] for p in again["points"]] == [p["reward"] for p in points]
    assert any("reusing the base model" in line for line in log) and any("reusing "
                                                                         "the finished run" in line
                                                                         for line in log)
    open_questions_quick(frontier_dir, again)


def open_questions_quick(out_dir, frontier_result):
    """open-questions --quick on the quick frontier's directory: its rows, the properties the
    design guarantees, numbers re-measured from the files it wrote, and its claims."""
    from experiments import open_questions, self_labeling
    result = open_questions.run(out_dir=str(out_dir), quick=True, log=lambda *_: None)
    seeds = [1337, *frontier.QUICK["train_seeds"]]
    labeled = result["self_labeling"]
    assert {(r["seed"], r["labeler"], r["round"]) for r in labeled["rows"]} == (
        {(s, "round 1", 1) for s in seeds}
        | {(s, labeler, n) for s in seeds for labeler in self_labeling.LABELERS for n in (2, 3)})
    for row in labeled["rows"]:
        if row["labeler"] in ("round 1", "original pairs"):
            continue
        pairs = row["pairs"]
        assert pairs["n_pairs"] + pairs["n_tied"] == self_labeling.QUICK["n_unlabeled"]
        if row["labeler"] == "ground truth":  # the oracle's labels agree with itself
            assert pairs["agreement"] == 1.0
        path = out_dir / "self_labeling" / (f"self-label-{self_labeling.slug(row['labeler'])}"
                                            f"-round{row['round']}-seed{row['seed']}.jsonl")
        records = [json.loads(line) for line in path.read_text().splitlines()]
        gold = sentiment.sentiment_reward([r["chosen"] for r in records] +
                                          [r["rejected"] for r in records])
        agree = sum(a > b for a, b in zip(gold[:len(records)], gold[len(records):]))
        assert agree / len(records) == pytest.approx(pairs["agreement"])
    over = result["overoptimization"]
    for row in over["rows"]:
        if row["method"] == "PPO-GT":  # its proxy is the gold itself
            assert row["proxy"] == row["gold"]
        if row["method"] == "BoN-RM" and row["setting"]["N"] == 1:
            assert row["kl"] == pytest.approx(0.0, abs=1e-12)
    assert {r["method"] for r in over["rows"]} == set(over["fits"]) == {"PPO", "RLOO", "PPO-GT",
                                                                        "DPO", "BoN-RM"}
    shifted = result["out_of_distribution"]
    assert {(r["method"], r["seed"]) for r in shifted["rows"]} == {
        (m, s) for m in ("DPO", "PPO", "PPO-GT", "RLOO", "SimPO", "ORPO", "KTO") for s in seeds}
    assert shifted["base_loss"]["shifted"] > shifted["base_loss"]["heldout"]
    points = {p["name"]: p for p in frontier_result["points"]}
    for row in shifted["rows"]:  # the held-out column is the frontier's own point
        assert row["heldout"]["reward"] == points[row["heldout"]["name"]]["reward"]
    assert result["verdicts"] == json.loads(json.dumps(open_questions.claims(result)))
    for name in ("open_questions.json", "self_labeling.png", "overoptimization.png",
                 "out_of_distribution.png"):
        assert (out_dir / name).stat().st_size > 0


@pytest.mark.slow
def test_study_quick(tmp_path):
    """study --quick end to end: every question's rows, their numbers re-measured from the files the
    study wrote, the properties the settings guarantee, and a rerun from the caches."""
    from experiments import study
    log = []
    result = study.run(out_dir=str(tmp_path), quick=True, log=log.append)
    a = {row["name"]: row for row in result["a_lora"]}
    full, lora_run = a["full"], [row for name, row in a.items() if name.startswith("lora")][0]
    assert (lora_run["trainable"] < full["trainable"] / 5 and lora_run["state_bytes"]
            < full["state_bytes"] / 2)
    # adapters and their optimizer state only
    assert lora_run["ckpt_bytes"] < full["ckpt_bytes"] / 2
    for row in result["a_lora"] + result["c_forgetting"] + result["d_early_stopping"]["rows"]:
        assert (0 <= row["win_rate"] <= 1 and math.isfinite(row["reward"]) and 0
                <= row["heldout_accuracy"] <= 1)
        rewards = [json.loads(line)["reward"]
                   for line in open(tmp_path / "samples" / f"{row['name']}.jsonl")]
        # the samples file re-measures it
        assert sum(rewards) / len(rewards) == pytest.approx(row["reward"])
    gap = result["b_precision"]
    assert 0 < gap["max_train_loss_gap"] < 0.05  # bf16 rounding: visible but small
    c = result["c_forgetting"]
    for row in c:
        lm = json.load(open(tmp_path / "lm_nll" / f"forget-beta{row['beta']}.json"))
        rise = [p - q for p, q in zip(lm["policy"], lm["base"])]
        assert sum(rise) / len(rise) == pytest.approx(row["nll_rise"])
    d = result["d_early_stopping"]
    assert ([r["step"] for r in d["rows"]] == sorted(r["step"] for r in d["rows"])
            and len(d["rows"]) >= 2)
    e = result["e_base_quality"]
    assert e[1]["pretrain_steps"] < e[0]["pretrain_steps"]
    assert e[1]["base_heldout_lm_loss"] > e[0]["base_heldout_lm_loss"]
    f = result["f_second_round"]
    assert [r["method"] for r in f][:3] == ["round 1 (the run of (a))",
                                            "round 2, reference = round-1 policy",
                                            "round 2, reference = base"]
    # round 2 stays nearer round 1 than the base
    assert all(r["kl_to_round1"] < r["kl"] for r in f[1:3])
    assert os.path.isfile(tmp_path / "study.png")
    log.clear()
    again = study.run(out_dir=str(tmp_path), quick=True, log=log.append)
    assert [r["reward"] for r in again["c_forgetting"]] == [r["reward"] for r in c]
    assert not any("== pre-training" in line for line in log)  # both bases and every run reused
    # another training seed: the same bases (not pre-trained again), other runs, each claim's
    # numbers per seed
    log.clear()
    seeds = study.run_seeds(out_dir=str(tmp_path), quick=True, seeds=(1338,), log=log.append)
    assert not any("== pre-training" in line for line in log)
    assert seeds["seeds"] == [1337, 1338] and len(seeds["claims"]) == 2
    assert seeds["claims"][0].keys() == seeds["claims"][1].keys()
    with open(tmp_path / "seed1338" / "runs" / "full" / "config.json") as f:
        assert json.load(f)["seed"] == 1338
    # another run
    assert seeds["claims"][1]["b: largest train-loss gap fp32 / bf16"] != gap["max_train_loss_gap"]
    assert os.path.isfile(tmp_path / "seeds.json")
    # every claim with its verdict over the two seeds: yes/no claims counted, numbers measured
    assert [v["claim"][1] for v in seeds["verdicts"]] == [k[0] for k in seeds["claims"][0]]
    assert {v["verdict"] for v in seeds["verdicts"]} - {"measured"} <= {
        "holds on 2 of 2 seeds", "fails on 1 of 2 seeds (1337)", "fails on 1 of 2 seeds (1338)",
        "fails on all 2 seeds"}
