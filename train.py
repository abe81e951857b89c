"""The command line: every command of the table in plumbing/config.py (COMMANDS), a parser each.

    python train.py                   the embedded demo, end to end on a CPU (experiments/demo.py)
    python train.py --help            the commands, a line each
    python train.py COMMAND --help    a command's flags, each with its default and the commands that
                                      take it
    torchrun --nproc_per_node N train.py COMMAND ...   a training command, data-parallel on N GPUs
    or CPUs

Commands: pretrain, sft, dpo, unlikelihood, reward-model, simpo, orpo, kto, ppo, rloo, pairs, eval,
sample, demo, frontier, study, open-questions (tests/test_cli.py checks this list, --help and the
README against the table).

Every command's flags, their help and each command's defaults come from plumbing/config.py
(`COMMANDS`, `TrainConfig`). A user error (a missing file, a bad value, a broken checkpoint) prints
one line `error: ...` and exits with status 1, before anything is written; `--debug` (or
DPO_DEBUG=1) shows the traceback instead. This file is the entry point only: nothing imports it.
"""

import argparse
import dataclasses
import os
import sys

# torch's CPU threads are OpenMP's. Waiting at the end of a parallel region they sleep instead of
# spinning, so that beside another busy process a descheduled thread gets its core back at once (the
# quick demo: 1.34x its idle time beside a busy process instead of 2.28x, at 1.06x the idle time;
# bench/bench_threads.py, docs/benchmark.md). Set before torch loads OpenMP; a value in the
# environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from data import TokenizerUnavailableError
from experiments import demo, frontier, open_questions, study
from loop import NonFiniteLossError
from plumbing import commands, data_parallel
from plumbing.config import (
    COMMAND_DEFAULTS,
    COMMAND_NAMES,
    COMMANDS,
    RL_COMMANDS,
    TRAINING_COMMANDS,
    TrainConfig,
    command_config,
)

# their descriptions: module docstrings
EXPERIMENTS = {"demo": demo, "frontier": frontier, "study": study,
               "open-questions": open_questions}
# What a user can get wrong (files, values, checkpoints, tokenizer files, a diverging run): one
# line, no traceback.
USER_ERRORS = (ValueError, OSError, TokenizerUnavailableError, NonFiniteLossError,
               data_parallel.LaunchError)


class Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line `error: ...` (no usage block) and exit status 2."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message}\n")


def add_config_flags(parser, command):
    """One flag per TrainConfig field that `command` uses, with its help line and default."""
    defaults = COMMAND_DEFAULTS.get(command, {})
    groups = {}
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        if command not in meta["commands"]:
            continue
        group = parser if meta["group"] is None else groups.get(meta["group"]) or groups.setdefault(
            meta["group"], parser.add_argument_group(meta["group"]))
        default = defaults.get(f.name, f.default)
        shown = (("on" if default else "off") if isinstance(default, bool) else "none" if default
                 == "" else default)
        help = f"{meta['help']} (default: {shown}; {commands_taking(meta['commands'])})"
        if isinstance(default, bool):
            group.add_argument(meta["flag"], default=default, action=argparse.BooleanOptionalAction,
                               help=help)
        else:
            group.add_argument(meta["flag"], default=default, type=type(default),
                               choices=meta["choices"], help=help)


def commands_taking(names):
    """The commands that take a flag, for its help line: "every command", or their names in the
    table's order."""
    if set(names) == set(COMMAND_NAMES):
        return "every command"
    return "taken by " + ", ".join(name for name in COMMAND_NAMES if name in names)


def build_parser():
    """The parser of `python train.py [COMMAND] [flags]`: a sub-parser for each command of the
    table."""
    parser = Parser(prog="train.py", description=__doc__.split("\n\n")[0],
                    epilog=__doc__.split("\n\n")[1],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        if command.kind == "experiment":
            description = EXPERIMENTS[command.name].__doc__.split("\n\n")[0]
        else:
            description = command.description
        sub = subparsers.add_parser(command.name, help=command.summary, description=description)
        if command.kind == "experiment":
            add_experiment_flags(sub, command.name)
        else:
            add_config_flags(sub, command.name)
        if command.name == "sample":
            sub.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                             help="a prompt (repeatable; default: five held-out prompts of the "
                             "sentiment task)")
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help="show the traceback of an error")
    return parser


def add_experiment_flags(parser, name):
    """--quick, --out-dir (and the study's --train-seeds) of an experiment command."""
    parser.add_argument("--quick", action="store_true",
                        help="a tiny configuration that runs in about a minute")
    # open-questions builds on the frontier's runs: the same directory
    out_dir = "out/frontier" if name == "open-questions" else f"out/{name}"
    parser.add_argument("--out-dir", default=out_dir, help=f"where it writes (default: {out_dir})")
    if name == "study":
        parser.add_argument("--train-seeds", default="", metavar="N,N",
                            help="then the study again with these "
                            "training seeds (OUT_DIR/seedN) and each claim's numbers on every seed "
                            "(seeds.json; default: none)")


def run(args):
    """Run the parsed command."""
    if args.command in (None, "demo"):
        demo.run(out_dir=getattr(args, "out_dir", "out/demo"), quick=getattr(args, "quick", False))
        return
    if args.command == "frontier":
        frontier.run(out_dir=args.out_dir, quick=args.quick)
        return
    if args.command == "open-questions":
        open_questions.run(out_dir=args.out_dir, quick=args.quick)
        return
    if args.command == "study":
        seeds = parse_seeds(args.train_seeds)
        study.run(out_dir=args.out_dir, quick=args.quick)
        if seeds:
            study.run_seeds(out_dir=args.out_dir, quick=args.quick, seeds=seeds)
        return
    cfg = command_config(args.command,
                         **{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                            if hasattr(args, f.name)})
    if args.command in TRAINING_COMMANDS:
        # under torchrun: join the other processes (else nothing)
        with data_parallel.process_group(cfg.device):
            commands.run_training(args.command, cfg)
    elif args.command in RL_COMMANDS:
        commands.run_rl(args.command, cfg)
    elif args.command == "pairs":
        commands.run_pairs(cfg)
    elif args.command == "eval":
        commands.run_eval(cfg)
    else:
        commands.run_sample(cfg, args.prompt)


def parse_seeds(text):
    """--train-seeds "1338,1339" -> [1338, 1339]; ValueError naming the flag for anything else."""
    try:
        return [int(seed) for seed in text.split(",") if seed.strip()]
    except ValueError:
        raise ValueError(f"--train-seeds {text!r}: expected comma-separated "
                         "integers, e.g. 1338,1339") from None


def main(argv=None):
    """Parse `argv` (default: sys.argv[1:]) and run the command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except USER_ERRORS as e:
        if args.debug or os.environ.get("DPO_DEBUG"):
            raise
        # under torchrun each process reports; rank 0 without a prefix
        rank = int(os.environ.get("RANK", "0"))
        line = "error: " + (f"rank {rank}: " if rank else "") + " ".join(str(e).split())
        # one write: the lines of several torchrun processes do not interleave
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
