"""Tokenizers: tiktoken's GPT-2 BPE, an offline byte-level encoding, BPE vocabularies stored in
files, and Hugging Face checkpoints' byte-level BPE tokenizers.

All are `tiktoken.Encoding` objects, so the rest of the code sees one interface:
`enc.encode_ordinary(text) -> list[int]`, `enc.decode(ids) -> str`, `enc.eot_token`, `enc.n_vocab`.

* "gpt2": the 50257-token BPE of GPT-2 (Radford et al., 2019). tiktoken downloads its two vocabulary
  files on first use and caches them in TIKTOKEN_CACHE_DIR (default: <tmp>/data-gym-cache). Without
  a network and without a filled cache it cannot be built; `get_tokenizer` then raises
  `TokenizerUnavailableError`.
* "bytes": one token per UTF-8 byte (ids 0..255, id = byte value) plus `<|endoftext|>` = 256, so
  n_vocab = 257. It needs no download; the demo and the tests use it.
* "path/to/name.tiktoken": a BPE trained on your own text (e.g. `sentiment/reviews_bpe.tiktoken`,
  made by `tiktoken._educational.bpe_train`), in tiktoken's own file format: one `<base64 token>
  <rank>` line per
  token, ranks 0..n-1 in merge order, the 256 single bytes included (so any text can be encoded).
  Text is
  split with GPT-2's pattern (`GPT2_PATTERN`) and `<|endoftext|>` = n, so n_vocab = n + 1. No
  network.
* "path/to/checkpoint" (a directory holding tokenizer.json) or "path/to/tokenizer.json": a Hugging
  Face byte-level BPE tokenizer (GPT-2, SmolLM2, Llama 3, Qwen2.5), read by data/hf_tokenizer.py
  into an encoding with the same ids; its eot_token is the checkpoint's EOS. No network.

The files are read and written by `load_ranks` / `save_ranks`, which keep the format of tiktoken's
`load.load_tiktoken_bpe` / `load.dump_tiktoken_bpe` (a test checks that tiktoken reads our files)
without their two catches: `dump_tiktoken_bpe` needs the `blobfile` package, and `load_tiktoken_bpe`
copies every file it reads into its download cache keyed by the path, so it would return the old
ranks of a file that was regenerated in place.

Text is always encoded with `encode_ordinary`: a literal "<|endoftext|>" inside a review or a prompt
is ordinary text (13 bytes, or several BPE tokens), never the special token. Only the code that
builds sequences appends `enc.eot_token` itself, where a document or a response ends (or a chat
template writes it: data/chat_template.py).
"""

import base64
import binascii
import functools
import os

import tiktoken

from data.hf_tokenizer import load_hf_tokenizer

ENDOFTEXT = "<|endoftext|>"

# How GPT-2 splits text into pieces before merging bytes inside each piece: contractions, optional
# space + letters, optional space + digits, optional space + other symbols, whitespace. tiktoken's
# own string (tiktoken_ext/openai_public.py, r50k_pat_str), equivalent to the original GPT-2
# release's pattern.
GPT2_PATTERN = (r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++"""
                r"""|\s++$|\s+(?!\S)|\s""")

# Any pattern that covers every character works for an encoding without merges; this one splits text
# into runs of whitespace and runs of non-whitespace, which keeps tiktoken's pieces short.
_BYTES_PATTERN = r"\s+|\S+"


class TokenizerUnavailableError(RuntimeError):
    """A tokenizer's files could not be loaded ("gpt2": no network and no cached vocabulary; a
    .tiktoken file: missing or not a valid ranks file; a Hugging Face tokenizer: missing, or not
    one data/hf_tokenizer.py reads exactly)."""


@functools.lru_cache(maxsize=None)
def byte_encoding() -> tiktoken.Encoding:
    """The offline byte-level encoding: ids 0..255 are the bytes, 256 is <|endoftext|> (n_vocab
    257)."""
    return tiktoken.Encoding(
        name="bytes",
        pat_str=_BYTES_PATTERN,
        mergeable_ranks={bytes([b]): b for b in range(256)},
        special_tokens={ENDOFTEXT: 256},
        explicit_n_vocab=257,
    )


def save_ranks(ranks: dict[bytes, int], path: str) -> None:
    """Write BPE ranks as tiktoken does (`dump_tiktoken_bpe`): `<base64 token> <rank>` lines, by
    rank."""
    with open(path, "wb") as f:
        for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
            f.write(base64.b64encode(token) + b" " + str(rank).encode() + b"\n")


def load_ranks(path: str) -> dict[bytes, int]:
    """Read a ranks file written by `save_ranks` or tiktoken, and check that tiktoken can use it.

    Raises:
        ValueError: a line is not `<base64> <int>`, a token or rank repeats, the ranks are not
            0..n-1, or a single byte is missing (tiktoken would crash on text that contains it).
    """
    with open(path, "rb") as f:
        lines = [line for line in f.read().splitlines() if line]
    ranks = {}
    for number, line in enumerate(lines, 1):
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error) as err:
            raise ValueError(f"line {number} is not '<base64 token> "
                             f"<rank>': {line[:60]!r}") from err
    if len(ranks) != len(lines) or sorted(ranks.values()) != list(range(len(lines))):
        raise ValueError(f"the {len(lines)} lines do not hold distinct tokens with ranks "
                         f"0..{len(lines) - 1}")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ValueError(f"{len(missing)} of the 256 single bytes have no rank "
                         f"(first: {missing[0]})")
    return ranks


@functools.lru_cache(maxsize=None)
def _file_encoding(path: str) -> tiktoken.Encoding:
    """The encoding of the ranks file at absolute `path` (built once per path and process)."""
    try:
        ranks = load_ranks(path)
    except (OSError, ValueError) as err:
        raise TokenizerUnavailableError(
            f"could not load the BPE ranks file {path}: {type(err).__name__}: {err}. "
                                        "Regenerate it (for the "
            "sentiment task: python -m sentiment.tokenizer) or use get_tokenizer(\"bytes\")."
        ) from err
    name = os.path.splitext(os.path.basename(path))[0]
    return tiktoken.Encoding(name=name, pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: len(ranks)})


@functools.lru_cache(maxsize=None)
def _hf_encoding(path: str) -> tiktoken.Encoding:
    """The Hugging Face tokenizer at absolute `path` (built once per path and process)."""
    try:
        return load_hf_tokenizer(path)
    except (OSError, ValueError) as err:  # the messages name the file
        raise TokenizerUnavailableError(str(err)) from err


# the named tokenizers; any other is the path of a .tiktoken ranks file or a Hugging Face tokenizer
TOKENIZER_NAMES = ("bytes", "gpt2")


def is_hf_tokenizer_path(name: str) -> bool:
    """True when `name` is to be read as a Hugging Face tokenizer: a directory, or a file named
    tokenizer.json (existing or not)."""
    return name not in TOKENIZER_NAMES and (os.path.isdir(name)
                                            or os.path.basename(name) == "tokenizer.json")


def get_tokenizer(name: str) -> tiktoken.Encoding:
    """Return the tokenizer `name`: "gpt2" (tiktoken's GPT-2 BPE), "bytes" (offline byte-level),
    the path of a BPE ranks file ending in ".tiktoken" (offline; GPT-2's split pattern), or a
    Hugging Face tokenizer: a checkpoint directory holding tokenizer.json, or that file (offline;
    data.hf_tokenizer.HFEncoding, a tiktoken.Encoding). Files are read once per absolute
    path.

    The end-of-sequence id is `enc.eot_token`: 50256 for "gpt2", 256 for "bytes", the number of
    ranks in the file (the last id) for a .tiktoken file, the checkpoint's EOS for a Hugging Face
    tokenizer.

    Raises:
        ValueError: `name` is none of these.
        TokenizerUnavailableError: "gpt2" was asked for but tiktoken could not download its
            vocabulary (the message says how to fix it: a filled TIKTOKEN_CACHE_DIR, or the "bytes"
            tokenizer); or the
            .tiktoken file is missing or is not a valid ranks file (the message names the path); or
            the Hugging Face tokenizer is missing or not supported (the message names the file and
            the key).
    """
    if name == "bytes":
        return byte_encoding()
    if name == "gpt2":
        try:
            return tiktoken.get_encoding("gpt2")
        # requests' ConnectionError, OSError, a hash mismatch, missing blobfile, ...
        except Exception as err:
            raise TokenizerUnavailableError(
                "could not load tiktoken's 'gpt2' encoding: tiktoken downloads its vocabulary "
                "(vocab.bpe and encoder.json) on first use and this failed "
                f"({type(err).__name__}: {err}). Either run once with a network so that "
                                            "tiktoken fills its "
                "cache, then point TIKTOKEN_CACHE_DIR at that cache directory when "
                                            "offline, or use the "
                "offline byte-level tokenizer: get_tokenizer(\"bytes\") (--tokenizer bytes)."
            ) from err
    if name.endswith(".tiktoken"):
        return _file_encoding(os.path.abspath(name))
    if is_hf_tokenizer_path(name):
        return _hf_encoding(os.path.abspath(name))
    raise ValueError(f"unknown tokenizer {name!r}; expected 'bytes', 'gpt2', the path of a "
                     ".tiktoken BPE ranks file, or a Hugging Face tokenizer (a directory holding "
                     "tokenizer.json, or that file)")


def tokenizer_description(enc: tiktoken.Encoding) -> dict:
    """What another program needs, besides the ranks, to rebuild `enc`: name, split pattern, n_vocab
    and the id of <|endoftext|> (for a .tiktoken file: tiktoken.Encoding(name, pat_str=...,
    mergeable_ranks= load_tiktoken_bpe(file), special_tokens={"<|endoftext|>": eot_token}))."""
    return {"name": enc.name, "pat_str": enc._pat_str, "n_vocab": enc.n_vocab,
            "eot_token": enc.eot_token}
