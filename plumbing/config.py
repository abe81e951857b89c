"""The commands and their configuration: one table of commands, one dataclass of settings, and the
validation.

`COMMANDS` is the table of train.py's commands: each one's summary and --help text, the work it
runs, what --init is to it and its defaults (what `train.py dpo --help` shows); the groups of
commands below it (TRAINING_COMMANDS, ...) are read off it. `TrainConfig` holds every setting of the
commands. Each field names its command-line flag, its help line, the commands that take it and its
allowed values, so `train.py` gives each command exactly its flags from this one source, and
`command_config` builds a command's configuration. `check_config` validates a whole configuration
before any work starts and raises `ConfigError` naming the flag at fault (`check_values` checks the
values alone, with the allowed values exported by the modules that own them); `resolve_lengths`
fills the lengths that default to the model's block size once the model is known.
"""

import contextlib
import dataclasses
import math
import os
from dataclasses import dataclass

import torch

import data
import dpo
from logprob_kernels import IMPLS
from reference import MODES as REFERENCE_MODES


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the flag (`--beta`) and the value at
    fault."""


# -----------------------------------------------------------------------------
# The commands: one table, from which train.py builds its parsers, --help and each flag's list of
# commands

@dataclass(frozen=True)
class Command:
    """A command of train.py: a line for the command list, the paragraph of its --help, the work it
    runs, what --init is to it, and its defaults where they differ from TrainConfig's (what
    `train.py NAME --help` shows)."""

    name: str
    summary: str
    description: str
    # "train": loop.train on --data; "rl": methods/rlhf.py; "sample": no training; "experiment"
    kind: str
    init: str = ""  # what --init is to a command that needs one ("": optional, or not taken)
    pairs: bool = False  # --data is preference data (pretrain's is text)
    lora: bool = False  # can train LoRA adapters on a frozen --init (--lora-rank)
    reference: bool = False  # trains against a reference model pi_ref
    defaults: dict = dataclasses.field(default_factory=dict)


SFT_MODEL, SFT_REFERENCE = "the SFT model", "the SFT model, which is also the frozen reference"
# DPO's defaults, shared by its family
PAIR_RUN = dict(lr=1e-5, steps=500, batch_size=16, schedule="constant")
COMMANDS = (
    Command("pretrain", "next-token prediction on a text file or the embedded reviews",
            "Next-token prediction on --data (a UTF-8 text file) or, by default, the "
            "embedded reviews.", "train",
            defaults=dict(out_dir="out/pretrain", lr=1e-3, steps=2000, batch_size=32,
                          warmup_steps=50)),
    Command("sft", "supervised fine-tuning on prompt + chosen",
            "Supervised fine-tuning of --init on prompt + chosen of --data (loss on "
            "response tokens only).", "train",
            pairs=True, lora=True,
            defaults=dict(out_dir="out/sft", lr=1e-4, steps=500, batch_size=16)),
    Command("dpo", "DPO against a frozen copy of --init",
            "DPO (paper Eq. 7) of --init on --data, with a frozen copy of --init (or "
            "--reference-init) as the reference; with --lora-rank, low-rank adapters on the frozen "
            "--init, the reference being the same network with its adapters off.", "train",
            SFT_REFERENCE, pairs=True, lora=True, reference=True,
            defaults=dict(out_dir="out/dpo", **PAIR_RUN)),
    Command("unlikelihood",
            "the paper's Unlikelihood baseline: raise log p(chosen), push down "
            "p(rejected) per token",
            "Unlikelihood (Welleck et al. 2019; a baseline of the DPO paper, section 6) of --init "
            "on --data: maximise log p(chosen) and log(1 - p) of each rejected "
            "token; no reference.", "train", SFT_MODEL,
            pairs=True, defaults=dict(out_dir="out/unlikelihood", **PAIR_RUN)),
    Command("reward-model", "the reward model of RLHF: Bradley-Terry on the same pairs",
            "Train a reward model (methods/reward_model.py: the --init trunk and a scalar head; "
            "Eq. 2 of the DPO paper) on the preference pairs of --data; keeps best.pt, the best "
            "held-out accuracy.", "train",
            "the SFT model, whose trunk the reward model starts from", pairs=True,
            defaults=dict(out_dir="out/reward-model", lr=1e-4, steps=500, batch_size=16,
                          keep_best=True,
                          eval_samples=2)),
    Command("simpo",
            "SimPO: DPO without a reference, on length-normalised log-probs, with a margin",
            "SimPO (Meng et al. 2024; methods/simpo.py) of --init on --data: -log sigma(beta * "
            "(mean log p(chosen) - mean log p(rejected)) - gamma); no reference model.", "train",
            SFT_MODEL, pairs=True,
            lora=True, defaults=dict(out_dir="out/simpo", **PAIR_RUN, beta=2.0)),
    Command("orpo", "ORPO: SFT and an odds-ratio preference term in one loss, no reference",
            "ORPO (Hong et al. 2024; methods/orpo.py) of --init (a base model: no SFT stage "
            "needed) on --data: the chosen response's NLL minus beta * log sigma(log odds ratio); "
            "no reference model.", "train",
            "the base model (ORPO needs no SFT stage)", pairs=True, lora=True,
            defaults=dict(out_dir="out/orpo", **PAIR_RUN, beta=0.1)),
    Command("kto", "KTO: single completions marked desirable or undesirable, against a reference",
            "KTO (Ethayarajh et al. 2024; methods/kto.py) of --init on --data: TRL's unpaired "
            "format (prompt, completion, label) or pairs split in two; a frozen copy of --init is "
            "the reference, the KL estimate from mismatched pairs the reference point.", "train",
            SFT_REFERENCE, pairs=True, lora=True,
            reference=True, defaults=dict(out_dir="out/kto", **PAIR_RUN, beta=0.1)),
    Command("ppo",
            "RLHF's PPO on the sentiment task, with a reward model or the ground truth (PPO-GT)",
            "PPO (methods/ppo.py, methods/rlhf.py) of --init on the sentiment task's training "
            "prompts: rollouts scored by --reward-model (or --ground-truth-reward, the paper's "
            "oracle), a KL penalty toward --init, GAE, a value model started from the reward "
            "model, clipped updates.", "rl", SFT_REFERENCE,
            defaults=dict(out_dir="out/ppo", lr=1e-4, steps=100, batch_size=64,
                          samples_per_prompt=1,
                          max_new_tokens=32, eval_every=20, save_every=20)),
    Command("rloo",
            "REINFORCE leave-one-out on the sentiment task: k samples a prompt, no value model",
            "RLOO (Ahmadian et al. 2024; methods/ppo.py, methods/rlhf.py) of --init on the "
            "sentiment task's training prompts: --samples-per-prompt rollouts each, scored by "
            "--reward-model (or the ground truth), each one's baseline the mean of the others.",
            "rl", SFT_REFERENCE,
            defaults=dict(out_dir="out/rloo", lr=1e-4, steps=100, batch_size=16,
                          samples_per_prompt=4,
                          max_new_tokens=32, eval_every=20, save_every=20)),
    Command("pairs",
            "sample completions and write preference pairs labelled by the ground-truth reward",
            "Sample --samples-per-prompt completions from --init for the sentiment task's training "
            "prompts and write best-vs-worst preference pairs (ground-truth reward: VADER) to "
            "OUT_DIR/pairs.jsonl.", "sample",
            "the model to sample from", defaults=dict(out_dir="out/pairs")),
    Command("eval", "reward, win rate and KL of --init against --reference-init, from samples",
            "Compare --init (policy) with --reference-init on the sentiment task's held-out "
            "prompts: ground-truth reward, win rate, KL(policy || reference); writes "
            "OUT_DIR/eval.json.", "sample",
            "the model to sample from", defaults=dict(out_dir="out/eval")),
    Command("sample", "print completions of --init",
            "Print a completion of --init for each --prompt (default: five held-out prompts).",
            "sample",
            "the model to sample from"),
    Command("demo", "the embedded sentiment experiment, end to end (the default)",
            "experiments/demo.py", "experiment"),
    Command("frontier",
            "the reward-KL frontier of DPO, RLHF and DPO's family (paper Figure 2, left)",
            "experiments/frontier.py", "experiment"),
    Command("study",
            "a single-GPU user's questions in miniature (after the BTLM-Chat DPO "
            "study, Cerebras 2023)",
            "experiments/study.py", "experiment"),
    Command("open-questions",
            "the paper's open questions: self-labeling, over-optimization, out of distribution",
            "experiments/open_questions.py", "experiment"),
)
# the commands of TrainConfig's flags
COMMAND_NAMES = tuple(c.name for c in COMMANDS if c.kind != "experiment")
TRAINING_COMMANDS = tuple(c.name for c in COMMANDS if c.kind == "train")
# reinforcement learning (methods/rlhf.py)
RL_COMMANDS = tuple(c.name for c in COMMANDS if c.kind == "rl")
PAIR_COMMANDS = tuple(c.name for c in COMMANDS if c.pairs)  # read preference data (--data)
# train a language model
POLICY_COMMANDS = tuple(name for name in TRAINING_COMMANDS if name != "reward-model")
LORA_COMMANDS = tuple(c.name for c in COMMANDS if c.lora)
REFERENCE_COMMANDS = tuple(c.name for c in COMMANDS if c.reference)
# DPO's family since the paper: methods/simpo.py, orpo.py, kto.py
FAMILY_COMMANDS = ("simpo", "orpo", "kto")
# the commands that train: a run directory, checkpoints, --resume
RUN_COMMANDS = TRAINING_COMMANDS + RL_COMMANDS
# over TrainConfig's
COMMAND_DEFAULTS = {c.name: c.defaults for c in COMMANDS if c.kind != "experiment"}
SCHEDULES = ("cosine", "constant")  # the learning rate after warm-up (loop.learning_rate)
DTYPES = ("auto", "float32", "bfloat16", "float16")  # the autocast dtype (resolve_device)
FRESH_MODEL = "a fresh model (pretrain, sft without --init; ignored with --init)"
LORA = "LoRA: low-rank adapters on a frozen --init model (used with --lora-rank > 0)"
RL = "reinforcement learning"
# the KL coefficient's ceiling (--kl-coef, and ppo.AdaptiveKL's): past where the reward matters
MAX_KL_COEF = 1e6


def option(flag, default, help, commands=TRAINING_COMMANDS, choices=None, group=None):
    """A TrainConfig field: its flag (None: not a flag), default, help line, the commands that take
    it, its allowed values (None: any) and its --help group."""
    return dataclasses.field(default=default,
                             metadata=dict(flag=flag, help=help, commands=commands, choices=choices,
                                           group=group))


@dataclass
class TrainConfig:
    out_dir: str = option("--out-dir", "out/run",
                          "directory for the run's outputs (config, metrics, checkpoints)",
                          COMMAND_NAMES[:-1])
    init: str = option("--init", "",
                       "the starting model: a ckpt.pt of ours (or its directory), a Hugging Face "
                       "GPT-2 directory, or a hub name such as gpt2; '' = a fresh model (dpo: the "
                       "SFT model, which is also the frozen reference)", COMMAND_NAMES)
    data: str = option("--data", "",
                       "pretrain: a UTF-8 text file ('' = the embedded reviews); the "
                       "other commands: "
                       "preference data (kto: also TRL's unpaired format), a .jsonl/.json file, a "
                       "dataset directory or hub name, optionally NAME:split")
    heldout_data: str = option("--heldout-data", "",
                               "held-out preference data, as --data; '' = the dataset's test "
                               "split when it has one, else a --heldout-fraction of --data",
                               PAIR_COMMANDS)
    heldout_fraction: float = option("--heldout-fraction", 0.05,
                                     "share of --data held out for evaluation (without "
                                     "--heldout-data)")
    tokenizer: str = option("--tokenizer", "bytes",
                            "'bytes' (offline, byte-level), 'gpt2' (tiktoken's BPE; needs "
                            "the network or TIKTOKEN_CACHE_DIR), a path to a "
                            ".tiktoken BPE ranks file, or a Hugging Face checkpoint directory "
                            "holding a byte-level BPE tokenizer.json (GPT-2, SmolLM2, Llama 3, "
                            "Qwen2.5; or the tokenizer.json itself): the same ids, its EOS",
                            COMMAND_NAMES)
    chat_template: str = option("--chat-template", "auto",
                                "how conversational rows (lists of role/content messages) "
                                "become tokens: 'auto' = the chat template of the --tokenizer "
                                "checkpoint (chat_template.jinja or tokenizer_config.json) when "
                                "it has one, else HH text; 'hh' = always HH text; or a path to a "
                                "Jinja template file. A template renders the prompt with the "
                                "assistant's header; the loss sees the assistant's turn only",
                                PAIR_COMMANDS)
    max_length: int = option("--max-length", 0,
                             "tokens per row: prompt + response, or pretrain's window; 0 = the "
                             "model's block size")
    max_prompt_length: int = option("--max-prompt-length", 0,
                                    "most prompt tokens kept when a pair is too long; "
                                    "0 = half of --max-length", PAIR_COMMANDS)
    # a fresh model
    n_layer: int = option("--n-layer", 4, "transformer blocks", ("pretrain", "sft"),
                          group=FRESH_MODEL)
    n_head: int = option("--n-head", 4, "attention heads per block", ("pretrain", "sft"),
                         group=FRESH_MODEL)
    n_embd: int = option("--n-embd", 128, "embedding width", ("pretrain", "sft"), group=FRESH_MODEL)
    block_size: int = option("--block-size", 256, "positions the model supports",
                             ("pretrain", "sft"),
                             group=FRESH_MODEL)
    dropout: float = option("--dropout", 0.0, "dropout probability", ("pretrain", "sft"),
                            group=FRESH_MODEL)
    # optimisation
    steps: int = option("--steps", 1000,
                        "optimizer steps (ppo, rloo: iterations of rollouts and updates)",
                        RUN_COMMANDS)
    batch_size: int = option("--batch-size", 32,
                             "examples (pretrain: windows; kto: completions; ppo, rloo: prompts; "
                             "the others: pairs) per optimizer step (ppo, rloo: iteration), over "
                             "all processes (torchrun: each takes an equal share)",
                             RUN_COMMANDS)
    grad_accum: int = option("--grad-accum", 1,
                             "micro-batches per step in each process (processes x this must "
                             "divide --batch-size)")
    lr: float = option("--lr", 3e-4, "peak learning rate (AdamW; ppo, rloo: constant)",
                       RUN_COMMANDS)
    schedule: str = option("--schedule", "cosine",
                           "after linear warm-up: cosine decay to --min-lr-ratio * --lr, or "
                           "constant", choices=SCHEDULES)
    min_lr_ratio: float = option("--min-lr-ratio", 0.1,
                                 "the cosine schedule's final learning rate, as a fraction "
                                 "of --lr")
    warmup_steps: int = option("--warmup-steps", 20, "steps of linear learning-rate warm-up")
    weight_decay: float = option("--weight-decay", 0.1,
                                 "AdamW weight decay on weight matrices and embeddings",
                                 RUN_COMMANDS)
    grad_clip: float = option("--grad-clip", 1.0, "clip the gradient's global norm to this",
                              RUN_COMMANDS)
    # DPO
    loss: str = option("--loss", "sigmoid",
                       "the DPO loss (dpo.py): sigmoid (Eq. 7; cDPO with --label-smoothing), "
                       "ipo, hinge, robust", ("dpo",), choices=dpo.LOSS_TYPES)
    beta: float = option("--beta", 0.1,
                         "beta: dpo, kto: the strength of the KL penalty (Eq. 3, 7); simpo: the "
                         "reward's scale; orpo: the odds-ratio term's weight (the paper's lambda)",
                         ("dpo",) + FAMILY_COMMANDS)
    simpo_gamma: float = option("--simpo-gamma", 1.0, "SimPO's target margin between the rewards",
                                ("simpo",))
    desirable_fraction: float = option("--desirable-fraction", 1.0,
                                       "keep this fraction of the desirable training "
                                       "examples (KTO on imbalanced data)", ("kto",))
    desirable_weight: float = option("--desirable-weight", 0.0,
                                     "KTO's weight of a desirable example; 0 = balance "
                                     "the two kinds (weight x count equal, as the KTO "
                                     "paper recommends)", ("kto",))
    undesirable_weight: float = option("--undesirable-weight", 1.0,
                                       "KTO's weight of an undesirable example",
                                       ("kto",))
    label_smoothing: float = option("--label-smoothing", 0.0,
                                    "probability that a preference label is flipped "
                                    "(cDPO, robust)", ("dpo",))
    rpo_alpha: float = option("--rpo-alpha", 0.0,
                              "weight of the chosen response's per-token NLL added to the DPO "
                              "loss (RPO, Pang et al. 2024; TRL's rpo_alpha)", ("dpo",))
    unlikelihood_alpha: float = option("--unlikelihood-alpha", 1.0,
                                       "weight in [0, 1] of the unlikelihood term on "
                                       "the rejected response", ("unlikelihood",))
    reference: str = option("--reference", "precompute",
                            "precompute: the reference's log-probs once, then the "
                            "reference is freed; live: every step (with LoRA the reference is the "
                            "policy with its adapters off: no copy either way)", REFERENCE_COMMANDS,
                            choices=REFERENCE_MODES)
    # LoRA (plumbing/lora.py)
    lora_rank: int = option("--lora-rank", 0,
                            "train low-rank adapters of this rank on a frozen --init model "
                            "instead of all weights (LoRA); 0 = full fine-tuning", LORA_COMMANDS,
                            group=LORA)
    lora_alpha: float = option("--lora-alpha", 16.0,
                               "LoRA's alpha: the update B A is scaled by alpha / rank",
                               LORA_COMMANDS, group=LORA)
    lora_dropout: float = option("--lora-dropout", 0.0, "dropout on the adapters' input",
                                 LORA_COMMANDS, group=LORA)
    lora_targets: str = option("--lora-targets", "auto",
                               "comma-separated names of the linear layers that get adapters; "
                               "auto: every projection of the model's blocks (GPT-2: c_attn, "
                               "c_proj, c_fc; Llama: q/k/v/o_proj, gate/up/down_proj); c_proj "
                               "matches attention's and the MLP's, attn.c_proj one of them",
                               LORA_COMMANDS, group=LORA)
    # sampling (pairs, eval, sample)
    samples_per_prompt: int = option("--samples-per-prompt", 4,
                                     "completions sampled per prompt (pairs: the best and "
                                     "worst make a pair; rloo: k, the leave-one-out group)",
                                     ("pairs",) + RL_COMMANDS)
    max_new_tokens: int = option("--max-new-tokens", 64, "most tokens sampled per completion",
                                 ("pairs", "eval", "sample", "reward-model") + RL_COMMANDS)
    min_reward_gap: float = option("--min-reward-gap", 0.2,
                                   "drop a prompt whose best - worst reward is below this",
                                   ("pairs",))
    reference_init: str = option("--reference-init", "",
                                 "eval: the reference model to compare --init with; dpo, "
                                 "kto: the frozen reference pi_ref ('' = the --init model); "
                                 "a path as --init",
                                 ("eval",) + REFERENCE_COMMANDS)
    num_prompts: int = option("--num-prompts", 0, "use the first N of the task's prompts (0 = all)",
                              ("pairs", "eval"))
    # reinforcement learning (ppo, rloo; methods/rlhf.py, methods/ppo.py)
    reward_model: str = option("--reward-model", "",
                               "the reward model the policy is trained on: a checkpoint of "
                               "`train.py reward-model` (its best.pt)", RL_COMMANDS, group=RL)
    ground_truth_reward: bool = option("--ground-truth-reward", False,
                                       "train on the task's ground-truth reward "
                                       "instead of a reward model (the paper's PPO-GT oracle)",
                                       RL_COMMANDS, group=RL)
    kl_coef: float = option("--kl-coef", 0.05,
                            "the KL penalty's coefficient (Eq. 3's beta), per token", RL_COMMANDS,
                            group=RL)
    target_kl: float = option("--target-kl", 0.0,
                              "steer --kl-coef toward this KL per rollout (nats; Ziegler et al. "
                              "2019); 0 = a fixed coefficient", RL_COMMANDS, group=RL)
    kl_horizon: float = option("--kl-horizon", 10000.0,
                               "the adaptive KL controller's horizon, in rollouts (Ziegler "
                               "et al. 2019); at least one iteration's rollouts", RL_COMMANDS,
                               group=RL)
    clip: float = option("--clip", 0.2, "PPO's clip range of the probability ratio", ("ppo",),
                         group=RL)
    value_clip: float = option("--value-clip", 0.2, "PPO's clip range of the value update",
                               ("ppo",), group=RL)
    value_lr: float = option("--value-lr", 1e-4, "the value model's learning rate (AdamW)",
                             ("ppo",), group=RL)
    gamma: float = option("--gamma", 1.0, "the discount of GAE", ("ppo",), group=RL)
    lam: float = option("--lam", 0.95, "GAE's lambda", ("ppo",), group=RL)
    ppo_epochs: int = option("--ppo-epochs", 4, "passes over each batch of rollouts", ("ppo",),
                             group=RL)
    minibatches: int = option("--minibatches", 4,
                              "minibatches per pass (must divide --batch-size x "
                              "--samples-per-prompt)", ("ppo",), group=RL)
    # evaluation and checkpoints
    eval_every: int = option("--eval-every", 50, "steps between held-out evaluations", RUN_COMMANDS)
    early_stop_patience: int = option("--early-stop-patience", 0,
                                      "evaluations without a better held-out score "
                                      "before stopping (0 = off)")
    keep_best: bool = option("--keep-best", False,
                             "keep best.pt, the weights at the best held-out score (also with "
                             "--early-stop-patience)")
    eval_samples: int = option("--eval-samples", 0,
                               "after training, score this many fresh samples of --init per "
                               "held-out prompt of the sentiment task with the reward model and "
                               "the ground truth (Pearson and Spearman correlation, "
                               "reward_eval.json); 0 = off", ("reward-model",))
    save_every: int = option("--save-every", 200,
                             "steps between checkpoints (one is always written at the end)",
                             RUN_COMMANDS)
    keep_checkpoints: bool = option("--keep-checkpoints", False,
                                    "also keep the weights of every checkpoint as "
                                    "step_NNNNNN.pt (to evaluate a run along the way)",
                                    RUN_COMMANDS)
    resume: bool = option("--resume", False,
                          "continue the run in OUT_DIR from its ckpt.pt, exactly where it stopped "
                          "(the same command, model and tokenizer; from step 0 if it stopped "
                          "before its first checkpoint)", RUN_COMMANDS)
    overwrite: bool = option("--overwrite", False,
                             "start anew in an OUT_DIR that holds another run, removing that "
                             "run's files first (without it such a directory is refused)",
                             RUN_COMMANDS)
    # hardware
    device: str = option("--device", "auto",
                         "auto (cuda when available, else cpu), cpu, cuda or cuda:N",
                         COMMAND_NAMES)
    dtype: str = option("--dtype", "auto",
                        "autocast dtype: auto (bfloat16 on CUDA, float32 on CPU), float32, "
                        "bfloat16, float16 (with a gradient scaler; not for ppo, rloo)",
                        RUN_COMMANDS,
                        choices=DTYPES)
    impl: str = option("--impl", "auto",
                       "log-prob kernel: auto (Triton on CUDA, torch on CPU), triton, torch",
                       POLICY_COMMANDS + RL_COMMANDS + ("eval",), choices=IMPLS)
    fused_linear: bool = option("--fused-linear", False,
                                "log-probs from the last hidden states and the LM-head "
                                "weight without the (B, T, V) logits "
                                "(logprob_kernels.linear_sequence_logprobs), for the policy and "
                                "the DPO reference", ("pretrain", "sft", "dpo") + FAMILY_COMMANDS)
    compile: bool = option("--compile", False, "torch.compile the model for training",
                           POLICY_COMMANDS)
    world_size: int = option(None, 1,
                             "processes training data-parallel (torchrun --nproc_per_node "
                             "N): not a flag, "
                             "set from the process group when training starts and "
                             "recorded in config.json", ())
    threads: int = option("--threads", 0,
                          "CPU threads torch uses while training and sampling (0 = torch's "
                          "default, one per core, for training and one thread for sampling, "
                          "which a busy neighbour slows down least: bench/bench_threads.py; "
                          "under torchrun, the cores shared among the node's processes); "
                          "recorded in config.json: the thread count changes the order of "
                          "floating-point sums, so a run is bit-for-bit repeatable only with the "
                          "same count", TRAINING_COMMANDS + RL_COMMANDS)
    seed: int = option("--seed", 1337,
                       "seed of the data order, initialisation, dropout and sampling",
                       COMMAND_NAMES)


# field name -> "--flag"
FLAGS = {field.name: field.metadata["flag"] for field in dataclasses.fields(TrainConfig)}


def command_config(command, **changes):
    """The TrainConfig of command `command`: the fields' defaults, then the command's
    (COMMAND_DEFAULTS), then `changes` (field names and values). Raises TypeError for a name that is
    not a field."""
    return TrainConfig(**{**COMMAND_DEFAULTS.get(command, {}), **changes})


def _need(cfg, ok, name, requirement):
    if not ok:
        value = getattr(cfg, name)
        raise ConfigError(f"{FLAGS[name]}{'' if isinstance(value, bool) else ' ' + repr(value)}: "
                          f"{requirement}")


def check_values(cfg):
    """Check every field's value (ranges, choices, the device); raise ConfigError naming the flag at
    fault."""
    def need(ok, name, requirement):
        _need(cfg, ok, name, requirement)

    for f in dataclasses.fields(TrainConfig):
        choices = f.metadata["choices"]
        need(choices is None or getattr(cfg, f.name) in choices, f.name,
             f"must be one of {', '.join(choices or ())}")
    for name in ("steps", "batch_size", "grad_accum", "lr", "eval_every", "save_every",
                 "max_new_tokens", "beta", "grad_clip", "n_layer", "n_head", "n_embd",
                 "block_size"):
        need(getattr(cfg, name) > 0 and math.isfinite(getattr(cfg, name)), name, "must be > 0")
    for name in ("max_length", "max_prompt_length", "warmup_steps", "weight_decay",
                 "early_stop_patience", "num_prompts", "min_reward_gap"):
        need(0 <= getattr(cfg, name) < math.inf, name, "must be >= 0 and finite")
    need(0 <= cfg.threads <= 4096, "threads", "must be between 0 (torch's default) and 4096")
    need(0 <= cfg.seed < 2**32, "seed",
         "must be in [0, 2**32): the generators of torch, numpy and python take it")
    need(0 < cfg.heldout_fraction < 1, "heldout_fraction", "must be between 0 and 1")
    need(0 <= cfg.min_lr_ratio <= 1, "min_lr_ratio", "must be between 0 and 1")
    need(0 <= cfg.dropout < 1, "dropout", "must be in [0, 1)")
    need(0 <= cfg.unlikelihood_alpha <= 1, "unlikelihood_alpha", "must be in [0, 1]")
    need(cfg.lora_rank >= 0, "lora_rank", "must be >= 0 (0 = full fine-tuning)")
    need(0 < cfg.lora_alpha < math.inf, "lora_alpha", "must be > 0")
    need(0 <= cfg.lora_dropout < 1, "lora_dropout", "must be in [0, 1)")
    need(all(lora_targets(cfg) or ["auto"]), "lora_targets",
         "must be comma-separated layer names, e.g. c_attn,c_proj,c_fc")
    need(cfg.tokenizer in data.TOKENIZER_NAMES or cfg.tokenizer.endswith(".tiktoken")
         or data.is_hf_tokenizer_path(cfg.tokenizer), "tokenizer",
         f"must be {', '.join(data.TOKENIZER_NAMES)}, a path to a .tiktoken file, or a Hugging "
         "Face checkpoint directory holding tokenizer.json (or that file)")
    try:  # DPO's loss settings, by the one check dpo_loss uses too
        dpo.check_settings(cfg.beta, cfg.loss, cfg.label_smoothing, cfg.rpo_alpha)
    except (TypeError, ValueError) as e:
        argument = str(e).split()[0].split("=")[0]  # dpo names the argument first
        raise ConfigError(f"{FLAGS.get(argument, '--loss')}: {e}") from None
    need(cfg.batch_size % cfg.grad_accum == 0, "grad_accum",
         f"must divide --batch-size {cfg.batch_size}")
    need(cfg.batch_size % (cfg.world_size * cfg.grad_accum) == 0, "batch_size",
         f"must be divisible by {cfg.world_size} processes x --grad-accum {cfg.grad_accum}: each "
         f"process takes an equal share of every step")
    need(not (cfg.compile and cfg.fused_linear), "compile",
         "compiles the model's forward (the logits), which --fused-linear never calls; "
         "drop one of the two")
    need(cfg.n_embd % cfg.n_head == 0, "n_head", f"must divide --n-embd {cfg.n_embd}")
    need(cfg.samples_per_prompt >= 1, "samples_per_prompt", "must be >= 1")
    need(cfg.eval_samples >= 0, "eval_samples", "must be >= 0 (0 = off)")
    need(cfg.simpo_gamma >= 0 and math.isfinite(cfg.simpo_gamma), "simpo_gamma", "must be >= 0")
    need(0 < cfg.desirable_fraction <= 1, "desirable_fraction", "must be in (0, 1]")
    for name in ("desirable_weight", "undesirable_weight"):
        need(getattr(cfg, name) >= 0 and math.isfinite(getattr(cfg, name)), name, "must be >= 0")
    need(0 <= cfg.kl_coef <= MAX_KL_COEF, "kl_coef", f"must be >= 0 and at most {MAX_KL_COEF:g}")
    need(cfg.target_kl >= 0 and math.isfinite(cfg.target_kl), "target_kl",
         "must be >= 0 (0 = a fixed --kl-coef)")
    need(cfg.target_kl == 0 or cfg.kl_coef > 0, "target_kl",
         "steers --kl-coef by multiplying it, and --kl-coef is "
         "0: give --kl-coef > 0 (the starting coefficient), or drop --target-kl")
    for name in ("clip", "value_clip", "value_lr", "kl_horizon", "ppo_epochs", "minibatches"):
        need(getattr(cfg, name) > 0 and math.isfinite(getattr(cfg, name)), name, "must be > 0")
    need(0 <= cfg.gamma <= 1, "gamma", "must be in [0, 1]")
    need(0 <= cfg.lam <= 1, "lam", "must be in [0, 1]")
    need(cfg.max_length == 0 or cfg.max_length >= 2, "max_length",
         "must be >= 2 (or 0: the model's block size)")
    need(cfg.max_length == 0 or cfg.max_prompt_length < cfg.max_length, "max_prompt_length",
         f"must be below --max-length {cfg.max_length}")
    need(not (cfg.resume and cfg.overwrite), "overwrite",
         "contradicts --resume: continue the run in --out-dir, or "
         "replace it, not both")
    need(cfg.world_size == 1 or not cfg.device.startswith("cuda:"), "device",
         "under torchrun each process uses cuda:LOCAL_RANK: pass --device cuda (or auto)")
    try:
        device = resolve_device(cfg)[0]
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"--device {cfg.device!r}: {e}") from None
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    need(not (cfg.impl == "triton" and device.type == "cpu" and not interpreted), "impl",
         "the Triton kernel on a CPU needs TRITON_INTERPRET=1 set in the environment (or "
         "use --impl torch)")


def check_config(command, cfg):
    """Validate the whole configuration of command `command` before any work; raise ConfigError
    naming the flag.

    `check_values`, plus the flags the command requires, that local paths exist, and that --resume
    has a checkpoint. Lengths that default to the model (0) are resolved later by `resolve_lengths`,
    once the model is known.
    """
    if command not in COMMAND_NAMES:
        raise ConfigError(f"unknown command {command!r}; expected one of {COMMAND_NAMES}")

    def need(ok, name, requirement):
        _need(cfg, ok, name, requirement)

    what_init_is = next(c.init for c in COMMANDS if c.name == command)
    need(cfg.init or not what_init_is, "init", f"{command} needs --init: {what_init_is}")
    if command in ("pairs", "rloo"):
        need(cfg.samples_per_prompt >= 2, "samples_per_prompt", "must be >= 2 " + (
            "to form a pair" if command == "pairs" else "(the others' mean is each "
                                                                                   "sample's "
                                                                                   "baseline)"))
    if cfg.lora_rank and command in LORA_COMMANDS:
        need(cfg.init, "lora_rank",
             "LoRA needs --init: the model whose weights stay frozen under the adapters")
    if cfg.lora_rank and command in REFERENCE_COMMANDS:
        need(not cfg.reference_init, "reference_init",
             "with LoRA the reference is the --init model under the "
             "adapters (switched off); drop --reference-init or --lora-rank")
    need(not (cfg.fused_linear and command == "unlikelihood"), "fused_linear",
         "unlikelihood needs every token's log-prob, which the fused path does not return; "
         "drop --fused-linear")
    if command in PAIR_COMMANDS:
        need(cfg.data, "data",
             f"{command} needs --data: a preference file (JSONL/JSON, HH-RLHF) or dataset name")
    if command == "eval":
        need(cfg.reference_init, "reference_init",
             "eval needs --reference-init: the reference model")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for name in ("init", "reference_init", "data", "heldout_data", "reward_model"):
        value = getattr(cfg, name)
        if value and command in fields[name].metadata["commands"]:
            # a local text file, never a hub name
            text_file = name == "data" and command == "pretrain"
            need(not (data.missing_local_path(value) or (text_file and not os.path.isfile(value))),
                 name,
                 "no such file or directory")
    need(not cfg.tokenizer.endswith((".tiktoken", ".json")) or os.path.isfile(cfg.tokenizer),
         "tokenizer", "no such file or directory")
    if command in PAIR_COMMANDS:
        need(cfg.chat_template in ("auto", "hh") or os.path.isfile(cfg.chat_template),
             "chat_template", "must be auto, hh or a Jinja template file: no such file")
    if command != "sample":  # every other command writes into --out-dir
        need(cfg.out_dir and not os.path.isfile(cfg.out_dir), "out_dir",
             "must name a directory (new, or one "
             "this command may write into), not a file")
    check_values(cfg)
    if command in RL_COMMANDS:
        check_reinforcement_learning(cfg)
    if not cfg.init and command in ("pretrain", "sft"):
        need(cfg.max_length <= cfg.block_size, "max_length",
             f"exceeds --block-size {cfg.block_size}")
    if cfg.resume:
        ckpt, recorded = os.path.join(cfg.out_dir, "ckpt.pt"), os.path.join(cfg.out_dir,
                                                                            "config.json")
        need(os.path.isfile(ckpt) or os.path.isfile(recorded), "resume",
             f"no run to resume in {cfg.out_dir}: neither ckpt.pt nor config.json is there")


def check_reinforcement_learning(cfg):
    """What ppo and rloo need beyond check_values: one reward, and settings the loop supports."""
    def need(ok, name, requirement):
        _need(cfg, ok, name, requirement)

    need(bool(cfg.reward_model) != cfg.ground_truth_reward, "reward_model",
         "give --reward-model (a reward model's "
         "checkpoint) or --ground-truth-reward (the oracle), exactly one of the two")
    need(cfg.batch_size * cfg.samples_per_prompt % cfg.minibatches == 0, "minibatches",
         "must divide --batch-size x --samples-per-prompt = "
         f"{cfg.batch_size * cfg.samples_per_prompt}")
    rollouts = cfg.batch_size * cfg.samples_per_prompt
    need(not cfg.target_kl or cfg.kl_horizon >= rollouts, "kl_horizon",
         f"must be at least the rollouts of one "
         f"iteration (--batch-size x --samples-per-prompt = {rollouts}): the controller multiplies "
         f"--kl-coef by 1 + error x rollouts / horizon, which a shorter horizon could make "
         f"negative (ppo.AdaptiveKL)")
    need(cfg.dtype != "float16", "dtype",
         "float16 needs a gradient scaler, which ppo and rloo do not use: use "
         "bfloat16 or float32")
    need(int(os.environ.get("WORLD_SIZE", "1")) == 1, "device",
         "ppo and rloo run in one process, not under "
         "torchrun")


def lora_targets(cfg):
    """--lora-targets as a tuple of names: "c_attn, c_fc" -> ("c_attn", "c_fc"); "auto" -> None
    (lora.apply_lora then takes the model's own lora_targets)."""
    if cfg.lora_targets == "auto":
        return None
    return tuple(name.strip() for name in cfg.lora_targets.split(","))


def resolve_lengths(cfg, block_size):
    """`cfg` with --max-length 0 set to the model's `block_size`, and --max-prompt-length 0 to half
    of it.

    Raises ConfigError when --max-length exceeds what the model supports."""
    max_length = cfg.max_length or block_size
    if max_length > block_size:
        raise ConfigError(f"--max-length {max_length} exceeds the model's block size {block_size}")
    if cfg.max_prompt_length >= max_length:
        raise ConfigError(f"--max-prompt-length {cfg.max_prompt_length}: must be below "
                          f"--max-length {max_length} (the model's block size)")
    return dataclasses.replace(cfg, max_length=max_length,
                               max_prompt_length=cfg.max_prompt_length or max_length // 2)


def resolve_device(cfg):
    """(device, autocast context factory, grad scaler or None) for `cfg.device` / `cfg.dtype`.

    Raises RuntimeError for a CUDA device that is not there."""
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0)
                                  >= torch.cuda.device_count()):
        raise RuntimeError(f"no such CUDA device here ({torch.cuda.device_count()} visible)")
    if device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index is not None):
        raise ValueError("expected auto, cpu, cuda or cuda:N")
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32,
             "float32": torch.float32, "bfloat16": torch.bfloat16,
             "float16": torch.float16}[cfg.dtype]
    if dtype == torch.float32:
        return device, contextlib.nullcontext, None
    autocast = lambda: torch.autocast(device_type=device.type, dtype=dtype)  # noqa: E731
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return device, autocast, scaler
