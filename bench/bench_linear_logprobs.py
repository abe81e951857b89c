"""Benchmark: log-probs from hidden states (logprob_kernels.linear_sequence_logprobs) against
materialising the logits.

Two parts (FLOP and byte counts: the docstring of logprob_kernels/linear_logprobs.py):
(a) CPU memory. Peak memory of one forward + backward, naive (logits = hidden @ weight.T, fp32
    log_softmax, gather) against the chunked torch path, at GPT-2 shapes (N = 2048 positions, d =
    768, V = 50257, fp32). Each method runs in a fresh subprocess (this script with --child): after
    a tiny warm-up call (one-time library set-up) and the setup of the inputs (no temporaries),
    extra = peak resident set size after forward + backward (VmHWM; see bench/memory.py) minus the
    resident set size then. Both include the gradients (hidden and weight), reported apart as
    "gradients alone". The chunked path's figure includes 0.1-0.16 GB of freed chunks that glibc's
    malloc keeps resident (its mmap threshold adapts up to 32 MiB, the chunk's size);
    MALLOC_MMAP_THRESHOLD_=1048576 in the environment removes that.
(b) CUDA time (skipped without CUDA). Forward, backward and forward + backward times (CUDA events,
    warm-up, median of --repeats runs; backward is timed alone after an untimed forward) and peak
    extra memory of forward + backward, gradients included (torch.cuda.max_memory_allocated minus
    what was allocated before, inputs allocated), at N = 8192, d = 4096, V = 128256 in bf16
    (Llama-3-8B's head) for: naive eager; ours torch (chunked); ours triton; Liger-Kernel's fused
    linear cross-entropy and Cut Cross-Entropy (impl="cce_exact") when importable, both with
    reduction="sum" (a uniform upstream gradient, the case they are built for); and four cuBLAS
    GEMMs of the same shapes (logits; then recomputed logits, dz @ weight, dz.T @ hidden), the floor
    for any method that recomputes the logits. Forward TFLOP/s count 2 N V d and are given as a
    share of --peak-tflops (989: H100 SXM dense bf16); fwd+bwd is given as a multiple of the four
    GEMMs' time. Every position is unmasked (B = 8 rows); "rel diff" compares the total log-prob to
    naive eager.

--quick runs both parts at tiny CPU shapes in seconds (the timing part then uses time.perf_counter
and runs the Triton kernels in the CPU interpreter): a smoke test of the script, not a measurement.

--aot sm_90 compiles the four kernels for the H100 without a GPU and reports registers, spills and
load widths at the heads of SmolLM2-135M, Qwen2.5-0.5B and Llama-3.2-1B (or --aot-heads D V ...); it
exits with status 3 where this Triton cannot compile for CUDA.

    python bench/bench_linear_logprobs.py --aot sm_90 [--aot-heads 576 49152] [--json FILE]
    python bench/bench_linear_logprobs.py [--quick] [--json FILE] [--part all|cpu-memory|cuda-time]
        [--cpu-shape 2048 768 50257] [--cuda-shape 8192 4096 128256] [--cuda-dtype bf16]
        [--peak-tflops 989]
"""

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing the project

from bench.memory import rss_bytes  # noqa: E402

# logprob_kernels (and through it triton) is imported inside the functions that use it: main() first
# decides whether Triton runs on the GPU or in its CPU interpreter, and TRITON_INTERPRET must be set
# before triton is imported.
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
QUICK_CPU_SHAPE = (64, 32, 1000)    # N, d, V for --quick
# (d, V) of the heads people fine-tune on one GPU: SmolLM2-135M, Qwen2.5-0.5B, Llama-3.2-1B
AOT_HEADS = ((576, 49152), (896, 151936), (2048, 128256))
AOT_POSITIONS = 8192  # kept positions N of the compiled launch (only the grid depends on N)
H100_SMS = 132  # streaming multiprocessors of an H100 SXM: the forward's vocabulary splits use it
QUICK_TIME_SHAPE = (32, 32, 200)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny CPU shapes, seconds; a smoke test")
    ap.add_argument("--part", choices=["all", "cpu-memory", "cuda-time"], default="all")
    ap.add_argument("--cpu-shape", type=int, nargs=3, default=[2048, 768, 50257],
                    metavar=("N", "D", "V"))
    ap.add_argument("--cuda-shape", type=int, nargs=3, default=[8192, 4096, 128256],
                    metavar=("N", "D", "V"))
    ap.add_argument("--cuda-dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="dense peak of the GPU in --cuda-dtype")
    ap.add_argument("--repeats", type=int, default=10,
                    help="timed runs (median) after --warmup runs")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--aot", metavar="ARCH", default=None,
                    help="compile the fused kernels for ARCH (e.g. sm_90) without a GPU and report "
                         "registers, spills and load widths at --aot-heads (exit 3 where this "
                         "Triton cannot)")
    ap.add_argument("--aot-heads", type=int, nargs="+", default=None, metavar="D_V",
                    help="pairs of hidden size and vocabulary, e.g. 576 49152 896 151936")
    ap.add_argument("--json", metavar="PATH", default=None,
                    help="write all results to this JSON file")
    ap.add_argument("--child", nargs=5, metavar=("METHOD", "N", "D", "V", "DTYPE"), default=None,
                    # internal: one memory measurement in this fresh process
                    help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def make_inputs(n: int, d: int, v: int, dtype: torch.dtype, device: str, rows: int = 1):
    """hidden (rows, n // rows, d), weight (V, d) giving unit-size logits, labels, an all-ones mask;
    made without temporaries, so that the resident set size after setup is also its peak."""
    gen = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(rows, n // rows, d, generator=gen, device=device,
                         dtype=dtype).requires_grad_(True)
    weight = torch.randn(v, d, generator=gen, device=device, dtype=dtype)
    # in place: the setup's peak is its resident size
    weight.mul_(1 / math.sqrt(d)).requires_grad_(True)
    labels = torch.randint(0, v, (rows, n // rows), generator=gen, device=device)
    mask = torch.ones(rows, n // rows, dtype=torch.bool, device=device)
    return hidden, weight, labels, mask


# ----------------------------------------------------------------------------- (a) CPU memory

def child_memory(method: str, n: int, d: int, v: int, dtype: str) -> dict:
    """One forward + backward of `method` in this (fresh) process: extra peak RSS over the set-up
    inputs."""
    import logprob_kernels
    fn = {"naive": logprob_kernels.naive_linear_sequence_logprobs,
          "ours torch": lambda
          *a: logprob_kernels.linear_sequence_logprobs(*a, impl="torch")}[method]
    # one-time library and thread set-up
    fn(*make_inputs(8, d, 16, DTYPES[dtype], "cpu")).sum().backward()
    inputs = make_inputs(n, d, v, DTYPES[dtype], "cpu")
    base = rss_bytes(peak=False)
    start = time.perf_counter()
    out = fn(*inputs)
    out.sum().backward()
    seconds = time.perf_counter() - start
    return {"method": method, "extra_bytes": rss_bytes(peak=True) - base, "seconds": seconds,
            "total_logp": out.sum().item()}


def cpu_memory(n: int, d: int, v: int, dtype: str = "fp32") -> dict:
    """Run child_memory for the naive and the chunked path, each in a fresh subprocess;
    summarise."""
    rows = []
    for method in ("naive", "ours torch"):
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", method,
                               str(n), str(d), str(v), dtype], capture_output=True, text=True)
        # say why: the child's own error (its last lines), not just its exit status
        if proc.returncode != 0:
            raise RuntimeError(f"--child {method!r} exited with status "
                               f"{proc.returncode}:\n{proc.stderr[-2000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    size = DTYPES[dtype].itemsize
    naive, chunked = rows
    return {"N": n, "d": d, "V": v, "dtype": dtype, "rows": rows,
            "logits_bytes": n * v * size, "gradient_bytes": (n * d + v * d) * size,
            "ratio_naive_over_chunked": naive["extra_bytes"] / max(1, chunked["extra_bytes"])}


def memory_table(mem: dict) -> str:
    lines = [f"CPU peak memory of forward + backward, N = {mem['N']}, d = {mem['d']}, V = "
             f"{mem['V']}, {mem['dtype']} (one (N, V) tensor = {mem['logits_bytes'] / 1e6:.0f} MB)",
             "",
             "| method | peak extra MB | x (N, V) tensor | fwd+bwd s |", "|---|---|---|---|"]
    for r in mem["rows"]:
        lines.append(f"| {r['method']} | {r['extra_bytes'] / 1e6:.0f} | "
                     f"{r['extra_bytes'] / mem['logits_bytes']:.2f} | {r['seconds']:.2f} |")
    lines.append(f"\nnaive / chunked: {mem['ratio_naive_over_chunked']:.1f}x; the gradients alone "
                 f"(hidden and weight): {mem['gradient_bytes'] / 1e6:.0f} MB")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- (b) time

def methods(cuda: bool):
    """name -> (fn(hidden, weight, labels, mask) -> tensor to backward with ones, or None, note)."""
    import logprob_kernels
    out = {"naive eager": (logprob_kernels.naive_linear_sequence_logprobs, ""),
           "ours torch": (lambda *a: logprob_kernels.linear_sequence_logprobs(*a, impl="torch"),
                          ""),
           "ours triton": (lambda *a: logprob_kernels.linear_sequence_logprobs(*a, impl="triton"),
                           "")}
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
        flce = LigerFusedLinearCrossEntropyLoss(reduction="sum")

        def liger(hidden, weight, labels, mask):
            loss = flce(weight, hidden.flatten(0, 1), torch.where(mask, labels, -100).flatten())
            return -(loss[0] if isinstance(loss, tuple) else loss)       # total log-prob
        out["liger FLCE (sum)"] = (liger, "") if cuda else (None, "skipped: needs CUDA")
    except ImportError:
        out["liger FLCE (sum)"] = (None, "skipped: liger_kernel not installed")
    try:
        from cut_cross_entropy import linear_cross_entropy

        def cce(hidden, weight, labels, mask):
            return -linear_cross_entropy(hidden.flatten(0, 1), weight,
                                         torch.where(mask, labels, -100).flatten(),
                                         reduction="sum", impl="cce_exact")
        out["CCE exact (sum)"] = (cce, "") if cuda else (None, "skipped: needs CUDA")
    except ImportError:
        out["CCE exact (sum)"] = (None, "skipped: cut_cross_entropy not installed")
    return out


def median_ms(fn, prepare, cuda: bool, warmup: int, repeats: int) -> float:
    """Median milliseconds of fn(prepare()) over `repeats` runs after `warmup`; prepare() is not
    timed."""
    times = []
    for i in range(warmup + repeats):
        state = prepare()
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn(state)
            end.record()
            torch.cuda.synchronize()
            ms = start.elapsed_time(end)
        else:
            t0 = time.perf_counter()
            fn(state)
            ms = (time.perf_counter() - t0) * 1e3
        if i >= warmup:
            times.append(ms)
    return statistics.median(times)


def time_method(fn, inputs, cuda: bool, warmup: int, repeats: int) -> dict:
    hidden, weight = inputs[:2]

    def fresh():
        hidden.grad = weight.grad = None

    def forward(_=None):
        fresh()
        return fn(*inputs)

    def backward(out):
        out.backward(torch.ones_like(out))

    row = {"fwd_ms": median_ms(lambda _: fn(*inputs), fresh, cuda, warmup, repeats),
           "bwd_ms": median_ms(backward, forward, cuda, warmup, repeats),
           "fwdbwd_ms": median_ms(lambda _: backward(fn(*inputs)), fresh, cuda, warmup, repeats)}
    fresh()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        backward(fn(*inputs))
        torch.cuda.synchronize()
        row["peak_extra_bytes"] = torch.cuda.max_memory_allocated() - base
        fresh()
    return row


def time_gemms(inputs, cuda: bool, warmup: int, repeats: int) -> dict:
    """The four GEMMs of a forward + backward that recomputes the logits, on the same shapes and
    dtype."""
    hidden = inputs[0].detach().flatten(0, 1)                                             # (N, d)
    weight = inputs[1].detach()                                                           # (V, d)
    # (N, V)
    dz = torch.randn(hidden.shape[0], weight.shape[0], device=hidden.device, dtype=hidden.dtype)

    def bwd(_):
        hidden @ weight.T                     # (N, V) recomputed logits
        dz @ weight                           # (N, d) dhidden
        dz.T @ hidden                         # (V, d) dweight

    fwd_ms = median_ms(lambda _: hidden @ weight.T, lambda: None, cuda, warmup, repeats)
    bwd_ms = median_ms(bwd, lambda: None, cuda, warmup, repeats)
    return {"fwd_ms": fwd_ms, "bwd_ms": bwd_ms, "fwdbwd_ms": fwd_ms + bwd_ms,
            "note": "sum of fwd and bwd"}


def time_all(n: int, d: int, v: int, dtype: str, cuda: bool, args) -> dict:
    device = "cuda" if cuda else "cpu"
    inputs = make_inputs(n, d, v, DTYPES[dtype], device, rows=8 if n % 8 == 0 else 1)
    with torch.no_grad():
        import logprob_kernels
        reference = logprob_kernels.naive_linear_sequence_logprobs(*inputs).sum().item()
    flops_fwd = 2 * n * v * d
    rows = []
    for name, (fn, note) in methods(cuda).items():
        row = {"method": name, "note": note}
        if fn is not None:
            try:
                with torch.no_grad():
                    total = fn(*inputs).sum().item()
                row["rel_diff_vs_naive"] = abs(total - reference) / abs(reference)
                row.update(time_method(fn, inputs, cuda, args.warmup, args.repeats))
            except Exception as e:  # noqa: BLE001  a failing method is a row note, not a crash
                row["note"] = f"failed: {type(e).__name__}: {e}"[:200]
        rows.append(row)
    rows.append({"method": "4 GEMMs (cuBLAS)",
                 **time_gemms(inputs, cuda, args.warmup, args.repeats)})
    gemms_ms = rows[-1]["fwdbwd_ms"]
    for row in rows:
        if "fwd_ms" in row:
            row["fwd_tflops"] = flops_fwd / (row["fwd_ms"] * 1e-3) / 1e12
            row["fwd_share_of_peak"] = row["fwd_tflops"] / args.peak_tflops if cuda else None
            row["fwdbwd_over_4_gemms"] = row["fwdbwd_ms"] / gemms_ms
    return {"N": n, "d": d, "V": v, "dtype": dtype, "device": device,
            "peak_tflops": args.peak_tflops,
            "timer": "CUDA events" if cuda else "time.perf_counter (CPU smoke run)",
            "repeats": args.repeats, "warmup": args.warmup, "rows": rows}


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def time_table(res: dict) -> str:
    lines = [f"Time on {res['device']}, N = {res['N']}, d = {res['d']}, V = {res['V']}, "
             f"{res['dtype']} ({res['timer']}, median of {res['repeats']})", "",
             "| method | fwd ms | bwd ms | fwd+bwd ms | fwd TFLOP/s | fwd % of peak | fwd+bwd / 4 "
             "GEMMs | peak extra GB | rel diff | note |", "|" + "---|" * 10]
    for r in res["rows"]:
        peak = r.get("peak_extra_bytes")
        lines.append(f"| {r['method']} | {fmt(r.get('fwd_ms'), '.2f')} | "
                     f"{fmt(r.get('bwd_ms'), '.2f')} | {fmt(r.get('fwdbwd_ms'), '.2f')} | "
                     f"{fmt(r.get('fwd_tflops'), '.2f')} | "
                     f"{fmt(r.get('fwd_share_of_peak'), '.0%')} | "
                     f"{fmt(r.get('fwdbwd_over_4_gemms'), '.2f')} | "
                     f"{fmt(None if peak is None else peak / 1e9, '.2f')} | "
                     f"{fmt(r.get('rel_diff_vs_naive'), '.1e')} | {r.get('note', '')} |")
    return "\n".join(lines)


def environment(cuda: bool) -> dict:
    import triton
    return {"python": platform.python_version(), "torch": torch.__version__,
            "triton": triton.__version__,
            "device": torch.cuda.get_device_name() if cuda else f"CPU ({platform.machine()})",
            "cpu_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


# ----------------------------------------------------------------------------- compile-only report

def aot_report(arch: str, heads):
    """Compile the four kernels of logprob_kernels/linear_logprobs_triton.py for `arch` at each
    (d, V) of `heads`, in bf16 and fp32, with the launch configuration the runtime picks for
    AOT_POSITIONS contiguous kept positions on an H100; rows of registers, stack bytes (spills) and
    global load/store instructions (bench/aot_compile.py). Raises AOTUnavailable where this Triton
    cannot compile for CUDA."""
    from bench.aot_compile import Compiler
    from logprob_kernels import linear_logprobs_triton as kernels

    compiler = Compiler(arch)
    N = AOT_POSITIONS
    rows = []
    for dtype, torch_dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        cfg = kernels.launch_config(torch_dtype)
        tiles = dict(BLOCK_N=cfg.block_n, BLOCK_V=cfg.block_v, BLOCK_D=cfg.block_d, UPCAST=False,
                     PRECISION="tf32" if dtype == "bf16" else "ieee")
        for d, V in heads:
            n_blocks, v_tiles = -(-N // cfg.block_n), -(-V // cfg.block_v)
            splits = min(-(-2 * H100_SMS // n_blocks), v_tiles)  # as TritonLinearTokenLogprobs
            tiles_per_split = -(-v_tiles // splits)
            weight, hidden = dict(stride_wv=d, stride_wd=1), dict(stride_hn=d, stride_hd=1)
            launches = {
                "lse_fwd": (kernels._lse_fwd_kernel, dict(
                    h_ptr=f"*{dtype}", w_ptr=f"*{dtype}", labels_ptr="*i64", m_ptr="*fp32",
                    s_ptr="*fp32", target_ptr="*fp32", N=N, V=V, D=d, S=splits, **hidden,
                    **weight), {"SPLIT_V": tiles_per_split * cfg.block_v, **tiles}),
                "dlogits": (kernels._dlogits_kernel, dict(
                    h_ptr=f"*{dtype}", w_ptr=f"*{dtype}", labels_ptr="*i64", lse_ptr="*fp32",
                    g_ptr="*fp32", dz_ptr=f"*{dtype}", N=N, V=V, D=d, **hidden, **weight),
                    {"ROUND_BY_HAND": False, **tiles}),
                "dhidden": (kernels._dhidden_kernel, dict(
                    dz_ptr=f"*{dtype}", w_ptr=f"*{dtype}", dh_ptr=f"*{dtype}", N=N, V=V, D=d,
                    **weight), {"ROUND_BY_HAND": False, **tiles}),
                "dweight": (kernels._dweight_kernel, dict(
                    dz_ptr=f"*{dtype}", h_ptr=f"*{dtype}", dw_ptr="*fp32", N=N, V=V, D=d,
                    **hidden), {"ACCUMULATE": True, **tiles}),
            }
            for name, (fn, args, constexprs) in launches.items():
                compiled = compiler.compile(fn, args, constexprs, cfg.num_warps, cfg.num_stages)
                rows.append({"arch": arch, "dtype": dtype, "d": d, "V": V, "kernel": name,
                             "tile": f"{cfg.block_n}x{cfg.block_v}x{cfg.block_d}",
                             "num_warps": cfg.num_warps, "num_stages": cfg.num_stages,
                             **compiler.resources(compiled)})
    return rows


def aot_table(rows):
    """The compile-only report as a Markdown table."""
    lines = ["| dtype | d | V | kernel | tile (n x v x d) | warps | stages | registers | "
             "stack bytes | global loads | global stores | async copies to shared |",
             "|" + "---|" * 12]
    for r in rows:
        lines.append(f"| {r['dtype']} | {r['d']} | {r['V']} | {r['kernel']} | {r['tile']} | "
                     f"{r['num_warps']} | {r['num_stages']} | {r['registers']} | "
                     f"{r['stack_bytes']} | {' '.join(r['global_loads'])} | "
                     f"{' '.join(r['global_stores'])} | {' '.join(r['async_copies'])} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        method, n, d, v, dtype = args.child
        print(json.dumps(child_memory(method, int(n), int(d), int(v), dtype)))
        return
    if args.aot:
        from bench.aot_compile import EXIT_AOT_UNAVAILABLE, AOTUnavailable
        heads = AOT_HEADS
        if args.aot_heads:
            if len(args.aot_heads) % 2:
                sys.exit("error: --aot-heads takes pairs: D V [D V ...]")
            heads = tuple(zip(args.aot_heads[::2], args.aot_heads[1::2]))
        try:
            rows = aot_report(args.aot, heads)
        except AOTUnavailable as e:
            print(f"aot unavailable: {e}", file=sys.stderr)
            sys.exit(EXIT_AOT_UNAVAILABLE)
        print(aot_table(rows))
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({"environment": environment(False),
                                                   "aot": rows}, indent=2) + "\n")
            print(f"wrote {args.json}")
        return
    cuda = torch.cuda.is_available() and not args.quick
    if not cuda:
        # the CPU interpreter; must precede the first import of triton
        os.environ["TRITON_INTERPRET"] = "1"
    result = {"environment": environment(cuda)}
    if args.part in ("all", "cpu-memory"):
        result["cpu_memory"] = cpu_memory(*(QUICK_CPU_SHAPE if args.quick else args.cpu_shape),
                                          dtype="fp32")
        print(memory_table(result["cpu_memory"]) + "\n")
    if args.part in ("all", "cuda-time"):
        if cuda or args.quick:
            n, d, v = QUICK_TIME_SHAPE if args.quick else args.cuda_shape
            result["time"] = time_all(n, d, v, "fp32" if args.quick else args.cuda_dtype, cuda,
                                      args)
            print(time_table(result["time"]))
        else:
            print("time: skipped (no CUDA device; --quick runs a tiny CPU version)")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
