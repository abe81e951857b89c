"""Write the graders' literal fixtures from the instructor's naive references and solutions
(instructor only; not copied).

    python -m course.make_fixtures

The student copy has no naive reference and no solution (they would give the answers away): the
graders compare against the literal numbers written here instead, for inputs drawn once from a
seeded generator. A1's come from the float64 naive references; its inputs are multiples of 1/64 in
[-64, 0], exact in float32, so a float32 implementation and the float64 reference see the same h.
A5's come from the solution in methods/ (float32, as the functions compute), on inputs that are
multiples of 1/64 too, with masks that have holes and empty rows; its GAE is checked against the
naive loop of tests/test_ppo.py before it is written.
"""

import json
import os
import random
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

# the instructor's references and solutions
from methods import ppo, reward_model  # noqa: E402
from naive_dpo import naive_dpo_loss, naive_pair_dloss_dh  # noqa: E402
from naive_family import naive_kto, naive_orpo, naive_simpo  # noqa: E402
from test_ppo import naive_gae  # noqa: E402


def logp(rng):
    return -rng.randrange(0, 64 * 64) / 64


def a1_cases(n_cases=96, seed=0):
    """DPO loss cases: every loss type, several beta, label smoothing and RPO; losses, rewards,
    gradients."""
    rng, cases = random.Random(seed), []
    for i in range(n_cases):
        loss_type = ("sigmoid", "ipo", "hinge", "robust")[i % 4]
        beta = rng.choice([0.01, 0.1, 0.5, 2.0, 10.0])
        eps = rng.choice([0.0, 0.1, 0.3]) if loss_type in ("sigmoid", "robust") else 0.0
        rpo_alpha = rng.choice([0.0, 0.0, 0.5])
        b = rng.randint(1, 5)
        pc, pr, rc, rr = ([logp(rng) for _ in range(b)] for _ in range(4))
        if rng.random() < 0.25:  # policy == reference: h = 0
            rc, rr = list(pc), list(pr)
        lengths = [rng.randint(1, 40) for _ in range(b)]
        losses, chosen_rewards, rejected_rewards = naive_dpo_loss(pc, pr, rc, rr, beta=beta,
                                                                  loss_type=loss_type,
                                                                  eps=eps, rpo_alpha=rpo_alpha,
                                                                  chosen_lengths=lengths)
        dh = [naive_pair_dloss_dh(*pair, beta, loss_type, eps) for pair in zip(pc, pr, rc, rr)]
        cases.append({"inputs": {"policy_chosen_logps": pc, "policy_rejected_logps": pr,
                                 "reference_chosen_logps": rc, "reference_rejected_logps": rr},
                      "beta": beta, "loss_type": loss_type, "label_smoothing": eps,
                      "rpo_alpha": rpo_alpha,
                      "chosen_lengths": lengths, "losses": losses, "chosen_rewards": chosen_rewards,
                      "rejected_rewards": rejected_rewards,
                      "grads": {"policy_chosen_logps": [g - rpo_alpha / n for g, n in zip(dh,
                                                                                          lengths)],
                                "policy_rejected_logps": [-g for g in dh],
                                "reference_chosen_logps": [-g for g in dh],
                                "reference_rejected_logps": list(dh)}})
    return cases


def a1_family_cases(n_cases=24, seed=1):
    """A1's extra credit: SimPO, ORPO and KTO losses on random log-probs, lengths and
    desirability."""
    rng, cases = random.Random(seed), {"simpo": [], "orpo": [], "kto": []}
    for _ in range(n_cases):
        b = rng.randint(1, 5)
        chosen, rejected = [logp(rng) for _ in range(b)], [logp(rng) for _ in range(b)]
        chosen_lengths = [rng.randint(1, 40) for _ in range(b)]
        rejected_lengths = [rng.randint(1, 40) for _ in range(b)]
        pairs = {"policy_chosen_logps": chosen, "policy_rejected_logps": rejected,
                 "chosen_lengths": chosen_lengths, "rejected_lengths": rejected_lengths}
        beta, gamma = rng.choice([0.5, 2.0, 10.0]), rng.choice([0.0, 0.5, 1.0, 3.0])
        cases["simpo"].append({**pairs, "beta": beta, "gamma": gamma,
                               "losses": naive_simpo(chosen, rejected, chosen_lengths,
                                                     rejected_lengths, beta, gamma)})
        beta = rng.choice([0.1, 0.5, 2.0])
        cases["orpo"].append({**pairs, "beta": beta,
                              "losses": naive_orpo(chosen, rejected, chosen_lengths,
                                                   rejected_lengths, beta)})
        reference = [logp(rng) for _ in range(b)]
        desirable = [rng.random() < 0.5 for _ in range(b)]
        kl, beta = rng.choice([-1.0, 0.0, 0.5, 3.0]), rng.choice([0.05, 0.1, 0.5])
        weights = rng.choice([(1.0, 1.0), (3.0, 1.0), (1.0, 0.5)])
        cases["kto"].append({"policy_logps": chosen, "reference_logps": reference,
                             "desirable": desirable, "kl": kl, "beta": beta,
                             "desirable_weight": weights[0], "undesirable_weight": weights[1],
                             "losses": naive_kto(chosen, reference, desirable, kl, beta, *weights)})
    return cases


def grid(rng, low, high):
    """A multiple of 1/64 in [low, high]: exact in float32."""
    return rng.randint(low * 64, high * 64) / 64


def grid_tensor(rng, shape, low, high):
    return torch.tensor([[grid(rng, low, high) for _ in range(shape[1])] for _ in range(shape[0])])


def holey_mask(rng, B, T):
    """(B, T) bool: each row a span, a row with holes (its first and last position in, some of the
    middle out), full or empty; the first row has holes when T >= 3, and the last of two or more
    rows is empty one time in three."""
    rows = []
    for b in range(B):
        kind = "holes" if b == 0 else rng.choice(["span", "holes", "holes", "full", "empty"])
        if kind == "holes" and T >= 3:
            rows.append([True] + [rng.random() < 0.6 for _ in range(T - 2)] + [True])
        elif kind in ("span", "holes"):
            start = rng.randint(0, T - 1)
            end = rng.randint(start + 1, T)
            rows.append([start <= t < end for t in range(T)])
        else:
            rows.append([kind == "full"] * T)
    if B >= 2 and rng.random() < 1 / 3:
        rows[-1] = [False] * T
    return torch.tensor(rows)


def listed(t):
    return t.tolist()


def a5_cases(seed=5):
    """A5: each function of the solution on seeded inputs; masked positions hold arbitrary values,
    which must not matter."""
    rng, cases = random.Random(seed), {name: [] for name in (
        "bradley_terry", "token_rewards", "gae", "whiten", "policy_loss", "value_loss", "rloo")}
    for _ in range(24):
        b = rng.randint(1, 6)
        chosen = torch.tensor([grid(rng, -24, 24) for _ in range(b)], requires_grad=True)
        rejected = torch.tensor([grid(rng, -24, 24) for _ in range(b)], requires_grad=True)
        losses = reward_model.bradley_terry_loss(chosen, rejected)
        losses.sum().backward()
        cases["bradley_terry"].append({"chosen_rewards": listed(chosen.detach()),
                                       "rejected_rewards": listed(rejected.detach()),
                                       "losses": listed(losses.detach()),
                                       "grad_chosen": listed(chosen.grad),
                                       "grad_rejected": listed(rejected.grad)})
    for _ in range(24):
        B, T = rng.randint(1, 4), rng.randint(1, 8)
        mask = holey_mask(rng, B, T)
        scores = torch.tensor([grid(rng, -1, 1) for _ in range(B)])
        logprobs, ref = grid_tensor(rng, (B, T), -8, 0), grid_tensor(rng, (B, T), -8, 0)
        kl_coef = rng.choice([0.0, 0.05, 0.1, 0.5])
        rewards = ppo.token_rewards(scores, logprobs, ref, mask, kl_coef)
        cases["token_rewards"].append({"scores": listed(scores), "logprobs": listed(logprobs),
                                       "ref_logprobs": listed(ref), "mask": listed(mask),
                                       "kl_coef": kl_coef, "rewards": listed(rewards)})
    for _ in range(24):
        B, T = rng.randint(1, 4), rng.randint(1, 8)
        mask = holey_mask(rng, B, T)
        rewards, values = grid_tensor(rng, (B, T), -2, 2), grid_tensor(rng, (B, T), -2, 2)
        gamma, lam = rng.choice([1.0, 0.99, 0.9, 0.5]), rng.choice([0.95, 1.0, 0.5, 0.0])
        advantages, returns = ppo.gae(rewards, values, mask, gamma, lam)
        naive = naive_gae(rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam)
        torch.testing.assert_close(advantages, torch.tensor(naive[0]), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(returns, torch.tensor(naive[1]), rtol=1e-5, atol=1e-5)
        cases["gae"].append({"rewards": listed(rewards), "values": listed(values),
                             "mask": listed(mask), "gamma": gamma, "lam": lam,
                             "advantages": listed(advantages), "returns": listed(returns)})
    for _ in range(16):
        B, T = rng.randint(1, 4), rng.randint(2, 8)
        mask = holey_mask(rng, B, T)
        values = torch.where(mask, grid_tensor(rng, (B, T), -8, 8),
                             grid_tensor(rng, (B, T), -100, 100))  # padding far from the rest
        cases["whiten"].append({"values": listed(values), "mask": listed(mask),
                                "whitened": listed(ppo.whiten(values, mask))})
    for _ in range(24):
        B, T = rng.randint(1, 4), rng.randint(1, 8)
        mask = holey_mask(rng, B, T)
        old = grid_tensor(rng, (B, T), -6, 0)
        logprobs = (old + grid_tensor(rng, (B, T), -1, 1) * 0.75).requires_grad_(True)
        advantages = grid_tensor(rng, (B, T), -2, 2)
        clip = rng.choice([0.1, 0.2, 0.3])
        loss = ppo.policy_loss(logprobs, old, advantages, mask, clip)
        loss.backward()
        cases["policy_loss"].append({"logprobs": listed(logprobs.detach()),
                                     "old_logprobs": listed(old), "advantages": listed(advantages),
                                     "mask": listed(mask), "clip": clip, "loss": loss.item(),
                                     "grad": listed(logprobs.grad)})
    for _ in range(24):
        B, T = rng.randint(1, 4), rng.randint(1, 8)
        mask = holey_mask(rng, B, T)
        values = grid_tensor(rng, (B, T), -2, 2).requires_grad_(True)
        old, returns = grid_tensor(rng, (B, T), -2, 2), grid_tensor(rng, (B, T), -2, 2)
        clip = rng.choice([0.1, 0.2, 0.5])
        loss = ppo.value_loss(values, old, returns, mask, clip)
        loss.backward()
        cases["value_loss"].append({"values": listed(values.detach()), "old_values": listed(old),
                                    "returns": listed(returns), "mask": listed(mask),
                                    "clip": clip, "loss": loss.item(), "grad": listed(values.grad)})
    for _ in range(16):
        scores = grid_tensor(rng, (rng.randint(1, 4), rng.randint(2, 6)), -2, 2)
        cases["rloo"].append({"scores": listed(scores),
                              "advantages": listed(ppo.rloo_advantages(scores))})
    return cases


def main():
    os.makedirs(os.path.join(HERE, "fixtures"), exist_ok=True)
    for name, about, cases in (
            ("a1_dpo_loss.json",
             "expected dpo_loss outputs and gradients (sum of losses) from the naive reference",
             a1_cases()),
            ("a1_family_losses.json",
             "A1 extra credit: expected simpo_loss, orpo_loss and kto_loss outputs from "
             "the naive references (tests/naive_family.py)", a1_family_cases()),
            ("a5_rlhf.json",
             "A5: expected outputs (and gradients) of bradley_terry_loss, token_rewards, gae, "
             "whiten, policy_loss, value_loss and rloo_advantages from the solution in methods/",
             a5_cases())):
        path = os.path.join(HERE, "fixtures", name)
        with open(path, "w") as f:
            json.dump({"about": about + "; written by course/make_fixtures.py", "cases": cases}, f,
                      indent=1)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
