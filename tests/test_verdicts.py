"""The claims of docs/frontier.md and docs/family.md: computed by experiments/verdicts.py from the
committed docs/frontier.json, written into it, and quoted by the docs; and the rules themselves on
hand-made points."""

import json
import os
import re

import pytest

from experiments import claim_rules, verdicts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = {"frontier": "docs/frontier.md", "family": "docs/family.md"}


def point(kl, reward, ci=0.01, method="DPO", seed=1, step=1, setting=None, **more):
    return {"name": f"{method}-{kl}-{seed}-{step}", "method": method, "kl": kl, "kl_ci95": 0.1,
            "reward": reward, "reward_ci95": ci, "train_seed": seed, "step": step,
            "setting": setting or {"beta": 0.1}, "fluency": 1.0, "bigram_fluency": 0.99,
            "bigram_fluency_ci95": 0.01, **more}


REFERENCE = {**point(0.0, 0.1), "method": "reference", "train_seed": None}


def test_envelope_keeps_the_points_no_smaller_kl_beats_and_reads_between_them():
    points = [point(1.0, 0.5), point(2.0, 0.4), point(3.0, 0.9, ci=0.03), point(5.0, 0.8)]
    frontier = verdicts.envelope(points, REFERENCE)  # flat from the best point to the farthest
    assert frontier == [(0.0, 0.1, 0.01), (1.0, 0.5, 0.01), (3.0, 0.9, 0.03), (5.0, 0.9, 0.03)]
    reward, ci = verdicts.read(frontier, 2.0)  # halfway between (1, 0.5) and (3, 0.9)
    assert reward == pytest.approx(0.7) and ci == pytest.approx(0.02)
    assert verdicts.read(frontier, 0.5) == pytest.approx((0.3, 0.01))
    assert verdicts.read(frontier, 4.0) == (0.9, 0.03)
    assert verdicts.read(frontier, 5.5) is None  # beyond the largest KL: not reached


def test_compare_needs_the_intervals_apart():
    assert verdicts.compare((0.8, 0.05), (0.7, 0.04)) == "ahead"     # 0.75 > 0.74
    assert verdicts.compare((0.8, 0.05), (0.7, 0.06)) == "tie"       # 0.75 < 0.76
    assert verdicts.compare((0.7, 0.01), (0.8, 0.01)) == "behind"


def test_a_verdict_counts_seeds_and_names_those_that_fail():
    rows = [{"seed": s, "holds": s != 3, "detail": ""} for s in (1, 2, 3)]
    assert verdicts.claim("x", "frontier", "c", "r", rows)["verdict"] == "fails on 1 of 3 seeds (3)"
    assert verdicts.claim("x", "frontier", "c", "r", rows[:2])["verdict"] == "holds on 2 of 2 seeds"
    assert (verdicts.claim("x", "frontier", "c", "r", rows[:1])["verdict"]
            == "holds (one training seed: 1)")
    assert "not measured" in verdicts.claim("x", "frontier", "c", "r", [])["verdict"]


def test_the_tie_and_the_pass_are_read_on_each_seed():
    points = [REFERENCE]
    for seed, dpo_far in ((1, 0.95), (2, 0.80)):  # seed 2's DPO never passes PPO's best
        points += [point(1.0, 0.70, seed=seed), point(4.0, dpo_far, seed=seed, step=2),
                   point(1.0, 0.71, method="PPO", seed=seed, setting={"kl_coef": 0.1}),
                   point(1.5, 0.85, method="PPO", seed=seed, setting={"kl_coef": 0.1}, step=2)]
    tie = verdicts.tie_near_one_nat(points)
    assert [row["holds"] for row in tie["per_seed"]] == [True, True]
    passes = verdicts.dpo_passes_ppo(points)
    assert [row["holds"] for row in passes["per_seed"]] == [True, False]
    assert passes["verdict"] == "fails on 1 of 2 seeds (2)"
    # seed 1: DPO's envelope 0.70 + 0.25 (KL - 1) / 3 passes 0.85 + 0.01 + 0.01 at KL 3.04
    assert passes["per_seed"][0]["dpo_ahead_from_kl"] == pytest.approx(3.04, abs=1e-6)


def test_kl_falls_with_beta_is_checked_per_run_on_both_thread_settings():
    points = [REFERENCE]
    for method, kls in (("DPO", (30.0, 10.0, 2.0)), (verdicts.PERTURBED, (9.0, 10.0, 2.0))):
        points += [point(kl, 0.8, method=method, setting={"beta": beta}, step=96)
                   for beta, kl in zip((0.1, 1.0, 3.0), kls)]
    result = verdicts.kl_falls_with_beta(points)
    assert [row["holds"] for row in result["per_seed"]] == [True, False]
    assert result["verdict"] == "fails on 1 of 2 runs (1 (perturbed threads))"


@pytest.fixture(scope="module")
def committed():
    with open(os.path.join(REPO, "docs", "frontier.json")) as f:
        return json.load(f)


def test_the_committed_verdicts_are_those_the_rules_compute(committed):
    stored = committed["claims"]["verdicts"]
    computed = json.loads(json.dumps(verdicts.frontier_claims(committed)))  # tuples -> lists
    assert [v["id"] for v in stored] == [v["id"] for v in computed]
    for old, new in zip(stored, computed):
        assert old == new, old["id"]


@pytest.mark.parametrize("page", sorted(PAGES))
def test_the_docs_quote_the_committed_verdicts(committed, page):
    with open(os.path.join(REPO, PAGES[page])) as f:
        text = f.read()
    blocks = claim_rules.BLOCK.findall(text)
    assert [name for _, name, _, _ in blocks] == [page], "one verdicts block per page"
    assert blocks[0][2] == verdicts.render(committed["claims"]["verdicts"], page), (
        f"{PAGES[page]} does not quote docs/frontier.json's verdicts: run "
        "python -m experiments.verdicts docs/frontier.json --write")


def test_the_readme_summarises_the_committed_verdicts(committed):
    with open(os.path.join(REPO, "README.md")) as f:
        blocks = claim_rules.BLOCK.findall(f.read())
    # the other block is the open questions' (tests/test_open_questions.py)
    assert [name for _, name, _, _ in blocks] == ["summary", "open-questions-summary"]
    assert blocks[0][2] == verdicts.render_summary(committed["claims"]["verdicts"])
    assert blocks[0][2].count("\n* ") + 1 == len(verdicts.SUMMARY)


def test_the_a5_answer_key_quotes_the_committed_frontier(committed):
    """The instructor's answer key cites the frontier's claims: each signed reward and each KL it
    writes is written so in the committed verdicts."""
    path = os.path.join(REPO, "course", "handouts", "A5_answer_key.md")
    if not os.path.isfile(path):  # the course kit's student copy leaves the answer key out
        pytest.skip("no A5 answer key in the course kit's student copy")
    with open(path) as f:
        text = f.read()
    quoted = "".join(verdicts.render(committed["claims"]["verdicts"], page) for page in PAGES)
    tokens = re.findall(r"[+−-]0\.\d+|\d+\.\d+(?= nats)", text)
    missing = [t for t in tokens if t.replace("−", "-") not in quoted]
    assert tokens and not missing, f"A5_answer_key.md: not in the verdicts: {missing[:10]}"


# A reward (+0.836, −0.12) or a KL ("4.4 nats", "1.6 to 2.1 nats") written by hand
RESULT_NUMBER = re.compile(r"[+−-]0\.\d\d|\d+(\.\d+)?( to \d+(\.\d+)?)? nats?\b")


@pytest.mark.parametrize("page", sorted(PAGES))
def test_no_result_number_is_written_by_hand_outside_the_verdicts(page):
    """What the frontier measured is quoted only from the JSON (the verdicts block); the prose and
    tables around it explain and name settings (β, steps), not results."""
    with open(os.path.join(REPO, PAGES[page])) as f:
        text = claim_rules.BLOCK.sub("", f.read())
    found = [line for line in text.splitlines() if RESULT_NUMBER.search(line)]
    assert not found, f"{PAGES[page]}: results written by hand: {found[:3]}"


# A number as the study's page writes it: +0.834, 2.69, 1.9e-3, 0.50 (not a step or a count)
STUDY_NUMBER = re.compile(r"(?:(?<=[\s(])[+−-])?(?<![\w.])\d+\.\d+(?:e-?\d+)?")


def json_numbers(value):
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield float(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from json_numbers(item)
            if key.endswith("bytes") and isinstance(item, (int, float)):
                yield item / 2**20  # written in MiB
    elif isinstance(value, list):
        for item in value:
            yield from json_numbers(item)


def written_as(number, text):
    """Whether `number` rounds to `text` at text's precision (2.69, +0.834, 1.9e-3)."""
    if "e" in text:
        mantissa, exponent = text.split("e")
        digits = len(mantissa.split(".")[1])
        return f"{number:.{digits}e}" == f"{float(text):.{digits}e}"
    digits = len(text.split(".")[1])
    sign_ok = (number < 0) == text.startswith(("-", "−")) or text[0] not in "+−-"
    return sign_ok and f"{abs(number):.{digits}f}" == text.lstrip("+−-")


def test_every_number_of_the_study_page_is_in_the_committed_study_json():
    """docs/study.md's tables and prose quote docs/study.json (the first seed) and
    docs/study-seeds.json (every seed): each decimal number on the page is one of theirs at the
    precision written, and the page's verdicts block is what the rules compute."""
    with open(os.path.join(REPO, "docs", "study.json")) as f:
        study = json.load(f)
    with open(os.path.join(REPO, "docs", "study-seeds.json")) as f:
        seeds = json.load(f)
    assert seeds["verdicts"] == json.loads(json.dumps(verdicts.study_claims(seeds)))
    with open(os.path.join(REPO, "docs", "study.md")) as f:
        text = f.read()
    blocks = claim_rules.BLOCK.findall(text)
    assert [name for _, name, _, _ in blocks] == ["study"]
    assert blocks[0][2] == verdicts.render(seeds["verdicts"], "study")
    numbers = sorted(set(json_numbers(study)) | set(json_numbers(seeds)))
    prose = claim_rules.BLOCK.sub("", text)
    missing = [token for token in STUDY_NUMBER.findall(prose)
               if not any(written_as(n, token) for n in numbers)]
    assert not missing, f"docs/study.md: numbers not in docs/study.json: {missing[:10]}"
