"""Preference records (prompt, chosen, rejected) and the loaders that read them from files and
datasets.

DPO (Rafailov et al., 2023, section 4) learns from a static dataset D = {(x, y_w, y_l)}: a prompt x
and two responses, y_w preferred to y_l. `PreferenceRecord` is one such triple, as text.
`load_preferences` reads

* JSON Lines (`.jsonl`, optionally `.jsonl.gz`) or JSON (`.json[.gz]`: an array of objects, or JSON
  Lines under a .json name, as `datasets` writes them) whose objects hold one of the record formats
  below;
* an in-memory `datasets.Dataset` / `DatasetDict` or a list of dicts;
* a Hugging Face dataset name (e.g. "Anthropic/hh-rlhf"; "Anthropic/hh-rlhf:test" picks a split) or
  a local dataset directory (e.g. train.jsonl + test.jsonl), through `datasets.load_dataset` - a
  name needs a network.

Record formats (detected per record):

1. standard (TRL's "explicit prompt"): {"prompt": str, "chosen": str, "rejected": str}.
2. raw Anthropic HH-RLHF: {"chosen": str, "rejected": str}, two full transcripts of "\\n\\nHuman:
   ..." and "\\n\\nAssistant: ..." turns. The prompt is everything up to and including the last
   "\\n\\nAssistant:" that
   both transcripts share; the responses are what follows it (they start with the space after the
   colon).
3. conversational: "prompt"/"chosen"/"rejected" as lists of {"role", "content"} messages (or,
   without "prompt", two full conversations whose shared leading messages are the prompt). They are
   rendered as plain text with the HH template so that base models (GPT-2) can use them:

       render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
           == "\\n\\nHuman: Hi\\n\\nAssistant: Hello"

   (role "system" -> "System", "user" -> "Human", "assistant" -> "Assistant"). The prompt is the
   rendered prompt messages + "\\n\\nAssistant:"; a response is the rendered response messages
   without that leading tag, so prompt + chosen is exactly the rendered full conversation, as in the
   HH format. The record keeps the messages (`record.conversation`), so that a checkpoint's chat
   template (data/chat_template.py) can render them instead, at encoding time.

Bad input raises `PreferenceFormatError` (a ValueError) naming the source, the line (or row) and the
field.

Skip rule, shared by every loader of preference data (here and data/unpaired.py), checked in this
order:
1. a pair whose chosen or rejected response is empty or whitespace-only (`not text.strip()`; for HH
   and conversational records, the response text left after the prompt is split off) is skipped as
   "empty or whitespace-only chosen/rejected response" - it would train on an EOS-only answer;
   counted once even when both are blank;
2. a pair whose chosen equals rejected carries no preference: skipped as "chosen == rejected (no
   preference)".
An empty prompt is allowed (an unconditional pair: data/encoding.py gives it the EOS as a one-token
prompt and counts it). Every skip and adjustment is counted in a `LoadReport` (`return_report=True`)
and logged once per call (WARNING when anything was skipped or adjusted); the "data" logger prints
nothing unless logging is configured.

Left out: datasets with scores instead of pairs (e.g. raw UltraFeedback).
"""

import collections
import dataclasses
import gzip
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping

log = logging.getLogger(__name__)

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
ROLE_TAGS = {"system": "System", "user": "Human", "assistant": "Assistant"}
FIELDS = ("prompt", "chosen", "rejected")


@dataclasses.dataclass(frozen=True)
class Conversation:
    """The messages a conversational record (format 3) was read from, for a chat template
    (data/chat_template.py): the prompt's, each response's (chosen and rejected; one for an unpaired
    example) as tuples of {"role", "content"} dicts, and where the row was read (for errors)."""

    prompt: tuple[dict, ...]
    responses: tuple[tuple[dict, ...], ...]
    where: str


@dataclasses.dataclass(frozen=True)
class PreferenceRecord:
    """One preference pair as text: `chosen` (y_w) is preferred to `rejected` (y_l) as a reply to
    `prompt`; `conversation`: the messages of a conversational row (None for the text formats),
    not part of equality."""

    prompt: str
    chosen: str
    rejected: str
    conversation: Conversation | None = dataclasses.field(default=None, compare=False, repr=False)


class PreferenceFormatError(ValueError):
    """A record that cannot be read; `where` names the file and line (or row), `field` the field at
    fault."""

    def __init__(self, where: str, field: str | None, message: str):
        self.where, self.field = where, field
        super().__init__(f"{where}" + (f", field {field!r}" if field else "") + f": {message}")


@dataclasses.dataclass
class LoadReport:
    """What one `load_preferences` call read, kept, skipped and adjusted (counts keyed by
    reason)."""

    source: str
    n_read: int = 0  # records seen (blank lines excluded)
    n_loaded: int = 0  # records returned
    formats: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    adjusted: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    # what n_loaded counts (data/unpaired.py: "examples", two from a pair)
    loaded_as: str = "records"

    def summary(self) -> str:
        parts = [f"{self.source}: loaded {self.n_loaded} {self.loaded_as} from {self.n_read} "
                 f"records ({dict(self.formats)})"]
        parts += [f"skipped {n}: {why}" for why, n in sorted(self.skipped.items())]
        parts += [f"adjusted {n}: {why}" for why, n in sorted(self.adjusted.items())]
        return "; ".join(parts)


# --------------------------------------------------------------------------------------------------
# One record (a mapping) -> PreferenceRecord, whatever the format


def render_messages(messages: list[dict]) -> str:
    """Render chat messages as HH-style plain text: "\\n\\n{Human|Assistant|System}: {content}" per
    message."""
    return "".join(f"\n\n{ROLE_TAGS[m['role']]}: {m['content']}" for m in messages)


def _check_messages(messages, where: str, field: str) -> list[dict]:
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise PreferenceFormatError(where, f"{field}[{i}]",
                                        f"expected a message dict, got {type(m).__name__}")
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                got = "missing" if key not in m else f"a {type(m[key]).__name__}"
                raise PreferenceFormatError(where, f"{field}[{i}].{key}",
                                            f"must be a string, got {got}")
        if m["role"] not in ROLE_TAGS:
            raise PreferenceFormatError(where, f"{field}[{i}].role",
                                        f"unknown role {m['role']!r}; expected one of "
                                        f"{sorted(ROLE_TAGS)}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _conversational(row: Mapping, where: str) -> PreferenceRecord:
    chosen = _check_messages(row["chosen"], where, "chosen")
    rejected = _check_messages(row["rejected"], where, "rejected")
    if "prompt" in row:
        prompt = _check_messages(row["prompt"], where, "prompt")
    else:  # implicit prompt: the leading messages both conversations share
        n = 0
        while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
            n += 1
        if chosen == rejected:
            # identical conversations: keep the last message as the (equal) responses
            n = max(n - 1, 0)
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    for name, response in (("chosen", chosen), ("rejected", rejected)):
        if not response or response[0]["role"] != "assistant":
            raise PreferenceFormatError(where, name,
                                        "the response must start with an assistant message")
    # prompt + response == render(full conversation); the response keeps the space after
    # "Assistant:"
    return PreferenceRecord(render_messages(prompt) + ASSISTANT,
                            render_messages(chosen)[len(ASSISTANT):],
                            render_messages(rejected)[len(ASSISTANT):],
                            Conversation(tuple(prompt), (tuple(chosen), tuple(rejected)), where))


def _anthropic_hh(chosen: str, rejected: str, where: str, report: LoadReport) -> PreferenceRecord:
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        if ASSISTANT not in text:
            raise PreferenceFormatError(where, name, f"HH transcript has no {ASSISTANT!r} turn")
    shared = os.path.commonprefix([chosen, rejected])
    end = shared.rfind(ASSISTANT)
    if end < 0:
        raise PreferenceFormatError(where, "chosen",
                                    f"chosen and rejected share no {ASSISTANT!r} turn")
    end += len(ASSISTANT)
    if end <= chosen.rfind(ASSISTANT) or end <= rejected.rfind(ASSISTANT):
        report.adjusted["HH transcripts that differ before their last assistant turn: "
                        "prompt ends at the last shared one"] += 1
    return PreferenceRecord(chosen[:end], chosen[end:], rejected[end:])


EMPTY_RESPONSE = "empty or whitespace-only chosen/rejected response"
EMPTY_COMPLETION = "empty or whitespace-only completion"
NO_PREFERENCE = "chosen == rejected (no preference)"


def skip_reason(record: PreferenceRecord) -> str | None:
    """Why `record` is skipped by the loaders (the rule in the module docstring, in its order), or
    None to keep it. An empty prompt is no reason: it is allowed."""
    if not record.chosen.strip() or not record.rejected.strip():
        return EMPTY_RESPONSE
    if record.chosen == record.rejected:
        return NO_PREFERENCE
    return None


def record_from_row(row, where: str, report: LoadReport) -> PreferenceRecord:
    """Convert one record of any supported format; `where` ("file, line 3") is used in error
    messages."""
    if not isinstance(row, Mapping):
        raise PreferenceFormatError(where, None,
                                    f"expected an object with prompt/chosen/rejected fields, "
                                    f"got {type(row).__name__}")
    for name in ("chosen", "rejected"):
        if name not in row:
            raise PreferenceFormatError(where, name, "missing")
    has_prompt = "prompt" in row
    values = [row[f] for f in (FIELDS if has_prompt else FIELDS[1:])]
    if all(isinstance(v, str) for v in values):
        report.formats["standard" if has_prompt else "anthropic_hh"] += 1
        return PreferenceRecord(*values) if has_prompt else _anthropic_hh(*values, where, report)
    if all(isinstance(v, list) for v in values):
        report.formats["conversational"] += 1
        return _conversational(row, where)
    if not isinstance(row["chosen"], (str, list)):
        raise PreferenceFormatError(where, "chosen", f"must be a string or a list of messages, "
                                    f"got {type(row['chosen']).__name__}")
    kind, want = (str, "a string") if isinstance(row["chosen"], str) else (list,
                                                                           "a list of messages")
    for name, v in zip(FIELDS if has_prompt else FIELDS[1:], values):
        if not isinstance(v, kind):
            raise PreferenceFormatError(where, name,
                                        f"must be {want} like 'chosen', got {type(v).__name__}")
    raise AssertionError(f"{where}: unreachable, mixed field types were reported above")


# --------------------------------------------------------------------------------------------------
# Sources -> (where, row) pairs


def _read_bytes(path: str) -> bytes:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        return f.read()


def _json_lines(raw: bytes, name: str, report: LoadReport) -> Iterator[tuple[str, object]]:
    lines = raw.split(b"\n")
    for lineno, line in enumerate(lines, start=1):
        where = f"{name}, line {lineno}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise PreferenceFormatError(where, None, f"not valid UTF-8 ({err.reason} at "
                                        f"byte {err.start})") from err
        if not text.strip():
            # the newline that ends the file does not make a blank line
            if lineno < len(lines) or text:
                report.skipped["blank lines"] += 1
            continue
        try:
            yield where, json.loads(text)
        except json.JSONDecodeError as err:
            raise PreferenceFormatError(where, None, f"invalid JSON: {err.msg} "
                                        f"(column {err.colno})") from err


def _json_array(text: str, name: str) -> Iterator[tuple[str, object]]:
    """Parse a JSON array element by element so that each record knows the line it starts on."""
    decoder, pos, line, counted = json.JSONDecoder(), 0, 1, 0

    def skip_ws(i):
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    def line_at(i):  # incremental newline count: linear in the file size overall
        nonlocal line, counted
        line += text.count("\n", counted, i)
        counted = i
        return line

    pos = skip_ws(pos) + 1  # past "["
    while True:
        pos = skip_ws(pos)
        if pos < len(text) and text[pos] == "]":
            return
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise PreferenceFormatError(f"{name}, line {err.lineno}", None, "invalid "
                                        f"JSON: {err.msg}") from err
        yield f"{name}, line {line_at(pos)}", obj
        pos = skip_ws(end)
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif pos >= len(text) or text[pos] != "]":
            raise PreferenceFormatError(f"{name}, line {line_at(pos)}", None,
                                        "invalid JSON: expected ',' or ']' after an array element")


def _file_rows(path: str, report: LoadReport) -> Iterator[tuple[str, object]]:
    base = path[:-3] if path.endswith(".gz") else path
    if not base.endswith((".jsonl", ".json")):
        raise ValueError(f"{path}: unsupported file type; expected .jsonl, .json (optionally .gz)")
    raw = _read_bytes(path)
    if base.endswith(".json") and raw.lstrip()[:1] == b"[":
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            line = raw[:err.start].count(b"\n") + 1
            raise PreferenceFormatError(f"{path}, line {line}", None, "not valid UTF-8") from err
        yield from _json_array(text, path)
    else:
        yield from _json_lines(raw, path, report)


def _dataset_rows(dataset, name: str) -> Iterator[tuple[str, object]]:
    rows, i = iter(dataset), 0
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        # a dataset whose rows cannot be decoded (e.g. a directory of other files)
        except Exception as err:
            raise ValueError(f"{name}, row {i}: not a dataset `datasets` can read "
                             f"({type(err).__name__}: {' '.join(str(err).split())[:300]})") from err
        yield f"{name}, row {i}", row
        i += 1


def dataset_name_and_split(source: str) -> tuple[str, str | None]:
    """Split "NAME:SPLIT" (a Hugging Face dataset name or a local dataset directory, then a split)
    into its parts.

    A string that exists as a path, or has no ":", is a name with no split: ("NAME", None).
    Example: "Anthropic/hh-rlhf:test" -> ("Anthropic/hh-rlhf", "test").
    """
    name, colon, split = source.rpartition(":")
    if os.path.exists(source) or not colon or not name or not split or "/" in split:
        return source, None
    return name, split


# "gpt2", "org/name", "org/name:split"
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.-]+)?$")


def missing_local_path(value):
    """True when `value` names a local file or directory that does not exist, and is not a hub name
    either.

    "gpt2" and "org/name" are hub names (unless "org" is a local directory: then "org/name" is a
    path); "/abs/path", "./x", "~/x", "a/b/c" and file names such as "x.jsonl" or "ckpt.pt" are
    paths.
    """
    if os.path.exists(value) or os.path.exists(dataset_name_and_split(value)[0]):
        return False
    file_like = value.endswith((".pt", ".bin", ".safetensors", ".json", ".jsonl", ".gz", ".txt"))
    if file_like or not HUB_NAME.match(value):
        return True
    return "/" in value and os.path.isdir(value.split("/")[0])


def _is_file_source(path: str) -> bool:
    """A preference file (existing, or named like one), as opposed to a dataset name or
    directory."""
    return os.path.isfile(path) or (not os.path.exists(path) and path.endswith((".json", ".jsonl",
                                                                                ".gz")))


def dataset_splits(source) -> list[str] | None:
    """The split names of a dataset name or local dataset directory (e.g. ["train", "test"]); None
    for a file.

    Asks `datasets.get_dataset_split_names` (a network request for a hub name that is not
    cached)."""
    if not isinstance(source, (str, os.PathLike)) or _is_file_source(os.fspath(source)):
        return None
    import datasets

    name = dataset_name_and_split(os.fspath(source))[0]
    try:
        return list(datasets.get_dataset_split_names(name))
    # whatever the library raises for a directory or name that is not a dataset
    except Exception as err:
        raise ValueError(f"{name}: not a dataset `datasets` can read ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:300]})") from err


def load_dataset(datasets, name: str, split: str):
    """datasets.load_dataset(name, split=split); a local directory loads without progress bars (it
    takes a moment; a hub download shows its progress). Raises ValueError naming `name` for anything
    `datasets` cannot read."""
    local = os.path.isdir(name)
    quiet_already = datasets.are_progress_bars_disabled()
    if local:
        datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(name, split=split)
    # whatever the library raises for a directory or name that is not a dataset
    except Exception as err:
        raise ValueError(f"{name}: not a dataset `datasets` can read, split {split!r} "
                         f"({type(err).__name__}: {' '.join(str(err).split())[:300]})") from err
    finally:
        if local and not quiet_already:
            datasets.enable_progress_bars()


def source_rows(source, split: str, report: LoadReport) -> Iterator[tuple[str, object]]:
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if _is_file_source(path):
            return _file_rows(path, report)
        name, named_split = dataset_name_and_split(path)
        split = named_split or split
        try:
            import datasets
        except ImportError as err:
            raise FileNotFoundError(f"{path}: no such file, and the `datasets` package (needed to "
                                    "load a Hugging Face dataset by name) "
                                    "is not installed") from err
        return _dataset_rows(load_dataset(datasets, name, split), f"{name}[{split}]")
    if type(source).__name__ == "DatasetDict":
        if split not in source:
            raise KeyError(f"DatasetDict has no split {split!r}; it has {sorted(source)}")
        return _dataset_rows(source[split], f"Dataset[{split}]")
    if isinstance(source, Mapping):
        raise TypeError("got a single mapping; pass a list of records (dicts), a file or a dataset")
    if isinstance(source, Iterable):  # datasets.Dataset iterates over its rows as dicts
        return _dataset_rows(source, type(source).__name__)
    raise TypeError(f"cannot load preferences from a {type(source).__name__}; expected a path, a "
                    f"dataset name, a datasets.Dataset or a list of dicts")


def load_preferences(source, *, split: str = "train", return_report: bool = False):
    """Read preference pairs from a file, an in-memory dataset or a Hugging Face dataset name.

    Args:
        source: path (str or PathLike) to a .jsonl/.json file (optionally .gz); a `datasets.Dataset`
            or `DatasetDict`; a list of dicts; or a dataset name (network) or local dataset
            directory for
            `datasets.load_dataset`, optionally with a split: "Anthropic/hh-rlhf:test".
        split: the split to take from a DatasetDict or a named dataset (a split in the name wins).
        return_report: also return the `LoadReport`.
    Returns:
        list[PreferenceRecord], or (records, LoadReport) when return_report. Pairs with a blank
        response or
        chosen == rejected are skipped and counted (the skip rule in the module docstring).
    Raises:
        PreferenceFormatError (ValueError): invalid JSON or UTF-8, a missing or mistyped field, an
            HH transcript without an assistant turn; the message names the source, line/row and
            field.
    """
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__
    report = LoadReport(source=name)
    records = []
    for where, row in source_rows(source, split, report):
        report.n_read += 1
        record = record_from_row(row, where, report)
        reason = skip_reason(record)
        if reason is not None:
            report.skipped[reason] += 1
            continue
        records.append(record)
    report.n_loaded = len(records)
    log.log(logging.WARNING if report.skipped or report.adjusted else logging.INFO, "%s",
            report.summary())
    return (records, report) if return_report else records


def save_preferences(records: Iterable[PreferenceRecord], path) -> int:
    """Write records as standard JSON Lines ({"prompt", "chosen", "rejected"} per line; gzip if path
    ends in .gz), readable by `load_preferences` and by TRL. Returns the number of records
    written."""
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    n = 0
    with opener(path, "wt", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected},
                               ensure_ascii=False) + "\n")
            n += 1
    return n
