"""The command line: pre-training, SFT and DPO (paper Eq. 7), the sentiment task's pairs and evaluation.

    python train.py                    the embedded demo, end to end on a CPU (experiments/demo.py)
    python train.py demo --quick       the same in a tiny configuration (about a minute)
    python train.py frontier           the reward-KL frontier of DPO, its baselines and Best-of-N (Figure 2)
    python train.py study              LoRA, bf16, beta vs forgetting, early stopping, base quality, self-labelling
    python train.py pretrain --help    next-token prediction on a text corpus (the embedded reviews by default)
    python train.py sft --help         supervised fine-tuning on prompt + chosen, loss on the response only
    python train.py dpo --help         DPO against a frozen reference model (the --init model)
    python train.py unlikelihood --help   the paper's Unlikelihood baseline on the same data
    python train.py pairs --help       sample completions and label preference pairs with the ground-truth reward
    python train.py eval --help        held-out report: ground-truth reward, win rate and KL from samples
    python train.py sample --help      print completions of a model
    torchrun --nproc_per_node N train.py dpo ...   pretrain, sft, dpo or unlikelihood, data-parallel on N GPUs/CPUs

Every command's flags, their help and each command's defaults come from `plumbing/config.py` (`TrainConfig`,
`STAGE_DEFAULTS`). A user error (a missing file, a bad value, a broken checkpoint) prints one line `error: ...`
and exits with status 1, before anything is written; `--debug` (or DPO_DEBUG=1) shows the traceback instead.
This file is the entry point only: nothing imports it.
"""

import argparse
import dataclasses
import os
import sys

from data import TokenizerUnavailableError
from experiments import demo, frontier, study
from loop import NonFiniteLossError
from plumbing import commands, data_parallel
from plumbing.config import RL_STAGES, STAGE_DEFAULTS, STAGES, TRAINING_STAGES, TrainConfig, stage_config

COMMAND_HELP = {  # command: (one line for the command list, the description of `train.py COMMAND --help`)
    "pretrain": ("next-token prediction on a text file or the embedded reviews",
                 "Next-token prediction on --data (a UTF-8 text file) or, by default, the embedded reviews."),
    "sft": ("supervised fine-tuning on prompt + chosen",
            "Supervised fine-tuning of --init on prompt + chosen of --data (loss on response tokens only)."),
    "dpo": ("DPO against a frozen copy of --init",
            "DPO (paper Eq. 7) of --init on --data, with a frozen copy of --init (or --reference-init) as the "
            "reference; with --lora-rank, low-rank adapters on the frozen --init, the reference being the same "
            "network with its adapters off."),
    "unlikelihood": ("the paper's Unlikelihood baseline: raise log p(chosen), push down p(rejected) per token",
                     "Unlikelihood (Welleck et al. 2019; a baseline of the DPO paper, section 6) of --init on "
                     "--data: maximise log p(chosen) and log(1 - p) of each rejected token; no reference."),
    "simpo": ("SimPO: DPO without a reference, on length-normalised log-probs, with a margin",
              "SimPO (Meng et al. 2024; methods/simpo.py) of --init on --data: -log sigma(beta * (mean log "
              "p(chosen) - mean log p(rejected)) - gamma); no reference model."),
    "orpo": ("ORPO: SFT and an odds-ratio preference term in one loss, no reference",
             "ORPO (Hong et al. 2024; methods/orpo.py) of --init (a base model: no SFT stage needed) on --data: "
             "the chosen response's NLL minus beta * log sigma(log odds ratio); no reference model."),
    "kto": ("KTO: single completions marked desirable or undesirable, against a reference",
            "KTO (Ethayarajh et al. 2024; methods/kto.py) of --init on --data: TRL's unpaired format (prompt, "
            "completion, label) or pairs split in two; a frozen copy of --init is the reference, the KL estimate from "
            "mismatched pairs the reference point."),
    "reward-model": ("the reward model of RLHF: Bradley-Terry on the same pairs",
                     "Train a reward model (methods/reward_model.py: the --init trunk and a scalar head; Eq. 2 of "
                     "the DPO paper) on the preference pairs of --data; keeps best.pt, the best held-out accuracy."),
    "ppo": ("RLHF's PPO on the sentiment task, with a reward model or the ground truth (PPO-GT)",
            "PPO (methods/ppo.py, methods/rlhf.py) of --init on the sentiment task's training prompts: rollouts "
            "scored by --reward-model (or --ground-truth-reward, the paper's oracle), a KL penalty toward --init, GAE, "
            "a value model started from the reward model, clipped updates."),
    "rloo": ("REINFORCE leave-one-out on the sentiment task: k samples a prompt, no value model",
             "RLOO (Ahmadian et al. 2024; methods/ppo.py, methods/rlhf.py) of --init on the sentiment task's "
             "training prompts: --samples-per-prompt rollouts each, scored by --reward-model (or the ground "
             "truth), each one's baseline the mean of the others."),
    "pairs": ("sample completions and write preference pairs labelled by the ground-truth reward",
              "Sample --samples-per-prompt completions from --init for the sentiment task's training prompts and "
              "write best-vs-worst preference pairs (ground-truth reward: VADER) to OUT_DIR/pairs.jsonl."),
    "eval": ("reward, win rate and KL of --init against --reference-init, from samples",
             "Compare --init (policy) with --reference-init on the sentiment task's held-out prompts: "
             "ground-truth reward, win rate, KL(policy || reference); writes OUT_DIR/eval.json."),
    "sample": ("print completions of --init",
               "Print a completion of --init for each --prompt (default: five held-out prompts)."),
}
# What a user can get wrong (files, values, checkpoints, tokenizer files, a diverging run): one line, no traceback.
USER_ERRORS = (ValueError, OSError, TokenizerUnavailableError, NonFiniteLossError, data_parallel.LaunchError)


class Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line `error: ...` (no usage block) and exit status 2."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message}\n")


def add_config_flags(parser, stage):
    """One flag per TrainConfig field that `stage` uses, with its help line and default."""
    defaults = STAGE_DEFAULTS.get(stage, {})
    groups = {}
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        if stage not in meta["stages"]:
            continue
        group = parser if meta["group"] is None else groups.get(meta["group"]) or groups.setdefault(
            meta["group"], parser.add_argument_group(meta["group"]))
        default = defaults.get(f.name, f.default)
        shown = ("on" if default else "off") if isinstance(default, bool) else "none" if default == "" else default
        help = f"{meta['help']} (default: {shown}; {commands_taking(meta['stages'])})"
        if isinstance(default, bool):
            group.add_argument(meta["flag"], default=default, action=argparse.BooleanOptionalAction, help=help)
        else:
            group.add_argument(meta["flag"], default=default, type=type(default), choices=meta["choices"], help=help)


def commands_taking(stages):
    """The commands that take a flag, for its help line: "every command", or their names."""
    return "every command" if set(stages) == set(STAGES) else "taken by " + ", ".join(s for s in STAGES if s in stages)


def build_parser():
    """The parser of `python train.py [COMMAND] [flags]`."""
    parser = Parser(prog="train.py", description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n")[1],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for stage in STAGES:
        sub = commands.add_parser(stage, help=COMMAND_HELP[stage][0], description=COMMAND_HELP[stage][1])
        add_config_flags(sub, stage)
        if stage == "sample":
            sub.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                             help="a prompt (repeatable; default: five held-out prompts of the sentiment task)")
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help="show the traceback of an error")
    for name, module, summary in (("demo", demo, "the embedded sentiment experiment, end to end (the default)"),
                                  ("frontier", frontier, "the reward-KL frontier (paper Figure 2, left)"),
                                  ("study", study, "a single-GPU user's questions in miniature "
                                   "(after the BTLM-Chat DPO study, Cerebras, 2023)")):
        sub = commands.add_parser(name, help=summary, description=module.__doc__.split("\n\n")[0])
        sub.add_argument("--quick", action="store_true", help="a tiny configuration that runs in about a minute")
        sub.add_argument("--out-dir", default=f"out/{name}", help=f"where it writes (default: out/{name})")
        if name == "study":
            sub.add_argument("--train-seeds", default="", metavar="N,N", help="then the study again with these "
                             "training seeds (OUT_DIR/seedN) and each claim's numbers on every seed (seeds.json; "
                             "default: none)")
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help="show the traceback of an error")
    return parser


def run(args):
    """Run the parsed command."""
    if args.command in (None, "demo"):
        demo.run(out_dir=getattr(args, "out_dir", "out/demo"), quick=getattr(args, "quick", False))
        return
    if args.command == "frontier":
        frontier.run(out_dir=args.out_dir, quick=args.quick)
        return
    if args.command == "study":
        seeds = parse_seeds(args.train_seeds)
        study.run(out_dir=args.out_dir, quick=args.quick)
        if seeds:
            study.run_seeds(out_dir=args.out_dir, quick=args.quick, seeds=seeds)
        return
    cfg = stage_config(args.command, **{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                                        if hasattr(args, f.name)})
    if args.command in TRAINING_STAGES:
        with data_parallel.process_group(cfg.device):  # under torchrun: join the other processes (else nothing)
            commands.run_stage(args.command, cfg)
    elif args.command in RL_STAGES:
        commands.run_rl(args.command, cfg)
    elif args.command == "pairs":
        commands.pairs(cfg)
    elif args.command == "eval":
        commands.evaluate(cfg)
    else:
        commands.sample(cfg, args.prompt)


def parse_seeds(text):
    """--train-seeds "1338,1339" -> [1338, 1339]; ValueError naming the flag for anything else."""
    try:
        return [int(seed) for seed in text.split(",") if seed.strip()]
    except ValueError:
        raise ValueError(f"--train-seeds {text!r}: expected comma-separated integers, e.g. 1338,1339") from None


def main(argv=None):
    """Parse `argv` (default: sys.argv[1:]) and run the command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except USER_ERRORS as e:
        if args.debug or os.environ.get("DPO_DEBUG"):
            raise
        rank = int(os.environ.get("RANK", "0"))  # under torchrun each process reports; rank 0 without a prefix
        line = "error: " + (f"rank {rank}: " if rank else "") + " ".join(str(e).split())
        sys.stderr.write(line + "\n")  # one write: the lines of several torchrun processes do not interleave
        sys.stderr.flush()
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
