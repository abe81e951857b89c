"""data: preference datasets, tokenization, pair encoding/truncation, batches, and the embedded sentiment task.

    records.py   PreferenceRecord, load_preferences (JSONL/JSON/.gz, Anthropic HH, conversational, datasets)
    tokenizer.py get_tokenizer("gpt2" | "bytes"), both tiktoken.Encoding
    encoding.py  encode_preferences: separate tokenization, EOS, the truncation policy -> EncodedPair
    batches.py   dpo_collate / sft_collate (input_ids, pre-shifted labels, response mask), lm_batches
    reviews.py   the seeded movie-review generator (corpus and prompts of the sentiment task)
    sentiment.py the sentiment task: VADER reward, corpus token stream, preference pairs sampled from a model
"""

from data import sentiment
from data.batches import IGNORE_INDEX, dpo_collate, lm_batches, sft_collate
from data.encoding import EncodedPair, EncodeReport, encode_preferences, truncate_pair
from data.records import (LoadReport, PreferenceFormatError, PreferenceRecord, load_preferences, render_messages,
                          save_preferences)
from data.tokenizer import TokenizerUnavailableError, get_tokenizer

__all__ = [
    "IGNORE_INDEX", "EncodeReport", "EncodedPair", "LoadReport", "PreferenceFormatError", "PreferenceRecord",
    "TokenizerUnavailableError", "dpo_collate", "encode_preferences", "get_tokenizer", "lm_batches",
    "load_preferences", "render_messages", "save_preferences", "sentiment", "sft_collate", "truncate_pair",
]
