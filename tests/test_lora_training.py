"""LoRA through the training commands: `sft`/`dpo --lora-rank R` train only adapters on a frozen
--init model, the DPO reference is the same network with its adapters off (exactly the base model,
no copy), checkpoints hold the adapters and their base's hash, --resume continues exactly, hf/ is
the merged model that transformers loads, and load_model rebuilds the adapted model from a
checkpoint."""

import dataclasses
import math
import os

import pytest
import torch
import transformers

import loop
import train
from plumbing import commands, lora
from plumbing.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from plumbing.config import TrainConfig
from reference import Reference
from test_train import (
    TINY,
    interrupted_at_step,
    no_logits,
    read_metrics,
    tiny_model,
    write_preferences,
)

QUIET = dict(log=lambda *_: None)


@pytest.fixture
def base_ckpt(tmp_path):
    """A tiny base model (random but not trivial weights), saved as our checkpoint: the --init of
    LoRA runs."""
    model = tiny_model(seed=3)
    path = str(tmp_path / "base" / "ckpt.pt")
    save_checkpoint(path, model, None, 0, None)
    return path


def lora_cfg(tmp_path, name, base_ckpt, prefs, **overrides):
    settings = {**TINY, "heldout_fraction": 0.2, "steps": 6, "lr": 3e-3, "save_every": 3,
                "lora_rank": 4, "lora_alpha": 8.0, **overrides}
    return TrainConfig(out_dir=str(tmp_path / name), init=base_ckpt, data=prefs, **settings)


def test_lora_dpo_trains_only_adapters_and_exports_the_merged_model(tmp_path, base_ckpt):
    prefs = write_preferences(tmp_path / "prefs.jsonl")
    cfg = lora_cfg(tmp_path, "dpo", base_ckpt, prefs, steps=12, beta=0.5)
    model, metrics = commands.run_training("dpo", cfg, **QUIET)
    base = load_model(base_ckpt)

    # only the adapters moved: every base weight is bit-identical to --init's
    for name, tensor in lora.base_state_dict(model).items():
        torch.testing.assert_close(tensor, base.state_dict()[name], rtol=0, atol=0, msg=name)
    assert any(m.lora_B.abs().max() > 0 for _, m in lora.lora_layers(model))

    # DPO learnt: the first loss is log 2 (policy == reference at B = 0), the held-out accuracy is
    # above chance
    rows = read_metrics(cfg.out_dir)
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert metrics["rewards/accuracies"] > 0.75 and metrics["rewards/margins"] > 0

    # the reference view is the base model exactly, after training too
    idx = torch.randint(0, 257, (3, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(lora.BaseModelView(model)(idx), base.eval()(idx), rtol=0, atol=0)
        adapted = model.eval()(idx)  # (3, 20, 257) adapters on

    # the checkpoint holds adapters only (and the base's path and hash); load_model rebuilds the
    # adapted model
    state = load_checkpoint(cfg.out_dir)
    assert set(state["model"]) == {f"{n}.{p}" for n, _ in lora.lora_layers(model)
                                   for p in ("lora_A", "lora_B")}
    assert state["lora"]["rank"] == 4 and state["lora"]["alpha"] == 8.0
    assert state["lora"]["base"]["sha256"] == lora.base_fingerprint(base)
    with torch.no_grad():
        torch.testing.assert_close(load_model(cfg.out_dir)(idx), adapted, rtol=1e-5, atol=1e-5)

    # hf/ is the merged model: transformers computes the adapted model's logits from it
    hf = transformers.GPT2LMHeadModel.from_pretrained(os.path.join(cfg.out_dir, "hf")).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, adapted, rtol=1e-5, atol=1e-5)


def test_adapter_checkpoint_is_smaller_than_a_full_one(tmp_path, base_ckpt):
    prefs = write_preferences(tmp_path / "prefs.jsonl")
    commands.run_training("dpo", lora_cfg(tmp_path, "lora", base_ckpt, prefs, steps=2), **QUIET)
    commands.run_training("dpo", lora_cfg(tmp_path, "full", base_ckpt, prefs, steps=2, lora_rank=0),
                          **QUIET)
    lora_size, full_size = (os.path.getsize(tmp_path / name / "ckpt.pt") for name in ("lora",
                                                                                      "full"))
    # rank 4 adapters on a 16-wide model: ~ half its matrices' size
    assert lora_size < 0.5 * full_size


def test_live_and_precomputed_reference_agree_with_lora(tmp_path, base_ckpt):
    """The adapters-off reference, computed once before training or at every step, gives the same
    run."""
    prefs = write_preferences(tmp_path / "prefs.jsonl")
    runs = []
    for mode in ("precompute", "live"):
        commands.run_training("dpo", lora_cfg(tmp_path, mode, base_ckpt, prefs, reference=mode),
                              **QUIET)
        runs.append(read_metrics(tmp_path / mode))
    assert len(runs[0]) == len(runs[1]) > 6
    for a, b in zip(*runs):
        for key in a:
            expected = pytest.approx(b[key], rel=1e-4, abs=1e-6) if key != "split" else b[key]
            assert a[key] == expected, key


@pytest.mark.parametrize("reference", ["precompute", "live"])
def test_fused_linear_with_lora_trains_as_the_logits_path(tmp_path, base_ckpt, monkeypatch,
                                                          reference):
    """--fused-linear on LoRA DPO: the adapters-off reference goes through the hidden states too
    (never the logits), and the run is the logits path's up to float rounding."""
    prefs = write_preferences(tmp_path / "prefs.jsonl")
    runs = []
    for fused in (False, True):
        cfg = lora_cfg(tmp_path, f"fused{int(fused)}", base_ckpt, prefs, reference=reference,
                       fused_linear=fused,
                       device="cpu")  # fp32: rounding only
        with monkeypatch.context() as patch:
            if fused:
                no_logits(patch)
            model, _ = commands.run_training("dpo", cfg, **QUIET)
        runs.append((read_metrics(cfg.out_dir), lora.lora_state_dict(model)))
    (rows, adapters), (rows_fused, adapters_fused) = runs
    assert len(rows) == len(rows_fused) > 6
    for a, b in zip(rows, rows_fused):
        for key in a:
            expected = pytest.approx(a[key], rel=1e-4, abs=1e-5) if key != "split" else a[key]
            assert b[key] == expected, key
    assert adapters.keys() == adapters_fused.keys() and adapters
    for name in adapters:
        torch.testing.assert_close(adapters_fused[name], adapters[name], rtol=1e-4, atol=1e-5,
                                   msg=name)


def test_lora_resume_is_exact(tmp_path, base_ckpt, monkeypatch):
    """Interrupted at step 4, resumed from the step-3 checkpoint: same metrics and adapters (adapter
    dropout on)."""
    prefs = write_preferences(tmp_path / "prefs.jsonl")
    settings = dict(lora_dropout=0.1, reference="live")
    whole, _ = commands.run_training("dpo", lora_cfg(tmp_path, "a", base_ckpt, prefs, **settings),
                                     **QUIET)

    with interrupted_at_step(monkeypatch, 4):
        commands.run_training("dpo", lora_cfg(tmp_path, "b", base_ckpt, prefs, **settings), **QUIET)
    assert load_checkpoint(str(tmp_path / "b"))["step"] == 3
    torch.manual_seed(12345)  # resume must restore its own RNG state
    resumed, _ = commands.run_training("dpo",
                                       lora_cfg(tmp_path, "b", base_ckpt, prefs, resume=True,
                                                **settings),
                                       **QUIET)
    assert read_metrics(tmp_path / "a") == read_metrics(tmp_path / "b")
    for (name, a), b in zip(lora.lora_state_dict(whole).items(),
                            lora.lora_state_dict(resumed).values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_resume_and_loading_refuse_a_different_base(tmp_path, base_ckpt):
    prefs = write_preferences(tmp_path / "prefs.jsonl")
    cfg = lora_cfg(tmp_path, "run", base_ckpt, prefs, steps=2)
    commands.run_training("dpo", cfg, **QUIET)
    # the base changes under the adapters
    save_checkpoint(base_ckpt, tiny_model(seed=4), None, 0, None)
    with pytest.raises(CheckpointError, match="other base weights"):
        commands.run_training("dpo", dataclasses.replace(cfg, resume=True, steps=4), **QUIET)
    with pytest.raises(CheckpointError, match="sha256 differs"):
        load_model(cfg.out_dir)
    os.remove(base_ckpt)
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        load_model(cfg.out_dir)
    # a full fine-tuning run cannot resume from adapters, nor a LoRA run from full weights
    with pytest.raises(CheckpointError, match="written by a LoRA run"):
        full = dataclasses.replace(cfg, resume=True, lora_rank=0, max_length=48)
        loop.train(commands.objective("dpo", full, 256, Reference.frozen(tiny_model())), full,
                   tiny_model(), [], [],
                   **QUIET)


def test_lora_sft_then_lora_dpo_on_its_output(tmp_path, base_ckpt):
    """A LoRA SFT checkpoint is a valid --init: load_model merges it, and DPO puts fresh adapters on
    top."""
    prefs = write_preferences(tmp_path / "prefs.jsonl")
    sft = lora_cfg(tmp_path, "sft", base_ckpt, prefs, steps=4)
    sft_model, _ = commands.run_training("sft", sft, **QUIET)
    dpo_cfg = lora_cfg(tmp_path, "dpo", sft.out_dir, prefs, steps=2)
    commands.run_training("dpo", dpo_cfg, **QUIET)
    assert read_metrics(dpo_cfg.out_dir)[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert load_checkpoint(dpo_cfg.out_dir)["lora"]["base"]["sha256"] == lora.base_fingerprint(
        lora.merged_copy(sft_model))
    load_model(dpo_cfg.out_dir)  # two levels of adapters: dpo's, on sft's merged model, on the base


@pytest.mark.parametrize("argv, message", [
    (["dpo", "--data", "P", "--init", "B", "--lora-rank", "-1"], "--lora-rank -1: must be >= 0"),
    (["dpo", "--data", "P", "--init", "B", "--lora-rank", "2", "--lora-alpha", "0"],
     "--lora-alpha 0.0: must be > 0"),
    (["dpo", "--data", "P", "--init", "B", "--lora-rank", "2", "--lora-dropout", "1"],
     "--lora-dropout 1.0"),
    (["dpo", "--data", "P", "--init", "B", "--lora-rank", "2", "--lora-targets", "c_attn,"],
     "--lora-targets"),
    (["dpo", "--data", "P", "--init", "B", "--lora-rank", "2", "--lora-targets", "wte"],
     "--lora-targets 'wte': apply_lora: targets ['wte'] match no nn.Linear"),
    (["dpo", "--data", "P", "--init", "B", "--lora-rank", "2", "--lora-targets", "lm_head"],
     "tied embeddings"),
    (["sft", "--data", "P", "--lora-rank", "2"], "--lora-rank 2: LoRA needs --init"),
])
def test_lora_flags_fail_with_one_line(tmp_path, base_ckpt, capsys, argv, message):
    prefs = write_preferences(tmp_path / "prefs.jsonl")
    out_dir = str(tmp_path / "out")
    argv = [{"P": prefs, "B": base_ckpt}.get(a, a) for a in argv] + ["--out-dir", out_dir,
                                                                     "--max-length", "48"]
    assert train.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not os.path.exists(out_dir)
