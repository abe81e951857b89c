"""Grade one assignment: run its graded tests (course/graders/) with pytest and print the score
table.

    python -m course grade A1 [--repo DIR] [--json FILE]
    python -m course grade A4 --runs DIR     # A4's runs from DIR/demo and DIR/frontier, not out/

Each graded test is worth its `@pytest.mark.points(n)` (1 without the marker); an `extra_credit`
test's points are counted apart, beyond the total. The table lists every test with pass/fail, its
points, and why it failed in one line (NotImplementedError for a stub not written yet).
Runs from the repository whose code is graded (the student copy, or the instructor's full
repository).
"""

import json
import os
import sys
import time

import pytest

from course.manifest import ASSIGNMENTS

RUNS_ASSIGNMENT = "A4"  # the one assignment whose graders read runs: out/demo, out/frontier
RUNS_VARIABLE = "COURSE_RUNS_DIR"  # where they find them instead (`grade --runs DIR`)


class Recorder:
    """A pytest plugin that keeps each test's outcome, points and first failure line."""

    def __init__(self):
        self.results = {}  # nodeid -> dict(outcome, points, extra_credit, reason)

    def pytest_collection_modifyitems(self, items):
        for item in items:
            marker = item.get_closest_marker("points")
            self.results[item.nodeid] = {"outcome": "not run",
                                         "points": marker.args[0] if marker else 1,
                                         "extra_credit":
                                             item.get_closest_marker("extra_credit") is not None,
                                         "reason": ""}

    def pytest_runtest_logreport(self, report):
        result = self.results.setdefault(report.nodeid, {"outcome": "not run", "points": 1,
                                                         "extra_credit": False, "reason": ""})
        if report.when == "call" or report.outcome != "passed":
            result["outcome"] = report.outcome
            if report.failed:
                result["reason"] = failure_line(report)


def failure_line(report):
    """The exception line of a failed report ("NotImplementedError: Assignment 1: ..."),
    shortened."""
    text = str(report.longrepr)
    lines = [line[2:].strip() for line in text.splitlines() if line.startswith("E ")]
    line = next((line for line in lines if "Error" in line or "assert" in line),
                lines[0] if lines else text[:120])
    return line[:110]


def grade(assignment_id, repo=".", quiet=True, runs=""):
    """Run one assignment's graded tests in `repo`; returns (results {nodeid: ...}, points, total
    points, seconds), the points and total without the extra-credit tests (extra_credit_points
    counts those). `runs`: the directory of A4's runs (its graders read COURSE_RUNS_DIR), "" for
    the repository's out/."""
    assignment = ASSIGNMENTS[assignment_id]
    recorder = Recorder()
    grader = os.path.join(repo, assignment.grader)
    args = [grader, "-p", "course.plugin", "-p", "no:cacheprovider", "--rootdir", repo, "-o",
            "addopts="]
    args += ["-q", "--no-header", "-rN", "--tb=short"] if quiet else []
    start = time.time()
    before = os.environ.pop(RUNS_VARIABLE, None)
    if runs:
        os.environ[RUNS_VARIABLE] = os.path.abspath(runs)
    try:
        pytest.main(args, plugins=[recorder])
    finally:
        os.environ.pop(RUNS_VARIABLE, None)
        if before is not None:
            os.environ[RUNS_VARIABLE] = before
    results = recorder.results
    required = [r for r in results.values() if not r["extra_credit"]]
    points = sum(r["points"] for r in required if r["outcome"] == "passed")
    total = sum(r["points"] for r in required)
    return results, points, total, time.time() - start


def extra_credit_points(results):
    """(points earned, points offered) by the extra-credit tests of a grade() result."""
    extra = [r for r in results.values() if r["extra_credit"]]
    return sum(r["points"] for r in extra if r["outcome"] == "passed"), sum(r["points"]
                                                                            for r in extra)


def format_table(assignment_id, results, points, total, seconds):
    """The score table of one assignment."""
    a = ASSIGNMENTS[assignment_id]
    lines = [f"{assignment_id}: {a.title}", f"{'graded test':<64} {'result':<7} {'points':>6}"]
    for nodeid, r in results.items():
        earned = r["points"] if r["outcome"] == "passed" else 0
        lines.append(f"{nodeid.split('::', 1)[-1][:64]:<64} {r['outcome']:<7} "
                     f"{earned:>3}/{r['points']:<2}"
                     + (" extra credit" if r["extra_credit"] else ""))
        if r["reason"]:
            lines.append(f"    {r['reason']}")
    passed = sum(r["outcome"] == "passed" for r in results.values())
    extra, offered = extra_credit_points(results)
    lines.append(f"score {points}/{total} points"
                 + (f" (+{extra}/{offered} extra credit)" if offered else "") +
                 f"; {passed} of {len(results)} tests passed; {seconds:.0f} s")
    return "\n".join(lines)


def main(assignment_id, repo=".", json_path=None, runs=""):
    """Grade, print the table, optionally write the results as JSON; exit status 0 only for full
    marks, 2 for bad arguments."""
    if assignment_id not in ASSIGNMENTS:
        print(f"error: unknown assignment {assignment_id!r}; expected one of "
              f"{', '.join(ASSIGNMENTS)}",
              file=sys.stderr)
        return 2
    if runs and assignment_id != RUNS_ASSIGNMENT:
        print(f"error: --runs is for {RUNS_ASSIGNMENT} (the assignment with runs), not "
              f"{assignment_id}", file=sys.stderr)
        return 2
    if runs and not os.path.isdir(runs):
        print(f"error: --runs {runs}: not a directory", file=sys.stderr)
        return 2
    results, points, total, seconds = grade(assignment_id, repo, runs=runs)
    print(format_table(assignment_id, results, points, total, seconds))
    if json_path:
        with open(json_path, "w") as f:
            extra, offered = extra_credit_points(results)
            json.dump({"assignment": assignment_id, "points": points, "total": total,
                       "extra_credit_points": extra, "extra_credit_total": offered,
                       "seconds": seconds, "tests": results}, f, indent=2)
    return 0 if points == total else 1
