"""Smoke tests of bench/bench_linear_logprobs.py: importable without side effects, and --quick runs,
prints its tables and writes its JSON (tiny CPU shapes; no number is asserted beyond its type and
the agreement of methods).
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hang_guard import HANG_GUARD_SECONDS

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "bench_linear_logprobs.py"


def test_import_has_no_side_effects(monkeypatch):
    # Importing must not parse sys.argv (here an argument argparse rejects), select the Triton
    # interpreter or import triton: main() does all of that.
    monkeypatch.setattr(sys, "argv", ["pytest", "--definitely-not-a-flag"])
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    had_triton = "triton" in sys.modules
    spec = importlib.util.spec_from_file_location("bench_linear_logprobs_under_test", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts the repository on sys.path
    try:
        spec.loader.exec_module(bench)
    except SystemExit as e:
        pytest.fail(f"importing the script exited ({e.code}): it parses sys.argv at import time")
    assert "TRITON_INTERPRET" not in os.environ
    assert had_triton or "triton" not in sys.modules
    with pytest.raises(SystemExit):  # the arguments are parsed by main(), from sys.argv by default
        bench.main()


def test_quick_run_prints_tables_and_writes_json(tmp_path):
    out_json = tmp_path / "results" / "quick.json"
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path / "triton-cache"))
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--repeats", "2", "--warmup",
                           "1", "--json", str(out_json)], cwd=tmp_path, env=env,
                          capture_output=True, text=True,
                          timeout=HANG_GUARD_SECONDS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ("| method | peak extra MB |" in proc.stdout
            and "| method | fwd ms | bwd ms |" in proc.stdout)
    result = json.loads(out_json.read_text())
    mem = result["cpu_memory"]
    assert [r["method"] for r in mem["rows"]] == ["naive", "ours torch"]
    assert all(isinstance(r["extra_bytes"], int) and r["seconds"] > 0 for r in mem["rows"])
    naive_logp, chunked_logp = (r["total_logp"] for r in mem["rows"])
    assert abs(naive_logp - chunked_logp) < 1e-3 * abs(naive_logp)
    assert mem["gradient_bytes"] == (64 * 32 + 1000 * 32) * 4
    rows = {r["method"]: r for r in result["time"]["rows"]}
    assert set(rows) == {"naive eager", "ours torch", "ours triton", "liger FLCE (sum)",
                         "CCE exact (sum)", "4 GEMMs (cuBLAS)"}
    for name in ("naive eager", "ours torch", "ours triton"):
        assert all(rows[name][key] > 0 for key in ("fwd_ms", "bwd_ms", "fwdbwd_ms")), name
        assert rows[name]["rel_diff_vs_naive"] < 1e-5, (name, rows[name])
    assert rows["liger FLCE (sum)"]["note"].startswith("skipped")  # no CUDA in --quick
    assert result["environment"]["torch"] and result["time"]["device"] == "cpu"


def test_fused_linear_kernels_compile_for_h100_without_spills(tmp_path):
    """--aot sm_90 at SmolLM2-135M's head (d 576, V 49152): the four kernels compile without
    spills, within the register file, and load their tl.dot operands with 16-byte async copies."""
    out_json = tmp_path / "aot.json"
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path / "triton-cache"))
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--aot", "sm_90", "--aot-heads", "576",
                           "49152", "--json", str(out_json)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=HANG_GUARD_SECONDS)
    if proc.returncode == 3:  # aot_compile.EXIT_AOT_UNAVAILABLE
        pytest.skip("this Triton cannot compile for sm_90 ahead of time: "
                    f"{proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out_json.read_text())["aot"]
    assert [(r["dtype"], r["kernel"]) for r in rows] == [
        (dtype, kernel) for dtype in ("bf16", "fp32")
        for kernel in ("lse_fwd", "dlogits", "dhidden", "dweight")]
    for row in rows:
        assert row["stack_bytes"] == 0, row                   # no spills
        assert row["registers"] <= 255, row                   # the hardware limit per thread
        assert "cp.async.cg.shared.global 16B" in row["async_copies"], row
    assert "| bf16 | 576 | 49152 | lse_fwd |" in proc.stdout
