"""The stages of training as commands: each builds the model and data it needs, then runs (train.py's CLI).

    python train.py                       the embedded demo (demo.py)
    python train.py pretrain|sft|dpo ...  train.run_stage -> train.train
    python train.py pairs|eval|sample ... the embedded sentiment task's prompts and ground-truth reward

Every TrainConfig field is a flag (`out_dir` -> `--out-dir`); `--help` on each command lists them.
"""

import argparse
import dataclasses
import json
import os

import torch

import data
import dpo
import evaluate
from checkpoint import load_model
from model import GPT, GPTConfig
from train import TrainConfig, train


STAGE_DEFAULTS = {
    "pretrain": dict(out_dir="out/pretrain", lr=1e-3, steps=2000, batch_size=32, warmup_steps=50),
    "sft": dict(out_dir="out/sft", lr=1e-4, steps=500, batch_size=16),
    "dpo": dict(out_dir="out/dpo", lr=1e-5, steps=500, batch_size=16, schedule="constant"),
    "pairs": dict(out_dir="out/pairs"),
    "eval": dict(out_dir="out/eval"),
}
CHOICES = dict(loss=dpo.LOSS_TYPES, reference=("precompute", "live"), schedule=("cosine", "constant"),
               tokenizer=("bytes", "gpt2"), impl=("auto", "triton", "torch"),
               dtype=("auto", "float32", "bfloat16", "float16"))


def add_config_flags(parser, defaults):
    """One flag per TrainConfig field, e.g. `out_dir` -> `--out-dir`, defaulting to `defaults`."""
    for f in dataclasses.fields(TrainConfig):
        default = defaults.get(f.name, f.default)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, default=default, action=argparse.BooleanOptionalAction)
        else:
            parser.add_argument(flag, default=default, type=type(default), choices=CHOICES.get(f.name))


def build_model(cfg, tokenizer):
    """The --init model (our checkpoint or a HF GPT-2 dir), or a fresh GPT sized by the config's fields."""
    if cfg.init:
        model = load_model(cfg.init)
    else:
        # exactly the tokenizer's vocabulary: a padded one would let sampling emit ids that cannot be decoded
        model = GPT(GPTConfig(block_size=cfg.block_size, vocab_size=tokenizer.n_vocab, n_layer=cfg.n_layer,
                              n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout))
    if tokenizer.n_vocab > model.config.vocab_size:
        raise ValueError(f"tokenizer {cfg.tokenizer!r} has {tokenizer.n_vocab} tokens but the model "
                         f"{cfg.init or '(fresh)'} has vocab_size {model.config.vocab_size}: use the "
                         f"tokenizer the model was trained with")
    if cfg.max_length > model.config.block_size:
        raise ValueError(f"--max-length {cfg.max_length} exceeds the model's block_size {model.config.block_size}")
    return model


def preference_splits(cfg, tokenizer):
    """Encoded (train, held-out) preference pairs from --data (and --heldout-data, or a seeded split)."""
    if not cfg.data:
        raise ValueError("this stage needs --data: a preference file (JSONL/JSON, HH-RLHF) or dataset name")
    def encode(source):
        records = data.load_preferences(source)
        return data.encode_preferences(records, tokenizer, max_length=cfg.max_length,
                                       max_prompt_length=cfg.max_prompt_length)
    pairs = encode(cfg.data)
    if cfg.heldout_data:
        return pairs, encode(cfg.heldout_data)
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    n_heldout = max(1, int(len(pairs) * cfg.heldout_fraction))
    if len(pairs) - n_heldout < 1:
        raise ValueError(f"{cfg.data}: {len(pairs)} usable pairs are too few to hold out {n_heldout}")
    return [pairs[i] for i in order[n_heldout:]], [pairs[i] for i in order[:n_heldout]]


def run_stage(stage, cfg, log=print):
    """Run one of pretrain / sft / dpo from a resolved config; returns (model, last held-out metrics)."""
    if stage == "dpo" and not cfg.init:
        raise ValueError("dpo needs --init: the SFT model, which is also the frozen reference")
    tokenizer = data.get_tokenizer(cfg.tokenizer)
    if stage == "pretrain":
        if cfg.data:
            with open(cfg.data, encoding="utf-8") as f:
                stream = torch.tensor(tokenizer.encode_ordinary(f.read()), dtype=torch.long)
        else:
            stream = data.sentiment.corpus_tokens(tokenizer, seed=cfg.seed)
        n_heldout = max(cfg.block_size + 1, len(stream) // 20)
        if len(stream) < n_heldout + cfg.block_size + 1:
            raise ValueError(f"corpus of {len(stream)} tokens is too short for block_size {cfg.block_size}")
        train_set, heldout_set = stream[:-n_heldout], stream[-n_heldout:]
        log(f"{stage}: {len(train_set):,} training tokens, {len(heldout_set):,} held-out tokens")
    else:
        train_set, heldout_set = preference_splits(cfg, tokenizer)
        log(f"{stage}: {len(train_set)} training pairs, {len(heldout_set)} held-out pairs")
    torch.manual_seed(cfg.seed)  # a fresh model's initial weights come from the seed too
    model = build_model(cfg, tokenizer)
    log(f"{stage}: model with {model.num_params() / 1e6:.2f}M parameters (non-embedding), "
        f"vocab {model.config.vocab_size}, block {model.config.block_size}")
    reference = build_model(cfg, tokenizer) if stage == "dpo" else None  # a frozen copy of --init
    metrics = train(stage, cfg, model, train_set, heldout_set, pad_id=tokenizer.eot_token, reference=reference,
                    log=log)
    model.save_pretrained(os.path.join(cfg.out_dir, "hf"))  # for transformers and other tools
    return model, metrics


def main(argv):
    import demo  # imports this module: import it here, not at the top

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="stage")
    for stage in ("pretrain", "sft", "dpo", "pairs", "eval", "sample"):
        sub = commands.add_parser(stage, help=stage_help(stage).split(". ")[0], description=stage_help(stage))
        add_config_flags(sub, STAGE_DEFAULTS.get(stage, {}))
        if stage == "sample":
            sub.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    demo_parser = commands.add_parser("demo", help="the embedded sentiment experiment, end to end (default)")
    demo_parser.add_argument("--quick", action="store_true", help="a tiny configuration that runs in a minute")
    demo_parser.add_argument("--out-dir", default="out/demo")
    args = parser.parse_args(argv)

    if args.stage in (None, "demo"):
        demo.run(out_dir=getattr(args, "out_dir", "out/demo"), quick=getattr(args, "quick", False))
        return 0
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**values)
    if args.stage in ("pretrain", "sft", "dpo"):
        run_stage(args.stage, cfg)
    elif args.stage == "pairs":
        pairs_command(cfg)
    elif args.stage == "eval":
        eval_command(cfg)
    else:
        sample_command(cfg, args.prompt)
    return 0


def stage_help(stage):
    return {
        "pretrain": "Next-token prediction on --data (a UTF-8 text file) or, by default, the embedded reviews.",
        "sft": "Supervised fine-tuning of --init on prompt + chosen of --data (loss on response tokens only).",
        "dpo": "DPO (paper Eq. 7) of --init on --data, with a frozen copy of --init as the reference.",
        "pairs": "Sample --samples-per-prompt completions from --init for the embedded task's training prompts "
                 "and write best-vs-worst preference pairs (ground-truth reward: VADER) to OUT_DIR/pairs.jsonl.",
        "eval": "Compare --init (policy) with --reference-init on held-out prompts: reward, win rate, KL.",
        "sample": "Print a completion of --init for each --prompt (or a few held-out prompts).",
    }[stage]


def pairs_command(cfg):
    """train.py pairs: preference pairs from --init's samples on the task's training prompts."""
    if not cfg.init:
        raise ValueError("pairs needs --init: the model to sample from")
    tokenizer, model = data.get_tokenizer(cfg.tokenizer), load_model(cfg.init)
    train_prompts, _ = data.sentiment.make_prompts(seed=0)
    train_prompts = train_prompts[:cfg.num_prompts or None]
    os.makedirs(cfg.out_dir, exist_ok=True)
    path = os.path.join(cfg.out_dir, "pairs.jsonl")
    _, report = data.sentiment.build_preference_pairs(
        model, tokenizer, train_prompts, k=cfg.samples_per_prompt, min_reward_gap=cfg.min_reward_gap,
        max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, path=path, return_report=True)
    print(f"{report.summary()}\nwrote {path}")


def eval_command(cfg):
    """train.py eval: --init (policy) vs --reference-init on the task's held-out prompts."""
    if not cfg.init or not cfg.reference_init:
        raise ValueError("eval needs --init (the policy) and --reference-init (the reference)")
    tokenizer = data.get_tokenizer(cfg.tokenizer)
    _, heldout_prompts = data.sentiment.make_prompts(seed=0)
    heldout_prompts = heldout_prompts[:cfg.num_prompts or None]
    report = evaluate.sample_report(load_model(cfg.init), load_model(cfg.reference_init), tokenizer,
                                    heldout_prompts, data.sentiment.sentiment_reward,
                                    max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    numbers = {k: v for k, v in report.items() if isinstance(v, float)}
    os.makedirs(cfg.out_dir, exist_ok=True)
    with open(os.path.join(cfg.out_dir, "eval.json"), "w") as f:
        json.dump(numbers, f, indent=2)
    print(json.dumps(numbers, indent=2))


def sample_command(cfg, prompts):
    """train.py sample: one completion of --init for each prompt (default: a few held-out prompts)."""
    if not cfg.init:
        raise ValueError("sample needs --init: the model to sample from")
    tokenizer, model = data.get_tokenizer(cfg.tokenizer), load_model(cfg.init)
    prompts = prompts or data.sentiment.make_prompts(seed=0)[1][:5]
    completions, _ = data.sentiment.sample_completions(model, tokenizer, prompts, k=1,
                                                       max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    for prompt, (completion,) in zip(prompts, completions):
        print(f"{prompt}{completion}")
