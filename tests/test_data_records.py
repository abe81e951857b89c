"""Tests for data.records: the preference loaders, their error messages and their skip/adjust
report."""

import gzip
import json
import logging
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import data
from data.records import PreferenceFormatError
from hang_guard import HANG_GUARD_SECONDS

R = data.PreferenceRecord
GOOD = [R("Q1", "good", "bad"), R("Q2 é <|endoftext|>", "yes\nreally", "no")]


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["prefs.jsonl", "prefs.jsonl.gz", "prefs.json"])
def test_save_then_load_round_trip(tmp_path, name):
    path = tmp_path / name
    assert data.save_preferences(GOOD, path) == 2
    records, report = data.load_preferences(path, return_report=True)
    assert records == GOOD
    assert (report.n_read, report.n_loaded, dict(report.formats)) == (2, 2, {"standard": 2})
    if name.endswith(".gz"):
        with gzip.open(path, "rt", encoding="utf-8") as f:  # really gzip, one JSON object per line
            assert [json.loads(line)["prompt"] for line in f] == ["Q1", "Q2 é <|endoftext|>"]


EMPTY_RESPONSE = "empty or whitespace-only chosen/rejected response"
NO_PREFERENCE = "chosen == rejected (no preference)"
BLANKS = ["", " ", "\n", "\t \r\n", "\u3000", "\xa0\x85"]  # all `not text.strip()`
texts = st.one_of(st.text(), st.sampled_from(BLANKS), st.text(" \t\n\r\x0b\x0c"),
                  st.sampled_from(["a", "b"]))


@settings(max_examples=60)
@given(st.lists(st.builds(R, texts, texts, texts), max_size=6))
def test_loader_keeps_exactly_the_pairs_with_nonblank_distinct_responses(tmp_path_factory, records):
    """The skip rule as a property, through a JSONL round trip (any unicode): loaded == the records
    with non-blank responses and chosen != rejected, and every record read is either loaded or
    counted as skipped."""
    path = tmp_path_factory.mktemp("rt") / "p.jsonl"
    data.save_preferences(records, path)
    loaded, report = data.load_preferences(path, return_report=True)
    assert loaded == [r for r in records if r.chosen.strip() and r.rejected.strip() and r.chosen
                      != r.rejected]
    assert report.n_read == len(records) == report.n_loaded + sum(report.skipped.values())
    assert set(report.skipped) <= {EMPTY_RESPONSE, NO_PREFERENCE}
    assert report.skipped[EMPTY_RESPONSE] == sum(not r.chosen.strip() or not r.rejected.strip()
                                                 for r in records)


def hh(response):
    return "\n\nHuman: Hi\n\nAssistant:" + response


def conv(response):  # an explicit-prompt conversational record's response, rendered " " + content
    return [{"role": "assistant", "content": response}]


# a row of each format whose chosen (or rejected) response is `blank`; the response of HH and
# conversational records is what follows the prompt: "...Assistant:" + "" / " " + "" (the rendered
# message) are blank too
FORMATS = {
    "standard": lambda c, r: {"prompt": "Q", "chosen": c, "rejected": r},
    "anthropic_hh": lambda c, r: {"chosen": hh(c), "rejected": hh(r)},
    "conversational": lambda c, r: {"prompt": [{"role": "user", "content": "Hi"}],
                                    "chosen": conv(c), "rejected": conv(r)},
    "conversational, implicit prompt": lambda c, r: {"chosen": [{"role": "user", "content": "Hi"},
                                                                *conv(c)],
                                                     "rejected": [{"role": "user", "content": "Hi"},
                                                                  *conv(r)]},
}


@pytest.mark.parametrize("blank", ["", " ", "\n\t "])
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_blank_chosen_or_rejected_is_skipped_and_counted_in_every_format(tmp_path, fmt, blank):
    make = FORMATS[fmt]
    rows = [make(" good", " bad"), make(blank, " bad"), make(" good", blank), make(blank, blank),
            make(" same", " same"), make(" yes", " no")]
    path = write_lines(tmp_path / "p.jsonl", [json.dumps(row) for row in rows])
    records, report = data.load_preferences(path, return_report=True)
    assert [(r.chosen.strip(), r.rejected.strip()) for r in records] == [("good", "bad"),
                                                                         ("yes", "no")]
    # both blank: counted once, as blank
    assert report.skipped == {EMPTY_RESPONSE: 3, NO_PREFERENCE: 1}
    assert (report.n_read, report.n_loaded) == (6, 2)
    assert f"skipped 3: {EMPTY_RESPONSE}" in report.summary()


def test_an_empty_prompt_is_allowed():
    records, report = data.load_preferences([{"prompt": "", "chosen": "a", "rejected": "b"},
                                             {"prompt": " ", "chosen": "a", "rejected": "b"}],
                                            return_report=True)
    assert records == [R("", "a", "b"), R(" ", "a", "b")] and not report.skipped


def test_the_data_logger_prints_nothing_unless_logging_is_configured(tmp_path):
    """Skips are logged at WARNING; without a NullHandler on "data", Python's last-resort handler
    would print them to stderr of a program (e.g. the command line) that never configured
    logging."""
    path = write_lines(tmp_path / "p.jsonl",
                       [json.dumps({"prompt": "Q", "chosen": c, "rejected": r})
                        for c, r in (("", "b"), ("a", "a"), ("a", "b"))])
    code = ("import logging, sys, data; records, report = data.load_preferences(sys.argv[1], "
            "return_report=True); assert len(records) == 1 and sum(report.skipped.values()) == 2; "
            "logging.getLogger('data.records').warning('reaches handlers'); print('ok')")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", code, str(path)], cwd=repo, capture_output=True,
                          text=True,
                          timeout=HANG_GUARD_SECONDS)
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("ok\n", "")
    configured = subprocess.run([sys.executable, "-c",
                                 "import logging; logging.basicConfig(); " + code, str(path)],
                                cwd=repo, capture_output=True, text=True,
                                timeout=HANG_GUARD_SECONDS)
    assert ("WARNING:data.records:" in configured.stderr and "skipped 1: "
            + EMPTY_RESPONSE in configured.stderr)


def test_json_array_file_and_its_line_numbers(tmp_path):
    path = tmp_path / "prefs.json"
    path.write_text('[\n  {"prompt": "a", "chosen": "b", "rejected": "c"},\n\n  {"prompt": "d", '
                    '"chosen": 5, "rejected": "f"}\n]\n')
    with pytest.raises(PreferenceFormatError, match=r"prefs\.json, line 4, field 'chosen': "
                       r"must be a string") as e:
        data.load_preferences(path)
    assert e.value.field == "chosen"
    path.write_text('[{"prompt": "a", "chosen": "b", "rejected": "c"},\n {"prompt": "x", "chosen": '
                    '"y" "rejected"}]')
    with pytest.raises(PreferenceFormatError, match=r"line 2: invalid JSON"):
        data.load_preferences(path)


def test_bad_jsonl_names_file_line_and_field(tmp_path):
    ok = json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"})
    path = write_lines(tmp_path / "bad.jsonl",
                       [ok, ok, '{"prompt": "p", "chosen": "c", "rejected": '])
    with pytest.raises(PreferenceFormatError, match=r"bad\.jsonl, line 3: invalid JSON"):
        data.load_preferences(path)
    write_lines(path, [ok, json.dumps({"prompt": "p", "rejected": "r"})])
    with pytest.raises(PreferenceFormatError, match=r"bad\.jsonl, line 2, field 'chosen': missing"):
        data.load_preferences(path)
    write_lines(path, [json.dumps({"prompt": None, "chosen": "c", "rejected": "r"})])
    with pytest.raises(PreferenceFormatError,
                       match=r"line 1, field 'prompt': must be a string .* got NoneType"):
        data.load_preferences(path)
    write_lines(path, [json.dumps(["p", "c", "r"])])
    with pytest.raises(PreferenceFormatError, match=r"line 1: expected an object"):
        data.load_preferences(path)
    path.write_bytes(ok.encode() + b"\n\xff\xfe\n")
    with pytest.raises(PreferenceFormatError, match=r"line 2: not valid UTF-8"):
        data.load_preferences(path)
    gz = tmp_path / "bad.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write(ok + "\n{oops\n")
    with pytest.raises(PreferenceFormatError, match=r"bad\.jsonl\.gz, line 2: invalid JSON"):
        data.load_preferences(gz)


def test_identical_pairs_and_blank_lines_are_skipped_counted_and_logged_once(tmp_path, caplog):
    lines = [json.dumps({"prompt": "p", "chosen": "same", "rejected": "same"}), "",
             json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}),
             json.dumps({"prompt": "q", "chosen": "x", "rejected": "x"})]
    path = write_lines(tmp_path / "p.jsonl", lines)
    with caplog.at_level(logging.INFO, logger="data.records"):
        records, report = data.load_preferences(path, return_report=True)
    assert records == [R("p", "a", "b")]
    assert report.skipped == {"chosen == rejected (no preference)": 2, "blank lines": 1}
    assert (report.n_read, report.n_loaded) == (3, 1)
    messages = [r for r in caplog.records if r.name == "data.records"]
    assert len(messages) == 1 and messages[0].levelno == logging.WARNING
    assert "skipped 2: chosen == rejected" in messages[0].getMessage()


def test_anthropic_hh_transcripts(tmp_path):
    rows = [{"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!",
             "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."},
            # multi-turn, shared history
            {"chosen": "\n\nHuman: A\n\nAssistant: B\n\nHuman: C\n\nAssistant: D",
             "rejected": "\n\nHuman: A\n\nAssistant: B\n\nHuman: C\n\nAssistant: E"},
            {"chosen": "\n\nHuman: A\n\nAssistant: B\n\nHuman: C\n\nAssistant: D",  # differ earlier
             "rejected": "\n\nHuman: A\n\nAssistant: X"}]
    path = write_lines(tmp_path / "hh.jsonl", [json.dumps(r) for r in rows])
    records, report = data.load_preferences(path, return_report=True)
    assert records[0] == R("\n\nHuman: Hi\n\nAssistant:", " Hello!", " Go away.")
    assert records[1] == R("\n\nHuman: A\n\nAssistant: B\n\nHuman: C\n\nAssistant:", " D", " E")
    assert records[2] == R("\n\nHuman: A\n\nAssistant:", " B\n\nHuman: C\n\nAssistant: D", " X")
    for r, row in zip(records, rows):  # prompt + response gives back each transcript
        assert (r.prompt + r.chosen, r.prompt + r.rejected) == (row["chosen"], row["rejected"])
    assert report.formats == {"anthropic_hh": 3} and sum(report.adjusted.values()) == 1

    write_lines(path,
                [json.dumps(rows[0]),
                 json.dumps({"chosen": "\n\nHuman: Hi", "rejected": "\n\nHuman: Yo"})])
    with pytest.raises(PreferenceFormatError,
                       match=r"hh\.jsonl, line 2, field 'chosen': HH transcript has no"):
        data.load_preferences(path)
    write_lines(path, [json.dumps({"chosen": "\n\nHuman: A\n\nAssistant: B",
                                   "rejected": "\n\nHuman: Z\n\nAssistant: B"})])
    with pytest.raises(PreferenceFormatError, match="share no"):
        data.load_preferences(path)


def test_conversational_records_use_the_hh_template():
    user = {"role": "user", "content": "Hi"}
    explicit = {"prompt": [{"role": "system", "content": "Be kind."}, user],
                "chosen": [{"role": "assistant", "content": "Hello!"}],
                "rejected": [{"role": "assistant", "content": "Go away."}]}
    implicit = {"chosen": [user, {"role": "assistant", "content": "Hello!"}],
                "rejected": [user, {"role": "assistant", "content": "Go away."}]}
    records, report = data.load_preferences([explicit, implicit], return_report=True)
    assert records[0] == R("\n\nSystem: Be kind.\n\nHuman: Hi\n\nAssistant:", " Hello!",
                           " Go away.")
    assert records[1] == R("\n\nHuman: Hi\n\nAssistant:", " Hello!", " Go away.")
    assert records[1].prompt + records[1].chosen == data.render_messages(implicit["chosen"])
    assert report.formats == {"conversational": 2}

    bad_role = dict(explicit, chosen=[{"role": "robot", "content": "x"}])
    with pytest.raises(PreferenceFormatError,
                       match=r"list, row 0, field 'chosen\[0\]\.role': unknown role"):
        data.load_preferences([bad_role])
    bad_content = dict(explicit, rejected=[{"role": "assistant"}])
    with pytest.raises(PreferenceFormatError,
                       match=r"field 'rejected\[0\]\.content': must be a string, got missing"):
        data.load_preferences([bad_content])
    not_assistant = dict(explicit, chosen=[user])
    with pytest.raises(PreferenceFormatError, match="must start with an assistant message"):
        data.load_preferences([not_assistant])
    mixed = dict(explicit, chosen="Hello!")
    with pytest.raises(PreferenceFormatError,
                       match=r"field 'prompt': must be a string like 'chosen', got list"):
        data.load_preferences([mixed])
    same = {"chosen": implicit["chosen"], "rejected": implicit["chosen"]}
    records, report = data.load_preferences([same], return_report=True)
    assert records == [] and report.skipped == {"chosen == rejected (no preference)": 1}


def test_datasets_dataset_conversion():
    import datasets  # in the project's test extra
    rows = {"prompt": ["p1", "p2", "p3"], "chosen": ["a", "b", "c"], "rejected": ["x", "b", "z"],
            "score_chosen": [9.0, 8.0, 7.0]}  # extra columns are ignored
    dataset = datasets.Dataset.from_dict(rows)
    records, report = data.load_preferences(dataset, return_report=True)
    assert records == [R("p1", "a", "x"), R("p3", "c", "z")]
    assert report.skipped == {"chosen == rejected "
                              "(no preference)": 1} and report.source == "Dataset"
    split = datasets.DatasetDict({"train": dataset, "test": dataset.select([0])})
    assert data.load_preferences(split, split="test") == [R("p1", "a", "x")]
    with pytest.raises(KeyError, match="no split 'validation'"):
        data.load_preferences(split, split="validation")
    hh = datasets.Dataset.from_dict({"chosen": ["\n\nHuman: Q\n\nAssistant: A"],
                                     "rejected": ["\n\nHuman: Q"]})
    with pytest.raises(PreferenceFormatError, match=r"Dataset, row 0, field 'rejected'"):
        data.load_preferences(hh)


def test_unsupported_sources(tmp_path):
    (tmp_path / "prefs.csv").write_text("prompt,chosen,rejected\n")
    with pytest.raises(ValueError, match="unsupported file type"):
        data.load_preferences(tmp_path / "prefs.csv")
    with pytest.raises(FileNotFoundError):
        data.load_preferences(tmp_path / "missing.jsonl")
    with pytest.raises(TypeError, match="single mapping"):
        data.load_preferences({"prompt": "p", "chosen": "a", "rejected": "b"})
    with pytest.raises(TypeError, match="cannot load"):
        data.load_preferences(42)


def test_dataset_names_with_a_split_and_dataset_directories(tmp_path, monkeypatch):
    assert data.dataset_name_and_split("Anthropic/hh-rlhf:test") == ("Anthropic/hh-rlhf", "test")
    assert data.dataset_name_and_split("Anthropic/hh-rlhf") == ("Anthropic/hh-rlhf", None)
    odd = tmp_path / "odd:name.jsonl"  # an existing path is taken as it is, colon and all
    odd.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    assert data.dataset_name_and_split(str(odd)) == (str(odd), None)
    assert data.load_preferences(str(odd)) == [R("p", "a", "b")]
    # a local dataset: one file per split, read by `datasets` offline
    directory = tmp_path / "dataset"
    directory.mkdir()
    for split, n in (("train", 3), ("test", 2)):
        rows = [json.dumps({"prompt": f"{split} {i}", "chosen": "a", "rejected": "b"})
                for i in range(n)]
        (directory / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    assert sorted(data.dataset_splits(str(directory))) == ["test", "train"]
    assert data.dataset_splits(str(odd)) is None
    assert [r.prompt for r in data.load_preferences(str(directory))] == ["train 0", "train 1",
                                                                         "train 2"]
    assert [r.prompt for r in data.load_preferences(f"{directory}:test")] == ["test 0", "test 1"]
