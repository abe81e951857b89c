"""A naive, obviously-correct DPO loss: one pair at a time, in Python floats (float64), from the
formulas.

It shares no code with dpo.py; tests/test_dpo.py checks that the vectorised float32 version agrees.
log sigma(x) is written in the standard piecewise form so that exp() only ever sees a non-positive
argument and nothing overflows for |x| in the millions:
    x >= 0:  log sigma(x) = -log(1 + e^-x)          = -log1p(exp(-x))
    x <  0:  log sigma(x) = x - log(1 + e^x)        =  x - log1p(exp(x))
"""

import math


def log_sigmoid(x: float) -> float:
    """log(1 / (1 + e^-x)), stable for any finite x."""
    if x >= 0:
        return -math.log1p(math.exp(-x))
    return x - math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    """1 / (1 + e^-x), stable for any finite x."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def naive_pair_loss(pc: float, pr: float, rc: float, rr: float, beta: float, loss_type: str,
                    eps: float) -> float:
    """The loss of one pair from its four log-probs (policy chosen/rejected, reference
    chosen/rejected)."""
    h = (pc - pr) - (rc - rr)
    x = beta * h
    if loss_type == "sigmoid":
        return -(1 - eps) * log_sigmoid(x) - eps * log_sigmoid(-x)
    if loss_type == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    if loss_type == "hinge":
        return max(0.0, 1 - x)
    if loss_type == "robust":
        return (-(1 - eps) * log_sigmoid(x) + eps * log_sigmoid(-x)) / (1 - 2 * eps)
    raise ValueError(loss_type)


def naive_pair_dloss_dh(pc: float, pr: float, rc: float, rr: float, beta: float, loss_type: str,
                        eps: float) -> float:
    """d loss / d h of one pair, differentiated by hand (d/dx log sigma(x) = sigma(-x))."""
    h = (pc - pr) - (rc - rr)
    x = beta * h
    if loss_type == "sigmoid":
        return -beta * ((1 - eps) * sigmoid(-x) - eps * sigmoid(x))
    if loss_type == "ipo":
        return 2 * (h - 1 / (2 * beta))
    if loss_type == "hinge":
        return -beta if x < 1 else 0.0
    if loss_type == "robust":
        return -beta * ((1 - eps) * sigmoid(-x) + eps * sigmoid(x)) / (1 - 2 * eps)
    raise ValueError(loss_type)


def naive_dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected,
                   beta: float, loss_type: str = "sigmoid", eps: float = 0.0,
                   rpo_alpha: float = 0.0, chosen_lengths=None):
    """Lists of floats in, lists of floats out: (losses, chosen_rewards, rejected_rewards).
    With rpo_alpha, each loss gets + rpo_alpha * (-pc / n): RPO's per-token NLL of the chosen
    response."""
    losses, chosen_rewards, rejected_rewards = [], [], []
    lengths = chosen_lengths if chosen_lengths is not None else [1] * len(policy_chosen)
    for pc, pr, rc, rr, n in zip(policy_chosen, policy_rejected, reference_chosen,
                                 reference_rejected, lengths,
                                 strict=True):
        losses.append(naive_pair_loss(pc, pr, rc, rr, beta, loss_type, eps) + rpo_alpha * (-pc / n))
        chosen_rewards.append(beta * (pc - rc))
        rejected_rewards.append(beta * (pr - rr))
    return losses, chosen_rewards, rejected_rewards


def naive_unlikelihood_loss(chosen, chosen_lengths, rejected_token_logps, rejected_mask,
                            alpha: float,
                            clamp: float = -1e-6):
    """The Unlikelihood baseline, one pair at a time: lists in, list of losses out.
    rejected_token_logps and rejected_mask are lists of rows; each unmasked log-prob x is first
    clamped to <= clamp, then -log(1 - p) = -log(1 - e^x) is taken as written (float64 keeps 1 - e^x
    accurate to ~1e-10 for x <= -1e-6)."""
    losses = []
    for c, n, xs, mask in zip(chosen, chosen_lengths, rejected_token_logps, rejected_mask,
                              strict=True):
        terms = [-math.log(1 - math.exp(min(x, clamp))) for x, m in zip(xs, mask, strict=True) if m]
        losses.append(-c / n + alpha * sum(terms) / len(terms))
    return losses


def naive_unlikelihood_dloss_dx(rejected_token_logps, rejected_mask, alpha: float,
                                clamp: float = -1e-6):
    """d loss / d x for every rejected token, by hand: alpha / |y_l| * p / (1 - p) for unmasked x <=
    clamp, 0 past the clamp (constant there) and at masked positions. Rows of lists in, rows of
    lists out."""
    grads = []
    for xs, mask in zip(rejected_token_logps, rejected_mask, strict=True):
        k = sum(mask)
        grads.append([alpha / k * math.exp(x) / (1 - math.exp(x)) if m and x <= clamp else 0.0
                      for x, m in zip(xs, mask, strict=True)])
    return grads
