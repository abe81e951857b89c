"""Tests of DPO's family since the paper (methods/simpo.py, orpo.py, kto.py) and KTO's unpaired data
(data/unpaired.py): each loss against a naive implementation written from its formula with Python
floats (tests/naive_family.py; hypothesis), its worked example, its gradient by gradcheck in
float64, finite losses and gradients at extreme inputs, argument errors; the unpaired loader's
errors and layout; and a run of each command on a tiny model, whose loss falls."""

import json
import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import data
import train
from dpo import concatenated_logps, dpo_metrics
from methods import kto, orpo, simpo
from naive_family import naive_kto, naive_orpo, naive_simpo
from plumbing.checkpoint import save_checkpoint
from test_train import read_metrics, tiny_model, write_preferences

SETTINGS = settings(derandomize=True, deadline=None, max_examples=60)
betas = st.floats(0.01, 10.0)


@st.composite
def pairs(draw, max_size=6):
    """Summed log-probs and token counts of B pairs, as Python floats and ints."""
    n = draw(st.integers(1, max_size))
    logps = st.floats(-200.0, -0.01)
    return ([draw(logps) for _ in range(n)], [draw(logps) for _ in range(n)],
            [draw(st.integers(1, 40)) for _ in range(n)],
            [draw(st.integers(1, 40)) for _ in range(n)])


def as_tensors(*columns, dtype=torch.float64, requires_grad=False):
    return [torch.tensor(c, dtype=dtype, requires_grad=requires_grad) for c in columns]


# -------------------------------------------------------------------------------------------- SimPO

def test_simpo_worked_example():
    chosen = torch.tensor([-10.0], requires_grad=True)
    losses, chosen_rewards, rejected_rewards = simpo.simpo_loss(chosen, torch.tensor([-12.0]),
                                                                torch.tensor([5]),
                                                                torch.tensor([4]), beta=2.0,
                                                                gamma=1.0)
    losses.sum().backward()
    assert losses.item() == pytest.approx(0.3132617, abs=1e-6)
    assert (chosen_rewards.item(), rejected_rewards.item()) == (-4.0, -6.0)
    assert chosen.grad.item() == pytest.approx(-0.1075766, abs=1e-6)


@SETTINGS
@given(pairs(), betas, st.floats(0.0, 5.0))
def test_simpo_matches_the_formula(columns, beta, gamma):
    cw, cl, nw, nl = columns
    losses, _, _ = simpo.simpo_loss(*as_tensors(cw, cl), torch.tensor(nw), torch.tensor(nl),
                                    beta=beta, gamma=gamma)
    torch.testing.assert_close(losses,
                               torch.tensor(naive_simpo(cw, cl, nw, nl, beta, gamma),
                                            dtype=torch.float64))
    float32, _, _ = simpo.simpo_loss(*as_tensors(cw, cl, dtype=torch.float32), torch.tensor(nw),
                                     torch.tensor(nl),
                                     beta=beta, gamma=gamma)
    assert float32.dtype == torch.float32
    torch.testing.assert_close(float32.double(), losses, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------- ORPO

def test_orpo_worked_example():
    losses, chosen_rewards, _ = orpo.orpo_loss(torch.tensor([math.log(1 / 8)]),
                                               torch.tensor([math.log(1 / 16)]),
                                               torch.tensor([3]), torch.tensor([2]), beta=0.1)
    assert losses.item() == pytest.approx(0.7219154, abs=1e-6)
    assert chosen_rewards.item() == pytest.approx(0.1 * math.log(0.5), abs=1e-7)
    torch.testing.assert_close(orpo.log_odds(torch.tensor([math.log(0.5), math.log(0.25)])),
                               torch.tensor([0.0, -math.log(3)]))


@SETTINGS
@given(pairs(), betas)
def test_orpo_matches_the_formula(columns, beta):
    cw, cl, nw, nl = columns
    losses, _, _ = orpo.orpo_loss(*as_tensors(cw, cl), torch.tensor(nw), torch.tensor(nl),
                                  beta=beta)
    torch.testing.assert_close(losses,
                               torch.tensor(naive_orpo(cw, cl, nw, nl, beta), dtype=torch.float64))


def test_orpo_is_stable_from_a_sure_response_to_an_unlikely_one():
    for a in (0.0, -1e-7, -1e-3, -0.5, -10.0, -100.0):
        chosen = torch.tensor([a], requires_grad=True)
        rejected = torch.tensor([-100.0 if a > -50 else -1e-7], requires_grad=True)
        losses, _, _ = orpo.orpo_loss(chosen, rejected, torch.tensor([1]), torch.tensor([1]),
                                      beta=1.0)
        losses.sum().backward()
        assert all(torch.isfinite(t).all() for t in (losses, chosen.grad, rejected.grad)), a


# ---------------------------------------------------------------------------------------------- KTO

def test_kto_worked_example():
    policy = torch.tensor([-8.0, -30.0], requires_grad=True)
    losses, rewards = kto.kto_loss(policy, torch.tensor([-20.0, -22.0]),
                                   torch.tensor([True, False]), 2.0, beta=0.1)
    losses.sum().backward()
    torch.testing.assert_close(losses, torch.tensor([0.2689414, 0.2689414]))
    torch.testing.assert_close(rewards, torch.tensor([1.2, -0.8]))
    torch.testing.assert_close(policy.grad, torch.tensor([-0.0196612, 0.0196612]))
    zero_point, _ = kto.kto_loss(torch.tensor([-20.0]), torch.tensor([-20.0]), torch.tensor([True]),
                                 -1.0, beta=0.1)
    # kl below 0: the reference point is 0, sigma(0) = 1/2
    assert zero_point.item() == pytest.approx(0.5)
    assert kto.balanced_weights(10, 90) == (9.0, 1.0)


@SETTINGS
@given(st.lists(st.tuples(st.floats(-200, -0.01), st.floats(-200, -0.01), st.booleans()),
                min_size=1, max_size=8),
       st.floats(-5, 5), betas, st.floats(0, 3), st.floats(0, 3))
def test_kto_matches_the_formula(rows, kl, beta, wd, wu):
    policy, ref, desirable = map(list, zip(*rows))
    losses, rewards = kto.kto_loss(*as_tensors(policy, ref), torch.tensor(desirable), kl, beta=beta,
                                   desirable_weight=wd, undesirable_weight=wu)
    torch.testing.assert_close(losses,
                               torch.tensor(naive_kto(policy, ref, desirable, kl, beta, wd, wu),
                                            dtype=torch.float64))
    torch.testing.assert_close(rewards, beta * (torch.tensor(policy, dtype=torch.float64) -
                                                torch.tensor(ref, dtype=torch.float64)))


# ---------------------------------------------------------------------------------------- all three

def loss_functions():
    """Each loss as a function of (chosen or policy log-probs, rejected or reference log-probs)."""
    lengths = torch.tensor([3.0, 7.0, 1.0], dtype=torch.float64)
    desirable = torch.tensor([True, False, True])
    return {
        "simpo": lambda c,
        r: simpo.simpo_loss(c, r, lengths, lengths.flip(0), beta=2.0, gamma=0.5)[0],
        "orpo": lambda c, r: orpo.orpo_loss(c, r, lengths, lengths.flip(0), beta=0.5)[0],
        "kto": lambda c, r: kto.kto_loss(c, r, desirable, 0.7, beta=0.5, desirable_weight=2.0)[0],
    }


@pytest.mark.parametrize("name", ["simpo", "orpo", "kto"])
def test_gradients_by_gradcheck_in_float64(name):
    chosen = torch.tensor([-3.0, -20.0, -0.7], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([-5.0, -9.0, -2.2], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(loss_functions()[name], (chosen, rejected))


@pytest.mark.parametrize("name", ["simpo", "orpo", "kto"])
@pytest.mark.parametrize("scale", [1e-6, 1e4])
def test_finite_at_extreme_inputs(name, scale):
    chosen = torch.tensor([-scale, -1e-7, -scale], dtype=torch.float32, requires_grad=True)
    rejected = torch.tensor([-1e-7, -scale, -scale], dtype=torch.float32, requires_grad=True)
    fn = loss_functions()[name]
    losses = fn(chosen, rejected)
    losses.sum().backward()
    assert torch.isfinite(losses).all() and torch.isfinite(chosen.grad).all() and torch.isfinite(
        rejected.grad).all()


@pytest.mark.parametrize("call, error, match", [
    (lambda x: simpo.simpo_loss(x, x, torch.ones(3), torch.ones(3), beta=0.0), ValueError, "beta"),
    (lambda x: simpo.simpo_loss(x, x, torch.ones(3), torch.ones(3), gamma=-1.0), ValueError,
     "gamma"),
    (lambda x: simpo.simpo_loss(x, x[:2], torch.ones(3), torch.ones(3)), ValueError,
     "policy_rejected_logps has"),
    (lambda x: simpo.simpo_loss(x, x, torch.zeros(3), torch.ones(3)), ValueError,
     "chosen_lengths must be > 0"),
    (lambda x: orpo.orpo_loss(x, x, torch.ones(3), torch.ones(3), beta="1"), TypeError, "beta"),
    (lambda x: orpo.orpo_loss(x.long(), x, torch.ones(3), torch.ones(3)), TypeError,
     "floating-point"),
    (lambda x: orpo.orpo_loss(x, x, torch.ones(3), torch.ones(2)), ValueError,
     "rejected_lengths must have shape"),
    (lambda x: kto.kto_loss(x, x, torch.ones(3), 0.0), TypeError,
     "desirable must be a bool tensor"),
    (lambda x: kto.kto_loss(x, x, torch.ones(3, dtype=torch.bool), 0.0, desirable_weight=-1.0),
     ValueError, "desirable_weight"),
    (lambda x: kto.kto_loss(x, x.double(), torch.ones(3, dtype=torch.bool), 0.0), TypeError,
     "reference_logps has"),
])
def test_bad_arguments_raise_naming_them(call, error, match):
    with pytest.raises(error, match=match):
        call(-torch.ones(3))


# ------------------------------------------------------------------------------ unpaired data (KTO)

def write_lines(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n"
                            for row in rows))
    return str(path)


def test_unpaired_loader_reads_trl_rows_and_splits_pairs(tmp_path):
    path = write_lines(tmp_path / "mixed.jsonl", [
        {"prompt": "Q1 ", "completion": "yes", "label": True},
        {"prompt": "Q2 ", "completion": "no", "label": False},
        {"prompt": "Q3 ", "chosen": "good", "rejected": "bad"},
        {"prompt": "Q4 ", "chosen": "same", "rejected": "same"}])
    records, report = data.load_unpaired(path, return_report=True)
    assert [(r.prompt, r.completion, r.desirable) for r in records] == [
        ("Q1 ", "yes", True), ("Q2 ", "no", False), ("Q3 ", "good", True), ("Q3 ", "bad", False)]
    assert (report.formats["unpaired"] == 2
            and report.skipped["chosen == rejected (no preference)"] == 1)
    assert report.adjusted == {"pairs split into a desirable and an undesirable example": 1}
    assert report.summary().startswith(f"{path}: loaded 4 examples from 4 records")
    fewer, report = data.load_unpaired(path, desirable_fraction=0.5, return_report=True)
    assert sum(r.desirable for r in fewer) == 1 and sum(not r.desirable for r in fewer) == 2
    assert report.adjusted["desirable examples left out (desirable fraction 0.5)"] == 1


EMPTY_COMPLETION = "empty or whitespace-only completion"
EMPTY_RESPONSE = "empty or whitespace-only chosen/rejected response"


@pytest.mark.parametrize("blank", ["", " ", "\n\t "])
def test_unpaired_loader_skips_blank_completions_and_pairs_with_a_blank_response(tmp_path, blank):
    """The skip rule of data/records.py: a blank completion gives no example; a pair with a blank
    chosen or rejected response is skipped before it is split (no half of it kept), counted once."""
    path = write_lines(tmp_path / "mixed.jsonl", [
        {"prompt": "Q1 ", "completion": "yes", "label": True},
        {"prompt": "Q2 ", "completion": blank, "label": True},
        {"prompt": "Q3 ", "completion": blank, "label": False},
        {"prompt": "Q4 ", "chosen": blank, "rejected": "bad"},
        {"prompt": "Q5 ", "chosen": "good", "rejected": blank},
        {"prompt": "Q6 ", "chosen": blank, "rejected": blank},
        {"chosen": "\n\nHuman: Q7\n\nAssistant:" + blank,
         "rejected": "\n\nHuman: Q7\n\nAssistant: no"},
        {"prompt": [{"role": "user", "content": "Q8"}],
         "chosen": [{"role": "assistant", "content": "yes"}],
         "rejected": [{"role": "assistant", "content": blank}]},
        {"prompt": "", "chosen": "good", "rejected": "bad"}])  # an empty prompt is allowed
    records, report = data.load_unpaired(path, return_report=True)
    assert [(r.prompt, r.completion, r.desirable) for r in records] == [
        ("Q1 ", "yes", True), ("", "good", True), ("", "bad", False)]
    assert report.skipped == {EMPTY_COMPLETION: 2, EMPTY_RESPONSE: 5}
    assert (report.n_read, report.n_loaded) == (9, 3)
    assert report.adjusted == {"pairs split into a desirable and an undesirable example": 1}


def test_a_kto_file_of_empty_completions_loads_no_example_and_says_why(tmp_path):
    path = write_lines(tmp_path / "empty.jsonl",
                       [{"prompt": f"Q{i} ", "completion": "", "label": i % 2 == 0}
                        for i in range(4)])
    records, report = data.load_unpaired(path, return_report=True)
    assert records == [] and (report.n_read, report.n_loaded) == (4, 0)
    assert report.summary() == (f"{path}: loaded 0 examples from 4 records ({{'unpaired': 4}}); "
                                f"skipped 4: {EMPTY_COMPLETION}")


unpaired_texts = st.one_of(st.text(max_size=4),
                           st.sampled_from(["", " ", "\n\t", "\u3000", "a", "b"]))
unpaired_rows = st.one_of(
    st.fixed_dictionaries({"prompt": unpaired_texts, "completion": unpaired_texts,
                           "label": st.booleans()}),
    st.fixed_dictionaries({"prompt": unpaired_texts, "chosen": unpaired_texts,
                           "rejected": unpaired_texts}))


@settings(max_examples=60, deadline=None)
@given(st.lists(unpaired_rows, max_size=6))
def test_unpaired_loader_keeps_exactly_the_nonblank_examples(rows):
    expected, kept_rows = [], 0
    for row in rows:
        if "label" in row and row["completion"].strip():
            expected.append((row["prompt"], row["completion"], row["label"]))
        elif "label" not in row and row["chosen"].strip() and row["rejected"].strip() \
                and row["chosen"] != row["rejected"]:
            expected += [(row["prompt"], row["chosen"], True),
                         (row["prompt"], row["rejected"], False)]
        else:
            continue
        kept_rows += 1
    records, report = data.load_unpaired(rows, return_report=True)
    assert [(r.prompt, r.completion, r.desirable) for r in records] == expected
    assert (report.n_loaded == len(expected) and report.n_read == len(rows) == kept_rows
            + sum(report.skipped.values()))


@pytest.mark.parametrize("row, match", [
    ({"prompt": "Q", "completion": "a"}, r"line 1, field 'label': missing"),
    ({"prompt": "Q", "completion": "a", "label": "yes"},
     r"line 1, field 'label': must be true or false"),
    ({"completion": "a", "label": True}, r"line 1, field 'prompt': missing"),
    ({"prompt": "Q", "completion": 3, "label": True},
     r"line 1, field 'completion': must be a string"),
    ('{"prompt": "Q", ', r"line 1: invalid JSON"),
    ({"prompt": "Q", "chosen": "a"}, r"line 1, field 'rejected': missing"),
])
def test_unpaired_loader_errors_name_the_line_and_field(tmp_path, row, match):
    with pytest.raises(data.PreferenceFormatError, match=match):
        data.load_unpaired(write_lines(tmp_path / "bad.jsonl", [row]))
    with pytest.raises(ValueError, match="desirable_fraction"):
        data.load_unpaired(write_lines(tmp_path / "good.jsonl", []), desirable_fraction=0.0)


def test_encoded_examples_get_another_prompts_completion_and_collate_as_pairs():
    tokenizer = data.get_tokenizer("bytes")
    records = [data.UnpairedRecord("ab", "c", True), data.UnpairedRecord("ab", "de", False),
               data.UnpairedRecord("xy", "fgh", True)]
    examples = data.encode_unpaired(records, tokenizer, max_length=6, max_prompt_length=3)
    eos = tokenizer.eot_token
    assert [e.completion_ids for e in examples] == [[99, eos], [100, 101, eos],
                                                    [102, 103, 104, eos]]
    assert [e.kl_completion_ids for e in examples] == [[102, 103, 104, eos], [102, 103, 104, eos],
                                                       [99, eos]]
    batch = data.kto_collate(examples, pad_id=eos)
    assert batch["input_ids"].shape[0] == 6 and batch["desirable"].tolist() == [True, False, True]
    # the mismatched rows: x + y' and EOS
    assert batch["mask"][3].sum() == 4 and batch["mask"][5].sum() == 2


# ----------------------------------------------------------------------------------------- commands

@pytest.mark.parametrize("command, flags", [("simpo", ["--beta", "2.0", "--simpo-gamma", "0.5"]),
                                            ("orpo", ["--beta", "0.5"]),
                                            ("kto", ["--beta", "0.5"]),
                                            ("kto", ["--beta", "0.5", "--desirable-fraction", "0.5",
                                                     "--reference", "live"])])
def test_each_command_trains_and_its_loss_falls(tmp_path, command, flags):
    prefs = write_preferences(tmp_path / "prefs.jsonl")
    init = str(tmp_path / "init.pt")
    save_checkpoint(init, tiny_model(), None, 0, None)
    out = tmp_path / command
    assert train.main([command, "--init", init, "--data", prefs, "--heldout-fraction", "0.2",
                       "--steps", "16", "--lr", "3e-3", "--batch-size", "8", "--eval-every", "8",
                       "--max-length", "48", "--seed", "0", "--out-dir", str(out), *flags]) == 0
    losses = [row["loss"] for row in read_metrics(out) if row["split"] == "train"]
    # ORPO: its SFT term, slowest to fall
    assert sum(losses[-4:]) / 4 < 0.95 * sum(losses[:4]) / 4, losses
    evals = [row for row in read_metrics(out) if row["split"] == "eval"]
    assert evals[-1]["rewards/margins"] > evals[0]["rewards/margins"]
    assert os.path.isfile(out / "hf" / "model.safetensors")


def test_family_errors_are_one_line(tmp_path, capsys):
    prefs = write_preferences(tmp_path / "prefs.jsonl")
    init = str(tmp_path / "init.pt")
    save_checkpoint(init, tiny_model(), None, 0, None)
    for argv, message in ((["simpo", "--data", prefs], "--init '': simpo needs --init"),
                          (["simpo", "--init", init, "--data", prefs, "--simpo-gamma", "-1"],
                           "--simpo-gamma -1.0"),
                          (["kto", "--init", init, "--data", prefs, "--desirable-fraction", "0"],
                           "--desirable-fraction 0.0: must be in (0, 1]"),
                          (["orpo", "--init", init, "--data", prefs, "--beta", "0"],
                           "--beta 0.0: must be > 0")):
        assert train.main([*argv, "--out-dir", str(tmp_path / "run")]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("command", ["simpo", "orpo"])
def test_reference_free_commands_never_build_a_reference(tmp_path, monkeypatch, command):
    """SimPO and ORPO train without pi_ref: building one (a copy, or its log-probs) would fail this
    run."""
    from plumbing import commands

    def no_reference(*args, **kwargs):
        raise AssertionError(f"{command} built a reference model")

    monkeypatch.setattr(commands, "reference_model", no_reference)
    monkeypatch.setattr(commands, "dpo_reference", no_reference)
    prefs = write_preferences(tmp_path / "prefs.jsonl")
    init = str(tmp_path / "init.pt")
    save_checkpoint(init, tiny_model(), None, 0, None)
    assert train.main([command, "--init", init, "--data", prefs, "--steps", "2", "--batch-size",
                       "4", "--eval-every", "2", "--max-length", "48", "--out-dir",
                       str(tmp_path / command)]) == 0


def test_a_stubbed_loss_is_left_out_of_the_frontier_and_said(tmp_path, monkeypatch):
    """The course kit's student copy stubs these losses (A1's extra credit): a training run reaches
    the stub's NotImplementedError, and the frontier runs its other rows and names what it left
    out."""
    from experiments import family_runs
    from plumbing import commands
    from plumbing.config import command_config

    def stub(*args, **kwargs):
        raise NotImplementedError("Assignment 1: (extra credit) SimPO")

    monkeypatch.setattr(simpo, "simpo_loss", stub)
    prefs = write_preferences(tmp_path / "prefs.jsonl")
    init = str(tmp_path / "init.pt")
    save_checkpoint(init, tiny_model(), None, 0, None)
    # through the training loop, unchanged
    with pytest.raises(NotImplementedError, match="Assignment 1"):
        commands.run_training("simpo",
                              command_config("simpo", init=init, data=prefs, steps=2, batch_size=4,
                                             max_length=48, out_dir=str(tmp_path / "simpo")),
                              log=lambda *_: None)

    trained = []
    monkeypatch.setattr(family_runs.points, "train_cached",
                        lambda command, cfg, log: stub() if command == "simpo" else
                        trained.append(command))
    monkeypatch.setattr(family_runs.points, "run_points", lambda *args, **kwargs: [])

    class Prepared:
        settings = {"seed": 1, "block_size": 48, "tokenizer": "bytes"}
        reference_path = pairs_train = pairs_heldout = "unused"

    settings = {"dpo": dict(lr=1e-3, steps=4, batch_size=4), "family_checkpoints": 2,
                "family": {"SimPO": dict(betas=(2.0,), gamma_over_beta=0.5),
                           "ORPO": dict(betas=(0.1, 1.0)), "KTO": dict(betas=(0.1,)),
                           "KTO 10%": dict(betas=(0.1,), desirable_fraction=0.1)}}
    log = []
    sweeps, left_out = family_runs.family_sweeps(Prepared(), settings, str(tmp_path), str(tmp_path),
                                                 log.append)
    assert set(sweeps) == {"ORPO", "KTO", "KTO 10%"} and len(sweeps["ORPO"]) == 2
    assert left_out == {"SimPO": "Assignment 1: "
                        "(extra credit) SimPO"} and trained == ["orpo", "orpo", "kto", "kto"]
    assert any(line.startswith("SimPO: left out of the frontier") for line in log)


@pytest.mark.parametrize("method", [simpo, orpo])
def test_simpo_and_orpo_log_per_token_mean_logps_as_trl_does(method):
    """logps/chosen and logps/rejected hold what the loss uses: log pi(y|x) / |y| (sums are DPO's
    scale)."""
    tokenizer = data.get_tokenizer("bytes")
    records = [{"prompt": f"Q{i}: ", "chosen": "great" * (i + 1), "rejected": "awful"}
               for i in range(4)]
    pairs = data.encode_preferences(data.load_preferences(records), tokenizer, max_length=48,
                                    max_prompt_length=24)
    batch = data.dpo_collate(pairs[:4], pad_id=tokenizer.eot_token)
    model = tiny_model()
    extra = {"gamma": 1.0} if method is simpo else {}
    _, values = method.batch_loss(model, batch, beta=2.0, impl="torch", **extra)
    sums = concatenated_logps(model, batch, impl="torch")
    torch.testing.assert_close(values["policy_chosen_logps"],
                               (sums.chosen / sums.chosen_tokens).detach())
    torch.testing.assert_close(values["policy_rejected_logps"],
                               (sums.rejected / sums.rejected_tokens).detach())
    mean_logps = (sums.chosen / sums.chosen_tokens).mean().item()
    assert dpo_metrics(**values)["logps/chosen"] == pytest.approx(mean_logps)
