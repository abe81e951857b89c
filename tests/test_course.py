"""The course kit's self-test: build the student copy, grade it, and grade the solutions.

In the student copy every graded test must fail with the stub's NotImplementedError (none passes by
accident), every ungraded test must pass or skip naming the assignment it waits for, and no line of
any solution may be left; in a copy where one assignment's solution is written, that assignment's
graded tests all pass (A4's, which need runs, in tests/test_experiments.py on the quick runs).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from course import build
from course.manifest import ANSWERS, ASSIGNMENTS, REMOVED
from course_grading import grade
from hang_guard import HANG_GUARD_SECONDS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def student_copy(tmp_path_factory):
    out = tmp_path_factory.mktemp("course") / "student"
    build.build(str(out), log=lambda *_: None)
    return out


def test_student_copy_has_no_solution(student_copy):
    solutions = build.solution_lines()
    assert len(solutions) > 30
    for path in student_copy.rglob("*"):
        if path.is_file() and path.suffix in (".py", ".md", ".json", ".txt"):
            text = path.read_text(errors="replace")
            left = [line for line in solutions if line in text]
            assert not left, (
                f"{path.relative_to(student_copy)} still holds solution lines: {left[:3]}")
    for removed in REMOVED:
        assert not (student_copy / removed).exists(), removed
    for name in ANSWERS:
        assert (student_copy / "answers" / f"{name}.md").is_file(), name
    for a in ASSIGNMENTS.values():
        assert (student_copy / "handouts" / os.path.basename(a.handout)).is_file()
        for path, qualname, _ in a.stubs:
            assert f"Assignment {a.number}: " in (student_copy / path).read_text(), (path, qualname)


@pytest.mark.slow
@pytest.mark.parametrize("assignment", list(ASSIGNMENTS))
def test_graded_tests_fail_on_the_stubs(student_copy, tmp_path, assignment):
    """Every graded test fails on the stubs with NotImplementedError. The solutions' full marks are
    checked where each is graded with its own solution written: A1, A2, A3 and A5 in
    test_each_assignment_grades_fully_with_only_its_own_solution, A4 (which needs runs) in
    tests/test_experiments.py::test_quick_demo_and_frontier."""
    results, table = grade(student_copy, assignment, tmp_path)
    assert results["tests"] and results["points"] == 0, table
    for nodeid, result in results["tests"].items():
        assert result["outcome"] == "failed" and "NotImplementedError" in result["reason"], (nodeid,
                                                                                             result)


@pytest.mark.slow
@pytest.mark.parametrize("assignment", ["A1", "A2", "A3", "A5"])
def test_each_assignment_grades_fully_with_only_its_own_solution(tmp_path, assignment):
    """A1, A2, A3 and A5 are independent (course/README.md): a copy in which only this one is
    written, the others still stubs, scores full marks on it (A1 its extra credit too)."""
    copy = tmp_path / f"only-{assignment}"
    build.build(str(copy), log=lambda *_: None, solved=(assignment,))
    others = [a for a in ASSIGNMENTS if a != assignment]
    assert all(f"Assignment {ASSIGNMENTS[a].number}: " in (copy
                                                           / ASSIGNMENTS[a].stubs[0][0]).read_text()
               for a in others)
    results, table = grade(copy, assignment, tmp_path)
    assert results["points"] == results["total"] > 0, table
    extra_credit = 6 if assignment == "A1" else 0
    assert results["extra_credit_points"] == results["extra_credit_total"] == extra_credit, table


@pytest.mark.slow
def test_a4_needs_a1_to_a3_only(tmp_path):
    """A4 in a copy where A1 to A4 are written and A5 is not: its code and its runs (the quick demo
    and the quick frontier, which leaves out the RLHF rows) pass; only the answers, not written
    here, wait."""
    copy = tmp_path / "A1-A4"
    build.build(str(copy), log=lambda *_: None, solved=("A1", "A2", "A3", "A4"))
    assert "Assignment 5: " in (copy / "methods" / "ppo.py").read_text()
    results, table = grade(copy, "A4", tmp_path)
    for nodeid, result in results["tests"].items():
        if "test_answer" in nodeid:
            assert "Assignment 4: answer" in result["reason"], (nodeid, result)
        else:
            assert result["outcome"] == "passed", (nodeid, result, table)


@pytest.mark.slow
def test_wrong_but_plausible_solutions_of_a5_lose_points(tmp_path):
    """course/mutants.py: each mutant (a baseline that includes the sample, GAE over the holes,
    whitening over the padding, ...) in a copy where only A5 is written fails at least the graded
    tests it lists."""
    mutants = pytest.importorskip("course.mutants", reason="the instructor's repository only")
    results = mutants.run(str(tmp_path / "only-A5"), log=lambda *_: None)
    for name, (_, _, _, must_fail) in mutants.MUTANTS.items():
        points, total, failed = results[name]
        assert points < total and set(must_fail) <= set(failed), (name, failed)


@pytest.mark.slow
def test_ungraded_tests_pass_or_wait_in_the_student_copy(student_copy):
    """The student copy's own tests, but its end-to-end runs (marked slow): they run in this
    repository's suite, and test_a4_needs_a1_to_a3_only runs the quick demo and frontier in a copy
    whose RLHF code is not written yet."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                           "-x", "-m", "not slow", "--ignore=tests/test_course.py"],
                          cwd=student_copy, env=env,
                          capture_output=True, text=True, timeout=HANG_GUARD_SECONDS)
    assert proc.returncode == 0, proc.stdout[-4000:]
    # (training reaches A3's truncation before A1's loss, so A1 shows up in the graders only)
    for n in (2, 3, 4, 5):
        assert f"waits for Assignment {n}" in proc.stdout, proc.stdout[-4000:]


def test_runs_flag_is_checked_before_grading(tmp_path):
    """--runs is for A4 and must name a directory: one error line and exit status 2 otherwise; A4
    given a directory without runs fails the runs' tests and runs nothing in their place."""
    for argv, message in ((["A1", "--runs", str(tmp_path)], "--runs is for A4"),
                          (["A4", "--runs", str(tmp_path / "none")], "none: not a directory")):
        proc = subprocess.run([sys.executable, "-m", "course", "grade", *argv], cwd=REPO,
                              capture_output=True, text=True, timeout=HANG_GUARD_SECONDS)
        assert proc.returncode == 2 and proc.stderr.startswith("error: "), proc.stderr
        assert message in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    results, table = grade(REPO, "A4", tmp_path, runs=tmp_path)
    for name in ("demo", "frontier"):
        result = results["tests"][f"course/graders/test_a4_experiment.py::test_{name}_outputs"]
        assert result["outcome"] == "failed" and f"no {name}/" in result["reason"], table
    assert not (tmp_path / "demo").exists() and not (tmp_path / "frontier").exists()
