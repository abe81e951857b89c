"""Reward over-optimization in the direct setting, the second question the paper leaves open
(Rafailov et al. 2023, section 7): along KL, the score each method optimizes (its proxy) against the
ground truth (the gold reward).

    PPO, RLOO     the learned reward model r_phi (Eq. 2) of their own samples
    BoN-RM        r_phi of the kept samples (best of N by r_phi)
    DPO           its implicit reward beta log pi / pi_ref (Eq. 5) of its own samples
    PPO-GT        the ground truth itself (proxy = gold: the control)

Each is a gain over the reference, prompt by prompt: the policy's mean score on a prompt minus the
mean score of the reference's samples for the same prompt (for DPO: minus beta log pi / pi_ref of
the reference's samples, whose log-partition term log Z(x) cancels), averaged over the held-out
prompts with a 95% interval. Where the proxy keeps rising while the gold falls, the method
over-optimizes.

Gao et al. (2022, "Scaling laws for reward model overoptimization") fit the gold gain as a function
of d = sqrt(KL): d (alpha - beta d) for best-of-N, d (alpha - beta log d) for RL. Both are linear in
(alpha, beta), fitted here by least squares over all of a method's points (every setting, checkpoint
and training seed), with 95% intervals from a bootstrap over prompts; the fitted gold peaks at d =
alpha / (2 beta) (best-of-N) or exp(alpha / beta - 1) (RL).
"""

import json
import math
import os
import random

import torch

import sentiment
from experiments import claim_rules, self_labeling, verdicts
from experiments.frontier import best_of_n_kl
from experiments.points import checkpoint_of
from methods import reward_model
from plumbing.checkpoint import load_model

# method -> (its proxy, Gao et al.'s form)
METHODS = {"PPO": ("reward model", "rl"), "RLOO": ("reward model", "rl"),
           "PPO-GT": ("ground truth", "rl"), "DPO": ("implicit reward", "rl"),
           "BoN-RM": ("reward model", "bon")}
BOOTSTRAP = 200
SYMBOLS = {"beta": "β", "kl_coef": "κ"}


def read_samples(out_dir, point):
    with open(os.path.join(out_dir, point["samples"])) as f:
        return [json.loads(line) for line in f]


def per_prompt(values, n_prompts):
    """Prompt-major values (the same number per prompt) -> their mean per prompt."""
    per = len(values) // n_prompts
    return [sum(values[i * per:(i + 1) * per]) / per for i in range(n_prompts)]


def draw_again(model, prepared, frontier_settings):
    """A point's held-out samples drawn again from `model` as evaluate_point drew them (the same
    prompts and seed): (texts, prompt ids, completion ids), prompt-major, one entry per sample."""
    k = frontier_settings["samples_per_prompt"]
    samples = sentiment.sample_completions(model, prepared.tokenizer, prepared.heldout_prompts,
                                           k=k, max_new_tokens=prepared.settings["max_new_tokens"],
                                           seed=frontier_settings["seed"])
    return ([t for group in samples.texts for t in group],
            [ids for ids in samples.prompt_ids for _ in range(k)],
            [ids for group in samples.token_ids for ids in group])


def reference_samples(prepared, frontier_settings, out_dir, reference_point):
    """The reference's held-out samples again (the same seed: the same token ids, checked against
    its samples file), with their ground-truth rewards."""
    texts, prompt_ids, completion_ids = draw_again(prepared.reference, prepared, frontier_settings)
    saved = read_samples(out_dir, reference_point)
    if [row["completion"] for row in saved] != texts:
        raise ValueError("the reference's samples drawn again differ from "
                         f"{reference_point['samples']}: another machine or another torch?")
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids,
            "gold": [row["reward"] for row in saved]}


def proxy_and_gold(point, method, prepared, frontier_settings, out_dir, ref, scorer, cache_dir):
    """Per held-out prompt: the point's proxy gain, gold gain and KL (lists of floats); cached per
    point (keyed by its samples' sha256)."""
    cache = os.path.join(cache_dir, f"{point['name']}.json")
    if os.path.isfile(cache):
        with open(cache) as f:
            saved = json.load(f)
        if saved["samples_sha256"] == point["samples_sha256"]:
            return saved
    n, eos = len(prepared.heldout_prompts), prepared.tokenizer.eot_token
    rows = read_samples(out_dir, point)
    gold = [a - b for a, b in zip(per_prompt([row["reward"] for row in rows], n),
                                  per_prompt(ref["gold"], n))]
    same = None
    if method == "BoN-RM":
        proxy_own, kl = [row["selector"] for row in rows], None  # KL from the pool (bon_kls)
    else:
        kl = per_prompt([row["logratio"] for row in rows], n)
    if method in ("PPO", "RLOO"):  # the policy's samples drawn again, as its point drew them
        texts, prompt_ids, completion_ids = draw_again(
            load_model(checkpoint_of(out_dir, point)).eval(), prepared, frontier_settings)
        same = sum(a == row["completion"] for a, row in zip(texts, rows))
        if same < len(rows):  # another machine: score what was drawn now, and say so
            gold = [a - b for a, b in zip(per_prompt(sentiment.sentiment_reward(texts), n),
                                          per_prompt(ref["gold"], n))]
        proxy_own = reward_model.score_texts(scorer, prompt_ids, completion_ids, eos)
    if method in ("PPO", "RLOO", "BoN-RM"):
        proxy = [a - b for a, b in zip(per_prompt(proxy_own, n), per_prompt(ref["reward_model"],
                                                                               n))]
    elif method == "DPO":
        beta = point["setting"]["beta"]
        policy = load_model(checkpoint_of(out_dir, point)).eval()
        # log pi / pi_ref of the reference's samples under this policy
        on_reference = (sentiment.completion_logps(policy, ref["prompt_ids"], ref["completion_ids"],
                                                   eos) - ref["reference_logps"])  # (N,)
        proxy = [beta * (a - b) for a, b in zip(kl, per_prompt(on_reference.tolist(), n))]
    else:  # PPO-GT: the proxy is the gold
        proxy = gold
    saved = {"samples_sha256": point["samples_sha256"], "proxy": proxy, "gold": gold, "kl": kl,
             "samples_redrawn_equal": same}
    with open(cache, "w") as f:
        json.dump(saved, f)
    return saved


def bon_kls(pool_scores, n_prompts, n):
    """Per held-out prompt, the exact KL of best-of-n by the reward model (frontier.best_of_n_kl on
    the reward model's scores of the Best-of-N pool, prompt-major)."""
    k = len(pool_scores) // n_prompts
    return [best_of_n_kl(pool_scores[i * k:(i + 1) * k], n) for i in range(n_prompts)]


def fit(points, form, prompts=None):
    """Least squares of gold = alpha d - beta g(d) over `points` (dicts with per-prompt "gold" and
    "kl"), d = sqrt(mean KL), g(d) = d^2 (form "bon") or d log d ("rl"); on the prompts `prompts`
    (indices, with repeats: a bootstrap sample) or all. Returns (alpha, beta)."""
    rows, targets = [], []
    for p in points:
        idx = prompts if prompts is not None else range(len(p["gold"]))
        kl = max(sum(p["kl"][i] for i in idx) / len(idx), 0.0)
        d = math.sqrt(kl)
        g = d * d if form == "bon" else (d * math.log(d) if d > 0 else 0.0)
        rows.append([d, -g])
        targets.append(sum(p["gold"][i] for i in idx) / len(idx))
    x, y = torch.tensor(rows, dtype=torch.float64), torch.tensor(targets, dtype=torch.float64)
    solution = torch.linalg.lstsq(x, y.unsqueeze(1)).solution.squeeze(1)
    return float(solution[0]), float(solution[1])


def peak_kl(alpha, beta, form):
    """The KL where the fitted gold peaks (None when it never turns down: beta <= 0)."""
    if beta <= 0:
        return None
    d = alpha / (2 * beta) if form == "bon" else math.exp(min(alpha / beta - 1, 50.0))
    return d * d


def fit_with_intervals(points, form, n_prompts, seed=0):
    """fit() on all prompts, and the 2.5th and 97.5th percentiles of BOOTSTRAP refits on prompts
    resampled with replacement: {"alpha", "alpha_ci", "beta", "beta_ci", "peak_kl",
    "peak_kl_ci"}."""
    alpha, beta = fit(points, form)
    rng = random.Random(seed)
    draws = [fit(points, form, [rng.randrange(n_prompts) for _ in range(n_prompts)])
             for _ in range(BOOTSTRAP)]

    def interval(values):
        values = sorted(values)
        return [values[int(0.025 * len(values))], values[int(0.975 * len(values)) - 1]]

    peaks = [peak_kl(a, b, form) for a, b in draws]
    finite = [p for p in peaks if p is not None]
    return {"alpha": alpha, "alpha_ci": interval([a for a, _ in draws]), "beta": beta,
            "beta_ci": interval([b for _, b in draws]), "peak_kl": peak_kl(alpha, beta, form),
            "peak_kl_ci": interval(finite) if len(finite) == len(peaks) else None,
            "draws_without_peak": len(peaks) - len(finite)}


def summary(name, point, measured):
    """A point's means: proxy and gold gains and KL. proxy_ci95: the 95% interval of the proxy gain
    over prompts; gold_ci95: that of the point's own reward (the reference's mean, subtracted from
    every point alike, adds nothing to the uncertainty of a comparison between two points)."""
    (proxy, proxy_ci), gold = sentiment.mean_ci95(measured["proxy"]), sum(
        measured["gold"]) / len(measured["gold"])
    gold_ci = point["reward_ci95"]
    return {"name": name, "method": point["method"], "setting": point["setting"],
            "step": point["step"], "train_seed": point.get("train_seed"), "kl": point["kl"],
            "proxy": proxy, "proxy_ci95": proxy_ci, "gold": gold, "gold_ci95": gold_ci,
            "samples_redrawn_equal": measured.get("samples_redrawn_equal"),
            "samples": point["samples"], "samples_sha256": point["samples_sha256"]}


def run(prepared, frontier, frontier_settings, out_dir, log):
    """Proxy and gold along KL for every point of METHODS (DPO: the seeds the other methods have),
    Gao et al.'s fits; returns the result dict (rows, fits; its claims: `claims`)."""
    cache_dir = os.path.join(out_dir, "overoptimization")
    os.makedirs(cache_dir, exist_ok=True)
    points = frontier["points"]
    reference_point = next(p for p in points if p["method"] == "reference")
    ref = reference_samples(prepared, frontier_settings, out_dir, reference_point)
    scorer = self_labeling.load_scorer(frontier, out_dir)
    eos = prepared.tokenizer.eot_token
    if scorer is not None:
        ref["reward_model"] = reward_model.score_texts(scorer, ref["prompt_ids"],
                                                       ref["completion_ids"], eos)
    ref["reference_logps"] = sentiment.completion_logps(prepared.reference, ref["prompt_ids"],
                                                        ref["completion_ids"], eos)
    seeds = {prepared.settings["seed"], *frontier_settings["train_seeds"]}
    if scorer is not None:  # frontier.pool_scores cached them: the reward model's, of BoN's pool
        with open(os.path.join(out_dir, "points", "pool-reward-model-scores.json")) as f:
            pool_scores = json.load(f)["scores"]
    rows, measured_by_method = [], {}
    for method, (proxy_name, form) in METHODS.items():
        if proxy_name == "reward model" and scorer is None:
            continue
        chosen = ([p for p in points if p["method"] == method] if method == "BoN-RM"  # no training
                  else [p for p in verdicts.trained(points, method) if p["train_seed"] in seeds])
        for point in chosen:
            measured = proxy_and_gold(point, method, prepared, frontier_settings, out_dir, ref,
                                      scorer, cache_dir)
            if method == "BoN-RM":
                measured = {**measured, "kl": bon_kls(pool_scores, len(prepared.heldout_prompts),
                                                      point["setting"]["N"])}
            measured_by_method.setdefault(method, []).append(measured)
            rows.append({**summary(point["name"], point, measured), "proxy_name": proxy_name})
        log(f"over-optimization: {method}: {len(chosen)} points")
    n = len(prepared.heldout_prompts)
    fits = {method: {"form": METHODS[method][1], "points": len(measured),
                     **fit_with_intervals(measured, METHODS[method][1], n)}
            for method, measured in measured_by_method.items()}
    result = {"methods": {m: {"proxy": p, "form": f} for m, (p, f) in METHODS.items()},
              "bootstrap": BOOTSTRAP, "seeds": sorted(seeds), "rows": rows, "fits": fits}
    return result


# -----------------------------------------------------------------------------
# The claims, from the JSON

def runs_of(result, method):
    """{(setting as JSON, seed): [rows by step]} of a method (BoN-RM: one run, by N)."""
    grouped = {}
    for row in result["rows"]:
        if row["method"] == method:
            key = (json.dumps(row["setting"]) if method != "BoN-RM" else "", row["train_seed"])
            grouped.setdefault(key, []).append(row)
    order = (lambda r: r["setting"]["N"]) if method == "BoN-RM" else (lambda r: r["step"])
    return {key: sorted(rows, key=order) for key, rows in grouped.items()}


def overoptimizes(result, method):
    """A claim per method: on a run, the gold of its last point is behind its best point's (95%
    intervals apart) while the proxy of the last point is at least the best point's."""
    per_run = []
    for (setting, seed), rows in sorted(runs_of(result, method).items(), key=str):
        best = max(rows, key=lambda r: r["gold"])
        last = rows[-1]
        fell = claim_rules.compare((last["gold"], last["gold_ci95"]),
                                   (best["gold"], best["gold_ci95"])) == "behind"
        rising = last["proxy"] >= best["proxy"]
        label = (", ".join(f"{SYMBOLS.get(k, k)} = {v:g}" for k, v in json.loads(setting).items())
                 + f" (seed {seed})" if method != "BoN-RM" else "N = 1..32")
        per_run.append({"seed": label, "holds": fell and rising,
                        "detail": f"{label}: gold {last['gold']:+.3f} at the end, best "
                                  f"{best['gold']:+.3f}; proxy {last['proxy']:+.3f} vs "
                                  f"{best['proxy']:+.3f}"})
    proxy = result["methods"][method]["proxy"]
    found = claim_rules.claim(f"{method.lower()}_overoptimizes", "open-questions",
                              f"{method} over-optimizes its proxy ({proxy}): the gold falls while "
                              "the proxy rises", "the last point's gold behind the run's best "
                              "(intervals apart) and its proxy not below the best's; a row per "
                              "run", per_run, unit="runs")
    held = [row["seed"] for row in per_run if row["holds"]]
    if held and len(held) < len(per_run):  # name the runs where it happens, the rarer case here
        found["verdict"] = (f"holds on {len(held)} of {len(per_run)} runs "
                            f"({claim_rules.seed_list(held)})")
    return found


def peak_within_range(result, method):
    """A claim that the fitted gold of `method` peaks (and its bootstrap interval too) within the KL
    its points reach."""
    f = result["fits"].get(method)
    if f is None:
        return claim_rules.claim(f"{method.lower()}_peak_measured", "open-questions", "", "", [])
    largest = max(r["kl"] for r in result["rows"] if r["method"] == method)
    inside = (f["peak_kl"] is not None and f["peak_kl_ci"] is not None
              and f["peak_kl_ci"][1] <= largest)
    peak = "none" if f["peak_kl"] is None else f"{f['peak_kl']:.3g}"
    interval = ("no peak in some draws" if f["peak_kl_ci"] is None
                else f"{f['peak_kl_ci'][0]:.3g}..{f['peak_kl_ci'][1]:.3g}")
    return claim_rules.claim(
        f"{method.lower()}_peak_measured", "open-questions",
        f"{method}'s fitted gold curve peaks within the KL it reached",
        "Gao et al.'s form fitted to all its points; the peak's bootstrap interval below the "
        "largest KL of a point",
        [{"seed": "all seeds", "holds": inside,
          "detail": f"peak at KL {peak} nats ({interval}); largest KL {largest:.3g}"}],
        unit="fits")


def claims(result):
    """The over-optimization claims of docs/open-questions.md."""
    methods = [m for m in METHODS if any(r["method"] == m for r in result["rows"])]
    return ([overoptimizes(result, m) for m in methods]
            + [peak_within_range(result, m) for m in methods])
