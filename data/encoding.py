"""Preference pairs -> token ids: separate tokenization of prompt and responses, EOS, and
truncation.

DPO scores log pi(y|x) = sum over the response tokens of log pi(y_t | x, y_<t) (Rafailov et al.,
2023, Eq. 7 uses these sequence log-probs). So the tokens of x and of y must be known exactly:
prompt and responses are tokenized separately (`encode_ordinary`, so a literal "<|endoftext|>" in
the text stays text) and the prompt tokens are never merged with the first response token, as joint
BPE of prompt + response could do. An EOS token (`tokenizer.eot_token`) is appended to each response
and is scored: the policy learns where to stop, as in the authors' code.

A conversational record with a chat template (`chat_template=`, data/chat_template.py) is
rendered by the template instead: the prompt ends with the assistant's header, and each response
ends with the checkpoint's EOS, the template's own end of turn when it writes one, appended
otherwise, never twice.

Truncation policy (as in the authors' code), applied when len(prompt) + len(longer response) >
  max_length:
  1. keep the LAST `max_prompt_length` prompt tokens (the end of the prompt is nearest to the
     response);
  2. if prompt + longer response is still too long, keep the FIRST max_length - len(prompt) tokens
     of each response (a cut response loses its EOS: it is scored as a prefix).
A pair left with no response token, or whose two responses became identical, carries no signal: it
is dropped and counted. An empty prompt gets the EOS token as a one-token prompt (GPT-2's
<|endoftext|> doubles as beginning-of-text), so that the first response token has a position that
predicts it; counted too.

Worked example (byte-level tokenizer, EOS = 256), max_length=8, max_prompt_length=3:
    prompt "Hello" -> [72, 101, 108, 108, 111]           chosen "Hi there" -> [72, 105, 32, 116,
    104, 101,
    rejected "no"  -> [110, 111, 256]                                          114, 101, 256]  (9
                   tokens)
    5 + 9 = 14 > 8, so the prompt keeps its last 3 tokens: "llo" = [108, 108, 111];
    3 + 9 = 12 > 8, so each response keeps its first 8 - 3 = 5 tokens:
    chosen -> "Hi th" = [72, 105, 32, 116, 104] (no EOS), rejected -> [110, 111, 256] (already
    short).
"""

import collections
import dataclasses
import logging
from collections.abc import Iterable

from data.chat_template import encode_conversation

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EncodedPair:
    """Token ids of one preference pair; each response ends in EOS unless truncation cut it."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


@dataclasses.dataclass
class EncodeReport:
    """Counts of what `encode_preferences` truncated, repaired and dropped."""

    n_records: int = 0
    n_encoded: int = 0
    prompt_truncated: int = 0
    responses_truncated: int = 0
    empty_prompt_given_eos: int = 0
    dropped: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def summary(self) -> str:
        text = (f"encoded {self.n_encoded} of {self.n_records} pairs; prompt truncated in "
                f"{self.prompt_truncated}, responses truncated in {self.responses_truncated}, "
                f"empty prompt -> [EOS] in {self.empty_prompt_given_eos}")
        return text + "".join(f"; dropped {n}: {why}" for why, n in sorted(self.dropped.items()))


def truncate_pair(prompt_ids: list[int], chosen_ids: list[int], rejected_ids: list[int], *,
                  max_length: int,
                  max_prompt_length: int) -> tuple[list[int], list[int], list[int]]:
    """Apply the truncation policy of the module docstring to one pair of token-id lists (EOS
    included).

    Returns (prompt_ids, chosen_ids, rejected_ids), each a suffix (prompt) or prefix (responses) of
    its input; a response may come back empty when the prompt alone fills max_length.
    """
    longer = max(len(chosen_ids), len(rejected_ids))
    if len(prompt_ids) + longer > max_length:
        prompt_ids = prompt_ids[-max_prompt_length:]  # 1. keep the end of the prompt
    room = max_length - len(prompt_ids)
    if longer > room:
        # 2. response starts
        chosen_ids, rejected_ids = chosen_ids[:max(room, 0)], rejected_ids[:max(room, 0)]
    return prompt_ids, chosen_ids, rejected_ids


def encode_truncated(tokenizer, prompt: str, first: str, second: str, report: EncodeReport, *,
                     max_length: int, max_prompt_length: int, chat_template=None,
                     conversation=None) -> tuple[list[int], list[int], list[int]]:
    """One prompt and two responses as token ids: tokenized apart, EOS appended to each response, an
    empty prompt given the EOS, then `truncate_pair`; what it changed is counted in `report`. Shared
    by encode_preferences and data.unpaired.encode_unpaired (which passes one completion as both
    responses). With a `chat_template` and a `conversation` (data.records.Conversation), the
    conversation's first and last responses are rendered by the template instead of the texts.

    Returns (prompt_ids, first_ids, second_ids); a response may come back empty."""
    eos = tokenizer.eot_token
    if chat_template is not None and conversation is not None:
        prompt_ids, responses = encode_conversation(chat_template, tokenizer, conversation)
        first_ids, second_ids = responses[0], responses[-1]
    else:
        prompt_ids = tokenizer.encode_ordinary(prompt)
        first_ids, second_ids = (tokenizer.encode_ordinary(first) + [eos],
                                 tokenizer.encode_ordinary(second) + [eos])
    if not prompt_ids:
        prompt_ids = [eos]
        report.empty_prompt_given_eos += 1
    p, f, s = truncate_pair(prompt_ids, first_ids, second_ids, max_length=max_length,
                            max_prompt_length=max_prompt_length)
    report.prompt_truncated += len(p) < len(prompt_ids)
    report.responses_truncated += len(f) < len(first_ids) or len(s) < len(second_ids)
    return p, f, s


def check_length_limits(max_length: int, max_prompt_length: int) -> None:
    """TypeError / ValueError unless max_length >= 2 and max_prompt_length >= 1 are ints."""
    for name, value, low in (("max_length", max_length, 2),
                             ("max_prompt_length", max_prompt_length, 1)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")


def encode_preferences(records: Iterable, tokenizer, *, max_length: int, max_prompt_length: int,
                       return_report: bool = False, chat_template=None):
    """Tokenize preference records into `EncodedPair`s (prompt, chosen + EOS, rejected + EOS),
    truncated.

    Args:
        records: iterable of PreferenceRecord (anything with str .prompt, .chosen, .rejected).
        tokenizer: a tiktoken.Encoding (data.get_tokenizer); its eot_token is the EOS.
        max_length: most tokens of prompt + either response (>= 2).
        max_prompt_length: most prompt tokens kept when a pair is too long (>= 1).
        return_report: also return the `EncodeReport`.
        chat_template: a data.chat_template.ChatTemplate that renders the conversational records
            (those with a .conversation); None: their HH text, as every other record's text.
    Returns:
        list[EncodedPair] of int lists (or (pairs, EncodeReport)); len(prompt_ids) + len(x_ids) <=
        max_length
        for x in chosen, rejected.
    """
    check_length_limits(max_length, max_prompt_length)
    report, pairs = EncodeReport(), []
    for record in records:
        report.n_records += 1
        p, c, r = encode_truncated(tokenizer, record.prompt, record.chosen, record.rejected, report,
                                   max_length=max_length, max_prompt_length=max_prompt_length,
                                   chat_template=chat_template,
                                   conversation=getattr(record, "conversation", None))
        if not c or not r:
            report.dropped["no response token left after truncation"] += 1
        elif c == r:
            report.dropped["chosen == rejected after tokenization/truncation"] += 1
        else:
            pairs.append(EncodedPair(p, c, r))
    report.n_encoded = len(pairs)
    busy = (report.dropped or report.prompt_truncated or report.responses_truncated
            or report.empty_prompt_given_eos)
    log.log(logging.WARNING if busy else logging.INFO, "%s", report.summary())
    return (pairs, report) if return_report else pairs
