"""`python -m course grade` as the tests run it: in a fresh process, so that a graded copy's modules
do not mix with this repository's (tests/test_course.py, tests/test_experiments.py)."""

import json
import os
import subprocess
import sys

from hang_guard import HANG_GUARD_SECONDS


def grade(repo, assignment, tmp_path, runs=None):
    """Grade `assignment` in the repository `repo` (a Path); `runs`: a directory for --runs (A4's
    demo/ and frontier/). Returns (the results JSON as a dict, the printed score table)."""
    out = tmp_path / f"{assignment}-{repo.name}.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-m", "course", "grade", assignment, "--json", str(out),
                           *(["--runs", str(runs)] if runs else [])],
                          cwd=repo,
                          env=env, capture_output=True, text=True, timeout=HANG_GUARD_SECONDS)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout
