"""The rules that decide whether a claim holds, and how a claim and its verdict are written into the
docs: shared by the frontier's claims (experiments/verdicts.py) and the open questions'
(experiments/open_questions.py).

* A method's frontier on one training seed is the upper envelope of its points (`envelope`), read
  at a KL by linear interpolation (`read`).
* "A is ahead of B" means the 95% intervals are apart (`compare`); overlapping intervals are a tie.
* A claim is checked per training seed (or per run), and its verdict says on how many rows it holds
  (`claim`).
* A docs page shows a JSON file's claims between `<!-- verdicts:PAGE -->` and `<!-- /verdicts -->`
  (`render`, `rewrite_blocks`), so that a test can compare the prose with the JSON.
"""

import re
import textwrap

BLOCK = re.compile(r"(<!-- verdicts:([\w-]+) -->\n)(.*?)(<!-- /verdicts -->)", re.S)


def envelope(points, start):
    """The upper envelope of `points` and `start` (the reference) on the reward-KL plane: [(kl,
    reward, ci)] by increasing KL, each point beating every point of smaller KL, then flat to the
    largest KL of any point (the best reward reached within that KL)."""
    kept = []
    for p in sorted([start, *points], key=lambda p: (p["kl"], -p["reward"])):
        if not kept or p["reward"] > kept[-1][1]:
            kept.append((max(p["kl"], 0.0), p["reward"], p["reward_ci95"]))
    farthest = max(p["kl"] for p in [start, *points])
    if farthest > kept[-1][0]:
        kept.append((farthest, kept[-1][1], kept[-1][2]))
    return kept


def read(frontier, kl):
    """(reward, ci) of an envelope at `kl` by linear interpolation; None beyond its largest KL."""
    if kl > frontier[-1][0]:
        return None
    for (k0, r0, c0), (k1, r1, c1) in zip(frontier, frontier[1:]):
        if k0 <= kl <= k1:
            w = 0.0 if k1 == k0 else (kl - k0) / (k1 - k0)
            return r0 + w * (r1 - r0), c0 + w * (c1 - c0)
    return frontier[0][1], frontier[0][2]


def compare(a, b):
    """"ahead", "tie" or "behind": a = (reward, ci) against b."""
    if a[0] - a[1] > b[0] + b[1]:
        return "ahead"
    if b[0] - b[1] > a[0] + a[1]:
        return "behind"
    return "tie"


def r(value):
    return f"{value[0]:+.3f} ± {value[1]:.3f}"


def small(value):
    """A non-negative difference: two decimals, or its order of magnitude when below 0.01."""
    return f"{value:.2f}" if value >= 0.01 or value == 0 else f"{value:.0e}"


def seed_list(seeds):
    return ", ".join(str(s) for s in seeds)


def claim(cid, page, text, rule, per_seed, unit="seeds"):
    """A claim with its per-seed checks ([{"seed", "holds", "detail", ...}]) and its verdict; unit:
    what a row is when it is not a training seed ("runs", "betas")."""
    held = [row["seed"] for row in per_seed if row["holds"]]
    failed = [row["seed"] for row in per_seed if not row["holds"]]
    if not per_seed:
        verdict = "not measured (no seed has the points it needs)"
    elif len(per_seed) == 1:
        verdict = (f"{'holds' if held else 'fails'} ("
                   + ("one training seed: " if unit == "seeds" else "") + f"{per_seed[0]['seed']})")
    elif not failed:
        verdict = f"holds on {len(held)} of {len(per_seed)} {unit}"
    else:
        verdict = (f"fails on {len(failed)} of {len(per_seed)} {unit} ({seed_list(failed)})"
                   if held else f"fails on all {len(per_seed)} {unit}")
    return {"id": cid, "page": page, "claim": text, "rule": rule, "per_seed": per_seed,
            "holds_on": len(held), "seeds": len(per_seed), "verdict": verdict}


def render(verdicts, page):
    """The markdown block of one page's claims: a line per claim (verdict, then each seed's
    numbers)."""
    lines = []
    for v in verdicts:
        if v["page"] != page:
            continue
        details = "; ".join(row["detail"] for row in v["per_seed"])
        rule = "" if v["verdict"] == "measured" else f" Rule: {v['rule']}."
        lines.append(wrap(f"* **{v['claim']}**: {v['verdict']}.{rule} {details}."))
    return "\n".join(lines) + "\n"


def wrap(line):
    """A markdown bullet wrapped at 100 columns, its continuation lines indented by two."""
    return textwrap.fill(line, width=100, subsequent_indent="  ", break_on_hyphens=False,
                         break_long_words=False)


def rewrite_blocks(text, render_page):
    """`text` with each `<!-- verdicts:PAGE -->` block's body replaced by render_page(PAGE); a page
    for which render_page returns None is left as it is."""
    def block(m):
        body = render_page(m.group(2))
        return m.group(0) if body is None else m.group(1) + body + m.group(4)

    return BLOCK.sub(block, text)
