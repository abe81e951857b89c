"""Unpaired preference data for KTO (Ethayarajh et al. 2024): (prompt, completion, desirable)
examples.

KTO learns from single completions marked desirable (thumbs up) or undesirable (thumbs down), not
pairs. `load_unpaired` reads TRL's unpaired format, one object per line (`.jsonl`, `.json`,
optionally `.gz`, a `datasets.Dataset`, a hub name, as `load_preferences`):

    {"prompt": "How was it?", "completion": " Great!", "label": true}

and converts paired records (any format `load_preferences` reads) on the way: a pair gives one
desirable example (its chosen response) and one undesirable (its rejected one). `desirable_fraction`
keeps a seeded fraction of the desirable examples, to test KTO on imbalanced data. Errors name the
source, the line and the field, as the paired loaders' do; every skip is counted in a LoadReport.

Skips follow the rule of data/records.py: an example whose completion is empty or whitespace-only is
skipped as "empty or whitespace-only completion"; a pair is checked by that module's rule before it
is split, so a pair with a blank chosen or rejected response, or chosen == rejected, gives no
example at all (counted once). An empty prompt is allowed, as there.

`encode_unpaired` tokenizes as `encode_preferences` does (EOS appended, the same truncation policy)
and gives each example a mismatched completion, another example's (the next one with a different
prompt), for KTO's estimate of KL(pi || pi_ref): `kto_collate` puts the B examples' rows first and
their B mismatched rows after, the layout of data.dpo_collate, so that the same forward and
reference serve both.
"""

import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping, Sequence

import torch

from data.batches import collate_responses
from data.encoding import EncodeReport, check_length_limits, encode_truncated
from data.records import (
    EMPTY_COMPLETION,
    Conversation,
    LoadReport,
    PreferenceFormatError,
    record_from_row,
    skip_reason,
    source_rows,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class UnpairedRecord:
    """One completion of a prompt, marked desirable (True) or undesirable (False); `conversation`:
    the messages of a conversational pair it was split from (one response), else None."""

    prompt: str
    completion: str
    desirable: bool
    conversation: Conversation | None = dataclasses.field(default=None, compare=False, repr=False)


@dataclasses.dataclass(frozen=True)
class EncodedExample:
    """Token ids of one unpaired example and of its mismatched completion (another example's), both
    ending in EOS unless truncation cut them."""

    prompt_ids: list[int]
    completion_ids: list[int]
    desirable: bool
    kl_completion_ids: list[int]


def unpaired_record(row, where: str, report: LoadReport) -> list[UnpairedRecord]:
    """The examples of one row: itself (TRL's unpaired format), or the two halves of a pair; none
    for a row the skip rule (module docstring) leaves out, counted in `report`."""
    if isinstance(row, Mapping) and "label" in row:
        for name in ("prompt", "completion"):
            if name not in row:
                raise PreferenceFormatError(where, name, "missing")
            if not isinstance(row[name], str):
                raise PreferenceFormatError(where, name,
                                            f"must be a string, got {type(row[name]).__name__}")
        if not isinstance(row["label"], bool):
            raise PreferenceFormatError(where, "label",
                                        f"must be true or false, got {row['label']!r}")
        report.formats["unpaired"] += 1
        if not row["completion"].strip():
            report.skipped[EMPTY_COMPLETION] += 1
            return []
        return [UnpairedRecord(row["prompt"], row["completion"], row["label"])]
    if isinstance(row, Mapping) and "completion" in row:
        raise PreferenceFormatError(where, "label",
                                    "missing (an unpaired example needs true or false)")
    pair = record_from_row(row, where, report)  # paired formats, or a clear error
    reason = skip_reason(pair)  # before the split: a pair with a blank response gives no example
    if reason is not None:
        report.skipped[reason] += 1
        return []
    report.adjusted["pairs split into a desirable and an undesirable example"] += 1
    halves = [None, None]
    if pair.conversation is not None:  # each half keeps its own response's messages
        c = pair.conversation
        halves = [Conversation(c.prompt, (response,), c.where) for response in c.responses]
    return [UnpairedRecord(pair.prompt, pair.chosen, True, halves[0]),
            UnpairedRecord(pair.prompt, pair.rejected, False, halves[1])]


def load_unpaired(source, *, split: str = "train", desirable_fraction: float = 1.0, seed: int = 0,
                  return_report: bool = False):
    """Unpaired examples from `source` (see the module docstring), desirable ones kept at
    `desirable_fraction`.

    Returns list[UnpairedRecord] (or (records, LoadReport)). Raises PreferenceFormatError naming the
    source, line and field of a bad record, ValueError for a fraction outside (0, 1]."""
    if not 0 < desirable_fraction <= 1:
        raise ValueError(f"desirable_fraction must be in (0, 1], got {desirable_fraction}")
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__
    report = LoadReport(source=name, loaded_as="examples")
    records = []
    for where, row in source_rows(source, split, report):
        report.n_read += 1
        records += unpaired_record(row, where, report)
    desirable = [i for i, record in enumerate(records) if record.desirable]
    keep = round(desirable_fraction * len(desirable))
    if keep < len(desirable):
        order = torch.randperm(len(desirable),
                               generator=torch.Generator().manual_seed(seed)).tolist()
        dropped = {desirable[i] for i in order[keep:]}
        records = [record for i, record in enumerate(records) if i not in dropped]
        why = f"desirable examples left out (desirable fraction {desirable_fraction})"
        report.adjusted[why] += len(dropped)
    report.n_loaded = len(records)
    log.log(logging.WARNING if report.skipped else logging.INFO, "%s", report.summary())
    return (records, report) if return_report else records


def encode_unpaired(records: Iterable[UnpairedRecord], tokenizer, *, max_length: int,
                    max_prompt_length: int, return_report: bool = False, chat_template=None):
    """Tokenize unpaired examples into EncodedExamples: prompt, completion + EOS (the truncation
    policy of data.encoding), and the mismatched completion: that of the next example with another
    prompt, cut to fit. `chat_template` (data.chat_template.ChatTemplate): as encode_preferences.

    Returns list[EncodedExample] (or (examples, EncodeReport)); an example left with no completion
    token is dropped and counted. Raises TypeError / ValueError for limits encode_preferences
    refuses too."""
    check_length_limits(max_length, max_prompt_length)
    report, encoded = EncodeReport(), []
    for record in records:
        report.n_records += 1
        p, c, _ = encode_truncated(tokenizer, record.prompt, record.completion, record.completion,
                                   report, max_length=max_length,
                                   max_prompt_length=max_prompt_length,
                                   chat_template=chat_template, conversation=record.conversation)
        if not c:
            report.dropped["no completion token left after truncation"] += 1
            continue
        encoded.append((p, c, record.desirable))
    examples = []
    for i, (p, c, desirable) in enumerate(encoded):
        partner = next((encoded[(i + k) % len(encoded)][1] for k in range(1, len(encoded))
                        # another prompt's completion
                        if encoded[(i + k) % len(encoded)][0] != p), c)
        examples.append(EncodedExample(p, c, desirable, partner[:max_length - len(p)]))
    report.n_encoded = len(examples)
    log.log(logging.WARNING if report.dropped else logging.INFO, "%s", report.summary())
    return (examples, report) if return_report else examples


def kto_collate(examples: Sequence[EncodedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Collate B examples into 2B rows: prompt + completion for each, then prompt + mismatched
    completion for each (data.dpo_collate's layout), and "desirable" (B,) bool.

    Returns {"input_ids", "labels" (2B, T) int64, "mask" (2B, T) bool, "desirable" (B,) bool}."""
    rows = [(e.prompt_ids, e.completion_ids) for e in examples] + [(e.prompt_ids,
                                                                    e.kl_completion_ids)
                                                                   for e in examples]
    batch = collate_responses(rows, pad_id)
    batch["desirable"] = torch.tensor([e.desirable for e in examples], dtype=torch.bool)  # (B,)
    return batch
