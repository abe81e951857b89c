"""Killed at any moment, nothing lost: a small DPO run and a small RLOO run are killed with SIGKILL
at random moments (and as a checkpoint is being written), resumed with --resume each time, and end
with the weights, AdamW state, generator states, metrics.jsonl and hf/ of the same run done in one
go.

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


def start(argv, out, env):
    """`python train.py argv --out-dir out`, with --resume when out already holds a run."""
    holds_a_run = any(os.path.exists(os.path.join(out, name))
                      for name in ("config.json", "ckpt.pt"))
    resume = ["--resume"] if holds_a_run else []
    command = [sys.executable, str(REPO / "train.py"), *argv, "--out-dir", out, *resume]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def writing_a_checkpoint(out):
    """True while save_checkpoint's temporary file exists (between its creation and the rename)."""
    return os.path.isdir(out) and any(name.startswith(".ckpt-") for name in os.listdir(out))


def kill_at(process, out, moment):
    """SIGKILL `process` `moment` seconds after its start, or (moment None) as soon as a checkpoint
    is being written. Returns where it was killed ("checkpoint write", "at N s"), or None if it
    ended first."""
    started = time.monotonic()
    while process.poll() is None:
        if moment is None and writing_a_checkpoint(out):
            process.send_signal(signal.SIGKILL)
            process.wait()
            return "checkpoint write"
        if moment is not None and time.monotonic() - started >= moment:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return f"at {moment:.2f} s"
        time.sleep(0.0005)
    return None


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
    landed = []
    while len(landed) < KILLS:
        process = start(argv, out, env)
        moment = None if len(landed) % 2 else rng.uniform(0.2, 1.0) * duration
        where = kill_at(process, out, moment)
        if where is None:  # it finished first: start a fresh run and go on killing
            assert process.returncode == 0, process.stderr.read().decode()
            os.rename(out, f"{out}-finished-{len(landed)}")
            continue
        landed.append(where)
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
    assert len(landed) >= KILLS and landed.count("checkpoint write") >= KILLS // 2, landed
    assert_same(str(tmp_path / "run-whole"), str(tmp_path / "run"))
    print(f"dpo kill points: {landed}")


@pytest.mark.slow
def test_rloo_killed_ten_times_ends_as_the_uninterrupted_run(tmp_path, env):
    init, rm = tiny_checkpoints(tmp_path)
    argv = ["rloo", "--init", init, "--reward-model", rm, "--steps", "8", "--batch-size", "2",
            "--samples-per-prompt", "2", "--max-new-tokens", "6", "--eval-every", "3",
            "--save-every", "1", "--target-kl", "0.01", "--kl-horizon", "4", "--lr", "1e-2"]
    landed = killed_and_resumed(argv, str(tmp_path / "run"), seed=1, env=env)
    assert len(landed) >= KILLS and landed.count("checkpoint write") >= KILLS // 2, landed
    assert_same(str(tmp_path / "run-whole"), str(tmp_path / "run"))
    print(f"rloo kill points: {landed}")
