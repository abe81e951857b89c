"""Write the graders' literal fixtures from the instructor's naive references (instructor only; not
copied).

    python -m course.make_fixtures

The student copy has no naive reference (it would give the answers away): the graders compare
against the literal numbers written here instead, for inputs drawn once from a seeded generator.
Inputs are multiples of 1/64 in [-64, 0], exact in float32, so a float32 implementation and this
float64 reference see the same h.
"""

import json
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

# the instructor's references
from naive_dpo import naive_dpo_loss, naive_pair_dloss_dh  # noqa: E402
from naive_family import naive_kto, naive_orpo, naive_simpo  # noqa: E402


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


def main():
    os.makedirs(os.path.join(HERE, "fixtures"), exist_ok=True)
    for name, about, cases in (
            ("a1_dpo_loss.json",
             "expected dpo_loss outputs and gradients (sum of losses) from the naive reference",
             a1_cases()),
            ("a1_family_losses.json",
             "A1 extra credit: expected simpo_loss, orpo_loss and kto_loss outputs from "
             "the naive references (tests/naive_family.py)", a1_family_cases())):
        path = os.path.join(HERE, "fixtures", name)
        with open(path, "w") as f:
            json.dump({"about": about + "; written by course/make_fixtures.py", "cases": cases}, f,
                      indent=1)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
