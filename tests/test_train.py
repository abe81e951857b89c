"""Tests of the training loop and its commands: end-to-end stages, exact resume, gradient accumulation,
precomputed vs live reference, non-finite losses, the learning-rate schedule and the clear errors."""

import dataclasses
import json
import math
import os

import pytest
import torch

import data
import stages
import train
from checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from model import GPT, GPTConfig

TINY = dict(tokenizer="bytes", n_layer=1, n_head=2, n_embd=16, block_size=64, max_length=48,
            max_prompt_length=24, batch_size=4, eval_every=2, save_every=1000, warmup_steps=2, seed=0)


def write_preferences(path, n=40):
    """A trivially learnable preference set: chosen responses are cheerful, rejected ones grumpy."""
    records = [data.PreferenceRecord(f"Q{i}: how was it? ", f"great, {'really ' * (i % 3)}great!",
                                     f"awful, {'truly ' * (i % 2)}awful.") for i in range(n)]
    data.save_preferences(records, path)
    return str(path)


def tiny_model(vocab_size=257, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=64, vocab_size=vocab_size, n_layer=1, n_head=2, n_embd=16, dropout=dropout))


def encoded_pairs(path, cfg):
    tokenizer = data.get_tokenizer("bytes")
    return data.encode_preferences(data.load_preferences(path), tokenizer, max_length=cfg.max_length,
                                   max_prompt_length=cfg.max_prompt_length)


def read_metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_learning_rate_schedule():
    cfg = train.TrainConfig(lr=1.0, warmup_steps=10, steps=110, min_lr_ratio=0.1)
    assert train.learning_rate(cfg, 0) == pytest.approx(0.1)  # linear warm-up from lr/warmup
    assert train.learning_rate(cfg, 9) == pytest.approx(1.0)
    assert train.learning_rate(cfg, 10) == pytest.approx(1.0)  # cosine starts at the peak...
    assert train.learning_rate(cfg, 60) == pytest.approx(0.55)  # ...is halfway at mid-decay...
    assert train.learning_rate(cfg, 110) == pytest.approx(0.1)  # ...and ends at min_lr_ratio * lr
    assert train.learning_rate(dataclasses.replace(cfg, schedule="constant"), 80) == 1.0


def test_example_indices_are_epochs_of_permutations():
    indices = [i for step in range(6) for i in train.example_indices(10, 5, step, seed=3)]  # 3 epochs
    for epoch in range(3):
        assert sorted(indices[10 * epoch:10 * (epoch + 1)]) == list(range(10))
    assert indices[:10] != indices[10:20]  # a fresh order each epoch
    assert train.example_indices(10, 5, 4, seed=3) == indices[20:25]  # a pure function of (seed, step)


def test_stages_end_to_end(tmp_path):
    """pretrain -> sft -> dpo -> pairs/eval/sample through the command line; DPO learns the preference."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the film was great and the cast was great. " * 200)
    prefs = write_preferences(tmp_path / "prefs.jsonl")
    tiny = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "96", "--max-length", "48",
            "--max-prompt-length", "24", "--batch-size", "8", "--seed", "0"]
    pre, sft, dpo_dir = (str(tmp_path / name) for name in ("pre", "sft", "dpo"))
    assert stages.main(["pretrain", "--data", str(corpus), "--out-dir", pre, "--steps", "12", "--eval-every", "6",
                        "--lr", "3e-3", *tiny]) == 0
    pre_eval = [r["loss"] for r in read_metrics(pre) if r["split"] == "eval"]
    assert pre_eval[-1] < pre_eval[0]
    assert os.path.isfile(os.path.join(pre, "hf", "model.safetensors")) and os.path.isfile(os.path.join(pre, "config.json"))

    assert stages.main(["sft", "--init", pre, "--data", prefs, "--out-dir", sft, "--steps", "6", "--lr", "1e-3",
                        "--heldout-fraction", "0.2", *tiny]) == 0
    assert stages.main(["dpo", "--init", sft, "--data", prefs, "--out-dir", dpo_dir, "--steps", "20",
                        "--lr", "3e-3", "--beta", "0.5", "--eval-every", "5", "--heldout-fraction", "0.2", *tiny]) == 0
    rows = read_metrics(dpo_dir)
    train_losses = [r["loss"] for r in rows if r["split"] == "train"]
    evals = [r for r in rows if r["split"] == "eval"]
    assert train_losses[0] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at the start
    assert sum(train_losses[-4:]) / 4 < 0.5 * math.log(2)  # the DPO loss falls
    assert evals[-1]["rewards/accuracies"] > 0.75 and evals[-1]["rewards/margins"] > 0  # held-out, above chance
    policy = load_model(os.path.join(dpo_dir, "ckpt.pt"))
    assert policy.config.vocab_size == 257

    task = ["--init", pre, "--num-prompts", "4", "--max-new-tokens", "8", "--samples-per-prompt", "2"]
    assert stages.main(["pairs", "--out-dir", str(tmp_path / "pairs"), "--min-reward-gap", "0", *task]) == 0
    assert stages.main(["eval", "--reference-init", pre, "--out-dir", str(tmp_path / "eval"), *task]) == 0
    with open(tmp_path / "eval" / "eval.json") as f:
        report = json.load(f)
    assert report["kl_policy_reference"] == pytest.approx(0.0, abs=1e-4)  # the same model on both sides
    assert stages.main(["sample", "--init", pre, "--max-new-tokens", "8", "--prompt", "The film"]) == 0


def run_dpo(tmp_path, name, prefs, **overrides):
    cfg = train.TrainConfig(out_dir=str(tmp_path / name), lr=3e-3, **{**TINY, **overrides})
    pairs = encoded_pairs(prefs, cfg)
    model, reference = tiny_model(dropout=cfg.dropout), tiny_model()
    train.train("dpo", cfg, model, pairs[:32], pairs[32:], pad_id=256, reference=reference, log=lambda *_: None)
    return cfg, model


def test_resume_is_exact(tmp_path, monkeypatch):
    """An interrupted run resumed from its checkpoint ends with the same metrics and weights (dropout on)."""
    prefs = write_preferences(tmp_path / "prefs.jsonl")
    _, uninterrupted = run_dpo(tmp_path, "a", prefs, steps=6, save_every=3, dropout=0.1)

    real_step_batches = train.step_batches
    def crash_at_step_4(stage, cfg, train_set, step, pad_id):
        if step == 4:
            raise KeyboardInterrupt
        return real_step_batches(stage, cfg, train_set, step, pad_id)
    monkeypatch.setattr(train, "step_batches", crash_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        run_dpo(tmp_path, "b", prefs, steps=6, save_every=3, dropout=0.1)
    monkeypatch.setattr(train, "step_batches", real_step_batches)
    assert load_checkpoint(str(tmp_path / "b"))["step"] == 3
    torch.manual_seed(12345)  # a different global RNG state: resume must restore its own
    _, resumed = run_dpo(tmp_path, "b", prefs, steps=6, save_every=3, dropout=0.1, resume=True)

    assert read_metrics(tmp_path / "a") == read_metrics(tmp_path / "b")
    for (name, a), (_, b) in zip(uninterrupted.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("stage", ["sft", "dpo", "pretrain"])
def test_gradient_accumulation_equals_large_batch(tmp_path, stage):
    """AdamW's first moment after one step is (1 - beta1) * gradient: compare it across grad_accum."""
    prefs = write_preferences(tmp_path / "prefs.jsonl")
    moments = []
    for grad_accum in (1, 4):
        cfg = train.TrainConfig(out_dir=str(tmp_path / f"{stage}{grad_accum}"), steps=1, grad_accum=grad_accum,
                                grad_clip=1e9, **{**TINY, "batch_size": 8})
        if stage == "pretrain":
            stream = torch.randint(0, 257, (2000,))
            train_set, heldout = stream[:1500], stream[1500:]
        else:
            pairs = encoded_pairs(prefs, cfg)
            train_set, heldout = pairs[:32], pairs[32:]
        train.train(stage, cfg, tiny_model(), train_set, heldout, pad_id=256,
                    reference=tiny_model(seed=1) if stage == "dpo" else None, log=lambda *_: None)
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
            assert a[key] == (pytest.approx(b[key], rel=1e-4, abs=1e-5) if key != "split" else b[key]), key


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    stream = torch.randint(0, 257, (2000,))
    cfg = train.TrainConfig(out_dir=str(tmp_path / "run"), steps=10, **{**TINY, "save_every": 2})
    real_lm_loss, calls = train.lm_loss, []
    def loss_becomes_nan(model, batch, tokens_in_step, impl):
        calls.append(1)
        loss = real_lm_loss(model, batch, tokens_in_step, impl)
        return loss * float("nan") if len(calls) == 5 else loss  # the 5th training step (evals use no_grad)
    monkeypatch.setattr(train, "lm_loss", loss_becomes_nan)
    cfg = dataclasses.replace(cfg, eval_every=1000)
    with pytest.raises(train.NonFiniteLossError, match="step 5.*Last good checkpoint"):
        train.train("pretrain", cfg, tiny_model(), stream[:1500], stream[1500:], log=lambda *_: None)
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


def test_clear_errors(tmp_path):
    prefs = write_preferences(tmp_path / "prefs.jsonl")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        stages.main(["sft", "--data", str(tmp_path / "missing.jsonl"), "--out-dir", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="needs --data"):
        stages.main(["dpo", "--init", "whatever", "--out-dir", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="dpo needs --init"):
        stages.main(["dpo", "--data", prefs, "--out-dir", str(tmp_path / "x")])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_model(str(tmp_path / "junk.pt"))
    with pytest.raises(CheckpointError, match="neither"):
        load_model(str(tmp_path))  # a directory with neither ckpt.pt nor config.json
    small_vocab = tiny_model(vocab_size=100)
    save_checkpoint(str(tmp_path / "small" / "ckpt.pt"), small_vocab, None, 0, {})
    with pytest.raises(ValueError, match="257 tokens.*vocab_size 100"):
        stages.main(["dpo", "--init", str(tmp_path / "small"), "--data", prefs, "--out-dir", str(tmp_path / "y")])
    state = load_checkpoint(str(tmp_path / "small"))
    state["model_config"]["n_embd"] = 32  # weights no longer match the config
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(str(tmp_path / "bad.pt"))
    with pytest.raises(ValueError, match="not divisible"):
        train.train("sft", train.TrainConfig(out_dir=str(tmp_path / "z"), batch_size=6, grad_accum=4), tiny_model(),
                    [], [], log=lambda *_: None)


def test_demo_quick(tmp_path):
    """The whole embedded experiment in its quick configuration: every output is written and sensible."""
    import demo

    summary = demo.run(out_dir=str(tmp_path), quick=True, log=lambda *_: None)
    for key in ("reward_reference", "reward_policy", "win_rate", "kl_policy_reference", "heldout_reward_accuracy",
                "wall_seconds"):
        assert math.isfinite(summary[key]), key
    assert -1 <= summary["reward_policy"] <= 1 and 0 <= summary["win_rate"] <= 1
    assert summary["kl_policy_reference"] > -0.5  # a KL estimate: non-negative up to Monte Carlo noise
    for name in ("summary.json", "dpo_training.png", "rewards.png", "samples.txt", "pairs_train.jsonl",
                 "dpo/metrics.jsonl", "dpo/ckpt.pt", "pretrain/ckpt.pt", "dpo/hf/model.safetensors"):
        assert os.path.isfile(tmp_path / name), name
    assert len(data.load_preferences(str(tmp_path / "pairs_train.jsonl"))) == summary["pairs"]["train"]["n_pairs"]


def test_hf_gpt2_recipe_on_tiny_fixtures(tmp_path, monkeypatch):
    """The single-GPU recipe's path: a Hugging Face GPT-2 directory as --init, raw HH-RLHF transcripts as data,
    SFT then DPO, and weights that transformers loads back (tiny random model, byte tokenizer, no network)."""
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
            f.write(json.dumps({"chosen": turn + " Yes, it is lovely.", "rejected": turn + " No. Go away."}) + "\n")
    common = ["--data", str(hh), "--max-length", "96", "--max-prompt-length", "64", "--batch-size", "4",
              "--heldout-fraction", "0.25", "--eval-every", "3"]
    assert stages.main(["sft", "--init", str(hf_dir), "--out-dir", str(tmp_path / "sft"), "--steps", "3", *common]) == 0
    assert stages.main(["dpo", "--init", str(tmp_path / "sft"), "--out-dir", str(tmp_path / "dpo"), "--steps", "3",
                        "--lr", "1e-4", *common]) == 0
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "dpo" / "hf")
    ours = load_model(str(tmp_path / "dpo" / "ckpt.pt")).eval()
    idx = torch.randint(0, 257, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(idx).logits, ours(idx), rtol=1e-5, atol=1e-5)


def test_early_stopping_keeps_the_best_checkpoint(tmp_path, monkeypatch):
    """Held-out accuracies 0.6, 0.7, 0.5, 0.4 with patience 2: stop at the 4th evaluation, best.pt from the 2nd."""
    prefs = write_preferences(tmp_path / "prefs.jsonl")
    scripted = iter([0.6, 0.7, 0.5, 0.4, 0.9])
    monkeypatch.setattr(train, "evaluate_heldout", lambda *args, **kwargs: {
        "loss": 0.5, "rewards/accuracies": next(scripted)})
    cfg, model = run_dpo(tmp_path, "run", prefs, steps=20, eval_every=2, early_stop_patience=2)
    assert load_checkpoint(str(tmp_path / "run" / "best.pt"))["step"] == 4
    assert load_checkpoint(cfg.out_dir)["step"] == 8  # stopped early, checkpoint written at the stop
    assert max(r["step"] for r in read_metrics(cfg.out_dir)) == 8
    assert next(scripted) == 0.9  # the fifth evaluation never ran


def test_fresh_model_runs_are_reproducible(tmp_path):
    """The same config twice gives bit-identical weights: the fresh model's initialisation is seeded too."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a short corpus for a reproducibility check. " * 100)
    states = []
    for run in ("a", "b"):
        torch.manual_seed(len(states))  # a different global RNG state before each run
        stages.main(["pretrain", "--data", str(corpus), "--out-dir", str(tmp_path / run), "--steps", "2",
                     "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "32", "--max-length", "32", "--max-prompt-length", "16", "--batch-size", "4"])
        states.append(load_checkpoint(str(tmp_path / run))["model"])
    for name in states[0]:
        torch.testing.assert_close(states[0][name], states[1][name], rtol=0, atol=0, msg=name)
