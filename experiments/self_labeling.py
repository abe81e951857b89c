"""Self-labeling, the first question the paper leaves open (Rafailov et al. 2023, section 7): can a
DPO policy label unlabeled prompts for itself?

Its implicit reward r(x, y) = beta log pi(y|x) / pi_ref(y|x) (Eq. 5 read backwards) ranks
completions without a reward model. Round 1 is the frontier's DPO run at its best beta (chosen on
the training prompts). Rounds 2 and 3 each sample k completions per prompt of a pool of unlabeled
prompts (training-distribution openings that no pair used: sentiment.make_unlabeled_prompts) from
the previous round's policy, pair the best with the worst by a labeler, and run DPO again from that
policy with that policy as the reference (iterative DPO). The labelers:

    implicit reward   the policy's own beta log pi / pi_ref (self-labeling, the paper's question)
    reward model      the frontier's learned reward model r_phi (Eq. 2; RLAIF-like)
    ground truth      the VADER reward itself (an oracle: the ceiling)
    random            a random order of two random completions (the floor)
    original pairs    no new prompts: the same DPO on round 1's own pairs again (the control for
                      "more DPO steps")

All labelers of a round-2 start label the same samples. Each is scored on the held-out prompts like
every frontier point (reward, KL to the base, fluency, 95% intervals), and the labels are checked
against the ground truth (how often the chosen completion has the higher true reward). The claims
are computed per training seed by `claims` from the JSON.
"""

import json
import os
import random

import data
import sentiment
from experiments import claim_rules, verdicts
from experiments.points import evaluate_point, scores_of, train_cached, training_config
from methods import reward_model
from plumbing.checkpoint import load_model

LABELERS = ("implicit reward", "reward model", "ground truth", "random", "original pairs")
# Rounds 2 and 3 train half as long as round 1 (3 epochs of ~500 pairs instead of 6).
FULL = dict(n_unlabeled=512, k=4, rounds=(2, 3), steps=48, seed=21)
QUICK = dict(n_unlabeled=64, k=4, rounds=(2, 3), steps=4, seed=21)


def slug(labeler):
    return labeler.replace(" ", "-")


def load_scorer(frontier, out_dir):
    """The frontier's reward model, or None where the frontier left it out (the course kit's student
    copy before Assignment 5)."""
    path = os.path.join(out_dir, "runs", "reward-model", "best.pt")
    if "reward model" in frontier["claims"].get("left_out", {}) or not os.path.isfile(path):
        return None
    return reward_model.load_reward_model(path)


def sample_pool(policy_path, reference_path, beta, prompts, prepared, scorer, settings, seed,
                cache):
    """k completions per prompt from the policy at `policy_path`, with every labeler's score of
    each: the ground truth, the reward model's (`scorer`; none when None), and the implicit reward
    beta (log pi - log pi_ref) against the model at `reference_path` (the policy's own reference);
    cached in `cache` (a JSON file; the models are loaded only when it is not there).
    Returns {"texts": [[k str] per prompt], "gold", "reward_model", "implicit": [[k floats] per
    prompt]}."""
    if os.path.isfile(cache):
        with open(cache) as f:
            return json.load(f)
    k, eos = settings["k"], prepared.tokenizer.eot_token
    policy, reference = load_model(policy_path).eval(), load_model(reference_path).eval()
    samples = sentiment.sample_completions(policy, prepared.tokenizer, prompts, k=k,
                                           max_new_tokens=prepared.settings["max_new_tokens"],
                                           seed=seed)
    prompt_ids = [ids for ids in samples.prompt_ids for _ in range(k)]
    completion_ids = [ids for group in samples.token_ids for ids in group]
    texts = [t for group in samples.texts for t in group]
    logratios = (sentiment.completion_logps(policy, prompt_ids, completion_ids, eos)
                 - sentiment.completion_logps(reference, prompt_ids, completion_ids, eos))  # (N,)
    flat = {"gold": sentiment.sentiment_reward(texts),
            "implicit": (beta * logratios).tolist()}
    if scorer is not None:
        flat["reward_model"] = reward_model.score_texts(scorer, prompt_ids, completion_ids, eos)
    pool = {"texts": samples.texts,
            **{key: [values[i * k:(i + 1) * k] for i in range(len(prompts))]
               for key, values in flat.items()}}
    with open(cache, "w") as f:
        json.dump(pool, f)
    return pool


def label_pairs(pool, prompts, labeler, seed):
    """Best-vs-worst pairs by `labeler` ("implicit reward", "reward model", "ground truth",
    "random"). A prompt whose two picks score the same, or whose two texts are equal, gives no pair
    (counted). Returns (records, report): report has n_prompts, n_pairs, n_tied and agreement: how
    many pairs the ground truth orders the same way (strictly), with its 95% interval."""
    key = {"implicit reward": "implicit", "reward model": "reward_model",
           "ground truth": "gold"}.get(labeler)
    rng = random.Random(seed)
    records, agree, n_tied = [], [], 0
    for i, prompt in enumerate(prompts):
        texts, gold = pool["texts"][i], pool["gold"][i]
        if key is None:  # random labels
            best, worst = rng.sample(range(len(texts)), 2)
            scores = [0.0] * len(texts)
            scores[best] = 1.0
        else:
            scores = pool[key][i]
            best = max(range(len(texts)), key=lambda j: scores[j])
            worst = min(range(len(texts)), key=lambda j: scores[j])
        if scores[best] == scores[worst] or texts[best] == texts[worst]:
            n_tied += 1
            continue
        records.append(data.PreferenceRecord(prompt, texts[best], texts[worst]))
        agree.append(1.0 if gold[best] > gold[worst] else 0.0)
    rate, ci = sentiment.mean_ci95(agree) if agree else (float("nan"), float("nan"))
    return records, {"n_prompts": len(prompts), "n_pairs": len(records), "n_tied": n_tied,
                     "agreement": rate, "agreement_ci95": ci}


def run(prepared, frontier, frontier_settings, out_dir, log, quick=False):
    """Rounds 2 and 3 from each seed's round-1 DPO policy, for every labeler (module docstring);
    returns the result dict (settings, one row per seed x labeler x round; its claims:
    `claims`)."""
    settings = QUICK if quick else FULL
    base_seed = prepared.settings["seed"]
    beta = frontier["claims"]["best_settings"]["DPO"]["setting"]["beta"]
    steps = frontier_settings["dpo"]["steps"]
    seeds = (base_seed, *frontier_settings["train_seeds"])
    n_train, n_heldout = prepared.settings["prompts"]
    prompts = sentiment.make_unlabeled_prompts(settings["n_unlabeled"], n_train, n_heldout)
    work = os.path.join(out_dir, "self_labeling")
    os.makedirs(work, exist_ok=True)
    scorer = load_scorer(frontier, out_dir)
    labelers = [labeler for labeler in LABELERS if scorer is not None or labeler != "reward model"]
    points = {p["name"]: p for p in frontier["points"]}
    rows = []
    for seed in seeds:
        run_name = f"dpo-beta{beta}" + ("" if seed == base_seed else f"-seed{seed}")
        round1 = os.path.join(out_dir, "runs", run_name, f"step_{steps:06d}.pt")
        rows.append({"seed": seed, "labeler": "round 1", "round": 1,
                     **scores_of(points[f"{run_name}-step{steps}"])})
        for labeler in labelers:
            policy_path, reference_path = round1, prepared.reference_path
            for round_ in settings["rounds"]:
                name = f"self-label-{slug(labeler)}-round{round_}-seed{seed}"
                pairs_path = os.path.join(work, f"{name}.jsonl")
                if labeler == "original pairs":
                    pairs_path, report = prepared.pairs_train, {
                        "n_pairs": prepared.pair_reports["train"]["n_pairs"]}
                else:
                    # round 2 of every labeler labels the same samples of round 1
                    source = "round1" if round_ == 2 else f"{slug(labeler)}-round{round_ - 1}"
                    pool = sample_pool(policy_path, reference_path, beta, prompts, prepared,
                                       scorer, settings, settings["seed"] + round_,
                                       os.path.join(work, f"pool-{source}-seed{seed}.json"))
                    records, report = label_pairs(pool, prompts, labeler, seed + round_)
                    data.save_preferences(records, pairs_path)
                cfg = training_config("dpo", os.path.join(work, "runs", name), prepared,
                                      dict(frontier_settings["dpo"], steps=settings["steps"]), 1,
                                      seed=seed, beta=beta, init=policy_path, reference_init="",
                                      data=pairs_path)
                train_cached("dpo", cfg, log)
                policy_path, reference_path = (os.path.join(cfg.out_dir,
                                                            f"step_{cfg.steps:06d}.pt"),
                                               policy_path)
                point = evaluate_point(name, f"self-labeling: {labeler}",
                                       {"labeler": labeler, "round": round_}, policy_path,
                                       prepared, frontier_settings, out_dir, log,
                                       step=cfg.steps, train_seed=seed)
                rows.append({"seed": seed, "labeler": labeler, "round": round_, "pairs": report,
                             **scores_of(point)})
                log(f"{name}: {report['n_pairs']} pairs, agreement with the ground truth "
                    f"{report.get('agreement', float('nan')):.3f}")
    # the best held-out point of any single-round DPO run of the frontier, per seed (any beta, step)
    dpo_best = {str(seed): max(verdicts.trained(frontier["points"], "DPO", seed),
                               key=lambda p: p["reward"])
                for seed in seeds}
    result = {"settings": {**settings, "beta": beta, "round1_steps": steps, "seeds": list(seeds),
                           "unlabeled_examples": prompts[:3]}, "rows": rows,
              "dpo_best": {seed: {k: p[k] for k in ("name", "setting", "step", "reward",
                                                    "reward_ci95", "kl")}
                           for seed, p in dpo_best.items()}}
    return result


# -----------------------------------------------------------------------------
# The claims, from the JSON

def row_of(result, seed, labeler, round_):
    return next((r for r in result["rows"] if r["seed"] == seed and r["labeler"] == labeler
                 and r["round"] == round_), None)


def versus(result, a, b, wanted, cid, text, round_a=2, round_b=2, key="reward"):
    """A claim that labeler a's policy (round_a) compares to b's (round_b) as one of `wanted`
    ("ahead", "tie", "behind"), by held-out `key` (reward, or bigram_fluency), on each seed."""
    per_seed = []
    for seed in result["settings"]["seeds"]:
        row_a, row_b = row_of(result, seed, a, round_a), row_of(result, seed, b, round_b)
        if row_a is None or row_b is None:
            continue
        x, y = (row_a[key], row_a[f"{key}_ci95"]), (row_b[key], row_b[f"{key}_ci95"])
        outcome = claim_rules.compare(x, y)
        per_seed.append({"seed": seed, "holds": outcome in wanted, "outcome": outcome,
                         "detail": f"{seed}: {claim_rules.r(x)} vs {claim_rules.r(y)} "
                                   f"({outcome})"})
    return claim_rules.claim(cid, "open-questions", text,
                             f"held-out {key.replace('_', ' ')}, intervals apart = ahead",
                             per_seed)


def past_dpo_best(result, labeler, cid, text):
    """A claim that `labeler`'s round-2 policy is ahead of the best point of any single-round DPO
    run (every beta and checkpoint of the frontier's sweep), on each seed."""
    per_seed = []
    for seed in result["settings"]["seeds"]:
        row, best = row_of(result, seed, labeler, 2), result["dpo_best"].get(str(seed))
        if row is None or best is None:
            continue
        x, y = (row["reward"], row["reward_ci95"]), (best["reward"], best["reward_ci95"])
        outcome = claim_rules.compare(x, y)
        per_seed.append({"seed": seed, "holds": outcome == "ahead",
                         "detail": f"{seed}: {claim_rules.r(x)} at KL {row['kl']:.1f} vs "
                                   f"{claim_rules.r(y)} at KL {best['kl']:.1f} (β = "
                                   f"{best['setting']['beta']:g}, step {best['step']})"})
    return claim_rules.claim(cid, "open-questions", text,
                             "held-out reward, intervals apart = ahead", per_seed)


def labels_agree(result, labeler, cid, text, round_=2):
    """A claim that `labeler`'s pairs agree with the ground truth more often than chance (the lower
    end of the agreement's 95% interval above 0.5), on each seed."""
    per_seed = []
    for seed in result["settings"]["seeds"]:
        row = row_of(result, seed, labeler, round_)
        if row is None:
            continue
        pairs = row["pairs"]
        per_seed.append({"seed": seed, "holds": pairs["agreement"] - pairs["agreement_ci95"] > 0.5,
                         "detail": f"{seed}: {pairs['agreement']:.3f} ± "
                                   f"{pairs['agreement_ci95']:.3f} of {pairs['n_pairs']} pairs"})
    return claim_rules.claim(cid, "open-questions", text,
                             "the agreement's 95% interval above 0.5", per_seed)


def claims(result):
    """The self-labeling claims of docs/open-questions.md, per training seed."""
    last = result["settings"]["rounds"][-1]
    return [
        labels_agree(result, "implicit reward", "self_labels_agree",
                     "Round 2: the implicit reward's labels agree with the ground truth more often "
                     "than chance"),
        labels_agree(result, "reward model", "reward_model_labels_agree",
                     "Round 2: the reward model's labels agree with the ground truth more often "
                     "than chance"),
        versus(result, "implicit reward", "round 1", ("ahead",), "self_labeling_gains",
               "Self-labeling: round 2 is ahead of round 1", round_b=1),
        past_dpo_best(result, "implicit reward", "self_labeling_past_dpo",
                      "Self-labeling: round 2 is ahead of the best point of any single-round DPO "
                      "run"),
        versus(result, "implicit reward", "random", ("ahead",), "self_labeling_beats_random",
               "Self-labeling: round 2 is ahead of random labels"),
        versus(result, "implicit reward", "original pairs", ("ahead",),
               "self_labeling_beats_more_steps",
               "Self-labeling: round 2 is ahead of the same steps on the original pairs"),
        versus(result, "ground truth", "implicit reward", ("ahead",), "oracle_beats_self_labels",
               "Round 2: the oracle's labels are ahead of self-labeling"),
        versus(result, "reward model", "implicit reward", ("ahead", "tie"),
               "reward_model_labels_match",
               "Round 2: the reward model's labels tie or beat self-labeling"),
        versus(result, "implicit reward", "implicit reward", ("ahead",), "self_labeling_round3",
               f"Self-labeling: round {last} is ahead of round 2", round_a=last),
        labels_agree(result, "implicit reward", "self_labels_agree_round3",
                     f"Round {last}: the implicit reward's labels agree with the ground truth more "
                     "often than chance", round_=last),
        versus(result, "implicit reward", "round 1", ("behind",), "self_labeling_costs_fluency",
               "Self-labeling: round 2's bigram fluency is behind round 1's", round_b=1,
               key="bigram_fluency"),
    ]
