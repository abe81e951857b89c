"""data: preference datasets in general, tokenization, pair encoding/truncation and padded batches.

    records.py        PreferenceRecord, load_preferences (JSONL/JSON/.gz, Anthropic HH,
                      conversational, datasets)
    tokenizer.py      get_tokenizer("gpt2" | "bytes" | "path.tiktoken" | a Hugging Face
                      checkpoint directory), all tiktoken.Encoding; tokenizer_description
    hf_tokenizer.py   a checkpoint's byte-level BPE tokenizer.json -> tiktoken: the same ids, its
                      EOS as eot_token
    chat_template.py  a checkpoint's chat template on conversational records -> prompt and
                      response tokens
    encoding.py       encode_preferences: separate tokenization, EOS, the truncation policy ->
                      EncodedPair
    batches.py        dpo_collate / sft_collate / collate_responses (input_ids, pre-shifted
                      labels, response mask), lm_batches (windows of a token stream)
    unpaired.py       KTO's unpaired examples: load_unpaired (TRL's format, or pairs split),
                      encode_unpaired, kto_collate

The embedded sentiment task, which makes its own preference pairs, lives in `sentiment/`.

The modules log their reports (skips, truncation) to the "data" logger, which has a NullHandler, as
libraries do: nothing prints unless the application configures logging; callers get the counts with
return_report=True.
"""

import logging

from data.batches import (
    IGNORE_INDEX,
    collate_responses,
    dpo_collate,
    last_masked_position,
    lm_batches,
    response_batches,
    sft_collate,
)
from data.chat_template import (
    ChatTemplate,
    ChatTemplateError,
    encode_conversation,
    find_chat_template,
    load_chat_template,
    resolve_chat_template,
)
from data.encoding import EncodedPair, EncodeReport, encode_preferences, truncate_pair
from data.hf_tokenizer import HFEncoding, TokenizerFileError, load_hf_tokenizer
from data.records import (
    Conversation,
    LoadReport,
    PreferenceFormatError,
    PreferenceRecord,
    dataset_name_and_split,
    dataset_splits,
    load_preferences,
    missing_local_path,
    render_messages,
    save_preferences,
)
from data.tokenizer import (
    TOKENIZER_NAMES,
    TokenizerUnavailableError,
    get_tokenizer,
    is_hf_tokenizer_path,
    tokenizer_description,
)
from data.unpaired import (
    EncodedExample,
    UnpairedRecord,
    encode_unpaired,
    kto_collate,
    load_unpaired,
)

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "IGNORE_INDEX", "TOKENIZER_NAMES", "EncodeReport", "EncodedPair", "LoadReport",
    "PreferenceFormatError", "PreferenceRecord", "TokenizerUnavailableError", "collate_responses",
    "dataset_name_and_split", "dataset_splits", "dpo_collate", "encode_preferences",
    "get_tokenizer", "last_masked_position", "lm_batches", "load_preferences", "missing_local_path",
    "render_messages", "response_batches", "save_preferences", "sft_collate",
    "tokenizer_description", "truncate_pair", "EncodedExample", "UnpairedRecord", "encode_unpaired",
    "kto_collate", "load_unpaired", "ChatTemplate", "ChatTemplateError", "Conversation",
    "HFEncoding", "TokenizerFileError", "encode_conversation", "find_chat_template",
    "is_hf_tokenizer_path", "load_chat_template", "load_hf_tokenizer", "resolve_chat_template",
]
