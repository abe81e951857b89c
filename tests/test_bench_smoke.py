"""Smoke tests of bench/bench_logprobs.py: it runs, prints its table and writes its results (no timing asserted).

The second test compiles the Triton kernels for an H100 (sm_90) without a GPU and checks what the compiler made
of them: no register spills, and 16-byte vector loads/stores of the logits when V is a multiple of 8.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "bench_logprobs.py"


def run_script(args, tmp_path, interpret: bool):
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path / "triton-cache"))
    env.pop("TRITON_INTERPRET", None)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_tiny_benchmark_runs_and_writes_results(tmp_path):
    out_json, out_md = tmp_path / "results" / "tiny.json", tmp_path / "results" / "tiny.md"
    stdout = run_script(["--tiny", "--out", str(out_json), "--out", str(out_md)], tmp_path, interpret=True)
    assert "| V | method | fwd ms |" in stdout
    result = json.loads(out_json.read_text())
    rows = {row["method"]: row for row in result["rows"]}
    assert set(rows) == {"naive eager", "naive compiled", "liger CE (none)", "ours torch", "ours triton",
                         "ours triton in-place"}
    for name in ("naive eager", "ours torch", "ours triton", "ours triton in-place"):
        assert rows[name]["fwd_ms"] > 0 and rows[name]["fwdbwd_ms"] > 0
        assert rows[name]["max_abs_diff_vs_ours"] < 1e-3, (name, rows[name]["max_abs_diff_vs_ours"])
    assert rows["naive compiled"]["note"].startswith("skipped")
    assert result["environment"]["torch"] and result["config"]["device"] == "cpu"
    assert "| ours triton |" in out_md.read_text()


def test_kernels_compile_for_h100_without_spills(tmp_path):
    out_json = tmp_path / "aot.json"
    stdout = run_script(["--aot", "sm_90", "--vocab", "128256", "50257", "--out", str(out_json)], tmp_path,
                        interpret=False)
    assert "| bf16 | 128256 | fwd | 8192 | 16 |" in stdout
    rows = json.loads(out_json.read_text())["rows"]
    assert len(rows) == 8  # {bf16, fp32} x {128256, 50257} x {fwd, bwd}
    for row in rows:
        assert row["stack_bytes"] == 0, row           # no spills
        assert row["registers"] <= 128, row
        if row["V"] == 128256:                         # rows 16-byte aligned: vectorised logits traffic
            assert "ld.global.v4.b32" in row["global_loads"], row
            if row["kernel"] == "bwd":
                assert row["global_stores"] == ["st.global.v4.b32"], row
