"""The commands' work: each command builds the model, the data and the objective it needs from a
`TrainConfig`, then runs (the commands are the table COMMANDS of plumbing/config.py).

    run_training(command, cfg)  a command of TRAINING_COMMANDS: model + data + objective ->
                                loop.train
    run_rl(command, cfg)        ppo or rloo: policy + reward (model or ground truth) ->
                                methods/rlhf.py
    run_pairs(cfg)  sample completions of --init on the sentiment task's prompts, write preference
                    pairs
    run_eval(cfg)   --init (policy) against --reference-init on held-out prompts: reward, win rate,
                    KL
    run_sample(cfg, prompts)  one completion of --init per prompt

Each validates its whole configuration first (`config.check_config`) and loads everything it needs
before it writes anything, so a run that cannot start leaves no files behind. This is the one module
that knows every training method (`objective`): the loop (loop.py) and each method's file know only
their own. `train.py` is the command line. Under torchrun (plumbing/data_parallel.py) every process
runs run_training alike; rank 0 alone writes.
"""

import copy
import dataclasses
import functools
import json
import math
import os
import shutil

import torch

import data
import dpo
import sentiment
from loop import train
from methods import kto, next_token, orpo, reward_model, rlhf, simpo, unlikelihood
from model import GPT, GPTConfig
from plumbing import data_parallel, lora, run_dir
from plumbing.checkpoint import load_model
from plumbing.config import (
    LORA_COMMANDS,
    REFERENCE_COMMANDS,
    ConfigError,
    check_config,
    lora_targets,
    resolve_device,
    resolve_lengths,
)
from reference import Reference

# What hf/ gets beside the weights when --tokenizer is a Hugging Face checkpoint's, so that the
# export is a checkpoint transformers (and this code) can load with its tokenizer and chat template
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "generation_config.json")


def build_model(cfg, tokenizer):
    """The --init model (our checkpoint, or a Hugging Face GPT-2, Llama or Qwen2 directory), or a
    fresh GPT sized by the config's fields. ConfigError when --init ships a tokenizer.json that
    --tokenizer does not name (the ids would not be the model's)."""
    if cfg.init:
        check_init_tokenizer(cfg)
        model = load_model(cfg.init)
    else:
        # exactly the tokenizer's vocabulary: a padded one would let sampling emit ids that cannot
        # be decoded
        check_fresh_model_fits(cfg, tokenizer.n_vocab)
        model = GPT(GPTConfig(block_size=cfg.block_size, vocab_size=tokenizer.n_vocab,
                              n_layer=cfg.n_layer,
                              n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout))
    if tokenizer.n_vocab > model.config.vocab_size:
        raise ConfigError(f"--tokenizer {cfg.tokenizer}: it has {tokenizer.n_vocab} tokens but the "
                          f"model {cfg.init or '(fresh)'} has vocab_size "
                          f"{model.config.vocab_size}: use the tokenizer the model "
                          "was trained with")
    return model


def check_init_tokenizer(cfg):
    """ConfigError when --init is a directory holding a Hugging Face tokenizer (its tokenizer.json,
    or hf/tokenizer.json of a run of ours) and --tokenizer is not a Hugging Face tokenizer."""
    for directory in (cfg.init, os.path.join(cfg.init, "hf")):
        shipped = os.path.join(directory, "tokenizer.json")
        if os.path.isfile(shipped) and not data.is_hf_tokenizer_path(cfg.tokenizer):
            raise ConfigError(f"--init {cfg.init} ships its tokenizer ({shipped}) but --tokenizer "
                              f"is {cfg.tokenizer!r}: pass --tokenizer {directory}")


def export_hf(model, cfg, tokenizer):
    """Write out_dir/hf: the weights in the Hugging Face layout (EOS = the tokenizer's) and, when
    --tokenizer is a checkpoint's, its TOKENIZER_FILES beside them."""
    hf_dir = os.path.join(cfg.out_dir, "hf")
    model.save_pretrained(hf_dir, eos_token_id=tokenizer.eot_token)
    if data.is_hf_tokenizer_path(cfg.tokenizer):
        source = cfg.tokenizer if os.path.isdir(cfg.tokenizer) else os.path.dirname(cfg.tokenizer)
        for name in TOKENIZER_FILES:
            if os.path.isfile(os.path.join(source, name)):
                shutil.copyfile(os.path.join(source, name), os.path.join(hf_dir, name))


def check_fresh_model_fits(cfg, vocab_size):
    """ConfigError naming the shape flags when a fresh model's float32 training state (weights,
    gradients and AdamW's two moments: 16 bytes a parameter) exceeds the memory of --device, before
    anything is allocated."""
    # blocks, embeddings
    n_params = 12 * cfg.n_layer * cfg.n_embd ** 2 + (vocab_size + cfg.block_size) * cfg.n_embd
    device = resolve_device(cfg)[0]
    memory = memory_of(device)
    if memory is not None and 16 * n_params > memory:
        raise ConfigError(f"--n-layer {cfg.n_layer} --n-embd {cfg.n_embd} --block-size "
                          f"{cfg.block_size}: a fresh model of {n_params:.3g} parameters needs "
                          f"{16 * n_params / 2**30:,.0f} GiB for its weights, gradients and AdamW "
                          f"state; {device.type} has {memory / 2**30:,.0f} GiB")


def check_batch_fits(command, cfg):
    """ConfigError naming --batch-size when one micro-batch's token ids alone (input ids and labels,
    int64: 16 bytes a token; two rows a pair) would not fit in the memory of --device: a floor, the
    activations come on top."""
    rows = cfg.batch_size // (cfg.world_size * cfg.grad_accum) * (1 if command == "pretrain" else 2)
    device = resolve_device(cfg)[0]
    memory = memory_of(device)
    if memory is not None and 16 * rows * cfg.max_length > memory:
        raise ConfigError(f"--batch-size {cfg.batch_size}: a micro-batch of {rows:,} rows of "
                          f"{cfg.max_length} tokens needs "
                          f"{16 * rows * cfg.max_length / 2**30:,.0f} GiB for its token ids alone; "
                          f"{device.type} has {memory / 2**30:,.0f} GiB (--grad-accum splits a "
                          f"step into micro-batches)")


def memory_of(device):
    """Bytes of memory of `device` (a GPU's, or the machine's RAM for the CPU); None when
    unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # a system without sysconf
        return None


def preference_splits(cfg, tokenizer, log=print, unpaired=False):
    """Encoded (train, held-out) preference pairs from --data and --heldout-data; with `unpaired`,
    KTO's unpaired examples (data.unpaired: pairs are split in two; --desirable-fraction applies to
    the training examples).

    Without --heldout-data: the test split of a dataset that has one, else a seeded
    --heldout-fraction of --data. Conversational rows are rendered by the chat template that
    --chat-template names (data.resolve_chat_template), else as HH text. Raises ConfigError when a
    source yields no usable pair, or the template cannot be read."""
    try:
        template = data.resolve_chat_template(cfg.chat_template, tokenizer)
    except (ImportError, ValueError, OSError) as e:
        raise ConfigError(f"--chat-template {cfg.chat_template}: {e}") from e
    if template is not None or getattr(tokenizer, "path", None):  # a checkpoint's tokenizer
        log("conversational rows (if any) are rendered with "
            + (f"the chat template {template.source}" if template else "the HH text template"))

    def encode(source, flag):
        try:
            if unpaired:
                fraction = cfg.desirable_fraction if flag == "--data" else 1.0
                records, load_report = data.load_unpaired(source, desirable_fraction=fraction,
                                                          seed=cfg.seed,
                                                          return_report=True)
            else:
                records, load_report = data.load_preferences(source, return_report=True)
        # a file or dataset that cannot be read: name the flag too
        except (ValueError, OSError) as e:
            raise ConfigError(f"{flag}: {e}") from e
        encoder = data.encode_unpaired if unpaired else data.encode_preferences
        pairs, encode_report = encoder(records, tokenizer, max_length=cfg.max_length,
                                       max_prompt_length=cfg.max_prompt_length, return_report=True,
                                       chat_template=template)
        log(f"{load_report.summary()}; {encode_report.summary()}")
        if not pairs:
            lost_to_truncation = records and sum(encode_report.dropped.values()) == len(records)
            advice = (f": truncation to --max-length {cfg.max_length} tokens (--max-prompt-length "
                      f"{cfg.max_prompt_length}) left none; raise --max-length or lower "
                      f"--max-prompt-length"
                      if lost_to_truncation else "")
            raise ConfigError(f"{flag} {source}: no usable preference pair{advice} "
                              f"({load_report.summary()}; {encode_report.summary()})")
        return pairs

    pairs = encode(cfg.data, "--data")
    if cfg.heldout_data:
        return pairs, encode(cfg.heldout_data, "--heldout-data")
    name, split = data.dataset_name_and_split(cfg.data)
    if split in (None, "train") and "test" in (data.dataset_splits(cfg.data) or []):
        return pairs, encode(f"{name}:test", "--data (its test split)")
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    n_heldout = max(1, int(len(pairs) * cfg.heldout_fraction))
    if len(pairs) - n_heldout < 1:
        raise ConfigError(f"--data {cfg.data}: {len(pairs)} usable pairs are too few to hold "
                          f"out {n_heldout}")
    return [pairs[i] for i in order[n_heldout:]], [pairs[i] for i in order[:n_heldout]]


def text_splits(cfg, tokenizer):
    """(train, held-out) token streams for pre-training: --data (a text file) or the embedded
    reviews."""
    if cfg.data:
        with open(cfg.data, encoding="utf-8") as f:
            stream = torch.tensor(tokenizer.encode_ordinary(f.read()), dtype=torch.long)  # (N,)
    else:
        stream = sentiment.corpus_tokens(tokenizer, seed=cfg.seed)  # (N,)
    n_heldout = max(cfg.max_length + 1, int(len(stream) * cfg.heldout_fraction))
    if len(stream) < n_heldout + cfg.max_length + 1:
        raise ConfigError(f"--data {cfg.data or '(embedded reviews)'}: {len(stream)} "
                          f"tokens are too few for windows of --max-length "
                          f"{cfg.max_length} and a held-out part")
    return stream[:-n_heldout], stream[-n_heldout:]


def add_adapters(model, cfg, log=print):
    """apply_lora with the --lora-* settings (cfg.lora_rank > 0); ConfigError for targets the model
    lacks, or a rank above the model's width (every target maps n_embd features in or out: a larger
    rank adds nothing)."""
    if cfg.lora_rank > model.config.n_embd:
        raise ConfigError(f"--lora-rank {cfg.lora_rank}: must be at most the model's width "
                          f"n_embd {model.config.n_embd} (LoRA's update B A has rank <= min(in, "
                          f"out) of each layer)")
    try:
        names = lora.apply_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout,
                                lora_targets(cfg))
    except ValueError as e:
        raise ConfigError(f"--lora-targets {cfg.lora_targets!r}: {e}") from None
    total = sum(p.numel() for p in model.parameters())
    log(f"LoRA: rank {cfg.lora_rank}, alpha {cfg.lora_alpha:g} on {len(names)} layers; "
        f"{lora.count_trainable(model):,} trainable parameters of {total:,} "
        f"({100 * lora.count_trainable(model) / total:.2f}%)")
    return model


def objective(command, cfg, pad_id, reference=None):
    """What loop.train optimises for command `command`, built by the method's own file from the
    settings: dpo.objective, or methods/*.objective. `reference`: pi_ref (reference.Reference) for
    dpo and kto."""
    kernel = dict(pad_id=pad_id, impl=cfg.impl)
    if command in ("pretrain", "sft"):
        return next_token.objective(command, fused_linear=cfg.fused_linear, **kernel)
    if command == "dpo":
        return dpo.objective(reference, beta=cfg.beta, loss_type=cfg.loss,
                             label_smoothing=cfg.label_smoothing,
                             rpo_alpha=cfg.rpo_alpha, fused_linear=cfg.fused_linear, **kernel)
    if command == "simpo":
        return simpo.objective(beta=cfg.beta, gamma=cfg.simpo_gamma, fused_linear=cfg.fused_linear,
                               **kernel)
    if command == "orpo":
        return orpo.objective(beta=cfg.beta, fused_linear=cfg.fused_linear, **kernel)
    if command == "kto":
        return kto.objective(reference, beta=cfg.beta, desirable_weight=cfg.desirable_weight,
                             undesirable_weight=cfg.undesirable_weight,
                             fused_linear=cfg.fused_linear, **kernel)
    if command == "reward-model":
        return reward_model.objective(pad_id=pad_id)
    return unlikelihood.objective(alpha=cfg.unlikelihood_alpha, **kernel)


def reference_model(cfg, policy, use_lora):
    """pi_ref as a network run on every batch, on --device: the policy with its adapters off (LoRA),
    the --reference-init model, or a frozen copy of the policy. Raises ConfigError for a
    --reference-init whose vocabulary or block size does not fit the policy's data."""
    device, kernel = resolve_device(cfg)[0], dict(impl=cfg.impl, fused_linear=cfg.fused_linear)
    if use_lora:
        return Reference.adapters_off(policy.to(device), **kernel)
    if not cfg.reference_init:
        return Reference.frozen(copy.deepcopy(policy).to(device), **kernel)
    frozen = load_model(cfg.reference_init)
    if (frozen.config.vocab_size != policy.config.vocab_size or frozen.config.block_size
        < cfg.max_length):
        raise ConfigError(f"--reference-init {cfg.reference_init}: vocab_size "
                          f"{frozen.config.vocab_size} and block_size {frozen.config.block_size} "
                          f"do not fit the policy's (vocab_size {policy.config.vocab_size}, rows "
                          f"of {cfg.max_length} tokens)")
    return Reference.frozen(frozen.to(device), **kernel)


def dpo_reference(cfg, live, pair_sets, pad_id, collate=data.dpo_collate):
    """The Reference DPO (or KTO) trains with: `live` itself (--reference live), or its table over
    `pair_sets` (the training pairs, then the held-out ones), computed under the policy's autocast
    (--reference precompute). collate: the stage's (data.dpo_collate, or data.kto_collate for KTO's
    examples and their mismatched rows)."""
    if cfg.reference == "live":
        return live
    device, autocast, _ = resolve_device(cfg)
    return Reference.precomputed(live, pair_sets, batch_size=cfg.batch_size, device=device,
                                 autocast=autocast,
                                 collate=functools.partial(collate, pad_id=pad_id))


def kto_weights(cfg, examples, log=print):
    """cfg with --desirable-weight 0 resolved: the weight that balances the desirable against the
    undesirable training examples (kto.balanced_weights). Raises ConfigError when one kind is
    missing."""
    n_desirable = sum(example.desirable for example in examples)
    try:
        weights = kto.balanced_weights(n_desirable, len(examples) - n_desirable)
    except ValueError as e:
        if cfg.desirable_fraction < 1 and not n_desirable:
            raise ConfigError(f"--desirable-fraction {cfg.desirable_fraction:g}: left no desirable "
                              f"training example ({e}); raise it") from None
        raise ConfigError(f"--data {cfg.data}: {e}") from None
    if not cfg.desirable_weight:
        cfg = dataclasses.replace(cfg, desirable_weight=weights[0])
    log(f"kto: {n_desirable} desirable and {len(examples) - n_desirable} undesirable training "
        f"examples; weights {cfg.desirable_weight:.3g} and {cfg.undesirable_weight:.3g}")
    return cfg


def run_training(command, cfg, log=print):
    """Run a training command (config.TRAINING_COMMANDS) on --threads CPU threads (0: torch's
    default; under torchrun, the cores shared among the node's processes); returns (model, last
    held-out metrics).

    Writes OUT_DIR/{config.json, metrics.jsonl, ckpt.pt} (loop.train) and OUT_DIR/hf/ (Hugging Face
    layout). For dpo the reference is a frozen copy of the --init model (or --reference-init); with
    --lora-rank it is the same network with its adapters off (no copy), ckpt.pt holds the adapters
    and hf/ the merged model. In a process group (torchrun) each process trains its share; rank 0
    writes and logs."""
    with sentiment.cpu_threads(cfg.threads or data_parallel.cpu_threads_per_process()):
        return train_command(command, cfg, log)


def train_command(command, cfg, log):
    """run_training's work, on the threads it set."""
    # --batch-size is checked against it
    cfg = dataclasses.replace(cfg, world_size=data_parallel.world_size())
    check_config(command, cfg)
    log = data_parallel.main_only(log)
    tokenizer = data.get_tokenizer(cfg.tokenizer)
    torch.manual_seed(cfg.seed)  # a fresh model's initial weights come from the seed too
    model = build_model(cfg, tokenizer)
    cfg = resolve_lengths(cfg, model.config.block_size)
    check_batch_fits(command, cfg)
    eval_prompts = (sentiment.make_prompts(seed=0)[1] if command == "reward-model"
                    and cfg.eval_samples else [])
    check_sampling_fits(eval_prompts, cfg, tokenizer, model.config.block_size, cfg.init,
                        because=f"--eval-samples {cfg.eval_samples} samples --init after training "
                        "to check the reward "
                        f"model (pass --eval-samples 0 to skip that check)",
                        sequences=len(eval_prompts) * cfg.eval_samples,
                        count_flags=f"--eval-samples {cfg.eval_samples}")
    use_lora = bool(cfg.lora_rank) and command in LORA_COMMANDS
    if use_lora:
        add_adapters(model, cfg, log)
    if command == "pretrain":
        train_set, heldout_set = text_splits(cfg, tokenizer)
        log(f"{command}: {len(train_set):,} training tokens, {len(heldout_set):,} held-out tokens")
    else:
        train_set, heldout_set = preference_splits(cfg, tokenizer, log, unpaired=command == "kto")
        log(f"{command}: {len(train_set)} training {'examples' if command == 'kto' else 'pairs'}, "
            f"{len(heldout_set)} held-out")
    if command == "kto":
        cfg = kto_weights(cfg, train_set, log)
    log(f"{command}: model with {model.num_params() / 1e6:.2f}M parameters (non-embedding), "
        f"vocab {model.config.vocab_size}, block {model.config.block_size}, rows of "
        f"{cfg.max_length} tokens")
    if command == "reward-model":
        model = reward_model.RewardModel(model)
    # before the reference's work
    run_dir.claim_directory(command, cfg, model, log=lambda *_: None, mmap=True)
    pad_id, reference = tokenizer.eot_token, None
    # precomputed, a frozen copy lives only while its table is computed
    if command in REFERENCE_COMMANDS:
        reference = dpo_reference(cfg, reference_model(cfg, model, use_lora),
                                  (train_set, heldout_set), pad_id,
                                  data.kto_collate if command == "kto" else data.dpo_collate)
    metrics = train(objective(command, cfg, pad_id, reference), cfg, model, train_set, heldout_set,
                    log=log)
    if command == "reward-model":
        if cfg.eval_samples and data_parallel.is_main():
            reward_model_against_ground_truth(cfg, tokenizer, eval_prompts, log)
        data_parallel.barrier()
        return model, metrics
    if data_parallel.is_main():
        # LoRA: W0 + (alpha/r) B A, plain GPT-2
        exported = lora.merged_copy(model) if use_lora else model
        # for transformers and other tools
        export_hf(exported, cfg, tokenizer)
        if use_lora:
            log(f"LoRA: ckpt.pt "
                f"{os.path.getsize(os.path.join(cfg.out_dir, 'ckpt.pt')) / 2**20:.2f} MiB "
                f"(adapters and their optimizer state); hf/ holds the merged model")
    data_parallel.barrier()  # hf/ is written before any process returns
    return model, metrics


def run_rl(command, cfg, log=print):
    """PPO or RLOO of --init on the sentiment task's training prompts (methods/rlhf.py), on
    --threads CPU threads; returns (policy, the last held-out metrics). The reward is
    --reward-model's score, or the ground truth with --ground-truth-reward. Everything is checked
    and loaded before any sampling. Writes what run_training writes, hf/ included."""
    with sentiment.cpu_threads(cfg.threads):
        return rl_command(command, cfg, log)


def rl_command(command, cfg, log):
    """run_rl's work, on the threads it set."""
    check_config(command, cfg)
    tokenizer = data.get_tokenizer(cfg.tokenizer)
    policy = load_model(cfg.init)
    cfg = resolve_lengths(cfg, policy.config.block_size)
    scorer = None
    if cfg.reward_model:
        scorer = reward_model.load_reward_model(cfg.reward_model)
        if scorer.config.vocab_size != policy.config.vocab_size:
            raise ConfigError(f"--reward-model {cfg.reward_model}: vocab_size "
                              f"{scorer.config.vocab_size} differs from the policy's "
                              f"{policy.config.vocab_size}: train it on the same tokenizer")
    train_prompts, heldout_prompts = sentiment.make_prompts(seed=0)
    for model, path in ((policy, cfg.init), (scorer, cfg.reward_model)):
        if model is not None:
            check_sampling_fits(train_prompts + heldout_prompts, cfg, tokenizer,
                                model.config.block_size, path)
    check_sampling_fits(train_prompts, cfg, tokenizer, policy.config.block_size, cfg.init,
                        sequences=cfg.batch_size * cfg.samples_per_prompt,
                        count_flags=f"--batch-size {cfg.batch_size} x --samples-per-prompt "
                        f"{cfg.samples_per_prompt}")
    log(f"{command}: {len(train_prompts)} training prompts, {cfg.batch_size} x "
        f"{cfg.samples_per_prompt} rollouts an iteration, reward: "
        f"{cfg.reward_model or 'the ground truth (oracle)'}")
    metrics = rlhf.train_rl(command, cfg, policy, scorer, tokenizer, train_prompts, heldout_prompts,
                            log=log)
    export_hf(policy, cfg, tokenizer)
    return policy, metrics


def check_sampling_fits(prompts, cfg, tokenizer, block_size, path, because="", sequences=None,
                        count_flags=""):
    """ConfigError if the longest of `prompts` plus --max-new-tokens would not fit the model's block
    size, or `sequences` samples (default one a prompt; sampled at once and kept as token lists: 16
    bytes a token at least) would not fit in the machine's memory. because: why the command samples,
    when a user may not expect it; count_flags: the flags that set `sequences` (both named in the
    errors)."""
    longest = max((len(tokenizer.encode_ordinary(p)) for p in prompts), default=0)
    if prompts and longest + cfg.max_new_tokens > block_size:
        raise ConfigError(f"--max-new-tokens {cfg.max_new_tokens}: the longest prompt ({longest} "
                          f"tokens) plus {cfg.max_new_tokens} exceeds the block size "
                          f"{block_size} of {path}"
                          + (f"; {because}" if because else ""))
    sequences = len(prompts) if sequences is None else sequences
    needed, memory = 16 * sequences * (longest + cfg.max_new_tokens), memory_of(torch.device("cpu"))
    if memory is not None and needed > memory:
        raise ConfigError(f"{count_flags}: {sequences:,} samples of up to "
                          f"{longest + cfg.max_new_tokens} tokens need {needed / 2**30:,.0f} GiB "
                          f"at least; this machine has {memory / 2**30:,.0f} GiB")


def load_for_sampling(path, cfg, tokenizer, prompts, k=1):
    """load_model(path) in eval mode on --device; ConfigError if a prompt + --max-new-tokens would
    not fit, or `k` samples of each prompt would not fit in memory (check_sampling_fits)."""
    model = load_model(path)
    check_sampling_fits(prompts, cfg, tokenizer, model.config.block_size, path,
                        sequences=len(prompts) * k,
                        count_flags=f"--samples-per-prompt {k} x {len(prompts)} prompts "
                        "(--num-prompts)")
    return model.to(resolve_device(cfg)[0]).eval()


def reward_model_against_ground_truth(cfg, tokenizer, prompts, log=print):
    """Fresh samples of --init on the sentiment task's held-out `prompts` (--eval-samples each),
    scored by the kept reward model (best.pt, else ckpt.pt) and by the ground truth: their Pearson
    and Spearman correlation. Writes OUT_DIR/reward_eval.json (with every sample's two scores) and
    returns its dict."""
    kept = os.path.join(cfg.out_dir,
                        "best.pt" if os.path.isfile(os.path.join(cfg.out_dir, "best.pt"))
                        else "ckpt.pt")
    device = resolve_device(cfg)[0]
    scorer = reward_model.load_reward_model(kept).to(device)
    policy = load_model(cfg.init).to(device)
    samples = sentiment.sample_completions(policy, tokenizer, prompts, k=cfg.eval_samples,
                                           max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                                           threads=cfg.threads or 1)
    texts = [text for group in samples.texts for text in group]
    prompt_ids = [ids for ids in samples.prompt_ids for _ in range(cfg.eval_samples)]
    completion_ids = [ids for group in samples.token_ids for ids in group]
    scores = reward_model.score_texts(scorer, prompt_ids, completion_ids, tokenizer.eot_token)
    truth = sentiment.sentiment_reward(texts)
    correlations = {"pearson": sentiment.pearson(scores, truth),
                    "spearman": sentiment.spearman(scores, truth)}
    correlations = {name: None if math.isnan(value) else value
                    for name, value in correlations.items()}  # constant
    result = {"reward_model": kept, "n_samples": len(texts), **correlations, "samples": [
                  {"completion": text, "score": score, "ground_truth": reward}
                  for text, score, reward in zip(texts, scores, truth)]}
    with open(os.path.join(cfg.out_dir, "reward_eval.json"), "w") as f:
        json.dump(result, f, indent=2)
    log(f"reward model {kept} on {len(texts)} fresh samples of --init, correlation with the "
        "ground-truth reward: "
        + ", ".join(f"{name} {value:.3f}" if value is not None
                    else f"{name} undefined (a constant score)"
                    for name, value in correlations.items()))
    return result


def run_pairs(cfg, log=print):
    """Preference pairs from --init's samples on the sentiment task's training prompts ->
    OUT_DIR/pairs.jsonl.

    Returns (records, sentiment.PairReport)."""
    check_config("pairs", cfg)
    tokenizer = data.get_tokenizer(cfg.tokenizer)
    train_prompts = sentiment.make_prompts(seed=0)[0][:cfg.num_prompts or None]
    model = load_for_sampling(cfg.init, cfg, tokenizer, train_prompts, k=cfg.samples_per_prompt)
    os.makedirs(cfg.out_dir, exist_ok=True)
    path = os.path.join(cfg.out_dir, "pairs.jsonl")
    records, report = sentiment.build_preference_pairs(
        model, tokenizer, train_prompts, k=cfg.samples_per_prompt,
                                                       min_reward_gap=cfg.min_reward_gap,
        max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, path=path, return_report=True)
    log(f"{report.summary()}\nwrote {path}")
    return records, report


def run_eval(cfg, log=print):
    """--init (policy) against --reference-init on the task's held-out prompts -> OUT_DIR/eval.json.

    Returns sentiment.sample_report's dict."""
    check_config("eval", cfg)
    tokenizer = data.get_tokenizer(cfg.tokenizer)
    heldout_prompts = sentiment.make_prompts(seed=0)[1][:cfg.num_prompts or None]
    policy = load_for_sampling(cfg.init, cfg, tokenizer, heldout_prompts)
    reference = load_for_sampling(cfg.reference_init, cfg, tokenizer, heldout_prompts)
    report = sentiment.sample_report(policy, reference, tokenizer, heldout_prompts,
                                     sentiment.sentiment_reward,
                                     max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                                     impl=cfg.impl)
    numbers = {k: v for k, v in report.items() if isinstance(v, float)}
    os.makedirs(cfg.out_dir, exist_ok=True)
    with open(os.path.join(cfg.out_dir, "eval.json"), "w") as f:
        json.dump(numbers, f, indent=2)
    log(json.dumps(numbers, indent=2))
    return report


def run_sample(cfg, prompts=(), log=print):
    """One completion of --init for each prompt (default: the first 5 held-out prompts); returns the
    texts."""
    check_config("sample", cfg)
    tokenizer = data.get_tokenizer(cfg.tokenizer)
    prompts = list(prompts) or sentiment.make_prompts(seed=0)[1][:5]
    model = load_for_sampling(cfg.init, cfg, tokenizer, prompts)
    samples = sentiment.sample_completions(model, tokenizer, prompts, k=1,
                                           max_new_tokens=cfg.max_new_tokens,
                                           seed=cfg.seed)
    completions = [group[0] for group in samples.texts]
    for prompt, completion in zip(prompts, completions):
        log(f"{prompt}{completion}")
    return completions
