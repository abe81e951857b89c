"""Tests of the RL stage (methods/rlhf.py): one-line errors before any sampling, the files a run
writes, PPO and RLOO updates that follow the reward, and (slow) PPO-GT on the quick base raising the
ground-truth reward."""

import json
import math
import os

import pytest
import torch

import sentiment
import train
from methods import reward_model, rlhf
from model import GPT, GPTConfig
from plumbing.checkpoint import load_model, save_checkpoint
from test_train import tiny_model


def tiny_checkpoints(tmp_path):
    """A byte-level GPT that fits the task's prompts plus 8 tokens, and a reward model on its
    trunk."""
    torch.manual_seed(0)
    init = str(tmp_path / "init.pt")
    save_checkpoint(init,
                    GPT(GPTConfig(block_size=96, vocab_size=257, n_layer=1, n_head=2, n_embd=16)),
                    None, 0,
                    None)
    scorer = reward_model.RewardModel(load_model(init))
    torch.nn.init.normal_(scorer.head.weight)
    rm = str(tmp_path / "rm.pt")
    save_checkpoint(rm, scorer, None, 0, None)
    return init, rm


@pytest.mark.parametrize("flags, message", [
    (["--ground-truth-reward", "--kl-coef", "-0.1"], "--kl-coef -0.1: must be >= 0"),
    (["--ground-truth-reward", "--clip", "0"], "--clip 0.0: must be > 0"),
    (["--ground-truth-reward", "--gamma", "1.5"], "--gamma 1.5: must be in [0, 1]"),
    (["--ground-truth-reward", "--minibatches", "3"], "--minibatches 3: must divide --batch-size x "
     "--samples-per-prompt = 4"),
    (["--reward-model", "{init}"], "not a reward model (it holds a language model)"),
    (["--reward-model", "{tmp}/missing.pt"],
     "--reward-model '{tmp}/missing.pt': no such file or directory"),
    (["--reward-model", "{rm}", "--ground-truth-reward"], "exactly one of the two"),
    ([], "give --reward-model"),
    (["--ground-truth-reward", "--dtype", "float16"],
     "--dtype 'float16': float16 needs a gradient scaler"),
    (["--ground-truth-reward", "--max-new-tokens", "60"],
     "--max-new-tokens 60: the longest prompt"),
])
def test_errors_are_one_line_before_any_sampling(tmp_path, capsys, monkeypatch, flags, message):
    init, rm = tiny_checkpoints(tmp_path)
    names = dict(init=init, rm=rm, tmp=str(tmp_path))
    monkeypatch.setattr(sentiment, "sample_completions",
                        lambda *a, **k: pytest.fail("sampling started"))
    argv = ["ppo", "--init", init, "--batch-size", "4", "--max-new-tokens", "8", "--out-dir",
            str(tmp_path / "run"), *[flag.format(**names) for flag in flags]]
    assert train.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert message.format(**names) in err, err
    assert not os.path.exists(tmp_path / "run")
    assert train.main(["rloo", "--init", init, "--ground-truth-reward", "--samples-per-prompt", "1",
                       "--out-dir", str(tmp_path / "run")]) == 1
    assert "--samples-per-prompt 1: must be >= 2" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["ppo", "rloo"])
def test_a_run_writes_its_files(tmp_path, command):
    init, rm = tiny_checkpoints(tmp_path)
    out = tmp_path / command
    ppo_only = ["--minibatches", "2"] if command == "ppo" else []
    assert train.main([command, "--init", init, "--reward-model", rm, "--steps", "2",
                       "--batch-size", "4", "--samples-per-prompt", "2", *ppo_only,
                       "--max-new-tokens", "8", "--eval-every", "2", "--save-every", "1",
                       "--keep-checkpoints", "--out-dir", str(out)]) == 0
    with open(out / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert [row["split"] for row in rows] == ["train", "train", "eval"]
    # the first rollouts come from pi_ref itself
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-5)
    for key in ("score", "ground_truth", "kl", "objective", "policy_loss", "grad_norm"):
        assert math.isfinite(rows[1][key]), key
    assert {"reward", "kl", "score"} <= rows[-1].keys()
    for name in ("config.json", "ckpt.pt", "step_000001.pt", "step_000002.pt",
                 "hf/model.safetensors"):
        assert os.path.isfile(out / name), name
    assert load_model(str(out / "step_000002.pt")).config.vocab_size == 257


def test_ppo_and_rloo_updates_raise_the_log_prob_of_well_scored_rollouts(tmp_path):
    """One update on hand-made rollouts: the rollout scored 1 gains probability, the one scored -1
    loses it."""
    import dataclasses

    from plumbing import config
    from plumbing.run_dir import start_run

    policy = tiny_model()
    batch = {"input_ids": torch.tensor([[5, 6, 7, 8], [5, 6, 9, 10]]),
             "labels": torch.tensor([[6, 7, 8, -100], [6, 9, 10, -100]]),
             "mask": torch.tensor([[False, True, True, False], [False, True, True, False]])}
    for command in ("ppo", "rloo"):
        cfg = dataclasses.replace(config.command_config(command), out_dir=str(tmp_path / command),
                                  max_length=4,
                                  samples_per_prompt=2, batch_size=1, minibatches=1, ppo_epochs=1,
                                  lr=1e-2,
                                  device="cpu")
        model = tiny_model()
        run = start_run(command, cfg, model, log=lambda *_: None)
        with torch.no_grad():
            old = rlhf.rollout_logprobs(model, batch)
        rollouts = rlhf.Rollouts(batch, torch.tensor([1.0, -1.0]), torch.tensor([1.0, -1.0]), old,
                                 old.clone())
        if command == "ppo":
            value_model = reward_model.RewardModel(tiny_model())
            rlhf.ppo_update(run, value_model, torch.optim.AdamW(value_model.parameters()), rollouts,
                            kl_coef=0.0)
        else:
            rlhf.rloo_update(run, rollouts, kl_coef=0.0)
        with torch.no_grad():
            new = rlhf.rollout_logprobs(model, batch).sum(dim=1)
        change = new - old.sum(dim=1)
        assert change[0] > 0 > change[1], (command, change)
    del policy


@pytest.mark.slow
def test_ppo_on_the_ground_truth_raises_the_reward(tmp_path):
    """The quick base, 12 iterations of PPO-GT: the held-out ground-truth reward rises well above
    the base's, at a finite KL."""
    from experiments import base

    prepared = base.prepare(str(tmp_path / "base"), base.QUICK, log=lambda *_: None)
    assert train.main(["ppo", "--init", prepared.reference_path, "--tokenizer",
                       prepared.settings["tokenizer"], "--ground-truth-reward", "--steps", "12",
                       "--eval-every", "12", "--out-dir", str(tmp_path / "ppo")]) == 0
    with open(tmp_path / "ppo" / "metrics.jsonl") as f:
        final = [json.loads(line) for line in f][-1]
    reference = sentiment.score_policy(prepared.reference, prepared.reference, prepared.tokenizer,
                                       prepared.heldout_prompts, sentiment.sentiment_reward,
                                       max_new_tokens=32,
                                       seed=1338)
    assert final["split"] == "eval" and math.isfinite(final["kl"]) and 0 < final["kl"] < 20
    assert final["reward"] > reference["reward"] + 0.3, (final["reward"], reference["reward"])


@pytest.mark.parametrize("flags, message", [
    (["--target-kl", "1", "--kl-horizon", "2"],
     "--kl-horizon 2.0: must be at least the rollouts of one iteration "
     "(--batch-size x --samples-per-prompt = 4)"),
    (["--target-kl", "1", "--kl-coef", "0"],
     "--target-kl 1.0: steers --kl-coef by multiplying it, and --kl-coef "
     "is 0"),
    (["--kl-coef", "1e300"], "--kl-coef 1e+300: must be >= 0 and at most 1e+06"),
])
def test_kl_controller_settings_that_would_not_stay_a_penalty_are_refused(tmp_path, capsys,
                                                                          monkeypatch, flags,
                                                                          message):
    init, _ = tiny_checkpoints(tmp_path)
    monkeypatch.setattr(sentiment, "sample_completions",
                        lambda *a, **k: pytest.fail("sampling started"))
    assert train.main(["ppo", "--init", init, "--ground-truth-reward", "--batch-size", "4",
                       "--minibatches", "1", "--out-dir", str(tmp_path / "run"), *flags]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("command", ["ppo", "rloo"])
def test_resume_is_exact(tmp_path, command):
    """3 iterations, or 1 then --resume to 3 (the adaptive KL coefficient moving): the same metrics
    rows, policy, value model, AdamW states and KL coefficient."""
    init, rm = tiny_checkpoints(tmp_path)
    ppo_only = ["--minibatches", "2"] if command == "ppo" else []
    common = [command, "--init", init, "--reward-model", rm, "--batch-size", "2",
              "--samples-per-prompt", "2", *ppo_only, "--max-new-tokens", "6", "--eval-every", "1",
              "--save-every", "1", "--target-kl", "0.01", "--kl-horizon", "4", "--lr", "1e-2"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert train.main([*common, "--steps", "3", "--out-dir", str(whole)]) == 0
    assert train.main([*common, "--steps", "1", "--out-dir", str(cut)]) == 0
    assert train.main([*common, "--steps", "3", "--out-dir", str(cut), "--resume"]) == 0
    assert (whole / "metrics.jsonl").read_text() == (cut / "metrics.jsonl").read_text()
    a, b = (torch.load(path / "ckpt.pt", weights_only=False) for path in (whole, cut))
    assert a["extra"]["kl_coef"] != 0.05 and a["extra"]["kl_coef"] == b["extra"]["kl_coef"]
    for key in ("model", "optimizer"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    for key in a["extra"]:
        torch.testing.assert_close(a["extra"][key], b["extra"][key], rtol=0, atol=0)


def test_a_stubbed_rlhf_row_is_left_out_of_the_frontier_and_said(tmp_path, monkeypatch):
    """The course kit's student copy stubs RLOO's baseline, PPO's math and the reward model's loss
    (Assignment 5): a run reaches the stub's NotImplementedError, and the frontier leaves that row
    out, with the rows that score with the reward model when the reward model is missing, and names
    them."""
    from experiments import rl_runs
    from methods import ppo
    from plumbing import commands
    from plumbing.config import command_config

    def stub(*args, **kwargs):
        raise NotImplementedError("Assignment 5: RLOO's baseline")

    monkeypatch.setattr(ppo, "rloo_advantages", stub)
    init, rm = tiny_checkpoints(tmp_path)
    with pytest.raises(NotImplementedError, match="Assignment 5"):  # through the RL loop, unchanged
        commands.run_rl("rloo", command_config("rloo", init=init, reward_model=rm, steps=1,
                                               batch_size=2, max_new_tokens=4,
                                               out_dir=str(tmp_path / "rloo")),
                        log=lambda *_: None)

    trained = []
    monkeypatch.setattr(rl_runs.points, "train_cached",
                        lambda command, cfg, log: stub() if command == "rloo" else
                        trained.append(cfg.ground_truth_reward))
    monkeypatch.setattr(rl_runs.points, "run_points", lambda *args, **kwargs: [])

    class Prepared:
        settings = {"seed": 1, "block_size": 48, "tokenizer": "bytes", "max_new_tokens": 8}
        reference_path = "unused"

    run = dict(lr=1e-3, steps=4, batch_size=4)
    settings = {"ppo": dict(run, kl_coefs=(0.1, 0.3)), "ppo_gt": dict(run, kl_coefs=(0.1,)),
                "rloo": dict(run, kl_coefs=(0.1,), k=2), "rl_checkpoints": 2}
    log = []
    sweeps, left_out = rl_runs.rl_sweeps(Prepared(), settings, rm, str(tmp_path), str(tmp_path),
                                         log.append)
    assert set(sweeps) == {"PPO", "PPO-GT"} and len(sweeps["PPO"]) == 2
    assert left_out == {"RLOO": "Assignment 5: RLOO's baseline"}
    assert trained == [False, False, True]  # PPO on the reward model twice, then PPO-GT
    assert any(line.startswith("RLOO: left out of the frontier") for line in log)
    # no reward model (its loss a stub): PPO and RLOO wait for it, PPO-GT does not
    sweeps, left_out = rl_runs.rl_sweeps(Prepared(), settings, None, str(tmp_path), str(tmp_path),
                                         log.append)
    assert set(sweeps) == {"PPO-GT"}
    assert left_out == {"PPO": "needs the reward model", "RLOO": "needs the reward model"}
