"""A run directory holds one run (run_dir.claim_directory): another command, model kind,
architecture or tokenizer cannot --resume it, a new run does not overwrite it without --overwrite, a
failed start leaves it byte for byte as it was, --resume keeps exactly the metrics rows up to the
resumed step, and a weight mismatch in any checkpoint is one line."""

import hashlib
import json
import os

import pytest
import torch

import train
from methods import reward_model
from model import GPT, GPTConfig
from plumbing.checkpoint import save_checkpoint
from reference import Reference
from test_train import read_metrics, tiny_model, write_preferences

FAST = ["--steps", "2", "--batch-size", "4", "--eval-every", "1", "--save-every", "1",
        "--max-length", "48", "--heldout-fraction", "0.2", "--seed", "0"]


def snapshot(directory):
    """{relative path: sha256 of the bytes} of every file under directory."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return files


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Two tiny models (block sizes 64 and 96), a reward model, preference pairs, and a finished KTO
    run."""
    tmp = tmp_path_factory.mktemp("run-directory")
    init, init96 = str(tmp / "init.pt"), str(tmp / "init96.pt")
    save_checkpoint(init, tiny_model(), None, 0, None)
    torch.manual_seed(1)
    save_checkpoint(init96,
                    GPT(GPTConfig(block_size=96, vocab_size=257, n_layer=1, n_head=2, n_embd=16)),
                    None,
                    0, None)
    prefs = write_preferences(tmp / "prefs.jsonl", n=20)
    kto_run = str(tmp / "kto-run")
    assert train.main(["kto", "--init", init, "--data", prefs, *FAST, "--out-dir", kto_run]) == 0
    return dict(init=init, init96=init96, prefs=prefs, kto_run=kto_run, tmp=tmp)


def refused(argv, capsys, directory, fragment):
    """Run argv, expect exit 1 with one line containing fragment, and directory unchanged byte for
    byte."""
    before = snapshot(directory)
    capsys.readouterr()
    assert train.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and fragment in err, err
    assert snapshot(directory) == before, "a refused start changed the run directory"
    return err


@pytest.mark.parametrize("command, fragment", [
    ("simpo", "holds a kto run, not a simpo run: resume it with `train.py kto --resume`"),
    ("reward-model", "holds a kto run, not a reward-model run"),
    ("orpo", "holds a kto run, not a orpo run"),
])
def test_another_command_cannot_resume_a_run(inputs, capsys, monkeypatch, command, fragment):
    monkeypatch.setattr(Reference, "precomputed", lambda *a, **k: pytest.fail("work started"))
    extra = ["--eval-samples", "0"] if command == "reward-model" else []
    refused([command, "--init", inputs["init"], "--data", inputs["prefs"], *FAST, *extra,
             "--resume", "--out-dir", inputs["kto_run"]], capsys, inputs["kto_run"], fragment)


def test_another_architecture_cannot_resume_and_fails_before_the_reference_precompute(
        inputs, capsys, monkeypatch):
    monkeypatch.setattr(Reference, "precomputed",
                        lambda *a, **k: pytest.fail("the reference precompute started"))
    refused(["kto", "--init", inputs["init96"], "--data", inputs["prefs"], *FAST, "--resume",
             "--out-dir", inputs["kto_run"]], capsys, inputs["kto_run"],
            "another architecture than --init")
    refused(["kto", "--init", inputs["init"], "--data", inputs["prefs"], *FAST, "--resume",
             "--tokenizer", "gpt2", "--out-dir", inputs["kto_run"]], capsys, inputs["kto_run"],
            "gpt2")


def test_a_new_run_does_not_overwrite_a_run_without_overwrite(inputs, capsys, tmp_path):
    out = str(tmp_path / "run")
    common = ["dpo", "--init", inputs["init"], "--data", inputs["prefs"], *FAST,
              "--keep-checkpoints", "--out-dir", out]
    assert train.main(common) == 0
    with open(os.path.join(out, "notes.txt"), "w") as f:
        f.write("the user's own file")
    refused(["kto", *common[1:]], capsys, out,
            "holds a dpo run; --resume continues it, --overwrite replaces it")
    refused(common, capsys, out,
            "--overwrite replaces it (removing ckpt.pt, config.json, hf, metrics.jsonl, "
            "step_000001.pt, step_000002.pt)")
    refused([*common, "--resume", "--overwrite"], capsys, out, "--overwrite: contradicts --resume")
    assert train.main(["kto", *common[1:-3], "--steps", "1", "--out-dir", out, "--overwrite"]) == 0
    # the old
    assert sorted(os.listdir(out)) == ["ckpt.pt", "config.json", "hf", "metrics.jsonl", "notes.txt"]
    # step_00000N.pt are gone, the user's file is kept
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["command"] == "kto"
    assert [row["step"] for row in read_metrics(out)] == [1, 1]


def test_a_directory_of_something_else_is_refused_even_with_overwrite(inputs, capsys, tmp_path):
    out = tmp_path / "hf-model"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    for extra in ([], ["--overwrite"]):
        refused(["dpo", "--init", inputs["init"], "--data", inputs["prefs"], *FAST, "--out-dir",
                 str(out), *extra],
                capsys, str(out), "its config.json is not a training run's")


def test_resume_keeps_exactly_the_rows_up_to_the_resumed_step(inputs, tmp_path):
    """A run killed after step 3's rows were appended (one cut short) but before its checkpoint:
    --resume drops the rows past step 2 and ends with the rows of the uninterrupted run."""
    common = ["dpo", "--init", inputs["init"], "--data", inputs["prefs"], *FAST[2:], "--save-every",
              "2"]
    whole, cut = str(tmp_path / "whole"), str(tmp_path / "cut")
    assert train.main([*common, "--steps", "4", "--out-dir", whole]) == 0
    assert train.main([*common, "--steps", "2", "--out-dir", cut]) == 0
    with open(os.path.join(whole, "metrics.jsonl")) as f:
        step3 = [line for line in f if json.loads(line)["step"] == 3]
    with open(os.path.join(cut, "metrics.jsonl"), "a") as f:
        # step 3's train row, and its eval row cut short by the kill
        f.write(step3[0] + step3[1][:25])
    assert train.main([*common, "--steps", "4", "--out-dir", cut, "--resume"]) == 0
    with open(os.path.join(whole, "metrics.jsonl")) as a:
        with open(os.path.join(cut, "metrics.jsonl")) as b:
            assert a.read() == b.read()
    with open(os.path.join(cut, "metrics.jsonl"), "a") as f:
        f.write("not json\n" + step3[0])
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 9: not a JSON row"):
        train.main([*common, "--steps", "4", "--out-dir", cut, "--resume", "--debug"])


def test_resume_before_the_first_checkpoint_starts_from_step_zero(inputs, tmp_path, capsys):
    common = ["dpo", "--init", inputs["init"], "--data", inputs["prefs"], *FAST]
    whole, early = str(tmp_path / "whole"), str(tmp_path / "early")
    assert train.main([*common, "--out-dir", whole]) == 0
    assert train.main([*common, "--out-dir", early]) == 0
    # as if killed after config.json, before the first checkpoint
    for name in ("ckpt.pt", "metrics.jsonl"):
        os.remove(os.path.join(early, name))
    capsys.readouterr()
    assert train.main([*common, "--out-dir", early, "--resume"]) == 0
    assert "holds no checkpoint yet" in capsys.readouterr().out
    assert read_metrics(early) == read_metrics(whole)


def test_weights_that_do_not_fit_are_one_line(inputs, capsys, tmp_path):
    """A checkpoint whose weights do not match its stored config, as --init, --reference-init,
    --reward-model."""
    bad = str(tmp_path / "bad.pt")
    save_checkpoint(bad, tiny_model(), None, 0, None)
    state = torch.load(bad, weights_only=False)
    state["model_config"]["n_embd"] = 32
    torch.save(state, bad)
    rm = str(tmp_path / "rm.pt")
    save_checkpoint(rm, reward_model.RewardModel(tiny_model()), None, 0, None)
    state = torch.load(rm, weights_only=False)
    state["model"]["head.weight"] = torch.zeros(3, 3)
    torch.save(state, rm)
    out = str(tmp_path / "out")
    common = ["--data", inputs["prefs"], *FAST, "--out-dir", out]
    for argv in (["dpo", "--init", bad, *common],
                 ["dpo", "--init", inputs["init"], "--reference-init", bad, *common],
                 ["ppo", "--init", inputs["init96"], "--reward-model", rm, "--out-dir", out]):
        assert train.main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "weights do not match the stored model config" in err, err
        assert not os.path.exists(out)


@pytest.mark.parametrize("path, fragment", [
    ("{kto_run}/config.json",
     "a file, but not a checkpoint (a .pt); pass the run's directory {kto_run}"),
    ("{prefs}", "a file, but not a checkpoint (a .pt); pass a ckpt.pt of ours"),
    ("{tmp}", "neither a ckpt.pt of ours nor a Hugging Face GPT-2 directory"),
])
def test_a_local_path_that_is_not_a_checkpoint_says_what_to_pass(inputs, capsys, tmp_path, path,
                                                                 fragment):
    names = {key: str(value) for key, value in inputs.items()}
    argv = ["ppo", "--init", path.format(**names), "--ground-truth-reward", "--out-dir",
            str(tmp_path / "out")]
    assert train.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment.format(**names) in err, err
    assert "huggingface" not in err.lower(), err
