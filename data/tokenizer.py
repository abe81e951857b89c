"""Tokenizers: tiktoken's GPT-2 BPE, and an offline byte-level encoding built with the same library.

Both are `tiktoken.Encoding` objects, so the rest of the code sees one interface:
`enc.encode_ordinary(text) -> list[int]`, `enc.decode(ids) -> str`, `enc.eot_token`, `enc.n_vocab`.

* "gpt2": the 50257-token BPE of GPT-2 (Radford et al., 2019). tiktoken downloads its two vocabulary files
  on first use and caches them in TIKTOKEN_CACHE_DIR (default: <tmp>/data-gym-cache). Without a network
  and without a filled cache it cannot be built; `get_tokenizer` then raises `TokenizerUnavailableError`.
* "bytes": one token per UTF-8 byte (ids 0..255, id = byte value) plus `<|endoftext|>` = 256, so
  n_vocab = 257. It needs no download; the demo and the tests use it.

Text is always encoded with `encode_ordinary`: a literal "<|endoftext|>" inside a review or a prompt is
ordinary text (13 bytes, or several BPE tokens), never the special token. Only the code that builds
sequences appends `enc.eot_token` itself, where a document or a response ends.
"""

import functools

import tiktoken

ENDOFTEXT = "<|endoftext|>"

# Any pattern that covers every character works for an encoding without merges; this one splits text into
# runs of whitespace and runs of non-whitespace, which keeps tiktoken's pieces short.
_BYTES_PATTERN = r"\s+|\S+"


class TokenizerUnavailableError(RuntimeError):
    """A tokenizer's files could not be loaded (for "gpt2": no network and no cached vocabulary)."""


@functools.lru_cache(maxsize=None)
def byte_encoding() -> tiktoken.Encoding:
    """The offline byte-level encoding: ids 0..255 are the bytes, 256 is <|endoftext|> (n_vocab 257)."""
    return tiktoken.Encoding(
        name="bytes",
        pat_str=_BYTES_PATTERN,
        mergeable_ranks={bytes([b]): b for b in range(256)},
        special_tokens={ENDOFTEXT: 256},
        explicit_n_vocab=257,
    )


def get_tokenizer(name: str) -> tiktoken.Encoding:
    """Return the tokenizer called `name`: "gpt2" (tiktoken's GPT-2 BPE) or "bytes" (offline byte-level).

    The end-of-sequence id is `enc.eot_token` (50256 for "gpt2", 256 for "bytes").

    Raises:
        ValueError: `name` is not one of the two.
        TokenizerUnavailableError: "gpt2" was asked for but tiktoken could not download its vocabulary
            (the message says how to fix it: a filled TIKTOKEN_CACHE_DIR, or the "bytes" tokenizer).
    """
    if name == "bytes":
        return byte_encoding()
    if name == "gpt2":
        try:
            return tiktoken.get_encoding("gpt2")
        except Exception as err:  # requests' ConnectionError, OSError, a hash mismatch, missing blobfile, ...
            raise TokenizerUnavailableError(
                "could not load tiktoken's 'gpt2' encoding: tiktoken downloads its vocabulary "
                "(vocab.bpe and encoder.json) on first use and this failed "
                f"({type(err).__name__}: {err}). Either run once with a network so that tiktoken fills its "
                "cache, then point TIKTOKEN_CACHE_DIR at that cache directory when offline, or use the "
                "offline byte-level tokenizer: get_tokenizer(\"bytes\") (--tokenizer bytes)."
            ) from err
    raise ValueError(f"unknown tokenizer {name!r}; expected 'gpt2' or 'bytes'")
