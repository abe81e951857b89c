"""The shared first half of the experiments: the pre-trained base model and its preference pairs,
cached.

Both the demo and the frontier start the same way (the paper's section 6.1, offline):

1. Pre-train a small GPT on the generated movie reviews (`sentiment/`). In the paper this is the SFT
   model pi_SFT (GPT-2 fine-tuned on IMDb); it is also the frozen reference pi_ref of DPO.
2. Sample k completions per training prompt (a review opening) from pi_SFT, score them with the
   ground-truth reward (VADER sentiment of the completion), and pair the best with the worst: the
   preference data D. The same for the held-out prompts, for held-out implicit-reward accuracy.

`prepare(out_dir, settings)` writes OUT_DIR/pretrain/ (ckpt.pt, hf/, metrics.jsonl, config.json),
pairs_train.jsonl, pairs_heldout.jsonl and base.json (the settings and the pair reports). When
base.json already holds the same settings and the files are there, it loads them instead of
recomputing: a rerun of an experiment, or a second experiment on the same base, costs seconds.
"""

import dataclasses
import json
import os

import data
import sentiment
from plumbing import commands
from plumbing.checkpoint import load_model
from plumbing.config import check_values, command_config

# The base of the demo and the frontier. Prompts are at most 64 bytes (16 tokens of the reviews BPE)
# and completions at most max_new_tokens, so block_size covers every position sampled at;
# pre-training uses windows of that length. `quick` shrinks everything for the tests.
FULL = dict(tokenizer=sentiment.TOKENIZER_FILE, n_layer=4, n_embd=128, block_size=48,
            pretrain_steps=500,
            pretrain_lr=3e-3, pretrain_batch=32, prompts=(512, 128), k=4, min_reward_gap=0.1,
            max_new_tokens=32,
            seed=1337)
QUICK = dict(FULL, n_layer=2, n_embd=96, pretrain_steps=200, prompts=(256, 64))


@dataclasses.dataclass
class Base:
    """What `prepare` returns: the tokenizer, the pre-trained reference model, the prompts and the
    pairs' files."""

    settings: dict
    tokenizer: object  # tiktoken.Encoding
    reference: object  # model.GPT, the pre-trained model (pi_SFT = pi_ref)
    reference_path: str  # its checkpoint, for --init
    train_prompts: list
    heldout_prompts: list
    pairs_train: str  # JSONL paths
    pairs_heldout: str
    pair_reports: dict  # split -> sentiment.PairReport as a dict


def tokenizer_record(setting, tokenizer):
    """What someone else needs to rebuild the tokenizer (data.tokenizer_description), with the ranks
    file's path relative to the checkout (the `setting` is the absolute path the code uses)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    name = os.path.relpath(setting, root) if setting.endswith(".tiktoken") else setting
    return {**data.tokenizer_description(tokenizer), "ranks_file": name,
            "special_tokens": {"<|endoftext|>": tokenizer.eot_token}}


def pretrain_config(out_dir, settings):
    """The TrainConfig of the base model's pre-training: the pretrain command's defaults, changed by
    `settings` (FULL or QUICK)."""
    return command_config("pretrain", out_dir=os.path.join(out_dir, "pretrain"),
                          tokenizer=settings["tokenizer"],
                          n_layer=settings["n_layer"], n_embd=settings["n_embd"],
                          block_size=settings["block_size"],
                          steps=settings["pretrain_steps"], batch_size=settings["pretrain_batch"],
                          lr=settings["pretrain_lr"], warmup_steps=30, seed=settings["seed"],
                          eval_every=max(10, settings["pretrain_steps"] // 5), save_every=10**9)


def prepare(out_dir, settings, log=print):
    """Pre-train the base model and build its preference pairs under OUT_DIR, or load them if
    cached."""
    cfg = pretrain_config(out_dir, settings)
    check_values(cfg)
    manifest_path = os.path.join(out_dir, "base.json")
    paths = {split: os.path.join(out_dir, f"pairs_{split}.jsonl") for split in ("train", "heldout")}
    ckpt = os.path.join(cfg.out_dir, "ckpt.pt")
    cached = None
    if os.path.isfile(manifest_path) and os.path.isfile(ckpt) and all(map(os.path.isfile,
                                                                          paths.values())):
        with open(manifest_path) as f:
            cached = json.load(f)
        # lists vs tuples: compare as JSON
        if cached["settings"] != json.loads(json.dumps(settings)):
            cached = None
    tokenizer = data.get_tokenizer(settings["tokenizer"])
    train_prompts, heldout_prompts = sentiment.make_prompts(*settings["prompts"], seed=0)
    if cached is not None:
        log(f"reusing the base model and pairs in {out_dir} (base.json has the same settings)")
        reference, pair_reports = load_model(ckpt), cached["pairs"]
    else:
        os.makedirs(out_dir, exist_ok=True)
        log("== pre-training the base model (the paper's SFT model and DPO's reference) ==")
        # not cached: pre-train anew, replacing an older run there
        reference, _ = commands.run_training("pretrain", dataclasses.replace(cfg, overwrite=True),
                                             log=log)
        log(f"== preference pairs: {settings['k']} samples per prompt, best vs worst by the "
            "ground-truth reward ==")
        pair_reports = {}
        for split, prompts, seed in (("train", train_prompts, 1), ("heldout", heldout_prompts, 2)):
            _, report = sentiment.build_preference_pairs(
                reference, tokenizer, prompts, k=settings["k"],
                                                         min_reward_gap=settings["min_reward_gap"],
                max_new_tokens=settings["max_new_tokens"], seed=seed, path=paths[split],
                                                         return_report=True)
            log(f"{split}: {report.summary()}")
            pair_reports[split] = dataclasses.asdict(report)
        with open(manifest_path, "w") as f:
            json.dump({"settings": settings, "pairs": pair_reports}, f, indent=2)
    return Base(settings, tokenizer, reference.eval(), ckpt, train_prompts, heldout_prompts,
                paths["train"],
                paths["heldout"], pair_reports)
