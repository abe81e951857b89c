"""Benchmark: peak memory and time of one DPO training step, full fine-tuning against LoRA, and
against the reference-free losses of DPO's family (SimPO, ORPO).

Where a DPO step's memory goes, for a model of P parameters in fp32 (4 bytes each) trained with
AdamW:

    full fine-tuning, reference copy   policy 4P + reference 4P + gradients 4P + Adam 8P  =  20P
    full, precomputed reference        the copy exists only before training (8P then)     =  16P
    LoRA, reference = adapters off     base 4P + adapters, their gradients, moments ~16p  =   4P
    SimPO or ORPO, no reference        policy 4P + gradients 4P + Adam moments 8P         =  16P

plus the activations, with p << P the adapter parameters. Activations are the same for all (LoRA
adds its small (tokens, r) ones). This script measures it: each variant runs in a fresh process
(model built from the seed, a batch of random token pairs, AdamW, three steps: the policy's forward
over chosen + rejected, the reference's forward, the sigmoid DPO loss, backward, the optimizer
step). Peak memory is, on CUDA, torch.cuda.max_memory_allocated minus what was allocated before the
model was built; on a CPU, the process's own peak resident set (VmHWM; ru_maxrss would start from
the parent's) minus its resident set before the model was built (the allocator's caching and the
interpreter make this coarser; compare variants measured in the same run). Time: the mean of steps 2
and 3 (step 1 allocates the optimizer state).

    python bench/bench_lora_memory.py                      GPT-2 124M shapes, 2 pairs x 128 tokens
                                                           (CPU: ~1 min)
    python bench/bench_lora_memory.py --quick              tiny shapes, seconds (the smoke test)
    python bench/bench_lora_memory.py --pairs 8 --tokens 512 --json bench/results/lora_memory.json
    python bench/bench_lora_memory.py --model smollm2-360m --variants full-precomputed lora
                                                           a Llama-family shape (random weights)
"""

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing the project

import dpo  # noqa: E402
from bench.memory import rss_bytes  # noqa: E402
from bench.shapes import MODELS, build  # noqa: E402
from methods import orpo, simpo  # noqa: E402
from plumbing import lora  # noqa: E402

VARIANTS = ("full, reference copy (live)", "full, precomputed reference",
            "LoRA, adapters-off reference (live)", "SimPO, no reference", "ORPO, no reference")
# the short names of --variants, in VARIANTS' order
VARIANT_NAMES = ("full-copy", "full-precomputed", "lora", "simpo", "orpo")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="tiny model and batch: a smoke test in seconds")
    ap.add_argument("--pairs", type=int, default=2, help="preference pairs per step (2x rows)")
    ap.add_argument("--tokens", type=int, default=128, help="tokens per row (prompt + response)")
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--model", choices=sorted(MODELS), default="gpt2-124m",
                    help="the architecture and shape (random weights)")
    ap.add_argument("--variants", nargs="+", choices=VARIANT_NAMES, default=list(VARIANT_NAMES))
    ap.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    ap.add_argument("--json", default="", help="write the results here")
    # internal: run one variant in this process
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.tokens, args.lora_rank = min(args.tokens, 32), min(args.lora_rank, 4)
    return args


def random_pairs(n_pairs, tokens, vocab_size, device):
    """A dpo_collate-shaped batch of random tokens: (2 n_pairs, tokens) ids, shifted labels,
    response = 2nd half."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (2 * n_pairs, tokens + 1), generator=g)  # (2B, T+1)
    mask = torch.zeros(2 * n_pairs, tokens, dtype=torch.bool)  # (2B, T)
    mask[:, tokens // 2:] = True
    return {"input_ids": ids[:, :-1].to(device), "labels": ids[:, 1:].to(device),
            "mask": mask.to(device)}


def run_variant(name, args):
    """One variant in this process: {"variant", "peak_bytes", "step_ms", "trainable",
    "parameters"}."""
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = rss_bytes(peak=False)
    torch.manual_seed(0)
    model, shape = build(args.model, args.quick)
    model = model.to(device)
    batch = random_pairs(args.pairs, args.tokens, shape["vocab_size"], device)
    reference, ref_logps = None, None
    reference_free = name.startswith(("SimPO", "ORPO"))
    if name.startswith("LoRA"):
        lora.apply_lora(model, args.lora_rank, alpha=2.0 * args.lora_rank)
        reference = lora.BaseModelView(model)
    elif not reference_free:
        reference = copy.deepcopy(model).requires_grad_(False).eval()
    # the reference's log-probs once, then the copy is gone (commands.dpo_reference)
    if "precomputed" in name:
        with torch.no_grad(), autocast:
            ref_logps = dpo.concatenated_logps(reference, batch)
        reference = None
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        with autocast:
            policy = dpo.concatenated_logps(model, batch)
            lengths = (policy.chosen_tokens, policy.rejected_tokens)
            if name.startswith("SimPO"):
                losses, _, _ = simpo.simpo_loss(policy.chosen, policy.rejected, *lengths, beta=2.0,
                                                gamma=1.0)
            elif name.startswith("ORPO"):
                losses, _, _ = orpo.orpo_loss(policy.chosen, policy.rejected, *lengths, beta=0.1)
            else:
                if ref_logps is None:
                    with torch.no_grad():
                        ref = dpo.concatenated_logps(reference, batch)
                else:
                    ref = ref_logps
                losses, _, _ = dpo.dpo_loss(policy.chosen, policy.rejected, ref.chosen,
                                            ref.rejected, beta=0.1)
        losses.mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = rss_bytes(peak=True) - before
    return {"variant": name, "peak_bytes": peak, "step_ms": 1000 * sum(times[1:]) / 2,
            "trainable": lora.count_trainable(model),
            "parameters": sum(p.numel() for p in model.parameters()), "device": str(device)}


def main(argv=None):
    args = parse_args(argv)
    if args.one:
        print(json.dumps(run_variant(args.one, args)))
        return 0
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    rows = []
    chosen = [name for name, short in zip(VARIANTS, VARIANT_NAMES) if short in args.variants]
    for name in chosen:  # each in a fresh process: its peak resident set is its own
        proc = subprocess.run([sys.executable, __file__, *passthrough, "--one", name],
                              capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    full = rows[0]["peak_bytes"]
    shape = MODELS[args.model][2]
    print(f"one DPO step, {args.model} ({rows[0]['parameters'] / 1e6:.1f}M parameters), "
          f"{args.pairs} pairs x {args.tokens} tokens, device {rows[0]['device']}, LoRA rank "
          f"{args.lora_rank} on every projection of the blocks")
    print(f"| variant | trainable parameters | peak memory MiB | vs {rows[0]['variant']} | "
          "step ms |")
    print("|---|---|---|---|---|")
    for row in rows:
        row["peak_vs_first"] = row["peak_bytes"] / full
        if rows[0]["variant"] == VARIANTS[0]:  # the key experiments/study.py reads
            row["peak_vs_full_copy"] = row["peak_vs_first"]
        print(f"| {row['variant']} | {row['trainable']:,} | {row['peak_bytes'] / 2**20:.0f} | "
              f"{row['peak_vs_first']:.2f} | {row['step_ms']:.0f} |")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"config": {**vars(args), "shape": shape}, "rows": rows,
                       "environment": {"torch": torch.__version__,
                                       "python": platform.python_version(),
                                       "machine": platform.machine(),
                                       "gpu": torch.cuda.get_device_name()
                                       if torch.cuda.is_available() else None}},
                      f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
