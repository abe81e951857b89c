"""Tests of the command line a user meets (train.py): one-line errors before any work, per-command
flags with help and defaults, defaults that follow the model, and an install that adds no top-level
names."""

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import data
import loop
import train
from hang_guard import HANG_GUARD_SECONDS
from model import GPT, GPTConfig
from plumbing import commands
from plumbing.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from plumbing.config import (
    COMMAND_DEFAULTS,
    COMMAND_NAMES,
    COMMANDS,
    ConfigError,
    TrainConfig,
    command_config,
)
from reference import Reference

REPO = Path(__file__).resolve().parents[1]


def tiny_checkpoint(path, block_size=64, vocab_size=257):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=1, n_head=2,
                          n_embd=16))
    save_checkpoint(str(path), model, None, 0, {})
    return str(path)


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


@pytest.fixture
def files(tmp_path):
    """A tiny checkpoint and preference files: good, empty, malformed, mistyped."""
    good = json.dumps({"prompt": "Q: ", "chosen": "yes", "rejected": "no"})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(open(tiny_checkpoint(tmp_path / "full.pt"), "rb").read()[:300])
    unrelated = tmp_path / "unrelated"  # a directory of neither data nor a model
    unrelated.mkdir()
    (unrelated / "picture.png").write_bytes(bytes(range(256)) * 2)
    return dict(
        init=tiny_checkpoint(tmp_path / "init" / "ckpt.pt"),
        prefs=write_lines(tmp_path / "prefs.jsonl", [good] * 8),
        empty=write_lines(tmp_path / "empty.jsonl", []),
        malformed=write_lines(tmp_path / "malformed.jsonl",
                              [good, good, '{"prompt": "Q", "chosen": ']),
        mistyped=write_lines(tmp_path / "mistyped.jsonl",
                             [good, json.dumps({"prompt": 7, "chosen": "a",
                                                "rejected": "b"})]),
        truncated=str(truncated),
        empty_completions=write_lines(tmp_path / "empty_completions.jsonl", [json.dumps(
            {"prompt": "Q: ", "completion": text, "label": i % 2 == 0})
            for i, text in enumerate(["", " ", "\n", ""])]),
        few_desirable=write_lines(tmp_path / "few_desirable.jsonl", [json.dumps(
            {"prompt": f"Q{i}: ", "completion": "yes" if i < 20 else "no", "label": i < 20})
                                                                     for i in range(40)]),
        shared_start=write_lines(tmp_path / "shared_start.jsonl", [json.dumps(
            {"prompt": "Q: ", "chosen": "x" * 50 + "yes", "rejected": "x" * 50 + "no"})] * 8),
        unrelated=str(unrelated),
        init128=tiny_checkpoint(tmp_path / "init128.pt", block_size=128),
        out=str(tmp_path / "run"),
    )


# (command line, a fragment the one-line error must contain); {name} is filled from the `files`
# fixture.
USER_ERRORS = [
    ("sft --data {tmp}/missing.jsonl", "--data '{tmp}/missing.jsonl': no such file or directory"),
    ("sft --init {init} --data {empty}", "--data {empty}: no usable preference pair"),
    ("dpo --init {init} --data {malformed}", "malformed.jsonl, line 3: invalid JSON"),
    ("dpo --init {init} --data {mistyped}", "mistyped.jsonl, line 2, field 'prompt'"),
    ("dpo --init {init} --data {prefs} --beta -1", "--beta -1.0: must be > 0"),
    ("dpo --init {init} --data {prefs} --loss ipo --label-smoothing 0.1",
     "--label-smoothing: label_smoothing=0.1 has no meaning for loss_type='ipo'"),
    ("dpo --init {init} --data {prefs} --rpo-alpha -1",
     "--rpo-alpha: rpo_alpha must be finite and in [0, inf]"),
    ("dpo --init {init} --data {prefs} --grad-accum 3",
     "--grad-accum 3: must divide --batch-size 16"),
    ("dpo --init {tmp}/no/such/dir --data {prefs}",
     "--init '{tmp}/no/such/dir': no such file or directory"),
    ("dpo --init ./missing-model --data {prefs}",
     "--init './missing-model': no such file or directory"),
    ("dpo --init {truncated} --data {prefs}", "truncated.pt: not a readable checkpoint"),
    ("dpo --data {prefs}", "--init '': dpo needs --init"),
    ("sft --init {init}", "--data '': sft needs --data"),
    ("dpo --init {init} --data {prefs} --resume", "--resume: no run to resume in {out}"),
    ("dpo --init {init} --data {prefs} --device cuda:7", "--device 'cuda:7': no such CUDA device"),
    ("dpo --init {init} --data {prefs} --max-length 100",
     "--max-length 100 exceeds the model's block size 64"),
    # offline here, or a vocabulary mismatch
    ("dpo --init {init} --data {prefs} --tokenizer gpt2", "gpt2"),
    ("pretrain --data {tmp}/missing.txt", "--data '{tmp}/missing.txt': no such file or directory"),
    ("pretrain --data {empty}", "tokens are too few for windows of --max-length 256"),
    ("pretrain --block-size 32 --max-length 64", "--max-length 64: exceeds --block-size 32"),
    ("eval --init {init}", "--reference-init '': eval needs --reference-init"),
    ("kto --init {init} --data {empty_completions}",
     "no usable preference pair ({empty_completions}: loaded 0 "
     "examples from 4 records ({{'unpaired': 4}}); skipped 4: empty"),
    ("kto --init {init} --data {few_desirable} --desirable-fraction 0.01",
     "--desirable-fraction 0.01: left no desirable training example"),
    ("orpo --init {init} --data {shared_start} --max-length 48 --max-prompt-length 24",
     "no usable preference pair: truncation to --max-length 48 tokens (--max-prompt-length 24) "
     "left none; raise --max-length or lower --max-prompt-length"),
    ("reward-model --init {init} --data {prefs}",
     "--max-new-tokens 64: the longest prompt (61 tokens) plus 64 "
     "exceeds the block size 64 of {init}; --eval-samples 2 samples"),
    ("ppo --init {init} --ground-truth-reward --max-new-tokens 2 --target-kl 1 --kl-horizon 2",
     "--kl-horizon 2.0: must be at least the rollouts of one iteration"),
    # found by tests/test_cli_fuzz.py: a traceback, a start after the reference's precompute, or a
    # bare message
    ("ppo --init {init} --ground-truth-reward --minibatches 0", "--minibatches 0: must be > 0"),
    ("dpo --init {init} --data {prefs} --seed 18446744073709551616",
     "--seed 18446744073709551616: must be in [0, "
     "2**32)"),
    ("dpo --init {init} --data {prefs} --max-prompt-length 1000000000000",
     "--max-prompt-length 1000000000000: "
     "must be below --max-length 64"),
    ("dpo --init {init} --data {prefs} --threads -1",
     "--threads -1: must be between 0 (torch's default) and 4096"),
    ("dpo --init {init} --data {prefs} --weight-decay inf",
     "--weight-decay inf: must be >= 0 and finite"),
    ("dpo --init {init} --data {prefs} --device cpu:1",
     "--device 'cpu:1': expected auto, cpu, cuda or cuda:N"),
    ("dpo --init {init} --data {prefs} --lora-rank 1000000000",
     "--lora-rank 1000000000: must be at most the model's "
     "width n_embd 16"),
    ("sft --data {unrelated}", "not a dataset `datasets` can read"),
    ("pairs --init {init128} --samples-per-prompt 1000000000000",
     "--samples-per-prompt 1000000000000 x 512 prompts"),
    ("dpo --init {init} --data {prefs} --batch-size 1000000000000",
     "--batch-size 1000000000000: a micro-batch of"),
    ("sample --init {init} --max-new-tokens 60", "--max-new-tokens 60: the longest prompt"),
]


@pytest.mark.parametrize("command, message", USER_ERRORS,
                         ids=[c.split(" --")[0] + f"-{i}" for i, (c, _) in
                              enumerate(USER_ERRORS)])
def test_user_errors_are_one_line_and_write_nothing(files, tmp_path, capsys, monkeypatch, command,
                                                    message):
    names = dict(files, tmp=str(tmp_path))
    argv = command.format(**names).split()
    argv += [] if argv[0] == "sample" else ["--out-dir", files["out"]]  # sample writes nothing
    monkeypatch.setattr(Reference, "precomputed", lambda *a, **k: pytest.fail("work started"))
    monkeypatch.setattr(loop, "step_batches", lambda *a, **k: pytest.fail("work started"))
    # gpt2 BPE: never downloaded
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "no-tiktoken-cache"))
    assert train.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert message.format(**names) in err, err
    assert not os.path.exists(files["out"]), "a run that cannot start wrote files"


@pytest.mark.parametrize("out_dir", ["", "{prefs}"])
def test_an_out_dir_that_cannot_be_a_directory_is_refused_before_any_work(files, capsys,
                                                                          monkeypatch, out_dir):
    monkeypatch.setattr(Reference, "precomputed", lambda *a, **k: pytest.fail("work started"))
    for argv in (["dpo", "--init", files["init"], "--data", files["prefs"]],
                 ["eval", "--init", files["init"],
                  "--reference-init", files["init"]]):
        assert train.main([*argv, "--out-dir", out_dir.format(**files)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--out-dir" in err and "must name a directory" in err, err


def test_truncated_checkpoint_on_resume_writes_nothing(files, capsys):
    os.makedirs(files["out"])
    with open(files["truncated"], "rb") as src:
        truncated = src.read()
    with open(os.path.join(files["out"], "ckpt.pt"), "wb") as dst:
        dst.write(truncated)
    assert train.main(["dpo", "--init", files["init"], "--data", files["prefs"], "--out-dir",
                       files["out"], "--resume"]) == 1
    assert "ckpt.pt: not a readable checkpoint" in capsys.readouterr().err
    assert sorted(os.listdir(files["out"])) == ["ckpt.pt"]  # no config.json, no metrics.jsonl


def test_bad_flag_values_are_one_line(capsys):
    assert_exit = pytest.raises(SystemExit)
    with assert_exit as exit_info:
        train.main(["dpo", "--steps", "many"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: train.py dpo: argument --steps: invalid int value: 'many'\n"
    with pytest.raises(SystemExit):
        train.main(["dpo", "--samples-per-prompt", "3"])  # a flag dpo does not take
    assert "unrecognized arguments: --samples-per-prompt 3" in capsys.readouterr().err


def test_script_prints_no_traceback_and_debug_shows_it(files):
    command = [sys.executable, "train.py", "dpo", "--init", files["init"], "--data", files["prefs"],
               "--beta", "-1", "--out-dir", files["out"]]
    quiet = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                           timeout=HANG_GUARD_SECONDS)
    assert quiet.returncode == 1 and quiet.stdout == ""
    assert quiet.stderr == "error: --beta -1.0: must be > 0\n"
    loud = subprocess.run(command + ["--debug"], cwd=REPO, capture_output=True, text=True,
                          timeout=HANG_GUARD_SECONDS)
    assert loud.returncode == 1 and "Traceback" in loud.stderr and "ConfigError" in loud.stderr


def test_each_command_lists_its_flags_with_help_and_default():
    parser = train.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    listed = {}
    for command in COMMAND_NAMES:
        actions = [a for a in commands[command]._actions if a.option_strings
                   and a.dest not in ("help", "debug")]
        listed[command] = {a.option_strings[0] for a in actions}
        for action in actions:
            if action.dest != "prompt":
                assert "(default: " in action.help, (command, action.option_strings)
    sampling_and_shape = {"--samples-per-prompt", "--num-prompts", "--min-reward-gap", "--n-layer",
                          "--block-size"}
    assert not sampling_and_shape & listed["dpo"]
    assert not {"--beta", "--steps", "--lr"} & listed["sample"]
    kept = ("--init --data --heldout-data --steps --batch-size --out-dir --beta --loss "
            "--label-smoothing --reference --dtype --device --impl --resume --max-length "
            "--max-prompt-length --seed").split()
    assert set(kept) <= listed["dpo"]
    assert ({"--n-layer", "--n-head", "--n-embd", "--block-size", "--max-length", "--seed"}
            <= listed["pretrain"])
    shape_group = [g for g in commands["pretrain"]._action_groups if "--n-layer" in
                   {a.option_strings[0] for a in g._group_actions}][0]
    assert "ignored with --init" in shape_group.title
    # one source: each field's help and flag live in its metadata
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata["help"] and set(f.metadata["commands"]) <= set(COMMAND_NAMES), f.name
        flag = "--" + f.name.replace("_", "-") if f.metadata["commands"] else None
        assert f.metadata["flag"] == flag, f.name
    # each command's defaults, from the one table, in its --help
    for command, defaults in COMMAND_DEFAULTS.items():
        shown = {a.dest: a.default for a in commands[command]._actions}
        assert all(shown[name] == value for name, value in defaults.items()), command
        assert command_config(command) == TrainConfig(**{f: shown[f] for f in shown
                                                         if f not in ("help", "debug", "prompt")})


def test_each_flags_help_names_the_commands_that_take_it():
    """Read off the parsers (not the table that built them): each flag's help names exactly the
    commands whose parser has the flag, and no help names a command as the only user of a flag
    others take too."""
    commands = train.build_parser()._subparsers._group_actions[0].choices
    having = {}
    for command in COMMAND_NAMES:
        for action in commands[command]._actions:
            if action.option_strings and action.dest in {f.name
                                                         for f in dataclasses.fields(TrainConfig)}:
                having.setdefault(action.option_strings[0], {})[command] = action.help
    for flag, helps in having.items():
        for command, text in helps.items():
            named = text.rsplit("; ", 1)[1].rstrip(")")
            taking = ", ".join(s for s in COMMAND_NAMES if s in helps)
            expected = "every command" if set(helps) == set(COMMAND_NAMES) else "taken by " + taking
            assert named == expected, (flag, command, named)
    # their help once named only sft and dpo
    for flag in ("--data", "--max-length", "--reference-init"):
        help_text = next(iter(having[flag].values()))
        assert "sft, dpo:" not in help_text and "(sft, dpo)" not in help_text, (flag, help_text)


def test_lengths_default_to_the_model(tmp_path):
    """pretrain --block-size 64 needs no length flag; with --init, --max-length is the model's block
    size."""
    corpus = write_lines(tmp_path / "corpus.txt", ["a small corpus of words for windows."] * 60)
    assert train.main(["pretrain", "--block-size", "64", "--n-layer", "1", "--n-head", "2",
                       "--n-embd", "16", "--data", corpus, "--steps", "1", "--batch-size", "2",
                       "--out-dir", str(tmp_path / "a")]) == 0
    with open(tmp_path / "a" / "config.json") as f:
        assert json.load(f)["max_length"] == 64
    # fewer positions than the default
    small = tiny_checkpoint(tmp_path / "small" / "ckpt.pt", block_size=32)
    assert train.main(["pretrain", "--init", small, "--data", corpus, "--steps", "1",
                       # windows of the model's 32 positions
                       "--batch-size", "2", "--out-dir", str(tmp_path / "b")]) == 0
    prefs = write_lines(tmp_path / "prefs.jsonl", [json.dumps({"prompt": "Q: ",
                                                               "chosen": f"yes {i}",
                                                               "rejected": "no"})
                                                   for i in range(8)])
    assert train.main(["sft", "--init", small, "--data", prefs, "--steps", "1", "--batch-size", "2",
                       "--out-dir", str(tmp_path / "c")]) == 0
    with open(tmp_path / "c" / "config.json") as f:
        saved = json.load(f)
    assert (saved["max_length"], saved["max_prompt_length"]) == (32, 16)


def test_load_model_errors(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_model(str(tmp_path / "junk.pt"))
    with pytest.raises(CheckpointError, match="neither"):
        load_model(str(tmp_path))  # a directory with neither ckpt.pt nor config.json
    with pytest.raises(CheckpointError, match="no such file or directory"):
        # a path, not a hub name: no hub URL built from it
        load_model(str(tmp_path / "missing" / "dir"))
    state = load_checkpoint(tiny_checkpoint(tmp_path / "small" / "ckpt.pt"))
    state["model_config"]["n_embd"] = 32  # weights no longer match the config
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(str(tmp_path / "bad.pt"))


def test_missing_local_path_tells_paths_from_hub_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    for hub_name in ("gpt2", "openai-community/gpt2", "Anthropic/hh-rlhf:test"):
        assert not data.missing_local_path(hub_name), hub_name
    for path in ("out/missing", "./gpt2", "/no/such/dir", "~/x", "a/b/c", "model.pt",
                 "prefs.jsonl"):
        assert data.missing_local_path(path), path
    assert not data.missing_local_path("out")


def test_config_errors_for_programmatic_use(tmp_path):
    with pytest.raises(ConfigError, match="--grad-accum 4: must divide --batch-size 6"):
        loop.train(commands.objective("sft", TrainConfig(), 0),
                   TrainConfig(out_dir=str(tmp_path / "z"),
                               batch_size=6, grad_accum=4, max_length=8), None, [], [],
                   log=lambda *_: None)
    assert not os.path.exists(tmp_path / "z")


def test_install_adds_no_top_level_names(tmp_path):
    """Run from outside the checkout, Python finds none of the project's modules: they are not
    installed."""
    names = ["data", "model", "train", "training", "stages", "loop", "plumbing", "methods",
             "config", "checkpoint", "dpo", "logprob_kernels", "data_parallel", "lora", "sentiment",
             "experiments", "course", "evaluate", "demo"]
    probe = ("import importlib.util, json, sys; print(json.dumps("
             f"{{n: getattr(importlib.util.find_spec(n), 'origin', None) for n in {names!r}}}))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    found = json.loads(subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env,
                                      capture_output=True,
                                      text=True, check=True).stdout)
    ours = {name: origin for name, origin in found.items() if origin and str(REPO) in origin}
    assert not ours, f"installed from the checkout: {ours}"


def test_a_fresh_model_too_large_for_the_machine_is_refused_before_allocating(tmp_path, capsys):
    assert train.main(["pretrain", "--n-embd", "100000", "--n-layer", "40",
                       "--out-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --n-layer 40 --n-embd 100000 --block-size 256: a fresh model of "
                          "4.8e+12 parameters needs") and err.count("\n") == 1, err
    assert not os.path.exists(tmp_path / "run")


def test_every_command_of_the_table_is_in_help_the_readme_and_the_docstring():
    """One table of commands (plumbing/config.py COMMANDS): `train.py --help`, the README's command
    list and train.py's docstring name exactly its commands, with the table's summaries."""
    table = {command.name: command.summary for command in COMMANDS}
    subparsers = train.build_parser()._subparsers._group_actions[0]
    assert {action.dest: action.help for action in subparsers._choices_actions} == table
    help_text = train.build_parser().format_help()
    for name in table:
        assert re.search(rf"^ +{re.escape(name)}\b", help_text, flags=re.M), (name, help_text)
    listed = train.__doc__.split("Commands:")[1].split("(")[0]
    assert [name.strip() for name in listed.replace("\n", " ").split(",")] == list(table)
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Commands"):readme.index("\n## ",
                                                              readme.index("## Commands") + 1)]
    rows = dict(re.findall(r"^\| `([\w-]+)` \| (.+) \|$", section, flags=re.M))
    assert rows == table
