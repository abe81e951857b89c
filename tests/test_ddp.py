"""Data-parallel training under torchrun (plumbing/data_parallel.py), on the CPU with gloo: 2
processes give the metrics and final weights of 1 process with the same global batch (DPO with its
precomputed reference; SFT with LoRA, whose loss is divided by the target tokens of the whole step
and whose base weights are frozen; pre-training windows), only rank 0 writes and prints, a run
resumes across process counts, and a --batch-size that the processes cannot share evenly is a
one-line error before any work."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

import train
from hang_guard import HANG_GUARD_SECONDS
from plumbing.checkpoint import load_checkpoint, save_checkpoint
from plumbing.config import ConfigError, TrainConfig, check_values
from test_llama_commands import SHAPE as LLAMA_SHAPE
from test_llama_commands import save_hf
from test_train import read_metrics, tiny_model, write_preferences

REPO = Path(__file__).resolve().parents[1]
# 8 examples per step in 2 micro-batches: 1 process takes 2 x 4, each of 2 processes 2 x 2; 3 steps,
# evaluated at 2, 3. A small learning rate (warm-up from 1.5e-4): the attention key bias has a true
# gradient of 0, and AdamW turns the float noise in it into steps of up to lr, which differ with the
# summation order (as grad_accum 1 vs 4 do).
COMMON = ["--max-length", "48", "--batch-size", "8", "--grad-accum", "2", "--steps", "3",
          "--eval-every", "2", "--lr", "3e-3", "--seed", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny --init model, preference pairs (32 for training, 8 held out) and a text corpus."""
    directory = tmp_path_factory.mktemp("inputs")
    init = str(directory / "init.pt")
    save_checkpoint(init, tiny_model(), None, 0, None)
    corpus = directory / "corpus.txt"
    corpus.write_text("the film was great and the cast was awful, or so they said. " * 100)
    prefs = write_preferences(directory / "prefs.jsonl")
    pairs = ["--data", prefs, "--max-prompt-length", "24", "--heldout-fraction", "0.2"]
    torch.manual_seed(0)
    llama = save_hf(transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA_SHAPE)),
                    directory / "llama")
    return {"dpo": ["--init", init, *pairs], "sft": ["--init", init, *pairs, "--lora-rank", "2"],
            "pretrain": ["--init", init, "--data", str(corpus), "--heldout-fraction", "0.2"],
            "dpo-llama": ["--init", llama, *pairs]}


def torchrun(argv, nproc=2):
    """`python -m torch.distributed.run --standalone --nproc_per_node NPROC train.py ARGV` (a free
    port)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per process on a small machine
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", str(nproc), "train.py", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True,
                          timeout=HANG_GUARD_SECONDS)


def assert_same_run(a, b):
    """Equal metrics.jsonl (every number within 1e-6) and final weights in ckpt.pt (within 1e-6)."""
    rows_a, rows_b = read_metrics(a), read_metrics(b)
    assert ([(r["split"], r["step"], sorted(r)) for r in rows_a]
            == [(r["split"], r["step"], sorted(r)) for r in rows_b])
    for row_a, row_b in zip(rows_a, rows_b):
        numbers = [k for k in row_a if k != "split"]
        torch.testing.assert_close(torch.tensor([row_b[k] for k in numbers], dtype=torch.float64),
                                   torch.tensor([row_a[k] for k in numbers], dtype=torch.float64),
                                   rtol=1e-6, atol=1e-6,
                                   msg=lambda m: f"step {row_a['step']} {numbers}: {m}")
    weights_a, weights_b = load_checkpoint(str(a))["model"], load_checkpoint(str(b))["model"]
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        torch.testing.assert_close(weights_b[name], weights_a[name], rtol=1e-6, atol=1e-6, msg=name)


def files_per_directory(root):
    return {os.path.relpath(d, root): sorted(names) for d, _, names in os.walk(root)}


@pytest.mark.parametrize("run", ["dpo", "sft", "pretrain", "dpo-llama"])
def test_two_processes_train_as_one(tmp_path, inputs, run, capsys):
    """The same global batch in 1 and 2 processes: the same per-step metrics and weights; rank 0
    alone writes. dpo-llama: DPO on a tiny transformers Llama checkpoint."""
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    command = run.split("-")[0]
    assert train.main([command, *inputs[run], *COMMON, "--out-dir", one]) == 0
    printed_by_one = capsys.readouterr().out
    launched = torchrun([command, *inputs[run], *COMMON, "--out-dir", two])
    assert launched.returncode == 0, launched.stderr[-3000:]

    assert_same_run(one, two)
    assert files_per_directory(two) == files_per_directory(one)  # no file from rank 1
    # e.g. the checkpoint's size: it holds each rank's generator states
    numbers = re.compile(r"\d+(\.\d+)?")
    # rank 0's lines only, once
    assert numbers.sub("N", launched.stdout) == numbers.sub("N", printed_by_one)
    with open(os.path.join(one, "config.json")) as f1, open(os.path.join(two, "config.json")) as f2:
        config_one, config_two = json.load(f1), json.load(f2)
    assert (config_one.pop("world_size"), config_two.pop("world_size")) == (1, 2)
    assert {**config_one, "out_dir": None} == {**config_two, "out_dir": None}


def test_resume_across_process_counts(tmp_path, inputs):
    """2 processes for 2 steps, then --resume in 1 process to step 3: the 3 steps of 1 uninterrupted
    process."""
    uninterrupted, resumed = str(tmp_path / "uninterrupted"), str(tmp_path / "resumed")
    assert train.main(["dpo", *inputs["dpo"], *COMMON, "--out-dir", uninterrupted]) == 0
    launched = torchrun(["dpo", *inputs["dpo"], *COMMON, "--steps", "2", "--out-dir", resumed])
    assert launched.returncode == 0, launched.stderr[-3000:]
    state = load_checkpoint(resumed)
    # each rank's generators, for its own resume
    assert state["step"] == 2 and len(state["rng_by_rank"]) == 2
    assert train.main(["dpo", *inputs["dpo"], *COMMON, "--resume", "--out-dir", resumed]) == 0
    assert_same_run(uninterrupted, resumed)


def test_batch_size_must_be_shared_evenly(tmp_path, inputs):
    """--batch-size 6 cannot be split into 2 processes x --grad-accum 2: one line per process,
    nothing written."""
    with pytest.raises(ConfigError,
                       match=r"--batch-size 6: must be divisible by 2 processes x --grad-accum 2"):
        check_values(TrainConfig(batch_size=6, grad_accum=2, world_size=2))
    # one process: 3 per micro-batch
    check_values(TrainConfig(batch_size=6, grad_accum=2, world_size=1))
    out = tmp_path / "run"
    launched = torchrun(["dpo", *inputs["dpo"], *COMMON, "--batch-size", "6", "--out-dir",
                         str(out)])
    assert launched.returncode != 0
    ours = [line for line in launched.stderr.splitlines() if line.startswith("error: ")]
    message = "--batch-size 6: must be divisible by 2 processes x --grad-accum 2"
    assert sorted(ours) == sorted([f"error: {message}: each process takes an equal "
                                   "share of every step",
                                   f"error: rank 1: {message}: each process takes an equal "
                                   "share of every step"])
    assert not out.exists()


def test_each_torchrun_process_gets_its_share_of_the_cores(monkeypatch):
    """--threads 0 under torchrun: the node's cores divided among its processes (at least one);
    a single process keeps torch's default (0)."""
    from plumbing import data_parallel

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    for processes, threads in (("1", 0), ("2", 8), ("3", 5), ("32", 1)):
        monkeypatch.setenv("LOCAL_WORLD_SIZE", processes)
        assert data_parallel.cpu_threads_per_process() == threads, processes
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert data_parallel.cpu_threads_per_process() == 0
