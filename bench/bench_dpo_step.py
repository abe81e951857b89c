"""Benchmark: one DPO training step end to end, three ways of computing log pi(y|x), side by side in
one run.

The step is what loop.train does with a precomputed reference (reference.Reference.precomputed): the
policy's forward over chosen + rejected rows, the sigmoid DPO loss (Eq. 7), backward, AdamW. Only
the log-prob computation differs:

    naive         logits = lm_head(h) (B, T, V), then logprob_kernels.naive_sequence_logprobs (fp32
                  log_softmax, gather)
    logits kernel logits = lm_head(h), then logprob_kernels.sequence_logprobs (Triton on CUDA,
    chunked torch on a CPU)
    fused linear  logprob_kernels.linear_sequence_logprobs(h, lm_head.weight): the logits are never
                  materialised

Default shapes: GPT-2 124M (random init; --model smollm2-135m and the other shapes of
bench/shapes.py), 8 pairs x 512 tokens, the response = the second half of each row, bf16 autocast
on CUDA. Reported: tokens per second (all 2 x pairs x tokens positions of the step, the usual
convention) and peak memory: on CUDA torch.cuda.max_memory_allocated minus what was allocated before
the timed steps (activations, logits, gradients; the weights and AdamW state were already there); on
a CPU each method runs in a fresh process and its peak is its own VmHWM minus its resident set
before the model was built (so weights, gradients and AdamW state are included). On a CPU without
--quick the default shapes take minutes per step; --quick runs a tiny model in seconds (the smoke
test).

    python bench/bench_dpo_step.py [--pairs 8] [--tokens 512] [--json FILE] [--md FILE]
    python bench/bench_dpo_step.py --model smollm2-135m --pairs 2 --tokens 256 --steps 2
    python bench/bench_dpo_step.py --quick
"""

import argparse
import json
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
from bench.shapes import MODELS, build  # noqa: E402

METHODS = ("naive", "logits kernel", "fused linear")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="a tiny model and batch on any device (smoke test)")
    ap.add_argument("--model", choices=sorted(MODELS), default="gpt2-124m",
                    help="the architecture and shape (random weights)")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=512, help="tokens per row (prompt + response)")
    ap.add_argument("--steps", type=int, default=5,
                    help="timed steps per method (after 2 warm-up steps)")
    ap.add_argument("--json", default="", help="write the results as JSON here")
    ap.add_argument("--md", default="", help="write the results as a markdown table here")
    # internal: run one method in this process and print its row as JSON
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.pairs, args.tokens, args.steps = 2, 32, 2
    return args


def sequence_logps(method, model, batch):
    """(2B,) log-probs of the batch's rows by `method` (see the module docstring)."""
    import dpo
    import logprob_kernels
    if method == "naive":
        return logprob_kernels.naive_sequence_logprobs(model(batch["input_ids"]), batch["labels"],
                                                       batch["mask"])
    return dpo.sequence_logps(model, batch["input_ids"], batch["labels"], batch["mask"],
                              fused_linear=method == "fused linear")


def run_method(method, args, device):
    """Time `method`'s DPO steps; returns {"method", "step_ms", "tokens_per_s", "peak_mib",
    "loss"}."""
    import dpo
    before = rss_bytes(peak=False)
    torch.manual_seed(0)
    model, shape = build(args.model, args.quick)
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    g = torch.Generator().manual_seed(0)
    # (2B, T+1)
    ids = torch.randint(0, shape["vocab_size"], (2 * args.pairs, args.tokens + 1), generator=g)
    mask = torch.zeros(2 * args.pairs, args.tokens, dtype=torch.bool)  # (2B, T)
    mask[:, args.tokens // 2:] = True
    batch = {"input_ids": ids[:, :-1].to(device), "labels": ids[:, 1:].to(device),
             "mask": mask.to(device)}
    # stand-in precomputed reference log-probs
    ref = torch.randn(2 * args.pairs, generator=g).to(device) - 400.0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        with autocast:
            logps = sequence_logps(method, model, batch)  # (2B,) fp32
            losses, _, _ = dpo.dpo_loss(logps[:args.pairs], logps[args.pairs:], ref[:args.pairs],
                                        ref[args.pairs:],
                                        beta=0.1)
        losses.mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return losses.mean().item()

    for _ in range(2):  # warm-up: Triton compilation, AdamW state, the allocator's pools
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    times, loss = [], None
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = step()  # .item() synchronises
        times.append(time.perf_counter() - start)
    ms = 1000 * statistics.median(times)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:  # this process runs this method alone (main): its own peak
        peak = (rss_bytes(peak=True) - before) / 2**20
    return {"method": method, "step_ms": ms,
            "tokens_per_s": 2 * args.pairs * args.tokens / (ms / 1000), "peak_mib": peak,
            "loss": loss}


def environment(device):
    import triton
    return {"python": platform.python_version(), "torch": torch.__version__,
            "triton": triton.__version__,
            "device": torch.cuda.get_device_name() if device.type == "cuda"
            else f"CPU ({platform.machine()})",
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def markdown(result):
    c = result["config"]
    lines = [f"DPO step, {c['model']} {c['shape']}, {c['pairs']} pairs x {c['tokens']} tokens, "
             f"{result['environment']['device']}",
             "", "| method | step ms | tokens/s | peak MiB | vs naive (time) | vs naive (peak) |",
             "|---|---|---|---|---|---|"]
    naive = result["rows"][0]
    for r in result["rows"]:
        lines.append(f"| {r['method']} | {r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | "
                     f"{r['peak_mib']:.0f} | {r['step_ms'] / naive['step_ms']:.2f} | "
                     f"{r['peak_mib'] / naive['peak_mib']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.one:
        print(json.dumps(run_method(args.one, args, device)))
        return 0
    if device.type == "cuda":
        rows = [run_method(m, args, device) for m in METHODS]
    else:  # a fresh process per method: a process's peak resident set never comes down
        argv = [a for a in (argv if argv is not None else sys.argv[1:])]
        rows = []
        for method in METHODS:
            child = subprocess.run([sys.executable, __file__, *argv, "--one", method],
                                   capture_output=True, text=True)
            if child.returncode != 0:
                print(child.stderr, file=sys.stderr)
                return child.returncode
            rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
    shape = build(args.model, args.quick)[1]
    result = {"config": {**vars(args), "shape": shape}, "environment": environment(device),
              "rows": rows}
    table = markdown(result)
    print(table)
    for path, text in ((args.json, json.dumps(result, indent=2)), (args.md, table + "\n")):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
