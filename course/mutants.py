"""Wrong-but-plausible solutions of Assignment 5, and the graded tests each must fail (instructor
only; not copied: each is a solution with one mistake in it).

    python -m course.mutants

builds a copy of the repository in which only A5 is written, puts each mutant in place of one
function in turn, grades A5 there and prints the tests it failed. tests/test_course.py runs it
(slow) and checks that every mutant loses points on at least the tests listed here.
"""

import ast
import json
import os
import subprocess
import sys
import tempfile

from course import build

# name: (file, function, its wrong source, graded tests it must fail)
MUTANTS = {
    "RLOO's baseline includes the sample itself": ("methods/ppo.py", "rloo_advantages", '''
def rloo_advantages(scores):
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be (prompts, k) with k >= 2, got {tuple(scores.shape)}")
    scores = scores.float()
    return scores - scores.mean(dim=1, keepdim=True)
''', ("test_rloo_advantages_match_the_reference_values", "test_rloo_baseline_leaves_the_sample_out",
      "test_worked_example")),
    "GAE runs over every position, masked afterwards": ("methods/ppo.py", "gae", '''
def gae(rewards, values, mask, gamma, lam):
    B, T = rewards.shape
    rewards, values = rewards.float(), values.float()
    advantages = torch.zeros_like(rewards)
    next_value, next_advantage = torch.zeros(B), torch.zeros(B)
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    advantages = torch.where(mask, advantages, 0.0)
    return advantages, torch.where(mask, advantages + values, 0.0)
''', ("test_gae_matches_the_reference_values", "test_gae_is_the_backward_recursion",
      "test_gae_skips_the_holes_of_the_mask", "test_gae_at_the_ends_of_lambda")),
    "whiten's mean and variance over the padding too": ("methods/ppo.py", "whiten", '''
def whiten(values, mask, eps=1e-8):
    mean, variance = values.mean(), values.var(unbiased=False)
    return torch.where(mask, (values - mean) / torch.sqrt(variance + eps), 0.0)
''', ("test_whiten_matches_the_reference_values", "test_whiten_uses_the_masked_positions_only")),
    "the value loss without its clip": ("methods/ppo.py", "value_loss", '''
def value_loss(values, old_values, returns, mask, clip):
    return 0.5 * masked_mean((values.float() - returns) ** 2, mask)
''', ("test_value_loss_matches_the_reference_values", "test_value_loss_is_the_pessimistic_one",
      "test_worked_example")),
    "the policy loss with min instead of max": ("methods/ppo.py", "policy_loss", '''
def policy_loss(logprobs, old_logprobs, advantages, mask, clip):
    ratio = torch.exp(logprobs.float() - old_logprobs.float())
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    return masked_mean(torch.minimum(unclipped, clipped), mask)
''', ("test_policy_loss_matches_the_reference_values",
      "test_policy_loss_has_no_gradient_where_the_ratio_is_clipped_on_the_side_of_the_advantage",
      "test_worked_example")),
    "Bradley-Terry as -log(sigmoid(margin))": ("methods/reward_model.py", "bradley_terry_loss", '''
def bradley_terry_loss(chosen_rewards, rejected_rewards):
    check_logps({"chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards})
    return -torch.log(torch.sigmoid(chosen_rewards.float() - rejected_rewards.float()))
''', ("test_bradley_terry_is_finite_at_extreme_margins",)),
    "the score paid at the row's last position, not its last response token": (
        "methods/ppo.py", "token_rewards", '''
def token_rewards(scores, logprobs, ref_logprobs, mask, kl_coef):
    rewards = -kl_coef * torch.where(mask, logprobs.float() - ref_logprobs.float(), 0.0)
    rewards[:, -1] += scores.float()
    return rewards
''', ("test_token_rewards_match_the_reference_values",
      "test_token_rewards_sum_to_the_score_minus_the_kl_penalty", "test_no_response_token_at_all",
      "test_ppo_on_the_ground_truth_raises_it")),
}


def replace_function(path, qualname, source):
    """Put `source` (a whole def) in place of the function `qualname` of the file at `path`."""
    with open(path) as f:
        text = f.read()
    node = build.find_function(ast.parse(text), qualname)
    lines = text.splitlines(keepends=True)
    lines[node.lineno - 1:node.end_lineno] = [source.strip("\n") + "\n"]
    with open(path, "w") as f:
        f.write("".join(lines))


def run(copy=None, log=print):
    """Grade A5 with each mutant in a copy where only A5 is written: {mutant: (points, total,
    [failed test names])}."""
    copy = copy or os.path.join(tempfile.mkdtemp(), "only-A5")
    build.build(copy, log=lambda *_: None, solved=("A5",))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    results = {}
    for name, (path, qualname, source, _) in MUTANTS.items():
        with open(os.path.join(copy, path)) as f:
            original = f.read()
        replace_function(os.path.join(copy, path), qualname, source)
        out = os.path.join(copy, "mutant.json")
        subprocess.run([sys.executable, "-m", "course", "grade", "A5", "--json", out], cwd=copy,
                       env=env, capture_output=True, text=True, timeout=600)
        with open(out) as f:
            graded = json.load(f)
        failed = [nodeid.split("::")[-1] for nodeid, r in graded["tests"].items()
                  if r["outcome"] != "passed"]
        results[name] = (graded["points"], graded["total"], failed)
        log(f"{name}: {graded['points']}/{graded['total']} points; fails "
            + ", ".join(failed))
        with open(os.path.join(copy, path), "w") as f:
            f.write(original)
    return results


if __name__ == "__main__":
    run()
