"""Naive float implementations of SimPO, ORPO and KTO, written from each paper's formula with Python
floats and the math module, one example at a time: the independent references of
tests/test_family.py and of the course's A1 extra-credit fixtures (course/make_fixtures.py). Not
copied to the student copy (it gives answers away)."""

import math

MEAN_LOGP_CAP = -1e-7  # ORPO's per-token mean log-prob is capped here (orpo.MEAN_LOGP_CAP)


def log_sigmoid(x):
    return -math.log1p(math.exp(-x)) if x > -30 else x - math.log1p(math.exp(x))


def sigmoid(x):
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def naive_simpo(cw, cl, nw, nl, beta, gamma):
    """-log sigma(beta * chosen / |y_w| - beta * rejected / |y_l| - gamma), per pair."""
    return [-log_sigmoid(beta * w / a - beta * r / b - gamma) for w, r, a, b in zip(cw, cl, nw, nl)]


def naive_orpo(cw, cl, nw, nl, beta):
    """-a_w - beta * log sigma(log odds(y_w) - log odds(y_l)), a = log pi / |y|, log odds = a -
    log(1 - e^a)."""
    def log_odds(a):
        a = min(a, MEAN_LOGP_CAP)
        return a - math.log(-math.expm1(a))
    return ([-(w / a) - beta * log_sigmoid(log_odds(w / a) - log_odds(r / b))
             for w, r, a, b in zip(cw, cl, nw, nl)])


def naive_kto(policy, ref, desirable, kl, beta, wd, wu):
    """wd * (1 - sigma(beta (r - z0))) for a desirable example, wu * (1 - sigma(beta (z0 - r)))
    otherwise; r = policy - ref, z0 = max(kl, 0)."""
    z0 = max(kl, 0.0)
    out = []
    for p, q, d in zip(policy, ref, desirable):
        r = p - q
        sigma = sigmoid(beta * ((r - z0) if d else (z0 - r)))
        out.append((wd if d else wu) * (1 - sigma))
    return out
