"""Graded tests of Assignment 4: the experiment (experiments.frontier.best_of_n_kl, your runs, your
answers).

Three parts, 20 points:

* best_of_n_kl (11 points): hand-derived values, the cases where best-of-n selects nothing (n = 1,
  all rewards tied), the analytic value log n - (n - 1)/n as the limit for distinct rewards and as
  an upper
  bound for any rewards (hypothesis), and a Monte Carlo simulation of best-of-n.
* Your runs (4 points; they need Assignments 1 to 3): out/demo/summary.json and
  out/frontier/frontier.json at the repository root, as `python train.py` and `python train.py
  frontier` write them, checked for consistency with the files beside them (every frontier point is
  re-measured from its samples/NAME.jsonl). Without them the tests run the quick demo and the quick
  frontier in a temporary directory (under a minute on 2 idle CPU cores) and check those.
  `python -m course grade A4 --runs DIR` reads DIR/demo and DIR/frontier instead of out/ (the
  environment variable COURSE_RUNS_DIR carries it here), and runs nothing in their place.
* Your answers (5 points): answers/A4.md; each answer is at least 40 words and quotes at least one
  number from your runs. That is all a program checks: the instructor reads the answers for their
  content.

The repository root is the parent of the `course` package that holds this file: the student copy, or
the instructor's full repository (which has no answers/A4.md; there the answer tests check the
answer sheet's template instead).
"""

import importlib
import json
import math
import os
import random
import re

import numpy as np
import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANSWERS = os.path.join(ROOT, "answers", "A4.md")
TEMPLATE = os.path.join(ROOT, "course", "handouts", "A4_answers.md")
QUESTIONS = ("Q1", "Q2", "Q3", "Q4", "Q5")
# 0.93, -16.7, 2.6±0.4, "1.0."; not in a name (dpo-beta0.1/)
NUMBER = r"(?<![\w./])\d+\.\d+(?![\w/]|\.\w)"
SETTINGS = settings(derandomize=True, deadline=None, max_examples=40)


def analytic(n):
    """KL(best-of-n || pi) for a continuous reward (no ties): log n - (n - 1) / n."""
    return math.log(n) - (n - 1) / n


def best_of_n_kl(rewards, n):
    from experiments import frontier

    return frontier.best_of_n_kl(rewards, n)


# ------------------------------------------------------------------------------------- best_of_n_kl

@pytest.mark.points(3)
def test_best_of_n_kl_hand_derived():
    """Small cases worked by hand: p_l from the counts, q_l = F(l)^n - F(l-)^n, KL = sum q_l log(q_l
    / p_l)."""
    # [0, 0, 1, 1], n = 2: p = (1/2, 1/2), F = (1/2, 1), q = (1/4, 3/4)
    assert best_of_n_kl([0, 0, 1, 1], 2) == pytest.approx(1 / 4 * math.log(1 / 2) + 3 / 4
                                                          * math.log(3 / 2))
    # three distinct rewards, in any order, n = 2: p = 1/3 each, q = (1/9, 3/9, 5/9)
    expected = 1 / 9 * math.log(1 / 3) + 3 / 9 * math.log(1) + 5 / 9 * math.log(5 / 3)
    assert best_of_n_kl([1.0, 2.0, 3.0], 2) == pytest.approx(expected)
    assert best_of_n_kl([3.0, 1.0, 2.0], 2) == pytest.approx(expected)
    # negative rewards and a tie at the bottom, n = 3: p = (1/2, 1/4, 1/4), F = (1/2, 3/4, 1),
    # q = (1/8, 27/64 - 8/64, 1 - 27/64) = (8/64, 19/64, 37/64)
    expected = 8 / 64 * math.log(1 / 4) + 19 / 64 * math.log(19 / 16) + 37 / 64 * math.log(37 / 16)
    assert best_of_n_kl([0.9, -0.5, 0.1, -0.5], 3) == pytest.approx(expected)
    # a tie at the top, n = 2: p = (1/3, 2/3), q = (1/9, 8/9)
    assert best_of_n_kl([-1.0, 0.7, 0.7], 2) == pytest.approx(1 / 9 * math.log(1 / 3) + 8 / 9
                                                              * math.log(4 / 3))


@pytest.mark.points(2)
@SETTINGS
@given(rewards=st.lists(st.floats(-1, 1), min_size=1, max_size=40), n=st.integers(1, 64),
       level=st.floats(-1, 1), size=st.integers(1, 40))
def test_best_of_n_kl_is_zero_without_selection(rewards, n, level, size):
    """Best-of-1 is the reference itself, and when every reward ties best-of-n picks at random: KL
    0."""
    assert best_of_n_kl(rewards, 1) == pytest.approx(0.0, abs=1e-12)
    assert best_of_n_kl([level] * size, n) == pytest.approx(0.0, abs=1e-12)


LEVELS = st.sampled_from([-1.0, -0.6, -0.25, 0.0, 0.3, 0.55, 0.9, 1.0])


@pytest.mark.points(2)
@SETTINGS
@given(rewards=st.one_of(st.lists(LEVELS, min_size=1, max_size=60),
                         st.lists(st.floats(-1, 1), min_size=1, max_size=60)),
       n=st.integers(1, 64), copies=st.integers(2, 3))
def test_best_of_n_kl_is_bounded_by_the_analytic_value(rewards, n, copies):
    """For any rewards, ties or not: 0 <= KL <= log n - (n - 1)/n; and KL depends only on the reward
    levels' probabilities: not on the order of the samples, nor on repeating the whole list."""
    kl = best_of_n_kl(rewards, n)
    assert math.isfinite(kl) and -1e-12 <= kl <= analytic(n) + 1e-9, (kl, analytic(n))
    assert best_of_n_kl(list(reversed(rewards)), n) == pytest.approx(kl, rel=1e-9, abs=1e-12)
    assert best_of_n_kl(sorted(rewards), n) == pytest.approx(kl, rel=1e-9, abs=1e-12)
    assert best_of_n_kl(rewards * copies, n) == pytest.approx(kl, rel=1e-9, abs=1e-12)


@pytest.mark.points(2)
@settings(derandomize=True, deadline=None, max_examples=15,
          phases=(Phase.explicit, Phase.reuse, Phase.generate))
@given(m=st.integers(200, 500), n=st.integers(2, 64), seed=st.integers(0, 2**32 - 1))
def test_best_of_n_kl_distinct_rewards_converge_to_the_analytic_value(m, n, seed):
    """m distinct rewards: the KL depends on m only (not on the values), stays below log n - (n -
    1)/n and approaches it as m grows (within 0.01 nats from m = 200 on, for n <= 64; merging levels
    lowers it). Not shrunk (that would re-run it hundreds of times): a failure reports the (m, n,
    seed) it was found at."""
    rng = random.Random(seed)
    rewards = [v / 1000 for v in rng.sample(range(-10**6, 10**6), m)]  # distinct, in [-1000, 1000)
    kl = best_of_n_kl(rewards, n)
    assert kl == pytest.approx(best_of_n_kl(list(range(m)), n), rel=1e-9)
    assert kl <= analytic(n) + 1e-12
    assert kl == pytest.approx(analytic(n), abs=0.01)
    k = m // 2  # m // 2 levels are 2k levels merged in pairs: a coarser view, so a smaller KL
    assert best_of_n_kl(list(range(k)), n) <= best_of_n_kl(list(range(2 * k)), n) + 1e-12


@pytest.mark.points(2)
def test_best_of_n_kl_matches_simulation():
    """Monte Carlo: draw n rewards with replacement from the list, keep the largest; the KL of the
    simulated distribution of the kept reward against the list's own distribution (300,000 draws per
    case)."""
    rng = np.random.default_rng(4)
    for rewards, n in (([0, 0, 0, 1, 1, 2], 3), ([-0.3, 0.8, 0.8, 0.1, -1.0], 5),
                       ([0.2, -0.4, 0.6, 0.9], 2)):
        values = np.array(rewards, dtype=np.float64)
        kept = rng.choice(values, size=(300_000, n)).max(axis=1)
        levels, counts = np.unique(kept, return_counts=True)
        p = {level: float(np.mean(values == level)) for level in np.unique(values)}
        simulated = sum(c / len(kept) * math.log(c / len(kept) / p[level])
                        for level, c in zip(levels, counts))
        assert best_of_n_kl(rewards, n) == pytest.approx(simulated, abs=0.01), (rewards, n)


# ---------------------------------------------------------------------------------------- your runs

def require_written_code():
    """Call the stubs the experiments run through (A1's dpo_loss, A3's collate, A2's backward of the
    torch log-probs), so that files alone, left by someone else's code, cannot pass a test: a stub
    not written yet raises NotImplementedError here."""
    import data
    import dpo
    import logprob_kernels

    logps = torch.tensor([-3.0, -2.0])
    dpo.dpo_loss(logps, logps - 1.0, logps, logps, beta=0.1)
    data.collate_responses([([1, 2], [3, 4])], 0)
    logits = torch.zeros(1, 2, 3, requires_grad=True)
    keep = torch.ones(1, 2, dtype=torch.bool)
    logprob_kernels.sequence_logprobs(logits, torch.tensor([[0, 2]]), keep,
                                      impl="torch").sum().backward()


def mean_ci95(values):
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, 1.96 * math.sqrt(var / len(values))


def experiment_outputs(name, filename, tmp_path):
    """(directory, its JSON summary) of experiment `name` ("demo" or "frontier"): DIR/NAME when
    grading was given --runs, else out/NAME at the repository root when the student ran it, else a
    quick run under tmp_path."""
    runs = os.environ.get("COURSE_RUNS_DIR", "")  # `course grade A4 --runs DIR`
    out = os.path.join(runs or os.path.join(ROOT, "out"), name)
    if os.path.isfile(os.path.join(out, filename)):
        with open(os.path.join(out, filename)) as f:
            return out, json.load(f)
    assert not runs, f"--runs {runs}: no {name}/{filename} there"
    module = importlib.import_module(f"experiments.{name}")
    out = str(tmp_path / name)
    return out, module.run(out_dir=out, quick=True, log=lambda *_: None)


@pytest.mark.points(2)
def test_demo_outputs(tmp_path):
    """out/demo (python train.py): the summary's numbers agree with each other and with
    dpo/metrics.jsonl, the sampling settings are recorded, and the files someone else needs to
    re-measure it are there."""
    require_written_code()
    out, s = experiment_outputs("demo", "summary.json", tmp_path)
    from experiments import demo

    for key in ("reward_policy", "reward_reference"):
        assert -1 <= s[key] <= 1, key
    gain = s["reward_policy"] - s["reward_reference"]
    assert f"(gain {gain:+.3f})" in demo.format_summary(s), (
        "the printed reward gain is policy - reference")
    n = s["n_samples"]
    assert n == s["n_heldout_prompts"] * s["sampling"]["samples_per_prompt"]
    for key in ("win_rate", "tie_rate"):
        assert 0 <= s[key] <= 1 and abs(s[key] * n - round(s[key] * n)) < 1e-6, (key, "a share "
                                                                                 "of the samples")
    assert s["win_rate"] + s["tie_rate"] <= 1 + 1e-12
    kl = s["kl_policy_reference"]
    assert math.isfinite(kl) and kl > -0.5, "a KL estimate: non-negative up to Monte Carlo noise"
    assert s["kl_policy_reference_ci95"] > 0 and s["reward_policy_ci95"] > 0
    assert s["kl_bound_at_optimum"] == pytest.approx((1 - s["reward_reference"]) / s["dpo"]["beta"],
                                                     rel=1e-9)
    sampling = s["sampling"]
    assert set(sampling) >= {"max_new_tokens", "temperature", "top_k", "samples_per_prompt", "seed"}
    assert sampling["temperature"] == 1.0 and sampling["top_k"] is None, (
        "KL from samples needs samples of pi")

    with open(os.path.join(out, "dpo", "metrics.jsonl")) as f:
        evals = [row for row in map(json.loads, f) if row["split"] == "eval"]
    last = evals[-1]
    assert last["loss"] == pytest.approx(s["heldout_dpo_loss"], rel=1e-6)
    assert last["rewards/accuracies"] == pytest.approx(s["heldout_reward_accuracy"], rel=1e-6)
    assert last["rewards/margins"] == pytest.approx(s["heldout_reward_margin"], rel=1e-6)
    assert last["rewards/margins"] == pytest.approx(last["rewards/chosen"]
                                                    - last["rewards/rejected"], abs=1e-5)
    assert "logps/chosen" in last and "logps/rejected" in last

    with open(os.path.join(out, "pairs_heldout.jsonl")) as f:
        pairs = [json.loads(line) for line in f if line.strip()]
    assert pairs and all(isinstance(p.get("prompt"), str) and p["prompt"] for p in pairs)
    assert len(pairs) == s["pairs"]["heldout"]["n_pairs"]
    for command in ("dpo", "pretrain"):
        hf = os.path.join(out, command, "hf")
        assert os.path.isdir(hf), f"{command}/hf: the Hugging Face GPT-2 weights"
        assert {"config.json", "model.safetensors"} <= set(os.listdir(hf)), hf


@pytest.mark.points(2)
def test_frontier_outputs(tmp_path):
    """out/frontier (python train.py frontier): every sampled point re-measured from
    samples/NAME.jsonl (mean reward and mean log-ratio, and their 95% CIs); Best-of-N below its
    analytic KL, its reward rising with N; the largest beta ending at a smaller KL than the
    smallest."""
    best_of_n_kl([0, 1], 2)  # files alone cannot pass: the frontier needs your best_of_n_kl
    require_written_code()
    out, result = experiment_outputs("frontier", "frontier.json", tmp_path)
    points = result["points"]
    assert {p["method"] for p in points} >= {"reference", "DPO", "Preferred-FT",
                                             "Best-of-N (oracle)"}
    for p in points:
        name = p["name"]
        for key in ("reward", "reward_ci95", "kl", "kl_ci95"):
            assert math.isfinite(p[key]), (name, key)
        if p["n_samples"] > 1:
            assert p["reward_ci95"] > 0 and p["kl_ci95"] >= 0, name
        path = os.path.join(out, "samples", f"{name}.jsonl")
        assert os.path.isfile(path), f"{path}: missing; run `python train.py frontier` again"
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        assert len(rows) == p["n_samples"], name
        # the KL is computed from the selector's levels
        if p["method"] in ("Best-of-N (oracle)", "BoN-RM"):
            assert -1e-12 <= p["kl"] <= p["kl_analytic"] + 1e-9, name
            assert p["kl_analytic"] == pytest.approx(analytic(p["setting"]["N"]), abs=1e-9), name
            mean_reward = mean_ci95([r["reward"] for r in rows])[0]
            assert mean_reward == pytest.approx(p["reward"], abs=1e-6), name
            continue
        assert all(set(r) >= {"prompt", "completion", "reward", "logratio"} for r in rows), name
        for key, column in (("reward", "reward"), ("kl", "logratio")):
            mean, ci = mean_ci95([r[column] for r in rows])
            assert mean == pytest.approx(p[key], abs=1e-6), (name, key)
            assert ci == pytest.approx(p[key + "_ci95"], abs=1e-6), (name, key + "_ci95")
        if p["method"] == "reference":
            assert p["kl"] == 0.0
        else:
            assert p["kl_ci95"] > 0, (name, "a trained policy's log-ratios vary")

    bon = sorted((p for p in points if p["method"] == "Best-of-N (oracle)"),
                 key=lambda p: p["setting"]["N"])
    assert (len(bon) >= 2 and bon[0]["setting"]["N"] == 1 and bon[0]["kl"]
            == pytest.approx(0.0, abs=1e-12))
    for a, b in zip(bon, bon[1:]):  # more samples, a better best (up to the CIs)
        assert b["reward"] >= a["reward"] - a["reward_ci95"] - b["reward_ci95"], (a["name"],
                                                                                  b["name"])
    assert bon[-1]["reward"] > bon[0]["reward"] + bon[0]["reward_ci95"]

    dpo_points = [p for p in points if p["method"] == "DPO"]
    last_step = max(p["step"] for p in dpo_points)
    final = {p["setting"]["beta"]: p for p in dpo_points if p["step"] == last_step}
    low, high = final[min(final)], final[max(final)]
    assert len(final) >= 2 and high["kl"] < low["kl"] + low["kl_ci95"], (
        "a larger beta ends nearer the reference")


# ------------------------------------------------------------------------------------- your answers

def answer_sections(text):
    """{"Q1": answer text, ...} of an answer sheet: each `## Qn ...` heading, then `ANSWER:` and the
    answer, up to the next `## ` heading (HTML comments left out)."""
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    sections = {}
    for match in re.finditer(r"^## (Q\d+)\b[^\n]*\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S):
        found = re.search(r"^ANSWER:(.*)", match.group(2), flags=re.M | re.S)
        sections[match.group(1)] = found.group(1).strip() if found else None
    return sections


def instructor_repository():
    """The full repository: best_of_n_kl is written, and there is no answers/A4.md and no handouts/
    (which `python -m course build` writes into every student copy)."""
    with open(os.path.join(ROOT, "experiments", "frontier.py")) as f:
        stubbed = re.search(r"NotImplementedError\(\s*['\"]Assignment 4:", f.read())
    return (not stubbed and not os.path.exists(ANSWERS)
            and not os.path.isdir(os.path.join(ROOT, "handouts")))


@pytest.mark.points(1)
@pytest.mark.parametrize("question", QUESTIONS)
def test_answer(question):
    """answers/A4.md: the answer to `question` is written (not TODO), has at least 40 words and
    quotes at least one number with a decimal point from your runs."""
    if instructor_repository():  # nothing to grade: check the template students get
        with open(TEMPLATE) as f:
            sections = answer_sections(f.read())
        assert tuple(sections) == QUESTIONS, f"{TEMPLATE}: expected the questions {QUESTIONS}"
        assert sections[question] == "TODO", (
            f"{TEMPLATE}: {question}'s answer should be the placeholder TODO")
        return
    path = ANSWERS if os.path.exists(ANSWERS) else TEMPLATE
    with open(path) as f:
        sections = answer_sections(f.read())
    assert question in sections, f"{path}: no heading `## {question} ...`"
    answer = sections[question]
    assert answer is not None, f"{path}: {question} has no `ANSWER:` line"
    if answer in ("", "TODO"):
        raise NotImplementedError(f"Assignment 4: answer {question} in answers/A4.md")
    words = re.findall(r"[^\W\d_]+(?:['’-][^\W\d_]+)*", answer)
    assert len(words) >= 40, f"{question}: {len(words)} words; write at least 40"
    assert re.search(NUMBER, answer), (
        f"{question}: quote at least one number (such as 0.93) from your out/ files")
