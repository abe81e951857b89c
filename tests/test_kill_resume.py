"""Killed at any moment, nothing lost: a small DPO run and a small RLOO run are killed with SIGKILL
ten times each, resumed with --resume each time, and end with the weights, AdamW state, generator
states, metrics.jsonl and hf/ of the same run done in one go. Five kills land at random moments of
the run; five during a checkpoint write (the process kills itself there: before the rename of the
written file, or after tearing it in half), so that no kill depends on how a busy machine schedules
the test.

What this checks is the guarantee docs/tutorial.md states: every file of a run is replaced
atomically or appended to, --resume continues from the last checkpoint and drops the metrics rows
written after it (a row cut short included), and a run killed before its first checkpoint starts
again from step 0.
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from test_rlhf import tiny_checkpoints
from test_train import write_preferences

REPO = Path(__file__).resolve().parents[1]
KILLS = 10  # per command


# Runs train.py in this process, but SIGKILLs it during its KILL_AT_SAVE-th checkpoint write: just
# before the rename of the fully written temporary file ("before rename") or after cutting that file
# to half its length ("torn write"). The process kills itself, so where the kill lands does not
# depend on how a busy machine schedules this test.
KILL_DURING_SAVE = """
import os, runpy, signal, sys
kill_at_save, mode = int(os.environ["KILL_AT_SAVE"]), os.environ["KILL_MODE"]
saves, rename = 0, os.replace
def replace(src, dst, *args, **kwargs):
    global saves
    if os.path.basename(str(src)).startswith(".ckpt-"):
        saves += 1
        if saves == kill_at_save:
            if mode == "torn write":
                os.truncate(src, os.path.getsize(src) // 2)
            os.kill(os.getpid(), signal.SIGKILL)
    return rename(src, dst, *args, **kwargs)
os.replace = replace
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def start(argv, out, env, kill_at_save=None, mode=None):
    """`python train.py argv --out-dir out`, with --resume when out already holds a run;
    kill_at_save N: the process kills itself during its N-th checkpoint write (`mode`: "before
    rename" or "torn write")."""
    holds_a_run = any(os.path.exists(os.path.join(out, name))
                      for name in ("config.json", "ckpt.pt"))
    resume = ["--resume"] if holds_a_run else []
    command = [str(REPO / "train.py"), *argv, "--out-dir", out, *resume]
    if kill_at_save is None:
        command = [sys.executable, *command]
    else:
        command = [sys.executable, "-c", KILL_DURING_SAVE, *command]
        env = {**env, "KILL_AT_SAVE": str(kill_at_save), "KILL_MODE": mode}
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def kill_at(process, moment):
    """SIGKILL `process` `moment` seconds after its start (moment None: wait for it to kill itself
    during a checkpoint write). Returns where it was killed, or None if it ended first."""
    started = time.monotonic()
    while process.poll() is None:
        if moment is not None and time.monotonic() - started >= moment:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return f"at {moment:.2f} s"
        time.sleep(0.001)
    return "checkpoint write" if process.returncode == -signal.SIGKILL else None


def final_state(out):
    """What must be identical: the checkpoint (but --resume and --out-dir in its config),
    metrics.jsonl, hf/."""
    state = torch.load(os.path.join(out, "ckpt.pt"), weights_only=False)
    state["config"].pop("resume")
    state["config"].pop("out_dir")
    files = {name: (Path(out) / name).read_bytes() for name in ("metrics.jsonl",
                                                                "hf/model.safetensors",
                                                                "hf/config.json")}
    return state, files


def killed_and_resumed(argv, out, seed, env):
    """Run argv into out, killing it KILLS times (every other kill during a checkpoint write, the
    others at a random moment of the run), resuming each time; then to the end. Returns where each
    kill landed."""
    rng = random.Random(seed)
    reference = time.monotonic()
    whole = start(argv, out + "-whole", env)
    assert whole.wait() == 0, whole.stderr.read().decode()
    duration = time.monotonic() - reference
    landed, finished = [], 0
    while len(landed) < KILLS:
        if len(landed) % 2:  # every other kill during a checkpoint write, one of the first three
            mode = "torn write" if len(landed) % 4 == 1 else "before rename"
            process = start(argv, out, env, kill_at_save=rng.randint(1, 3), mode=mode)
            moment = None
        else:
            process = start(argv, out, env)
            moment = rng.uniform(0.2, 1.0) * duration
        where = kill_at(process, moment)
        if where is None:  # it finished first: start a fresh run, go on killing
            assert process.returncode == 0, process.stderr.read().decode()
            finished += 1
            assert finished <= 3 * KILLS, f"{finished} runs ended before their kill: {landed}"
            os.rename(out, f"{out}-finished-{finished}")
            continue
        landed.append(where if moment is not None else f"{where} ({mode})")
    process = start(argv, out, env)
    assert process.wait() == 0, process.stderr.read().decode()
    return landed


def assert_identical(a, b, where):
    """a and b equal all the way down: tensors and arrays bit for bit, everything else by ==."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    elif isinstance(a, (torch.Tensor, np.ndarray)):
        torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), rtol=0, atol=0,
                                   equal_nan=True,
                                   msg=where)
    else:
        assert a == b, where


def assert_same(a, b):
    (state_a, files_a), (state_b, files_b) = final_state(a), final_state(b)
    assert_identical(state_a, state_b, "ckpt.pt")
    for name in files_a:
        assert files_a[name] == files_b[name], name


@pytest.fixture
def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


@pytest.mark.slow
def test_dpo_killed_ten_times_ends_as_the_uninterrupted_run(tmp_path, env):
    _init, _ = tiny_checkpoints(tmp_path)
    prefs = write_preferences(tmp_path / "prefs.jsonl", n=40)
    argv = ["dpo", "--init", _init, "--data", prefs, "--steps", "16", "--batch-size", "4",
            "--eval-every", "3", "--save-every", "1", "--keep-best", "--max-length", "64",
            "--heldout-fraction", "0.2", "--seed", "0"]
    landed = killed_and_resumed(argv, str(tmp_path / "run"), seed=0, env=env)
    during_a_write = [where for where in landed if where.startswith("checkpoint write")]
    assert len(landed) >= KILLS and len(during_a_write) >= KILLS // 2, landed
    assert_same(str(tmp_path / "run-whole"), str(tmp_path / "run"))
    print(f"dpo kill points: {landed}")


@pytest.mark.slow
def test_rloo_killed_ten_times_ends_as_the_uninterrupted_run(tmp_path, env):
    init, rm = tiny_checkpoints(tmp_path)
    argv = ["rloo", "--init", init, "--reward-model", rm, "--steps", "8", "--batch-size", "2",
            "--samples-per-prompt", "2", "--max-new-tokens", "6", "--eval-every", "3",
            "--save-every", "1", "--target-kl", "0.01", "--kl-horizon", "4", "--lr", "1e-2"]
    landed = killed_and_resumed(argv, str(tmp_path / "run"), seed=1, env=env)
    during_a_write = [where for where in landed if where.startswith("checkpoint write")]
    assert len(landed) >= KILLS and len(during_a_write) >= KILLS // 2, landed
    assert_same(str(tmp_path / "run-whole"), str(tmp_path / "run"))
    print(f"rloo kill points: {landed}")
