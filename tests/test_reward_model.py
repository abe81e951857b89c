"""Tests of the reward model (methods/reward_model.py): the Bradley-Terry loss against its formula
and at extreme margins, where the score is read, the start at log 2, checkpoints that say what they
hold, and (slow) a reward model trained on the embedded task's pairs."""

import json
import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import data
import train
from methods import reward_model
from model import GPT, GPTConfig
from plumbing.checkpoint import CheckpointError, load_model, save_checkpoint
from test_train import tiny_model, write_preferences


def test_bradley_terry_worked_example():
    chosen, rejected = torch.tensor([1.5], requires_grad=True), torch.tensor([0.5])
    loss = reward_model.bradley_terry_loss(chosen, rejected)
    loss.sum().backward()
    torch.testing.assert_close(loss, torch.tensor([math.log(1 + math.exp(-1))]))  # 0.3132617
    # -sigma(-1) = -0.2689414
    torch.testing.assert_close(chosen.grad, torch.tensor([-1 / (1 + math.exp(1))]))


@settings(derandomize=True, deadline=None, max_examples=60)
@given(st.lists(st.tuples(st.floats(-1e4, 1e4), st.floats(-1e4, 1e4)), min_size=1, max_size=8))
def test_bradley_terry_matches_the_formula_and_stays_finite(pairs):
    chosen = torch.tensor([c for c, _ in pairs], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([r for _, r in pairs], dtype=torch.float64, requires_grad=True)
    losses = reward_model.bradley_terry_loss(chosen, rejected)  # computed in float32
    losses.sum().backward()
    for (c, r), loss, grad in zip(pairs, losses.tolist(), chosen.grad.tolist()):
        margin = float(torch.tensor(c, dtype=torch.float32) - torch.tensor(r, dtype=torch.float32))
        # log(1 + e^-m), stable
        expected = math.log1p(math.exp(-margin)) if margin > -30 else -margin
        assert math.isfinite(loss) and math.isfinite(grad)
        assert loss == pytest.approx(expected, rel=1e-5, abs=1e-6)
        # -sigma(-m)
        assert grad == pytest.approx(-1 / (1 + math.exp(min(margin, 700))), rel=1e-4, abs=1e-7)
    torch.testing.assert_close(rejected.grad, -chosen.grad)


def test_bradley_terry_rejects_bad_tensors():
    with pytest.raises(ValueError, match="rejected_rewards has shape"):
        reward_model.bradley_terry_loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(TypeError, match="chosen_rewards must be a floating-point tensor"):
        reward_model.bradley_terry_loss(torch.zeros(3, dtype=torch.int64), torch.zeros(3))


def test_the_score_is_read_at_the_last_token_of_each_row():
    """prompt [5, 6] + response [7, 8]: the mask covers positions 1, 2, so the last token (8) is at
    position 3."""
    batch = data.collate_responses([([5, 6], [7, 8]), ([5], [9, 9, 9])], pad_id=0)
    assert reward_model.last_token_index(batch["mask"]).tolist() == [3, 3]
    batch = data.collate_responses([([5, 6, 7, 8], [9]), ([5], [9, 9, 9, 9])], pad_id=0)
    assert reward_model.last_token_index(batch["mask"]).tolist() == [4, 4]
    torch.manual_seed(0)
    rm = reward_model.RewardModel(tiny_model())
    torch.nn.init.normal_(rm.head.weight)
    hidden = rm.trunk.hidden_states(batch["input_ids"])  # (2, T, d)
    expected = rm.head(hidden[[0, 1], [4, 4]]).squeeze(-1)
    torch.testing.assert_close(reward_model.batch_scores(rm, batch), expected)
    rows = [([5, 6, 7, 8], [9]), ([5], [9, 9, 9, 9]), ([1], [2, 3, 4, 5, 6, 7])]
    padded = data.collate_responses(rows, 0)
    torch.testing.assert_close(reward_model.batch_scores(rm, padded)[:2], expected, rtol=1e-5,
                               atol=1e-5)


def test_the_loss_starts_at_log_2_and_the_gradient_reaches_the_trunk():
    rm = reward_model.RewardModel(tiny_model())
    pairs = [data.EncodedPair([1, 2], [3, 4, 256], [5, 256]),
             data.EncodedPair([7], [8, 256], [9, 9, 256])]
    loss, values = reward_model.batch_loss(rm, data.dpo_collate(pairs, pad_id=256))
    assert loss.item() == pytest.approx(2 * math.log(2))
    assert reward_model.metrics(values)["rewards/accuracies"] == 0.0  # ties are not right
    loss.backward()
    assert rm.head.weight.grad.abs().sum() > 0
    torch.optim.SGD(rm.parameters(), lr=0.1).step()
    rm.zero_grad()
    reward_model.batch_loss(rm, data.dpo_collate(pairs, pad_id=256))[0].backward()
    assert rm.trunk.transformer.h[0].mlp.c_fc.weight.grad.abs().sum() > 0


def test_checkpoints_say_what_they_hold(tmp_path):
    lm, rm = str(tmp_path / "lm.pt"), str(tmp_path / "rm.pt")
    save_checkpoint(lm, tiny_model(), None, 0, None)
    scorer = reward_model.RewardModel(tiny_model())
    torch.nn.init.normal_(scorer.head.weight)
    save_checkpoint(rm, scorer, None, 0, None)
    loaded = reward_model.load_reward_model(rm)
    idx = torch.randint(0, 257, (2, 9))
    torch.testing.assert_close(loaded(idx, torch.tensor([8, 3])), scorer(idx, torch.tensor([8, 3])))
    with pytest.raises(CheckpointError, match="not a reward model"):
        reward_model.load_reward_model(lm)
    with pytest.raises(CheckpointError, match="holds a reward model, not a language model"):
        load_model(rm)


def test_command_errors_are_one_line(tmp_path, capsys):
    prefs = write_preferences(tmp_path / "prefs.jsonl")
    assert train.main(["reward-model", "--data", prefs, "--out-dir", str(tmp_path / "rm")]) == 1
    assert "--init '': reward-model needs --init" in capsys.readouterr().err
    init = str(tmp_path / "init.pt")
    save_checkpoint(init, tiny_model(), None, 0, None)
    assert train.main(["reward-model", "--init", init, "--data", prefs, "--eval-samples", "-1",
                       "--out-dir", str(tmp_path / "rm")]) == 1
    assert "--eval-samples -1: must be >= 0" in capsys.readouterr().err
    assert train.main(["reward-model", "--init", init, "--data", prefs, "--max-new-tokens", "60",
                       # the task's prompts + 60 > 64 positions
                       "--out-dir", str(tmp_path / "rm")]) == 1
    assert "--max-new-tokens 60: the longest prompt" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "rm")


def test_the_command_trains_keeps_the_best_and_resumes(tmp_path):
    prefs = write_preferences(tmp_path / "prefs.jsonl")
    init = str(tmp_path / "init.pt")
    save_checkpoint(init,
                    GPT(GPTConfig(block_size=96, vocab_size=257, n_layer=1, n_head=2, n_embd=16)),
                    None, 0,
                    None)  # 96 positions: the task's prompts (up to 61 bytes) and 8 sampled tokens
    common = ["reward-model", "--init", init, "--data", prefs, "--heldout-fraction", "0.2", "--lr",
              "3e-3", "--batch-size", "8", "--eval-every", "3", "--save-every", "3", "--max-length",
              "48", "--seed", "0"]
    assert train.main([*common, "--steps", "12", "--eval-samples", "1", "--max-new-tokens", "8",
                       "--out-dir", str(tmp_path / "a")]) == 0
    with open(tmp_path / "a" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    evals = [row for row in rows if row["split"] == "eval"]
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # zero head: every score 0
    assert evals[-1]["rewards/accuracies"] > 0.75  # cheerful over grumpy, learnt
    best = max(evals, key=lambda row: row["rewards/accuracies"])  # the first of the best
    assert torch.load(tmp_path / "a" / "best.pt", weights_only=False)["step"] == best["step"]
    with open(tmp_path / "a" / "reward_eval.json") as f:
        report = json.load(f)
    # 128 held-out prompts of the task, 1 sample each
    assert report["n_samples"] == len(report["samples"]) == 128
    # None: random bytes all score 0
    assert report["pearson"] is None or -1 <= report["pearson"] <= 1
    assert not os.path.exists(tmp_path / "a" / "hf")  # no language-model export
    # 6 steps, then resumed to 12: the same metrics as the run in one go
    assert train.main([*common, "--steps", "6", "--eval-samples", "0",
                       "--out-dir", str(tmp_path / "b")]) == 0
    assert train.main([*common, "--steps", "12", "--eval-samples", "0", "--resume",
                       "--out-dir", str(tmp_path / "b")]) == 0
    with open(tmp_path / "b" / "metrics.jsonl") as f:
        assert [row["loss"] for row in map(json.loads, f)] == [row["loss"] for row in rows]


@pytest.mark.slow
def test_a_reward_model_of_the_embedded_pairs_orders_held_out_pairs(tmp_path):
    """The quick demo's base and pairs; the reward model orders >= 90% of the held-out pairs and its
    scores of fresh samples correlate with the ground truth."""
    from experiments import base

    prepared = base.prepare(str(tmp_path / "base"), base.QUICK, log=lambda *_: None)
    assert train.main(["reward-model", "--init", prepared.reference_path, "--data",
                       prepared.pairs_train, "--heldout-data", prepared.pairs_heldout,
                       "--tokenizer", prepared.settings["tokenizer"], "--steps", "64",
                       "--batch-size", "32", "--lr", "1e-3", "--warmup-steps", "5", "--eval-every",
                       "8", "--max-new-tokens", "32", "--out-dir", str(tmp_path / "rm")]) == 0
    with open(tmp_path / "rm" / "metrics.jsonl") as f:
        best = max(json.loads(line)["rewards/accuracies"] for line in f if '"eval"' in line)
    with open(tmp_path / "rm" / "reward_eval.json") as f:
        report = json.load(f)
    assert best >= 0.9, best
    assert report["spearman"] > 0.5, report["spearman"]
