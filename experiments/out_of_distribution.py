"""Out of distribution, the third question the paper leaves open (Rafailov et al. 2023, section 7):
how does a DPO policy generalize beyond the prompts it was trained on, compared with policies
trained on an explicit reward? (Its section 6.3 moved summarization policies from Reddit posts to
news articles.)

The shifted prompts (sentiment.make_shifted_prompts) keep the form of the training openings
("... and", at most 64 bytes) but are about books, albums, games, plays and shows, with verbs and
contexts the pre-training corpus never used: "I binged this show at the office and". How far they
are shifted is measured by the base model's loss on them (nats per token after the first, against
the held-out openings'). Every method's best setting (chosen on the training prompts), final
checkpoint, each training seed, is scored on them (as many as the held-out prompts, each at most
block_size - max_new_tokens tokens long) as on the held-out prompts: reward, KL to the base
and fluency, with 95% intervals; its gain is its reward minus the reference's on the same prompts.
"""

import math

import torch

import logprob_kernels
import sentiment
from experiments import claim_rules, verdicts
from experiments.points import checkpoint_of, evaluate_point, scores_of

METHODS = ("DPO", "PPO", "PPO-GT", "RLOO", "SimPO", "ORPO", "KTO")


@torch.no_grad()
def prompt_losses(model, tokenizer, prompts):
    """The base model's mean next-token loss on each prompt (nats per token after the first):
    (mean, 95% half-width) over prompts."""
    model.eval()
    losses = []
    for prompt in prompts:
        ids = torch.tensor([tokenizer.encode_ordinary(prompt)])  # (1, L)
        logits = model(ids[:, :-1])  # (1, L-1, V)
        logps = logprob_kernels.token_logprobs(logits, ids[:, 1:],
                                               torch.ones_like(ids[:, 1:], dtype=torch.bool))
        losses.append(-logps.mean().item())
    return sentiment.mean_ci95(losses)


def final_point(points, method, setting, seed):
    """The frontier's held-out point of `method`'s run at `setting`, seed `seed`, last step."""
    run = [p for p in verdicts.trained(points, method, seed) if p["setting"] == setting]
    return max(run, key=lambda p: p["step"]) if run else None


def gain(row, reference):
    """(reward - the reference's reward, 95% half-width) on the same prompts."""
    return (row["reward"] - reference["reward"],
            math.sqrt(row["reward_ci95"] ** 2 + reference["reward_ci95"] ** 2))


def run(prepared, frontier, frontier_settings, out_dir, log):
    """Score every method's best setting on the shifted prompts; returns the result dict (the shift,
    the reference, a row per method x seed; its claims: `claims`)."""
    # as many as the held-out prompts, each leaving room for the completion in the context window
    room = prepared.settings["block_size"] - prepared.settings["max_new_tokens"]
    shifted = sentiment.make_shifted_prompts(
        len(prepared.heldout_prompts),
        fits=lambda prompt: len(prepared.tokenizer.encode_ordinary(prompt)) <= room)
    points = frontier["points"]
    best = frontier["claims"]["best_settings"]
    seeds = (prepared.settings["seed"], *frontier_settings["train_seeds"])
    (held_loss, held_ci), (shift_loss, shift_ci) = (
        prompt_losses(prepared.reference, prepared.tokenizer, prepared.heldout_prompts),
        prompt_losses(prepared.reference, prepared.tokenizer, shifted))
    reference = {"heldout": scores_of(next(p for p in points if p["method"] == "reference")),
                 "shifted": scores_of(evaluate_point(
                     "shifted-reference", "reference", {}, None, prepared, frontier_settings,
                     out_dir, log, prompts=("shifted", shifted)))}
    rows = []
    for method in METHODS:
        if method not in best:
            continue
        for seed in seeds:
            point = final_point(points, method, best[method]["setting"], seed)
            if point is None:
                continue
            moved = evaluate_point(f"shifted-{point['name']}", method, point["setting"],
                                   checkpoint_of(out_dir, point), prepared, frontier_settings,
                                   out_dir, log, step=point["step"], train_seed=seed,
                                   prompts=("shifted", shifted))
            rows.append({"method": method, "seed": seed, "setting": point["setting"],
                         "step": point["step"],
                         "heldout": scores_of(point), "shifted": scores_of(moved)})
    result = {"examples": shifted[:5], "n_prompts": len(shifted),
              "base_loss": {"heldout": held_loss, "heldout_ci95": held_ci, "shifted": shift_loss,
                            "shifted_ci95": shift_ci},
              "reference": reference, "seeds": list(seeds), "rows": rows}
    return result


# -----------------------------------------------------------------------------
# The claims, from the JSON

def keeps_gain(result, method):
    """A claim that `method`'s gain over the reference on the shifted prompts is not behind its gain
    on the held-out ones (intervals), on each seed."""
    per_seed = []
    for row in result["rows"]:
        if row["method"] != method:
            continue
        inside = gain(row["heldout"], result["reference"]["heldout"])
        outside = gain(row["shifted"], result["reference"]["shifted"])
        outcome = claim_rules.compare(outside, inside)
        per_seed.append({"seed": row["seed"], "holds": outcome != "behind",
                         "detail": f"{row['seed']}: gain {claim_rules.r(outside)} shifted vs "
                                   f"{claim_rules.r(inside)} held out"})
    return claim_rules.claim(f"{method.lower()}_keeps_gain_shifted", "open-questions",
                             f"{method} keeps its gain on the shifted prompts",
                             "the shifted gain not behind the held-out gain (intervals)", per_seed)


def dpo_against(result, other, wanted, text):
    """A claim that DPO's reward on the shifted prompts compares to `other`'s as one of `wanted`,
    seed by seed."""
    per_seed = []
    for seed in result["seeds"]:
        rows = {row["method"]: row for row in result["rows"] if row["seed"] == seed}
        if "DPO" not in rows or other not in rows:
            continue
        a, b = rows["DPO"]["shifted"], rows[other]["shifted"]
        outcome = claim_rules.compare((a["reward"], a["reward_ci95"]),
                                      (b["reward"], b["reward_ci95"]))
        per_seed.append({"seed": seed, "holds": outcome in wanted,
                         "detail": f"{seed}: {claim_rules.r((a['reward'], a['reward_ci95']))} vs "
                                   f"{claim_rules.r((b['reward'], b['reward_ci95']))} ({outcome})"})
    return claim_rules.claim(f"dpo_vs_{other.lower()}_shifted", "open-questions", text,
                             "reward on the shifted prompts, intervals apart = ahead", per_seed)


def claims(result):
    """The out-of-distribution claims of docs/open-questions.md."""
    methods = list(dict.fromkeys(row["method"] for row in result["rows"]))
    rows = [dpo_against(result, "PPO", ("ahead", "tie"),
                        "On the shifted prompts DPO ties or beats PPO (the paper's section 6.3 "
                        "finding)"),
            dpo_against(result, "RLOO", ("ahead", "tie"),
                        "On the shifted prompts DPO ties or beats RLOO"),
            dpo_against(result, "PPO-GT", ("ahead", "tie"),
                        "On the shifted prompts DPO ties or beats PPO-GT (the oracle)")]
    return rows + [keeps_gain(result, method) for method in methods]
