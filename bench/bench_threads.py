"""Benchmark: how much a busy neighbour slows the CPU workloads down, for each thread policy.

On a small CPU the models of the embedded task are small: sampling is a long chain of tiny ops, and
when another process holds a core each op's parallel region waits for a descheduled thread. This
script measures, side by side in one run, each workload's wall time idle and beside one busy process
(`python -c "while True: pass"`), for each value of `train.py --threads`: every core (torch's
default) for training and sampling alike, one thread for both, and 0, the default policy: torch's
default for training, one thread for sampling (sentiment.sample_completions).

    sample   sentiment.sample_completions on the quick base model: 128 prompts x 4, 32 new tokens
    dpo      `train.py dpo` on the quick base model's pairs, 16 steps of 32 pairs
    ppo      `train.py ppo --ground-truth-reward`, 4 iterations of 64 rollouts (sampling, then
             training on them)
    demo     `train.py demo --quick` (pre-training, pairs, DPO, evaluation); it has no --threads
             flag, so a count N is set by OMP_NUM_THREADS=N (torch's default becomes N for
             training; sampling keeps its one thread)

--wait-policies also compares OpenMP's OMP_WAIT_POLICY (torch's CPU threads are OpenMP's): ACTIVE
threads spin at the end of each parallel region until the others arrive, PASSIVE ones sleep, which
hands the core to a descheduled thread (or the neighbour) instead of burning it; unset, GNU OpenMP
spins a while (GOMP_SPINCOUNT), then sleeps.

Each (workload, threads, wait policy, condition) runs in a fresh process, `--repeats` times (the
median is reported). The base model and its pairs come from experiments/base.py's QUICK settings,
cached in --work (about a minute the first time). Reported: seconds, and the slowdown busy / idle of
each thread count; the idle cost of a setting is its idle time over the first setting's.

    python bench/bench_threads.py                          every workload, 1 thread and the default
    python bench/bench_threads.py --workloads sample --repeats 1 --json out.json
    python bench/bench_threads.py --workloads demo --threads 0 --wait-policies ACTIVE PASSIVE
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing the project

import torch  # noqa: E402

WORKLOADS = ("sample", "dpo", "ppo", "demo")
WAIT_POLICIES = ("inherit", "ACTIVE", "PASSIVE")
BUSY = "while True: pass"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    ap.add_argument("--threads", nargs="+", type=int, default=[os.cpu_count(), 1, 0],
                    help="--threads values to compare: N for training and sampling alike, 0 = the "
                    "default policy (torch's default for training, one thread for sampling); "
                    "default: every core, one, the default policy")
    ap.add_argument("--wait-policies", nargs="+", choices=WAIT_POLICIES, default=["inherit"],
                    help="OpenMP's OMP_WAIT_POLICY for each measurement: inherit (this process's "
                    "environment: train.py's own default applies), ACTIVE (threads spin at a "
                    "barrier), PASSIVE (they sleep); default: inherit")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", default="out/bench_threads", help="where the base model is cached")
    ap.add_argument("--json", default="", help="write the results here")
    ap.add_argument("--one", nargs=2, metavar=("WORKLOAD", "THREADS"), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def prepare(work):
    """The quick base model and its pairs (cached)."""
    from experiments import base
    return base.prepare(os.path.join(work, "base"), base.QUICK, log=lambda *_: None)


def sample_once(prepared, threads):
    """Seconds to sample as train.py --threads THREADS does (0: the default policy, one thread)."""
    import sentiment
    start = time.perf_counter()
    sentiment.sample_completions(prepared.reference, prepared.tokenizer,
                                 prepared.train_prompts[:128], k=4, max_new_tokens=32, seed=0,
                                 threads=threads or 1)
    return time.perf_counter() - start


def command(workload, prepared, threads, out_dir):
    """The train.py command line of a training workload."""
    common = ["--init", prepared.reference_path, "--tokenizer", prepared.settings["tokenizer"],
              "--out-dir", out_dir, "--overwrite", "--threads", str(threads), "--seed", "0"]
    if workload == "dpo":
        return ["dpo", *common, "--data", prepared.pairs_train, "--steps", "16",
                "--max-length", "48", "--max-prompt-length", "24",
                "--batch-size", "32", "--eval-every", "1000", "--save-every", "1000"]
    return ["ppo", *common, "--ground-truth-reward", "--steps", "4", "--batch-size", "64",
            "--max-new-tokens", "32", "--eval-every", "1000", "--save-every", "1000"]


def run_one(workload, threads, work):
    """Seconds of one workload in this process (train.py in a child for dpo and ppo)."""
    if workload == "demo":
        env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
        with tempfile.TemporaryDirectory(dir=work) as out_dir:  # nothing cached: a fresh demo
            start = time.perf_counter()
            subprocess.run([sys.executable, str(REPO / "train.py"), "demo", "--quick",
                            "--out-dir", out_dir], cwd=REPO, check=True, capture_output=True,
                           env=env)
            return time.perf_counter() - start
    prepared = prepare(work)
    if workload == "sample":
        return sample_once(prepared, threads)
    argv = command(workload, prepared, threads, os.path.join(work, f"{workload}-{threads}"))
    start = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "train.py"), *argv], cwd=REPO, check=True,
                   capture_output=True)
    return time.perf_counter() - start


def measure(workload, threads, wait_policy, busy, args):
    """The median of --repeats fresh-process runs with OMP_WAIT_POLICY=`wait_policy` ("inherit":
    as in this process), beside a busy process when `busy`."""
    env = dict(os.environ)
    if wait_policy != "inherit":
        env["OMP_WAIT_POLICY"] = wait_policy
    times = []
    for _ in range(args.repeats):
        neighbour = subprocess.Popen([sys.executable, "-c", BUSY]) if busy else None
        try:
            proc = subprocess.run([sys.executable, __file__, "--work", args.work, "--one",
                                   workload, str(threads)], capture_output=True, text=True,
                                  check=True, env=env)
        finally:
            if neighbour is not None:
                neighbour.kill()
                neighbour.wait()
        times.append(float(proc.stdout.strip().splitlines()[-1]))
    return statistics.median(times)


def main(argv=None):
    args = parse_args(argv)
    if args.one:
        print(run_one(args.one[0], int(args.one[1]), args.work))
        return 0
    prepare(args.work)
    rows = []
    for workload in args.workloads:
        for threads in args.threads:
            for wait_policy in args.wait_policies:
                idle = measure(workload, threads, wait_policy, False, args)
                busy = measure(workload, threads, wait_policy, True, args)
                rows.append({"workload": workload, "threads": threads, "wait_policy": wait_policy,
                             "idle_s": idle, "busy_s": busy, "slowdown": busy / idle})
    default_threads = torch.get_num_threads()
    print(f"torch's CPU threads by default: {default_threads} ({os.cpu_count()} cores); median of "
          f"{args.repeats} fresh processes; idle cost: idle time over the first row's")
    print("| workload | --threads | OMP_WAIT_POLICY | idle s | beside a busy process s | slowdown "
          "| idle cost |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        first = next(r for r in rows if r["workload"] == row["workload"])
        row["idle_cost"] = row["idle_s"] / first["idle_s"]
        name = (f"{row['threads']}" if row["threads"]
                else "0 (training on torch's default, sampling on 1)")
        print(f"| {row['workload']} | {name} | {row['wait_policy']} | {row['idle_s']:.1f} | "
              f"{row['busy_s']:.1f} | "
              f"{row['slowdown']:.2f}x | {row['idle_cost']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "default_threads": default_threads,
                       "cores": os.cpu_count(), "repeats": args.repeats,
                       "cpu": platform.processor() or platform.machine(),
                       "torch": torch.__version__, "python": platform.python_version(),
                       "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
