"""Smoke tests of bench/bench_logprobs.py: it runs, prints its table and writes its results (no
timing asserted).

The AOT test compiles the Triton kernels for an H100 (sm_90) without a GPU and checks what the
compiler made of them, in terms that survive a change of Triton's code generation: no register
spills, registers within the hardware limit, and vector loads/stores of the logits when rows are
16-byte aligned. It is skipped where this Triton cannot compile for CUDA (the script then exits with
EXIT_AOT_UNAVAILABLE).
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hang_guard import HANG_GUARD_SECONDS

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "bench_logprobs.py"
# bench_logprobs.EXIT_AOT_UNAVAILABLE (checked in test_import_has_no_side_effects)
EXIT_AOT_UNAVAILABLE = 3


def run_script(args, tmp_path, interpret: bool):
    """Run the script in a fresh process; returns the CompletedProcess (stdout, stderr,
    returncode)."""
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path / "triton-cache"))
    env.pop("TRITON_INTERPRET", None)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=tmp_path, env=env,
                          capture_output=True,
                          text=True, timeout=HANG_GUARD_SECONDS)


def test_import_has_no_side_effects(monkeypatch):
    # Importing the script must not parse sys.argv (here, arguments argparse would reject), select
    # the Triton interpreter, or import triton: main() does all of that.
    monkeypatch.setattr(sys, "argv", ["pytest", "--definitely-not-a-flag"])
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    had_triton = "triton" in sys.modules
    spec = importlib.util.spec_from_file_location("bench_logprobs_under_test", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts the repository on sys.path
    try:
        spec.loader.exec_module(bench)
    except SystemExit as e:
        pytest.fail(f"importing the script exited ({e.code}): it parses sys.argv at import time")
    assert not hasattr(bench, "ARGS")
    assert "TRITON_INTERPRET" not in os.environ
    assert had_triton or "triton" not in sys.modules
    assert bench.EXIT_AOT_UNAVAILABLE == EXIT_AOT_UNAVAILABLE
    with pytest.raises(SystemExit):  # the arguments are parsed by main(), from sys.argv by default
        bench.main()


def test_tiny_benchmark_runs_and_writes_results(tmp_path):
    out_json, out_md = tmp_path / "results" / "tiny.json", tmp_path / "results" / "tiny.md"
    proc = run_script(["--tiny", "--out", str(out_json), "--out", str(out_md)], tmp_path,
                      interpret=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| V | method | fwd ms |" in proc.stdout
    result = json.loads(out_json.read_text())
    rows = {row["method"]: row for row in result["rows"]}
    assert set(rows) == {"naive eager", "naive compiled", "liger CE (none)", "ours torch",
                         "ours triton", "ours triton in-place"}
    for name in ("naive eager", "ours torch", "ours triton", "ours triton in-place"):
        assert rows[name]["fwd_ms"] > 0 and rows[name]["fwdbwd_ms"] > 0
        assert rows[name]["max_abs_diff_vs_ours"] < 1e-3, (name, rows[name]["max_abs_diff_vs_ours"])
    assert rows["naive compiled"]["note"].startswith("skipped")
    assert result["environment"]["torch"] and result["config"]["device"] == "cpu"
    assert "| ours triton |" in out_md.read_text()


def is_vector(opcode):
    """A 64- or 128-bit global access of any element type: ld.global.v4.b32,
    st.global.L1::no_allocate.v2.f32..."""
    return re.fullmatch(r"(ld|st)\.global(\.[\w:]+)*\.v[24]\.\w+", opcode) is not None


def test_kernels_compile_for_h100_without_spills(tmp_path):
    out_json = tmp_path / "aot.json"
    proc = run_script(["--aot", "sm_90", "--vocab", "128256", "50257", "--out", str(out_json)],
                      tmp_path,
                      interpret=False)
    if proc.returncode == EXIT_AOT_UNAVAILABLE:
        pytest.skip("this Triton cannot compile for sm_90 ahead of time: "
                    f"{proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| bf16 | 128256 | fwd | 8192 | 16 |" in proc.stdout
    rows = json.loads(out_json.read_text())["rows"]
    assert len(rows) == 8  # {bf16, fp32} x {128256, 50257} x {fwd, bwd}
    for row in rows:
        assert row["stack_bytes"] == 0, row           # no spills
        assert row["registers"] <= 255, row           # the hardware limit per thread
        # Vector access needs rows known to start 16-byte aligned: Triton specialises integer
        # arguments divisible by 16, so only then does the row stride V tell the compiler (V % 8 ==
        # 0 alone does not vectorise).
        if row["V"] % 16 == 0:
            assert any(is_vector(op) for op in row["global_loads"]), row
            # the backward kernel stores nothing but the gradient
            if row["kernel"] == "bwd":
                stores = row["global_stores"]
                assert stores and all(is_vector(op) for op in stores), row


@pytest.mark.slow
def test_gpu_suite_runs_in_its_quick_form(tmp_path):
    """bash bench/gpu_suite.sh --quick OUT: every step runs (on a CPU: interpreter, smoke shapes)
    and the collected report says so; on a GPU machine the same script without --quick writes
    bench/results/<gpu>.{json,md}. Its benchmarks' own outputs are checked here too (one run of
    each): bench_lora_memory.py's three variants, and bench_dpo_step.py's three ways of computing
    log pi training the same model to the same loss."""
    suite = SCRIPT.parent / "gpu_suite.sh"
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path / "triton-cache"))
    proc = subprocess.run(["bash", str(suite), "--quick", str(tmp_path / "results")],
                          cwd=SCRIPT.parents[1], env=env,
                          capture_output=True, text=True, timeout=HANG_GUARD_SECONDS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    name = "cpu" if not torch_cuda_available() else None
    if name is None:
        pytest.skip("a CUDA machine names its results after the GPU")
    report = json.loads((tmp_path / "results" / "cpu.json").read_text())
    assert [s["step"] for s in report["steps"]] == ["tests", "logprobs", "linear_logprobs",
                                                    "dpo_step", "lora_memory"]
    # a failing step's own log says why (in the course's student copy: which stub)
    logs = tmp_path / "results" / "cpu.logs"
    for s in report["steps"]:
        log = logs / f"{s['step']}.log"
        assert s["exit_status"] == 0, (s, log.read_text()[-3000:] if log.exists() else "no log")
    assert (report["tests"]["tests"] > 50 and report["tests"]["failures"]
            == report["tests"]["errors"] == 0)
    assert set(report["benchmarks"]) == {"logprobs", "linear_logprobs", "dpo_step", "lora_memory"}
    md = (tmp_path / "results" / "cpu.md").read_text()
    assert "| tests | 0 |" in md and "## One DPO step" in md

    # bench_lora_memory.py --quick: each variant measured in its own process
    assert "| variant | trainable parameters | peak memory MiB |" in (
        logs / "lora_memory.log").read_text()
    rows = {row["variant"]: row
            for row in json.loads((logs / "lora_memory.json").read_text())["rows"]}
    full, lora_row = (rows["full, reference copy (live)"],
                      rows["LoRA, adapters-off reference (live)"])
    assert full["trainable"] == full["parameters"] > lora_row["trainable"] > 0
    assert all(row["peak_bytes"] > 0 and row["step_ms"] > 0 for row in rows.values())
    # bench_dpo_step.py --quick: the three methods agree
    rows = json.loads((logs / "dpo_step.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["naive", "logits kernel", "fused linear"]
    for row in rows:
        assert row["tokens_per_s"] > 0 and row["loss"] == pytest.approx(rows[0]["loss"], abs=1e-5)


def torch_cuda_available():
    import torch
    return torch.cuda.is_available()
