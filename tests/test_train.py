"""Tests of the training loop and its commands: end-to-end stages, exact resume, gradient
accumulation, precomputed vs live reference, non-finite losses, the learning-rate schedule and the
clear errors."""

import contextlib
import dataclasses
import json
import math
import os

import pytest
import torch

import data
import loop
import sentiment
import train
from model import GPT, GPTConfig
from plumbing import commands
from plumbing.checkpoint import load_checkpoint, load_model, save_checkpoint
from plumbing.config import ConfigError, TrainConfig, check_config
from reference import Reference

TINY = dict(tokenizer="bytes", n_layer=1, n_head=2, n_embd=16, block_size=64, max_length=48,
            max_prompt_length=24, batch_size=4, eval_every=2, save_every=1000, warmup_steps=2,
            seed=0)


def write_preferences(path, n=40):
    """A trivially learnable preference set: chosen responses are cheerful, rejected ones grumpy."""
    records = [data.PreferenceRecord(f"Q{i}: how was it? ", f"great, {'really ' * (i % 3)}great!",
                                     f"awful, {'truly ' * (i % 2)}awful.") for i in range(n)]
    data.save_preferences(records, path)
    return str(path)


def tiny_model(vocab_size=257, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=64, vocab_size=vocab_size, n_layer=1, n_head=2, n_embd=16,
                         dropout=dropout))


def encoded_pairs(path, cfg):
    tokenizer = data.get_tokenizer("bytes")
    return data.encode_preferences(data.load_preferences(path), tokenizer,
                                   max_length=cfg.max_length,
                                   max_prompt_length=cfg.max_prompt_length)


def train_stage(command, cfg, model, train_set, heldout_set, reference_model=None,
                log=lambda *_: None):
    """loop.train as commands.run_training drives it: the stage's objective (pad id 256, the byte
    tokenizer's EOS), and for dpo the reference built from `reference_model` (a table with
    --reference precompute)."""
    reference = None
    if command == "dpo":
        live = Reference.frozen(reference_model, impl=cfg.impl, fused_linear=cfg.fused_linear)
        reference = commands.dpo_reference(cfg, live, (train_set, heldout_set), pad_id=256)
    return loop.train(commands.objective(command, cfg, 256, reference), cfg, model, train_set,
                      heldout_set, log=log)


def read_metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_learning_rate_schedule():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, steps=110, min_lr_ratio=0.1)
    assert loop.learning_rate(cfg, 0) == pytest.approx(0.1)  # linear warm-up from lr/warmup
    assert loop.learning_rate(cfg, 9) == pytest.approx(1.0)
    assert loop.learning_rate(cfg, 10) == pytest.approx(1.0)  # cosine starts at the peak...
    assert loop.learning_rate(cfg, 60) == pytest.approx(0.55)  # ...is halfway at mid-decay...
    assert loop.learning_rate(cfg, 110) == pytest.approx(0.1)  # ...and ends at min_lr_ratio * lr
    assert loop.learning_rate(dataclasses.replace(cfg, schedule="constant"), 80) == 1.0


def test_example_indices_are_epochs_of_permutations():
    # 3 epochs
    indices = [i for step in range(6) for i in loop.example_indices(10, 5, step, seed=3)]
    for epoch in range(3):
        assert sorted(indices[10 * epoch:10 * (epoch + 1)]) == list(range(10))
    assert indices[:10] != indices[10:20]  # a fresh order each epoch
    # a pure function of (seed, step)
    assert loop.example_indices(10, 5, 4, seed=3) == indices[20:25]


def test_stages_end_to_end(tmp_path):
    """pretrain -> sft -> dpo -> pairs/eval/sample through the command line; DPO learns the
    preference."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the film was great and the cast was great. " * 200)
    prefs = write_preferences(tmp_path / "prefs.jsonl")
    shape = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "96"]
    lengths = ["--max-length", "48", "--max-prompt-length", "24", "--batch-size", "8", "--seed",
               "0"]
    pre, sft, dpo_dir = (str(tmp_path / name) for name in ("pre", "sft", "dpo"))
    assert train.main(["pretrain", "--data", str(corpus), "--out-dir", pre, "--steps", "12",
                       "--eval-every", "6", "--lr", "3e-3", "--batch-size", "8", "--seed", "0",
                       *shape]) == 0
    pre_eval = [r["loss"] for r in read_metrics(pre) if r["split"] == "eval"]
    assert pre_eval[-1] < pre_eval[0]
    assert os.path.isfile(os.path.join(pre, "hf", "model.safetensors"))
    assert os.path.isfile(os.path.join(pre, "config.json"))

    assert train.main(["sft", "--init", pre, "--data", prefs, "--out-dir", sft, "--steps", "6",
                       "--lr", "1e-3", "--heldout-fraction", "0.2", *lengths]) == 0
    assert train.main(["dpo", "--init", sft, "--data", prefs, "--out-dir", dpo_dir, "--steps", "20",
                       "--lr", "3e-3", "--beta", "0.5", "--eval-every", "5", "--heldout-fraction",
                       "0.2", *lengths]) == 0
    rows = read_metrics(dpo_dir)
    train_losses = [r["loss"] for r in rows if r["split"] == "train"]
    evals = [r for r in rows if r["split"] == "eval"]
    # policy == reference at the start
    assert train_losses[0] == pytest.approx(math.log(2), abs=1e-4)
    assert sum(train_losses[-4:]) / 4 < 0.5 * math.log(2)  # the DPO loss falls
    # held-out, above chance
    assert evals[-1]["rewards/accuracies"] > 0.75 and evals[-1]["rewards/margins"] > 0
    policy = load_model(os.path.join(dpo_dir, "ckpt.pt"))
    assert policy.config.vocab_size == 257



def test_task_commands_write_what_they_say(tmp_path, capsys):
    """pairs, eval and sample on a tiny pre-trained model: their files and printed output,
    checked."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the film was great and the cast was awful. " * 200)
    pre = str(tmp_path / "pre")
    assert train.main(["pretrain", "--data", str(corpus), "--out-dir", pre, "--steps", "60",
                       "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "96",
                       "--batch-size", "8", "--lr", "1e-2", "--warmup-steps", "5", "--eval-every",
                       "60"]) == 0  # it learns "great" and "awful"
    common = ["--init", pre, "--max-new-tokens", "24", "--device", "cpu"]
    assert train.main(["pairs", "--out-dir", str(tmp_path / "pairs"), "--num-prompts", "6",
                       "--min-reward-gap", "0", "--samples-per-prompt", "3", *common]) == 0
    records = data.load_preferences(str(tmp_path / "pairs" / "pairs.jsonl"))
    prompts = sentiment.make_prompts(seed=0)[0][:6]
    assert 0 < len(records) <= 6 and {r.prompt for r in records} <= set(prompts)
    for record in records:  # the chosen completion has the strictly higher ground-truth reward
        chosen, rejected = sentiment.sentiment_reward([record.chosen, record.rejected])
        assert chosen > rejected
    assert f"{len(records)} pairs from 6 prompts x 3 samples" in capsys.readouterr().out

    assert train.main(["eval", "--reference-init", pre, "--out-dir", str(tmp_path / "eval"),
                       "--num-prompts", "4", *common]) == 0
    with open(tmp_path / "eval" / "eval.json") as f:
        report = json.load(f)
    # the same model on both sides
    assert report["kl_policy_reference"] == pytest.approx(0.0, abs=1e-4)
    # same seed, same samples, all ties
    assert report["win_rate"] == 0.0 and report["tie_rate"] == 1.0
    assert report["reward_policy"] == report["reward_reference"]

    capsys.readouterr()
    assert train.main(["sample", "--prompt", "The film", "--prompt", "A plot", *common]) == 0
    printed = capsys.readouterr().out
    completions = commands.run_sample(TrainConfig(init=pre, max_new_tokens=24, device="cpu"),
                                      ["The film", "A plot"],
                                      log=lambda *_: None)  # the same seed: the same samples
    assert printed == f"The film{completions[0]}\nA plot{completions[1]}\n"
    # byte tokenizer: at most 24 new bytes
    assert all(0 < len(c.encode()) <= 24 for c in completions)


def run_dpo(tmp_path, name, prefs, **overrides):
    cfg = TrainConfig(out_dir=str(tmp_path / name), lr=3e-3, **{**TINY, **overrides})
    pairs = encoded_pairs(prefs, cfg)
    model, reference = tiny_model(dropout=cfg.dropout), tiny_model()
    train_stage("dpo", cfg, model, pairs[:32], pairs[32:], reference)
    return cfg, model


@contextlib.contextmanager
def interrupted_at_step(monkeypatch, crash_step):
    """Run the `with` block's training with a KeyboardInterrupt at the start of step `crash_step`
    (expected)."""
    real_step_batches = loop.step_batches
    def crash(objective, cfg, train_set, step):
        if step == crash_step:
            raise KeyboardInterrupt
        return real_step_batches(objective, cfg, train_set, step)
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(loop, "step_batches", crash)
        yield


def test_resume_is_exact(tmp_path, monkeypatch):
    """An interrupted run resumed from its checkpoint ends with the same metrics and weights
    (dropout on)."""
    prefs = write_preferences(tmp_path / "prefs.jsonl")
    _, uninterrupted = run_dpo(tmp_path, "a", prefs, steps=6, save_every=3, dropout=0.1)

    with interrupted_at_step(monkeypatch, 4):
        run_dpo(tmp_path, "b", prefs, steps=6, save_every=3, dropout=0.1)
    assert load_checkpoint(str(tmp_path / "b"))["step"] == 3
    torch.manual_seed(12345)  # a different global RNG state: resume must restore its own
    _, resumed = run_dpo(tmp_path, "b", prefs, steps=6, save_every=3, dropout=0.1, resume=True)

    assert read_metrics(tmp_path / "a") == read_metrics(tmp_path / "b")
    for (name, a), (_, b) in zip(uninterrupted.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("command", ["sft", "dpo", "pretrain"])
def test_gradient_accumulation_equals_large_batch(tmp_path, command):
    """AdamW's first moment after one step is (1 - beta1) * gradient: compare it across
    grad_accum."""
    prefs = write_preferences(tmp_path / "prefs.jsonl")
    moments = []
    for grad_accum in (1, 4):
        cfg = TrainConfig(out_dir=str(tmp_path / f"{command}{grad_accum}"), steps=1,
                          grad_accum=grad_accum,
                          grad_clip=1e9, **{**TINY, "batch_size": 8})
        if command == "pretrain":
            stream = torch.randint(0, 257, (2000,))
            train_set, heldout = stream[:1500], stream[1500:]
        else:
            pairs = encoded_pairs(prefs, cfg)
            train_set, heldout = pairs[:32], pairs[32:]
        train_stage(command, cfg, tiny_model(), train_set, heldout,
                    tiny_model(seed=1) if command == "dpo" else None)
        optimizer_state = load_checkpoint(cfg.out_dir)["optimizer"]["state"]
        moments.append([optimizer_state[i]["exp_avg"] for i in sorted(optimizer_state)])
    for big, accumulated in zip(*moments):
        torch.testing.assert_close(accumulated, big, rtol=1e-4, atol=1e-8)  # summation order only


def test_precomputed_and_live_reference_agree(tmp_path):
    prefs = write_preferences(tmp_path / "prefs.jsonl")
    run_dpo(tmp_path, "pre", prefs, steps=4, reference="precompute")
    run_dpo(tmp_path, "live", prefs, steps=4, reference="live")
    rows_pre, rows_live = read_metrics(tmp_path / "pre"), read_metrics(tmp_path / "live")
    assert len(rows_pre) == len(rows_live) > 4
    for a, b in zip(rows_pre, rows_live):
        assert a.keys() == b.keys()
        for key in a:
            expected = pytest.approx(b[key], rel=1e-4, abs=1e-5) if key != "split" else b[key]
            assert a[key] == expected, key


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    stream = torch.randint(0, 257, (2000,))
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), steps=10, **{**TINY, "save_every": 2})
    objective, calls = commands.objective("pretrain", cfg, 256), []
    real_loss = objective.loss
    def loss_becomes_nan(model, batch):
        calls.append(1)
        loss, values = real_loss(model, batch)
        # the 5th training step (no evals)
        return (loss * float("nan") if len(calls) == 5 else loss), values
    objective = dataclasses.replace(objective, loss=loss_becomes_nan)
    cfg = dataclasses.replace(cfg, eval_every=1000)
    with pytest.raises(loop.NonFiniteLossError, match="step 5.*Last good checkpoint"):
        loop.train(objective, cfg, tiny_model(), stream[:1500], stream[1500:], log=lambda *_: None)
    state = load_checkpoint(cfg.out_dir)
    assert state["step"] == 4
    assert all(torch.isfinite(p).all() for p in state["model"].values())


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pt")
    model = tiny_model()
    save_checkpoint(path, model, None, 1, {})
    def failing_save(obj, f):
        f.write(b"half a file")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        save_checkpoint(path, model, None, 2, {})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1  # the old checkpoint is intact
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # and no temporary file is left behind


def test_hf_gpt2_recipe_on_tiny_fixtures(tmp_path, monkeypatch):
    """The single-GPU recipe's path: a Hugging Face GPT-2 directory as --init, raw HH-RLHF
    transcripts as data, SFT then DPO, and weights that transformers loads back (tiny random model,
    byte tokenizer, no network)."""
    import transformers
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    hf_dir = tmp_path / "tiny-gpt2"
    transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=257, n_positions=128, n_embd=32, n_layer=2, n_head=2)).save_pretrained(hf_dir)
    hh = tmp_path / "hh.jsonl"
    with open(hh, "w") as f:
        for i in range(24):
            turn = f"\n\nHuman: Can you recommend film number {i}?\n\nAssistant:"
            f.write(json.dumps({"chosen": turn + " Yes, it "
                                "is lovely.", "rejected": turn + " No. Go away."}) + "\n")
    common = ["--data", str(hh), "--max-length", "96", "--max-prompt-length", "64", "--batch-size",
              "4", "--heldout-fraction", "0.25", "--eval-every", "3"]
    assert train.main(["sft", "--init", str(hf_dir), "--out-dir", str(tmp_path / "sft"),
                       "--steps", "3", *common]) == 0
    assert train.main(["dpo", "--init", str(tmp_path / "sft"), "--out-dir", str(tmp_path / "dpo"),
                       "--steps", "3", "--lr", "1e-4", *common]) == 0
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "dpo" / "hf")
    ours = load_model(str(tmp_path / "dpo" / "ckpt.pt")).eval()
    idx = torch.randint(0, 257, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(idx).logits, ours(idx), rtol=1e-5, atol=1e-5)


def test_early_stopping_keeps_the_best_checkpoint(tmp_path, monkeypatch):
    """Held-out accuracies 0.6, 0.7, 0.5, 0.4 with patience 2: stop at the 4th evaluation, best.pt
    from the 2nd."""
    prefs = write_preferences(tmp_path / "prefs.jsonl")
    scripted = iter([0.6, 0.7, 0.5, 0.4, 0.9])
    monkeypatch.setattr(loop, "heldout_metrics", lambda *args, **kwargs: {
        "loss": 0.5, "rewards/accuracies": next(scripted)})
    cfg, model = run_dpo(tmp_path, "run", prefs, steps=20, eval_every=2, early_stop_patience=2)
    assert load_checkpoint(str(tmp_path / "run" / "best.pt"))["step"] == 4
    # stopped early, checkpoint written at the stop
    assert load_checkpoint(cfg.out_dir)["step"] == 8
    assert max(r["step"] for r in read_metrics(cfg.out_dir)) == 8
    assert next(scripted) == 0.9  # the fifth evaluation never ran


def test_fresh_model_runs_are_reproducible(tmp_path):
    """The same config twice gives bit-identical weights: the fresh model's initialisation is seeded
    too."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a short corpus for a reproducibility check. " * 100)
    states = []
    for run in ("a", "b"):
        torch.manual_seed(len(states))  # a different global RNG state before each run
        assert train.main(["pretrain", "--data", str(corpus), "--out-dir", str(tmp_path / run),
                           "--steps", "2", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
                           "--block-size", "32", "--batch-size", "4"]) == 0
        states.append(load_checkpoint(str(tmp_path / run))["model"])
    for name in states[0]:
        torch.testing.assert_close(states[0][name], states[1][name], rtol=0, atol=0, msg=name)


def test_threads_are_set_for_the_run_recorded_and_set_back(tmp_path, monkeypatch):
    """--threads N trains on N CPU threads (the loop sees N), config.json records it, and the
    caller's thread count is restored afterwards (the frontier trains many runs in one process)."""
    from plumbing import commands

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a short corpus for a thread check. " * 100)
    seen, loop_train = [], commands.train

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return loop_train(*args, **kwargs)

    monkeypatch.setattr(commands, "train", spy)
    before = torch.get_num_threads()
    wanted = 2 if before == 1 else 1
    assert train.main(["pretrain", "--data", str(corpus), "--out-dir", str(tmp_path / "run"),
                       "--steps", "1", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
                       "--block-size", "32", "--batch-size", "4", "--threads", str(wanted)]) == 0
    assert seen == [wanted] and torch.get_num_threads() == before
    with open(tmp_path / "run" / "config.json") as f:
        assert json.load(f)["threads"] == wanted


def test_precomputed_reference_sees_what_the_policy_sees_under_bf16(tmp_path):
    """Under bf16 autocast the precomputed reference agrees with the live one and step 0's loss is
    log 2.

    The table was once computed in fp32 while the policy ran in bf16, and the first loss was
    0.6932454, not log 2 = 0.6931472. Now both run under the same autocast; what remains is bf16
    rounding that depends on the padded length of a batch (CPU attention in bf16 sums keys in
    length-dependent blocks), about 1e-7 in the loss.
    """
    prefs = write_preferences(tmp_path / "prefs.jsonl")
    rows = {}
    for mode in ("precompute", "live"):
        run_dpo(tmp_path, mode, prefs, steps=3, reference=mode, dtype="bfloat16", device="cpu")
        rows[mode] = read_metrics(tmp_path / mode)
    first = {mode: [r for r in rows[mode] if r["split"] == "train"][0] for mode in rows}
    assert first["live"]["loss"] == pytest.approx(math.log(2), rel=0, abs=1e-7)  # float32 log 2
    assert first["precompute"]["loss"] == pytest.approx(math.log(2), rel=0, abs=1e-6)
    for a, b in zip(rows["precompute"], rows["live"]):
        assert a.keys() == b.keys()
        for key in a:
            expected = pytest.approx(b[key], rel=1e-5, abs=1e-6) if key != "split" else b[key]
            assert a[key] == expected, key


@pytest.mark.parametrize("mode, freed", [("precompute", True), ("live", False)])
def test_precomputed_reference_is_freed(tmp_path, monkeypatch, mode, freed):
    """With --reference precompute nothing holds the frozen copy of the policy once its table is
    computed (it would hold a second copy of the weights for the whole run); with --reference live
    the copy runs every step."""
    import gc
    import weakref
    prefs = write_preferences(tmp_path / "prefs.jsonl")
    init = str(tmp_path / "init.pt")
    save_checkpoint(init, tiny_model(), None, 0, None)
    copies, seen = [], []
    real_reference_model, real_step_batches = commands.reference_model, loop.step_batches
    def tracked_reference_model(*args):
        live = real_reference_model(*args)
        copies.append(weakref.ref(live.model))
        return live
    def check_reference_freed(*args):
        gc.collect()
        seen.append(copies[0]() is None)
        return real_step_batches(*args)
    monkeypatch.setattr(commands, "reference_model", tracked_reference_model)
    monkeypatch.setattr(loop, "step_batches", check_reference_freed)
    commands.run_training("dpo",
                          TrainConfig(out_dir=str(tmp_path / "run"), init=init, data=prefs,
                                      heldout_fraction=0.2,
                                      steps=2, lr=3e-3, reference=mode, **TINY),
                          log=lambda *_: None)
    assert seen == [freed, freed]


def test_sampling_commands_move_models_to_the_device(tmp_path, monkeypatch):
    """pairs, eval and sample put every model they load on --device (they once sampled on the CPU
    always)."""
    moved = []
    real_load_model = commands.load_model
    def load_model_spy(path):
        model = real_load_model(path)
        real_to = model.to
        def to(device, *args, **kwargs):
            moved.append(str(device))
            return real_to(device, *args, **kwargs)
        model.to = to
        return model
    monkeypatch.setattr(commands, "load_model", load_model_spy)
    save_checkpoint(str(tmp_path / "m" / "ckpt.pt"), tiny_model(vocab_size=257), None, 0, {})
    init = str(tmp_path / "m")
    common = dict(init=init, max_new_tokens=4, num_prompts=2, device="cpu",
                  out_dir=str(tmp_path / "out"))
    commands.run_pairs(TrainConfig(**common, min_reward_gap=0, samples_per_prompt=2),
                       log=lambda *_: None)
    commands.run_eval(TrainConfig(**common, reference_init=init), log=lambda *_: None)
    commands.run_sample(TrainConfig(**common), ["The film"], log=lambda *_: None)
    assert moved == ["cpu"] * 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sampling_commands_run_on_cuda(tmp_path):
    save_checkpoint(str(tmp_path / "m" / "ckpt.pt"), tiny_model(vocab_size=257), None, 0, {})
    cfg = TrainConfig(init=str(tmp_path / "m"), max_new_tokens=4, device="cuda")
    completions = commands.run_sample(cfg, ["The film"], log=lambda *_: None)
    assert len(completions) == 1 and torch.cuda.max_memory_allocated() > 0


def test_heldout_data_follows_the_dataset_splits(tmp_path):
    """A dataset directory (or hub name) with a test split: held out by default, or chosen as
    NAME:split."""
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    write_preferences(dataset / "train.jsonl", n=12)
    write_preferences(dataset / "test.jsonl", n=5)
    tokenizer = data.get_tokenizer("bytes")
    cfg = TrainConfig(data=str(dataset), max_length=48, max_prompt_length=24)
    train_pairs, heldout_pairs = commands.preference_splits(cfg, tokenizer, log=lambda *_: None)
    # the test split, not a slice of the train split
    assert (len(train_pairs), len(heldout_pairs)) == (12, 5)
    cfg = dataclasses.replace(cfg, data=f"{dataset}:test", heldout_data=f"{dataset}:train")
    train_pairs, heldout_pairs = commands.preference_splits(cfg, tokenizer, log=lambda *_: None)
    assert (len(train_pairs), len(heldout_pairs)) == (5, 12)
    cfg = dataclasses.replace(cfg, data=str(tmp_path / "dataset" / "train.jsonl"), heldout_data="")
    train_pairs, heldout_pairs = commands.preference_splits(cfg, tokenizer, log=lambda *_: None)
    assert (len(train_pairs), len(heldout_pairs)) == (11, 1)  # a file: a --heldout-fraction of it


def test_dpo_reference_init(tmp_path, capsys):
    """--reference-init sets pi_ref: the --init path itself reproduces the default run exactly;
    another model starts away from log 2; LoRA refuses it (its reference is the --init model under
    the adapters)."""
    prefs = write_preferences(tmp_path / "prefs.jsonl")
    paths = {}
    for seed in (0, 1):
        paths[seed] = str(tmp_path / f"model{seed}.pt")
        save_checkpoint(paths[seed], tiny_model(seed=seed), None, 0, None)
    common = dict(init=paths[0], data=prefs, steps=3, lr=3e-3, heldout_fraction=0.2, **TINY)
    for name, reference_init in (("default", ""), ("same", paths[0]), ("other", paths[1])):
        commands.run_training("dpo",
                              TrainConfig(out_dir=str(tmp_path / name),
                                          reference_init=reference_init, **common),
                              log=lambda *_: None)
    assert read_metrics(tmp_path / "default") == read_metrics(tmp_path / "same")
    assert read_metrics(tmp_path / "default")[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert abs(read_metrics(tmp_path / "other")[0]["loss"] - math.log(2)) > 1e-3
    assert train.main(["dpo", "--init", paths[0], "--data", prefs, "--reference-init", paths[1],
                       "--lora-rank", "2", "--out-dir", str(tmp_path / "lora")]) == 1
    assert "--reference-init" in capsys.readouterr().err


def no_logits(monkeypatch):
    """Make any call of the model's forward (the (B, T, V) logits) an error: the fused path must not
    make them."""
    def forward_called(self, *args, **kwargs):
        raise AssertionError("model.forward was called: the logits were materialised")
    monkeypatch.setattr(GPT, "forward", forward_called)


@pytest.mark.parametrize("command, reference", [("pretrain", "precompute"), ("sft", "precompute"),
                                                ("dpo", "precompute"), ("dpo", "live")])
def test_fused_linear_trains_as_the_logits_path(tmp_path, monkeypatch, command, reference):
    """--fused-linear (log-probs from hidden states and the LM-head weight) gives the logits path's
    metrics and weights after 4 steps (float rounding only), without ever calling the model's
    forward: for the policy, the DPO reference (precomputed or live) and the held-out evaluation."""
    prefs = write_preferences(tmp_path / "prefs.jsonl")
    runs = {}
    for fused in (False, True):
        cfg = TrainConfig(out_dir=str(tmp_path / f"fused{int(fused)}"), steps=4, lr=3e-3,
                          fused_linear=fused,
                          # fp32: rounding only
                          reference=reference, impl="torch", device="cpu", **TINY)
        if command == "pretrain":
            stream = torch.randint(0, 257, (2000,), generator=torch.Generator().manual_seed(0))
            train_set, heldout = stream[:1500], stream[1500:]
        else:
            pairs = encoded_pairs(prefs, cfg)
            train_set, heldout = pairs[:32], pairs[32:]
        model = tiny_model()
        with monkeypatch.context() as patch:
            if fused:
                no_logits(patch)
            train_stage(command, cfg, model, train_set, heldout,
                        tiny_model(seed=1) if command == "dpo" else None)
        runs[fused] = (read_metrics(cfg.out_dir), model.state_dict())
    (rows, weights), (rows_fused, weights_fused) = runs[False], runs[True]
    layout = [(r["split"], r["step"], sorted(r)) for r in rows]
    assert layout == [(r["split"], r["step"], sorted(r)) for r in rows_fused]
    for a, b in zip(rows, rows_fused):
        for key in a:
            if key != "split":
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (a["step"], key)
    for name in weights:
        torch.testing.assert_close(weights_fused[name], weights[name], rtol=1e-4, atol=1e-5,
                                   msg=name)


def test_fused_linear_is_refused_for_unlikelihood(tmp_path, capsys):
    prefs = write_preferences(tmp_path / "prefs.jsonl")
    init = str(tmp_path / "init.pt")
    save_checkpoint(init, tiny_model(), None, 0, None)
    cfg = TrainConfig(init=init, data=prefs, fused_linear=True, out_dir=str(tmp_path / "run"))
    with pytest.raises(ConfigError,
                       match="--fused-linear: unlikelihood needs every token's log-prob"):
        check_config("unlikelihood", cfg)
    with pytest.raises(ConfigError, match="--compile: compiles the model's forward"):
        check_config("dpo", dataclasses.replace(cfg, compile=True))
    with pytest.raises(SystemExit) as exit_status:  # not one of its flags
        train.main(["unlikelihood", "--init", init, "--data", prefs, "--fused-linear"])
    assert (exit_status.value.code == 2
            and "unrecognized arguments: --fused-linear" in capsys.readouterr().err)
