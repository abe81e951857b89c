"""Benchmark: masked per-sequence log-prob sums, forward / backward / forward+backward, time and
memory.

Compares, on the same bf16 logits (N = B*T tokens, V vocabulary entries, every position unmasked):
  naive eager        logprob_kernels.naive.naive_sequence_logprobs (log_softmax in fp32 + gather +
                     mask + sum)
  naive compiled     torch.compile of the same function
  liger CE (none)    Liger-Kernel's LigerCrossEntropyLoss(reduction="none") when liger_kernel is
                     importable; it computes the same logsumexp + gather (its forward also writes
                     the gradient into the
                     logits buffer, so its "fwd" includes gradient work and its "bwd" is a rescale)
  ours torch         logprob_kernels.sequence_logprobs(impl="torch"), the chunked PyTorch path
  ours triton        logprob_kernels.sequence_logprobs(impl="triton"), the fused kernel (+ an
                     in-place-backward row)

Bytes counted (the minimum any method must move, O(N) label/mask/output traffic ignored), s = bytes
  per logit: fwd = 1 * N * V * s (one read), bwd = 2 * N * V * s (read + write the gradient),
  fwd+bwd = 3 * N * V * s.
GB/s = bytes counted / time, and "roof" = that / the device's DRAM bandwidth
(triton.testing.get_dram_gbps, or --peak-gbps). For the naive paths this is an effective rate: they
move several times these bytes. Peak memory is torch.cuda.max_memory_allocated during one fwd+bwd
minus what was allocated before (the inputs); the gradient itself (1x the logits) is part of it for
every method except in-place ones.

On CUDA times come from triton.testing.do_bench (median). Without CUDA (or with --tiny) a tiny
configuration runs with time.perf_counter, the Triton kernel under the CPU interpreter: a smoke test
of the script, not a benchmark. --aot sm_90 needs no GPU: it compiles the kernels for that target
and reports registers, spills and the width of the global loads/stores; where this Triton cannot
compile for CUDA (no CUDA backend, no ptxas or cuobjdump) it prints "aot unavailable: <reason>" to
stderr and exits with status 3 (EXIT_AOT_UNAVAILABLE). Results (device, versions, rows) go to --out
PATH (.json or .md), e.g. bench/results/.

    python bench/bench_logprobs.py [--tiny] [--vocab 32000 50257 128256] [--tokens 8192] [--out FILE
    ...]
    python bench/bench_logprobs.py --aot sm_90 [--vocab 128256]
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing the project

# triton and logprob_kernels are imported inside the functions that use them: main() first decides
# whether Triton runs on the GPU or in its CPU interpreter, and TRITON_INTERPRET must be set before
# triton is first imported.
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
from bench.aot_compile import EXIT_AOT_UNAVAILABLE, AOTUnavailable, Compiler  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true",
                    help="tiny CPU-sized configuration (default without CUDA)")
    ap.add_argument("--vocab", type=int, nargs="+", default=None, help="vocabulary sizes V")
    ap.add_argument("--tokens", type=int, default=None, help="N = B*T tokens (B = 8 rows on CUDA)")
    ap.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    ap.add_argument("--peak-gbps", type=float, default=None,
                    help="DRAM bandwidth for the roofline column")
    ap.add_argument("--no-compile", action="store_true",
                    help="skip torch.compile (default off with --tiny)")
    ap.add_argument("--aot", metavar="ARCH", default=None,
                    help="compile-only report for e.g. sm_90; no GPU")
    ap.add_argument("--out", action="append", default=[],
                    help="write results to FILE.json or FILE.md")
    return ap.parse_args(argv)


# ----------------------------------------------------------------------------- methods

def methods(compile_naive: bool, cuda: bool):
    """name -> (fn(logits, labels, mask) -> (B,), supports a repeated backward, reason if
    unavailable)."""
    import logprob_kernels
    from logprob_kernels.naive import naive_sequence_logprobs
    out = {"naive eager": (naive_sequence_logprobs, True, None)}
    out["naive compiled"] = ((torch.compile(naive_sequence_logprobs), True, None) if compile_naive
                             else (None, False, "skipped (--no-compile / --tiny)"))
    try:
        from liger_kernel.transformers import LigerCrossEntropyLoss
        ce = LigerCrossEntropyLoss(reduction="none")

        def liger(logits, labels, mask):
            B, T, V = logits.shape
            # (B*T,)
            loss = ce(logits.reshape(B * T, V), torch.where(mask, labels, -100).reshape(B * T))
            return -loss.view(B, T).float().sum(-1)                                           # (B,)
        out["liger CE (none)"] = (liger, False, None) if cuda else (None, False,
                                                                    "skipped (needs CUDA)")
    except ImportError:
        out["liger CE (none)"] = (None, False, "liger_kernel not installed")
    out["ours torch"] = (lambda x, y, m: logprob_kernels.sequence_logprobs(x, y, m, impl="torch"),
                         True, None)
    out["ours triton"] = (lambda x, y, m: logprob_kernels.sequence_logprobs(x, y, m, impl="triton"),
                          True, None)
    # In place, the gradient overwrites the logits: later iterations read gradients as logits
    # (finite, in [-1, 1]), which changes no memory traffic; a single backward per forward, so no
    # separate bwd timing.
    out["ours triton in-place"] = (
        lambda x, y, m: logprob_kernels.sequence_logprobs(x, y, m, impl="triton",
                                                          inplace_backward=True), False, None)
    return out


def timer(fn, grad_to_none, cuda: bool):
    """Median milliseconds of fn(): do_bench on CUDA, perf_counter on CPU."""
    if cuda:
        import triton
        return triton.testing.do_bench(fn, grad_to_none=grad_to_none, return_mode="median")
    fn()  # warm-up (interpreter / first-call costs)
    times = []
    for _ in range(3):
        for t in grad_to_none:
            t.grad = None
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure(name, fn, repeat_bwd, logits, labels, mask):
    """One row: times (ms), peak memory above inputs, max |difference| to ours triton (filled in by
    caller)."""
    cuda = logits.is_cuda
    g = torch.ones(logits.shape[0], device=logits.device)
    row = {"method": name}
    row["fwd_ms"] = timer(lambda: fn(logits, labels, mask), [logits], cuda)
    if repeat_bwd:
        out = fn(logits, labels, mask)
        row["bwd_ms"] = timer(lambda: out.backward(g, retain_graph=True), [logits], cuda)
        del out  # free the retained graph before the memory measurement
    else:
        # the method overwrites buffers in backward (or forward): timed only as fwd+bwd
        row["bwd_ms"] = None
    row["fwdbwd_ms"] = timer(lambda: fn(logits, labels, mask).backward(g), [logits], cuda)
    if cuda:
        logits.grad = None
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn(logits, labels, mask).backward(g)
        torch.cuda.synchronize()
        row["peak_extra_bytes"] = torch.cuda.max_memory_allocated() - base
        logits.grad = None
    else:
        row["peak_extra_bytes"] = None
    return row


def run_benchmark(args, cuda: bool):
    import triton

    import logprob_kernels
    dtype = DTYPES[args.dtype]
    device = "cuda" if cuda else "cpu"
    vocabs = args.vocab or ([32000, 50257, 128256] if cuda else [300])
    n_tokens = args.tokens or (8192 if cuda else 16)
    B = 8 if cuda and n_tokens % 8 == 0 else 2
    T = n_tokens // B
    peak_gbps = args.peak_gbps or (triton.testing.get_dram_gbps() if cuda else None)
    compile_naive = cuda and not args.no_compile
    rows = []
    for V in vocabs:
        gen = torch.Generator(device=device).manual_seed(0)
        # Fresh logits for each method: in-place methods (Liger, ours in-place) overwrite them.
        base_logits = torch.randn(B, T, V, generator=gen, device=device).to(dtype)
        labels = torch.randint(0, V, (B, T), generator=gen, device=device)
        mask = torch.ones(B, T, dtype=torch.bool, device=device)
        with torch.no_grad():
            expected = logprob_kernels.sequence_logprobs(base_logits, labels, mask, impl="triton")
        bytes_once = B * T * V * base_logits.element_size()
        for name, (fn, repeat_bwd, reason) in methods(compile_naive, cuda).items():
            row = {"V": V, "N": B * T, "method": name}
            if fn is None:
                row["note"] = reason
                rows.append(row)
                continue
            logits = base_logits.clone().requires_grad_(True)
            with torch.no_grad():
                diff = fn(logits.detach().clone(), labels, mask) - expected  # (B,)
                row["max_abs_diff_vs_ours"] = diff.abs().max().item()
            row.update(measure(name, fn, repeat_bwd, logits, labels, mask))
            for key, passes in (("fwd", 1), ("bwd", 2), ("fwdbwd", 3)):
                ms = row[f"{key}_ms"]
                row[f"{key}_gbps"] = None if ms is None else passes * bytes_once / (ms * 1e-3) / 1e9
                row[f"{key}_roof"] = (None if ms is None or not peak_gbps else row[f"{key}_gbps"]
                                      / peak_gbps)
            if row["peak_extra_bytes"] is not None:
                row["peak_extra_x_logits"] = row["peak_extra_bytes"] / bytes_once
            rows.append(row)
            del logits
    config = {"B": B, "T": T, "N": B * T, "vocab": vocabs, "dtype": args.dtype, "device": device,
              "timer": "triton.testing.do_bench median" if cuda
              else "time.perf_counter median of 3 (CPU smoke)",
              "peak_gbps": peak_gbps, "bytes_counted": "fwd 1*N*V*s, bwd 2*N*V*s, fwd+bwd 3*N*V*s"}
    return config, rows


# ----------------------------------------------------------------------------- compile-only report

def aot_report(arch: str, vocabs):
    """Compile both kernels for `arch` (e.g. sm_90) as the runtime would specialise them for
    contiguous (8, 1024, V) logits; report registers, spills (bytes of stack) and global load/store
    instructions (bench/aot_compile.py). Raises AOTUnavailable where this Triton has no CUDA backend
    or cannot find ptxas / cuobjdump."""
    from logprob_kernels import logprobs_triton

    compiler = Compiler(arch)
    compile_kernel, resources = compiler.compile, compiler.resources

    rows = []
    for dtype in ("bf16", "fp32"):
        for V in vocabs:
            T = 1024  # positions per row of (8, T, V) logits
            block_v, num_warps = logprobs_triton.launch_config(V, 2 if dtype == "bf16" else 4)
            strides = dict(stride_lb=T * V, stride_lt=V, stride_lv=1, stride_yb=T, stride_yt=1)
            fwd = compile_kernel(logprobs_triton._logprobs_fwd_kernel, dict(
                logits_ptr=f"*{dtype}", labels_ptr="*i64", keep_ptr="*i8", logp_ptr="*fp32",
                                                                            m_ptr="*fp32",
                log_s_ptr="*fp32", T=T, V=V, **strides), {"BLOCK_V": block_v}, num_warps)
            bwd = compile_kernel(logprobs_triton._logprobs_bwd_kernel, dict(
                logits_ptr=f"*{dtype}", grad_ptr=f"*{dtype}", grad_logp_ptr="*fp32",
                                                                            labels_ptr="*i64",
                keep_ptr="*i8", m_ptr="*fp32", log_s_ptr="*fp32", T=T, V=V, **strides,
                                                                            stride_gb=T * V,
                stride_gt=V, stride_gv=1, stride_ob=1, stride_ot=0),
                                 {"BLOCK_V": block_v, "ROUND_BY_HAND": False},
                                 num_warps)
            for kernel, compiled in (("fwd", fwd), ("bwd", bwd)):
                rows.append({"arch": arch, "dtype": dtype, "V": V, "kernel": kernel,
                             "BLOCK_V": block_v, "num_warps": num_warps, **resources(compiled)})
    return {"arch": arch, "shape": "(8, 1024, V) contiguous"}, rows


# ----------------------------------------------------------------------------- output

def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def table(rows, aot: bool):
    if aot:
        head = ("| dtype | V | kernel | BLOCK_V | warps | registers | stack bytes | global loads | "
                "global stores |")
        lines = [head, "|" + "---|" * 9]
        for r in rows:
            lines.append(f"| {r['dtype']} | {r['V']} | {r['kernel']} | {r['BLOCK_V']} | "
                         f"{r['num_warps']} | {r['registers']} | {r['stack_bytes']} | "
                         f"{' '.join(r['global_loads'])} | {' '.join(r['global_stores'])} |")
        return "\n".join(lines)
    head = ("| V | method | fwd ms | bwd ms | fwd+bwd ms | fwd GB/s | fwd+bwd GB/s | fwd roof | "
            "fwd+bwd roof | peak extra (x logits) | max abs diff | note |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r['V']} | {r['method']} | {fmt(r.get('fwd_ms'), '.3f')} | "
            f"{fmt(r.get('bwd_ms'), '.3f')} | {fmt(r.get('fwdbwd_ms'), '.3f')} | "
            f"{fmt(r.get('fwd_gbps'), '.1f')} | {fmt(r.get('fwdbwd_gbps'), '.1f')} | "
            f"{fmt(r.get('fwd_roof'), '.0%')} | {fmt(r.get('fwdbwd_roof'), '.0%')} | "
            f"{fmt(r.get('peak_extra_x_logits'), '.2f')} | "
            f"{fmt(r.get('max_abs_diff_vs_ours'), '.2e')} | {r.get('note', '')} |")
    return "\n".join(lines)


def environment(cuda: bool):
    import triton
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "triton": triton.__version__,
           "device": torch.cuda.get_device_name() if cuda else f"CPU ({platform.machine()})",
           "triton_interpret": os.environ.get("TRITON_INTERPRET", "0"),
           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    try:
        from importlib.metadata import version

        import liger_kernel  # noqa: F401
        env["liger_kernel"] = version("liger-kernel")
    except ImportError:
        env["liger_kernel"] = None
    return env


def main(argv=None):
    args = parse_args(argv)
    cuda = torch.cuda.is_available() and not args.tiny and args.aot is None
    if not cuda and args.aot is None:
        # the CPU interpreter; must precede the first import of triton
        os.environ["TRITON_INTERPRET"] = "1"
    if args.aot:
        try:
            config, rows = aot_report(args.aot, args.vocab or [32000, 50257, 128256])
        except AOTUnavailable as e:
            print(f"aot unavailable: {e}", file=sys.stderr)
            sys.exit(EXIT_AOT_UNAVAILABLE)
    else:
        config, rows = run_benchmark(args, cuda)
    env = environment(cuda)
    text = table(rows, aot=bool(args.aot))
    print(f"# {env['device']} | torch {env['torch']} | triton {env['triton']} | "
          f"{json.dumps(config)}")
    print(text)
    for path in map(Path, args.out):
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".json":
            results = {"environment": env, "config": config, "rows": rows}
            path.write_text(json.dumps(results, indent=2) + "\n")
        else:
            path.write_text(f"# bench_logprobs results\n\nenvironment: `{json.dumps(env)}`\n\n"
                            f"config: `{json.dumps(config)}`\n\n{text}\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
