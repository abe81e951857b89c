"""The open questions' pieces (experiments/self_labeling.py, overoptimization.py,
out_of_distribution.py) against hand-derived values, and the committed docs/open_questions.json
against its page and the README: the claims recompute unchanged, the page's blocks are what the code
renders, and every decimal number of the page's prose is one of the JSON's."""

import json
import math
import os
import re

import pytest

import sentiment
from experiments import claim_rules, open_questions, overoptimization, self_labeling
from test_verdicts import STUDY_NUMBER, json_numbers, written_as

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMITTED = os.path.join(REPO, "docs", "open_questions.json")


def test_the_unlabeled_pool_is_new_prompts_of_the_same_grammar():
    train, heldout = sentiment.make_prompts(512, 128)
    pool = sentiment.make_unlabeled_prompts(200)
    assert len(set(pool)) == 200 and not set(pool) & set(train + heldout)
    assert all(p.endswith(" and") for p in pool)
    assert pool == sentiment.make_unlabeled_prompts(200)  # seeded


def test_shifted_prompts_are_distinct_fit_and_avoid_films():
    prompts = sentiment.make_shifted_prompts(100, fits=lambda p: len(p) <= 40)
    assert len(set(prompts)) == 100 and all(len(p) <= 40 and p.endswith(" and") for p in prompts)
    assert not any(word in p for p in prompts for word in ("film", "movie"))
    with pytest.raises(ValueError, match="made 0 that fit"):
        sentiment.make_shifted_prompts(5, fits=lambda p: False)


POOL = {"texts": [["a", "b", "c"], ["d", "e", "f"], ["g", "g", "h"]],
        "gold": [[0.1, 0.9, -0.5], [0.0, 0.2, 0.4], [0.3, 0.3, 0.3]],
        "implicit": [[2.0, 1.0, -1.0], [5.0, 5.0, 5.0], [1.0, 0.0, 2.0]],
        "reward_model": [[0.0, 1.0, -1.0], [0.0, 0.1, 0.2], [0.5, 0.1, 0.9]]}


def test_labels_pair_the_labelers_best_with_its_worst_and_count_ties():
    records, report = self_labeling.label_pairs(POOL, ["p", "q", "r"], "implicit reward", 0)
    # prompt p: best a (2.0), worst c (-1.0): the gold agrees (0.1 > -0.5); q: all tied, no pair;
    # r: best h, worst g (0.0): the gold ties (0.3 = 0.3), which is not agreement
    assert [(r.prompt, r.chosen, r.rejected) for r in records] == [("p", "a", "c"), ("r", "h", "g")]
    assert (report["n_pairs"], report["n_tied"]) == (2, 1)
    assert report["agreement"] == pytest.approx(0.5)
    records, report = self_labeling.label_pairs(POOL, ["p", "q", "r"], "ground truth", 0)
    # r: every gold reward equal -> no pair
    assert [(r.chosen, r.rejected) for r in records] == [("b", "c"), ("f", "d")]
    assert report["agreement"] == 1.0
    records, _ = self_labeling.label_pairs(POOL, ["p", "q", "r"], "random", 3)
    assert all(r.chosen != r.rejected for r in records)


def test_gao_fits_recover_their_coefficients_and_peaks():
    """Exact curves through the fitted forms give back alpha and beta; the peaks by hand: best-of-N
    d(1 - 0.25 d) peaks at d = 2 (KL 4), RL d(1 - log d) at d = exp(0) = 1 (KL 1)."""
    def points(curve, kls):
        return [{"kl": [kl] * 3, "gold": [curve(math.sqrt(kl))] * 3} for kl in kls]

    kls = [0.1, 0.5, 1.0, 2.0, 4.0, 9.0]
    bon = overoptimization.fit(points(lambda d: d * (1.0 - 0.25 * d), kls), "bon")
    rl = overoptimization.fit(points(lambda d: d * (0.8 - 0.3 * math.log(d)), kls), "rl")
    assert bon == pytest.approx((1.0, 0.25)) and rl == pytest.approx((0.8, 0.3))
    assert overoptimization.peak_kl(1.0, 0.25, "bon") == pytest.approx(4.0)
    assert overoptimization.peak_kl(1.0, 1.0, "rl") == pytest.approx(1.0)
    assert overoptimization.peak_kl(1.0, -0.1, "rl") is None  # never turns down


def test_overoptimization_is_gold_falling_while_the_proxy_rises():
    def row(step, proxy, gold, ci=0.01):
        return {"method": "PPO", "setting": {"kl_coef": 0.1}, "train_seed": 1, "step": step,
                "kl": step, "proxy": proxy, "gold": gold, "gold_ci95": ci}

    result = {"methods": {"PPO": {"proxy": "reward model", "form": "rl"}},
              "rows": [row(1, 0.1, 0.2), row(2, 0.3, 0.5), row(3, 0.6, 0.3)], "fits": {}}
    assert overoptimization.overoptimizes(result, "PPO")["holds_on"] == 1
    result["rows"][-1]["gold"] = 0.49  # within the intervals of the best: not a fall
    assert overoptimization.overoptimizes(result, "PPO")["holds_on"] == 0


@pytest.fixture(scope="module")
def committed():
    with open(COMMITTED) as f:
        return json.load(f)


def test_the_committed_claims_recompute_unchanged(committed):
    assert committed["verdicts"] == json.loads(json.dumps(open_questions.claims(committed)))


def test_the_page_and_the_readme_quote_the_committed_json(committed):
    """Every block of docs/open-questions.md and the README's summary block is what the code
    renders from the JSON; every decimal number of the page's prose is one of the JSON's."""
    with open(os.path.join(REPO, "docs", "open-questions.md")) as f:
        page = f.read()
    blocks = claim_rules.BLOCK.findall(page)
    assert {name for _, name, _, _ in blocks} == {"open-questions", "self-labeling-table",
                                                  "overoptimization-table", "shifted-table"}
    for _, name, body, _ in blocks:
        assert body == open_questions.render_page(committed, name), (
            f"docs/open-questions.md block {name}: run python -m experiments.open_questions "
            "docs/open_questions.json --write")
    with open(os.path.join(REPO, "README.md")) as f:
        readme = {name: body for _, name, body, _ in claim_rules.BLOCK.findall(f.read())}
    assert readme["open-questions-summary"] == open_questions.render_page(
        committed, "open-questions-summary")
    numbers = sorted(set(json_numbers(committed)))
    prose = claim_rules.BLOCK.sub("", page)
    missing = [token for token in STUDY_NUMBER.findall(prose)
               if not any(written_as(n, token) for n in numbers)]
    assert not missing, f"docs/open-questions.md: numbers not in the JSON: {missing[:10]}"
    assert not re.search(r"\bTODO\b", page)
