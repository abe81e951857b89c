"""Hugging Face byte-level BPE tokenizers (a checkpoint's tokenizer.json) read into tiktoken.

BPE (Sennrich et al., 2016) starts from characters and applies learned merges of adjacent symbols;
byte-level BPE (Radford et al., 2019, GPT-2) starts from the 256 bytes of the UTF-8 text, so any
text can be encoded. GPT-2, SmolLM2, Llama 3 and Qwen2.5 ship such a tokenizer as a tokenizer.json
of the `tokenizers` library; `load_hf_tokenizer` reads it into a `tiktoken.Encoding` (an
`HFEncoding`) whose ids are the Hugging Face ids, so the data path stays as it is. What is read:

* model: "BPE" with its vocab (byte-level strings: GPT-2's map of the 256 bytes to printable
  characters) and its merges in order, as "a b" strings or [a, b] lists;
* pre_tokenizer: ByteLevel with use_regex (GPT-2's pattern, as `tokenizers` writes it); Split with a
  Regex (behavior Isolated; the text between matches kept as pieces, as Hugging Face does; a pattern
  that matches the empty string is an error) then ByteLevel without regex (Llama 3, Qwen2);
  Digits(individual_digits) then ByteLevel with regex (SmolLM2), as one pattern: each digit alone,
  GPT-2's pattern between;
* normalizer: none, or a Unicode normal form (Qwen2's NFC), applied to the text between added
  tokens, as Hugging Face does;
* added_tokens: the special ones and the others, all in tiktoken's `special_tokens`. As in Hugging
  Face, an added token that is not special is matched in any text (`encode_ordinary` included); a
  special one only when allowed (`encode(text, allowed_special=...)`): `encode_ordinary` equals
  Hugging Face's `encode(text, add_special_tokens=False)` with `split_special_tokens=True`.

Where the two algorithms could disagree. tiktoken merges the adjacent pair whose concatenation has
the lowest rank (its rank is the id), Hugging Face the pair listed first among the merges. The
loader checks that they agree for the file, and raises `TokenizerFileError` naming the file and the
first offending merge or token otherwise:
1. every merge's parts and result have ids, and the results' ids never decrease along the merges
   (so the two orders are the same; files made by `tokenizers`' trainer, and by transformers'
   conversion of tiktoken vocabularies, which lists every split of a token, hold this);
2. every token is what BPE makes of its own bytes under the merges (then a pair tiktoken could merge
   is always a listed merge), unless neither algorithm can make it and the model has
   `ignore_merges`, where both take it only as a whole piece of text. About 1.5 s per 100,000
   tokens of pure Python, once per file and process.
A file that fails 1 could be remapped (tiktoken ranks in merge order, ids translated on the way in
and out), but every encode and decode method would then need the translation, and no file made by
either library's tools needs it: it is an error instead. Left: a token listed with several merges
(Llama 3) where two of its splits overlap in one piece ties differently (tiktoken takes the
leftmost, Hugging Face the first listed); and characters that the libraries' Unicode tables, of
different versions, see differently: U+16FF4, a digit since Unicode 16, is one to Hugging Face's
Digits and not to tiktoken's regex; U+0D3C (Unicode 10) combines under Python's NFC, not under
Hugging Face's. Characters that Unicode 3.2 already had are encoded alike (the tests' range).

The single bytes that cannot occur in UTF-8 (0xC0, 0xC1, 0xF5-0xFF) may be absent from the vocab.
Another absent byte (a vocabulary trained with a restricted alphabet) is dropped silently by Hugging
Face; here encoding a text that needs it raises ValueError naming the character.

EOS, BOS and pad ids are read from the files beside tokenizer.json, in the order
`SPECIAL_TOKEN_FILES`: tokenizer_config.json's eos_token (what transformers'
`tokenizer.eos_token_id` and TRL use), special_tokens_map.json's (older checkpoints), then
generation_config.json's and config.json's eos_token_id (the first of a list). The first file that
has the key decides; a null there means none. A checkpoint without an EOS is an error: the data path
ends every response with it (`eot_token`).

Left out: sentencepiece-style tokenizers (Metaspace, byte fallback: TinyLlama, Llama 2), WordPiece
and Unigram models, add_prefix_space, added tokens with lstrip/rstrip/single_word, and the
post-processor (the BOS that `add_special_tokens=True` would add: a chat template writes its own).
"""

import functools
import json
import os
import re
import sys
import unicodedata

import regex  # tiktoken's own dependency, for its Python-side patterns
import tiktoken

# The pattern of `tokenizers`' ByteLevel pre-tokenizer (use_regex), GPT-2's original one.
HF_GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Digits(individual_digits) then ByteLevel(use_regex) as one pattern: a digit alone, else GPT-2's
# pattern on the stretch between digits, where a digit ends the stretch as the end of text does.
DIGITS_THEN_GPT2_PATTERN = (r"""\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+"""
                            r"""|\s+(?![^\s\p{N}])|\s+""")
NORMAL_FORMS = ("NFC", "NFD", "NFKC", "NFKD")
# Bytes that no UTF-8 text contains: a vocabulary may lack them.
NOT_IN_UTF8 = frozenset([0xC0, 0xC1, *range(0xF5, 0x100)])
UNRANKED = sys.maxsize  # the rank of a pair that does not merge
# Text that every supported tokenizer encodes and decodes back (plain ASCII: no normal form changes
# it, and every vocabulary has its bytes).
PROBE = "Hi there, it's 2024!\n\n  x\t= [1, 22, 333];  "
# Where an EOS, BOS or pad token is looked for, in order: file, key ("{}" = eos, bos or pad).
SPECIAL_TOKEN_FILES = (("tokenizer_config.json", "{}_token"),
                       ("special_tokens_map.json", "{}_token"),
                       ("generation_config.json", "{}_token_id"),
                       ("config.json", "{}_token_id"))


def _byte_characters() -> dict[int, str]:
    """GPT-2's map of the 256 bytes to printable characters (its encoder.py `bytes_to_unicode`):
    printable Latin-1 bytes stand for themselves, the others for chr(256 + n) in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


BYTE_CHARACTER = _byte_characters()
CHARACTER_BYTE = {character: b for b, character in BYTE_CHARACTER.items()}


class TokenizerFileError(ValueError):
    """A tokenizer.json (or a file beside it) that cannot be read into tiktoken exactly; the
    message names the file and the key, merge or token at fault."""


def read_json(path: str) -> dict | None:
    """The JSON object in `path`, or None when there is no such file. Raises TokenizerFileError for
    a file that is not a JSON object."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (ValueError, OSError) as err:
        raise TokenizerFileError(f"{path}: not readable JSON ({err})") from err
    if not isinstance(value, dict):
        raise TokenizerFileError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


@functools.lru_cache(maxsize=64)
def literal_regex(tokens: frozenset[str]) -> re.Pattern:
    """A regex that finds any of `tokens` as literal text, the longest first at a position (the
    leftmost-longest match of Hugging Face's added vocabulary); one capturing group (re.split)."""
    return re.compile("(" + "|".join(map(re.escape, sorted(tokens, key=len, reverse=True))) + ")")


class HFEncoding(tiktoken.Encoding):
    """A `tiktoken.Encoding` read from a Hugging Face tokenizer.json by `load_hf_tokenizer`: the
    same ids as Hugging Face, the checkpoint's EOS as `eot_token`, the same interface otherwise.

    Attributes beyond tiktoken's: path (str, the tokenizer.json), eot_token (int, the EOS),
    bos_token and pad_token (int | None), special_token_texts (dict[str, str]: "eos_token",
    "bos_token", "pad_token" -> the token's text, the names chat templates use),
    special_token_sources (dict[str, str]: "eos_token" -> "tokenizer_config.json eos_token", ...).
    `encode_ordinary` is tiktoken's own unless the file needs a pass in Python (a normal form,
    added tokens that are not special, absent bytes); `encode` splits at the allowed special tokens
    in Python, the longest first where two start together, as Hugging Face does.
    """

    def __init__(self, name: str, *, pat_str: str, mergeable_ranks: dict[bytes, int],
                 special_tokens: dict[str, int], path: str, special_ids: dict[str, int],
                 special_token_sources: dict[str, str], normal_form: str | None,
                 plain_added_tokens: frozenset[str], absent_bytes: frozenset[int]):
        super().__init__(name, pat_str=pat_str, mergeable_ranks=mergeable_ranks,
                         special_tokens=special_tokens)
        self.path = path
        self._eos = special_ids["eos_token"]
        self.bos_token = special_ids.get("bos_token")
        self.pad_token = special_ids.get("pad_token")
        self.special_token_texts = {key: self.decode(  # tiktoken's decode: bytes or a special
            [i]) for key, i in special_ids.items()}
        self.special_token_sources = special_token_sources
        self._normal_form = normal_form
        self._plain_added = plain_added_tokens  # added tokens that are not special
        self._absent_bytes = absent_bytes
        self._present_bytes = bytes(sorted(set(range(256)) - absent_bytes))
        self._in_python = bool(normal_form or plain_added_tokens or absent_bytes)

    @property
    def eot_token(self) -> int:
        """The checkpoint's EOS id (tiktoken's own reads "<|endoftext|>")."""
        return self._eos

    def __reduce__(self):  # pickled as its file: rebuilt in the other process
        return load_hf_tokenizer, (self.path,)

    def _pieces(self, text: str, added: frozenset[str]) -> list[int]:
        """`text` split at the added tokens in `added` (each its id), the text between normalized
        and byte-pair encoded; ValueError for a byte the vocabulary lacks."""
        ids, pieces = [], literal_regex(added).split(text) if added else [text]
        for i, piece in enumerate(pieces):
            if i % 2:
                ids.append(self._special_tokens[piece])
                continue
            if self._normal_form:
                piece = unicodedata.normalize(self._normal_form, piece)
            absent = self._absent_bytes and piece.encode("utf-8", "replace").translate(
                None, self._present_bytes)  # the bytes of `piece` that have no token
            if absent:
                character = next(c for c in piece if absent[0] in c.encode("utf-8", "replace"))
                raise ValueError(f"{character!r} needs byte 0x{absent[0]:02X}, which has no token "
                                 f"in {self.path} (Hugging Face would drop it silently)")
            ids += super().encode_ordinary(piece)
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of `text`, special tokens read as text (Hugging Face's split_special_tokens);
        added tokens that are not special are matched, as Hugging Face does. Returns list[int]."""
        if not self._in_python:
            return super().encode_ordinary(text)
        return self._pieces(text, self._plain_added)

    def encode(self, text: str, *, allowed_special=frozenset(), disallowed_special="all"
               ) -> list[int]:
        """tiktoken's `encode`: the special tokens in `allowed_special` ("all" or a set) are read as
        tokens; ValueError when text holds one of `disallowed_special`. Returns list[int]."""
        special = self.special_tokens_set - self._plain_added
        allowed = special if allowed_special == "all" else set(allowed_special)
        disallowed = special - allowed if disallowed_special == "all" else set(disallowed_special)
        if disallowed and (found := literal_regex(frozenset(disallowed)).search(text)):
            tiktoken.core.raise_disallowed_special_token(found.group())
        return self._pieces(text, frozenset(allowed) | self._plain_added)

    def encode_to_numpy(self, text, **kwargs):
        """tiktoken's, when the file needs no Python pass (see the class docstring)."""
        if self._in_python:
            raise NotImplementedError(f"{self.path}: encode_to_numpy skips the normal form, added "
                                      "tokens or byte check this file needs; use encode")
        return super().encode_to_numpy(text, **kwargs)

    def encode_with_unstable(self, text, **kwargs):
        """tiktoken's, when the file needs no Python pass (see the class docstring)."""
        if self._in_python:
            raise NotImplementedError(f"{self.path}: encode_with_unstable skips the normal form, "
                                      "added tokens or byte check this file needs; use encode")
        return super().encode_with_unstable(text, **kwargs)


# --------------------------------------------------------------------------------------------------
# tokenizer.json -> what tiktoken.Encoding takes


def _fail(file: str, message: str):
    raise TokenizerFileError(f"{file}: {message}")


def _steps(spec: dict | None, key: str) -> list[dict]:
    """The steps of a normalizer or pre-tokenizer `spec`: those of a Sequence (under `key`), the
    spec alone, or none (null)."""
    if not spec:
        return []
    return list(spec.get(key) or []) if spec.get("type") == "Sequence" else [spec]


def _normal_form(normalizer: dict | None, file: str) -> str | None:
    """None, or the Unicode normal form of `normalizer` (alone or a Sequence of one)."""
    kinds = [step.get("type") for step in _steps(normalizer, "normalizers")]
    if len(kinds) > 1 or (kinds and kinds[0] not in NORMAL_FORMS):
        _fail(file, f"normalizer {' + '.join(map(str, kinds))} is not supported (none, or one of "
                    f"{', '.join(NORMAL_FORMS)})")
    return kinds[0] if kinds else None


def _split_pattern(pre_tokenizer: dict | None, file: str) -> str:
    """The one regex (tiktoken's pat_str) that splits text as `pre_tokenizer` does."""
    steps = _steps(pre_tokenizer, "pretokenizers")
    kinds = [step.get("type") for step in steps]
    last = steps[-1] if kinds and kinds[-1] == "ByteLevel" else {}
    if last.get("add_prefix_space"):
        _fail(file, "pre_tokenizer ByteLevel add_prefix_space=true is not supported")
    use_regex = last.get("use_regex", True)
    if kinds == ["ByteLevel"] and use_regex:
        return HF_GPT2_PATTERN
    if kinds == ["Digits", "ByteLevel"] and use_regex and steps[0].get("individual_digits"):
        return DIGITS_THEN_GPT2_PATTERN
    if kinds == ["Split", "ByteLevel"] and not use_regex:
        split = steps[0]
        pattern = (split.get("pattern") or {}).get("Regex")
        if pattern is None or split.get("behavior") != "Isolated" or split.get("invert"):
            _fail(file, f"pre_tokenizer Split {split.get('pattern')} behavior "
                        f"{split.get('behavior')} invert {split.get('invert')} is not supported "
                        "(a Regex, Isolated, not inverted)")
        # tiktoken keeps only the matches; Hugging Face keeps the text between them as pieces too
        return f"(?:{pattern})|(?:(?!(?:{pattern}))[\\s\\S])+"
    _fail(file, f"pre_tokenizer {' + '.join(map(str, kinds)) or 'null'} (ByteLevel use_regex="
                f"{use_regex}) is not supported: byte-level BPE takes ByteLevel (GPT-2), Split "
                "Regex + ByteLevel (Llama 3, Qwen2) or Digits + ByteLevel (SmolLM2)")


def _added_tokens(entries: list, file: str) -> tuple[dict[str, int], frozenset[str]]:
    """(content -> id of every added token, the contents of those that are not special)."""
    tokens, plain = {}, set()
    for entry in entries:
        content = entry.get("content")
        flags = [flag for flag in ("single_word", "lstrip", "rstrip") if entry.get(flag)]
        if flags:
            _fail(file, f"added token {content!r} has {'='.join(flags)}=true: not supported")
        tokens[content] = entry["id"]
        if not entry.get("special"):
            plain.add(content)
    return tokens, frozenset(plain)


def _bpe(symbols: list[str], rank_of_pair) -> list[str]:
    """Merge the adjacent pair of lowest rank (the leftmost among equals) until none has a rank.
    rank_of_pair(left, right) -> int, UNRANKED for a pair that does not merge. Returns the symbols
    left."""
    ranks = [rank_of_pair(a, b) for a, b in zip(symbols, symbols[1:])]  # ranks[i]: pair i, i + 1
    while ranks and (best := min(ranks)) != UNRANKED:
        at = ranks.index(best)
        symbols[at:at + 2] = [symbols[at] + symbols[at + 1]]
        del ranks[at]  # the pairs on either side of the new symbol change
        if at > 0:
            ranks[at - 1] = rank_of_pair(symbols[at - 1], symbols[at])
        if at < len(ranks):
            ranks[at] = rank_of_pair(symbols[at], symbols[at + 1])
    return symbols


def _mergeable_ranks(model: dict, added: dict[str, int], file: str) -> dict[bytes, int]:
    """tiktoken's ranks (token bytes -> id) of the BPE `model`, after the checks of the module
    docstring."""
    if model.get("type") != "BPE":
        _fail(file, f"model.type {model.get('type')!r} is not supported (byte-level BPE only)")
    for key, unsupported in (("dropout", bool(model.get("dropout"))),
                             ("continuing_subword_prefix", bool(model.get(
                                 "continuing_subword_prefix"))),
                             ("end_of_word_suffix", bool(model.get("end_of_word_suffix"))),
                             ("byte_fallback", bool(model.get("byte_fallback")))):
        if unsupported:
            _fail(file, f"model.{key} {model[key]!r} is not supported (byte-level BPE has none)")
    if not isinstance(model.get("vocab"), dict) or not isinstance(model.get("merges"), list):
        _fail(file, "model.vocab (an object) or model.merges (a list) is missing")
    vocab = {token: i for token, i in model["vocab"].items() if token not in added}
    ranks = {}
    for token, i in vocab.items():
        try:
            ranks[bytes(CHARACTER_BYTE[c] for c in token)] = i
        except KeyError as err:
            _fail(file, f"model.vocab token {token!r} (id {i}) holds {err.args[0]!r}, which is "
                        "none of byte-level BPE's 256 byte characters (a sentencepiece "
                        "vocabulary?)")
    if len(set(ranks.values()) | set(added.values())) != len(ranks) + len(added):
        _fail(file, "two tokens share an id")
    merge_index, last_id = {}, -1
    for index, merge in enumerate(model["merges"]):
        parts = merge.split(" ") if isinstance(merge, str) else merge
        if len(parts) != 2:
            _fail(file, f"model.merges[{index}] {merge!r} is not a pair of tokens")
        left, right = parts
        for part in (left, right, left + right):
            if part not in vocab:
                _fail(file, f"model.merges[{index}] ({left!r} {right!r}): {part!r} has no id in "
                            "model.vocab")
        if vocab[left + right] < last_id:
            _fail(file, f"model.merges[{index}] ({left!r} {right!r} -> id {vocab[left + right]}) "
                        f"follows a merge whose result has id {last_id}: tiktoken merges in the "
                        "order of ids, Hugging Face in the order of merges; here they differ")
        last_id = vocab[left + right]
        merge_index.setdefault((left, right), index)
    for token, i in vocab.items():
        if len(token) < 2 or _bpe(list(token), lambda a, b: merge_index.get((a, b), UNRANKED)
                                  ) == [token]:
            continue
        tiktoken_made = _bpe(list(token), lambda a, b: vocab.get(a + b, UNRANKED)) == [token]
        if tiktoken_made or not model.get("ignore_merges"):
            _fail(file, f"model.vocab token {token!r} (id {i}) is not what the merges make of its "
                        f"bytes, but tiktoken {'would make it' if tiktoken_made else 'takes it'} "
                        "from a piece of text: the ids would differ")
    return ranks


def _special_ids(directory: str, token_id, file: str) -> tuple[dict[str, int], dict[str, str]]:
    """({"eos_token": id, "bos_token": id, "pad_token": id} for those the files give, where each was
    found): the first file of SPECIAL_TOKEN_FILES in `directory` that has the key decides, a null
    there meaning none (Qwen2.5's tokenizer_config.json has bos_token null, as transformers reads
    it, though its config.json names a bos_token_id)."""
    ids, sources = {}, {}
    configs = [(name, key, read_json(os.path.join(directory, name)) or {})
               for name, key in SPECIAL_TOKEN_FILES]
    for kind in ("eos", "bos", "pad"):
        for name, key, config in configs:
            if key.format(kind) not in config:
                continue
            value = config[key.format(kind)]
            value = value.get("content") if isinstance(value, dict) else value
            value = (value or [None])[0] if isinstance(value, list) else value  # the first id
            if value is not None:
                found = token_id(value)
                if found is None:
                    _fail(os.path.join(directory, name), f"{key.format(kind)} {value!r} is not a "
                                                         f"token of {file}")
                ids[f"{kind}_token"] = found
                sources[f"{kind}_token"] = f"{name} {key.format(kind)}"
            break
    if "eos_token" not in ids:
        _fail(directory, "no EOS token: none of " + ", ".join(
            f"{name} {key.format('eos')}" for name, key in SPECIAL_TOKEN_FILES) + " names one, and "
            "the data path ends every response with it")
    return ids, sources


def load_hf_tokenizer(path: str) -> HFEncoding:
    """Read the byte-level BPE tokenizer at `path` (a checkpoint directory holding tokenizer.json,
    or that file; the config files beside it) into an `HFEncoding` (module docstring).

    Returns HFEncoding: `encode_ordinary(text) -> list[int]` of Hugging Face's ids, `eot_token` the
    checkpoint's EOS, n_vocab = highest id + 1. Raises TokenizerFileError naming the file and key of
    what is not supported or not consistent; FileNotFoundError when there is no tokenizer.json.
    """
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    spec = read_json(file)
    if spec is None:
        raise FileNotFoundError(f"{path}: no tokenizer.json there (a Hugging Face tokenizer is a "
                                "checkpoint directory holding tokenizer.json, or that file)")
    model_type = (spec.get("model") or {}).get("type")
    if model_type != "BPE":  # first: a WordPiece or Unigram file fails on this, not on its parts
        _fail(file, f"model.type {model_type!r} is not supported (byte-level BPE only)")
    normal_form = _normal_form(spec.get("normalizer"), file)
    pat_str = _split_pattern(spec.get("pre_tokenizer"), file)
    if (spec.get("decoder") or {}).get("type", "ByteLevel") != "ByteLevel":
        _fail(file, f"decoder {spec['decoder'].get('type')!r} is not supported (ByteLevel)")
    added, plain_added = _added_tokens(spec.get("added_tokens") or [], file)
    if normal_form and any(unicodedata.normalize(normal_form, t) != t for t in added):
        _fail(file, f"an added token changes under the normalizer {normal_form}: not supported")
    ranks = _mergeable_ranks(spec.get("model") or {}, added, file)
    absent = frozenset(set(range(256)) - {t[0] for t in ranks if len(t) == 1}) - NOT_IN_UTF8
    ids = set(ranks.values()) | set(added.values())

    def token_id(value) -> int | None:
        """The id of a token named by its id or its text (None: not a token of the file)."""
        if isinstance(value, int) and not isinstance(value, bool):
            return value if value in ids else None
        if not isinstance(value, str):
            return None
        return added[value] if value in added else ranks.get(value.encode("utf-8"))

    special_ids, sources = _special_ids(os.path.dirname(os.path.abspath(file)), token_id, file)
    name = os.path.basename(os.path.dirname(os.path.abspath(file)))
    try:
        encoding = HFEncoding(name, pat_str=pat_str, mergeable_ranks=ranks, special_tokens=added,
                              path=file, special_ids=special_ids, special_token_sources=sources,
                              normal_form=normal_form, plain_added_tokens=plain_added,
                              absent_bytes=absent)
    except ValueError as err:  # tiktoken could not compile the split pattern
        raise TokenizerFileError(f"{file}: pre_tokenizer pattern {pat_str!r}: {err}") from err
    # tiktoken cannot encode an empty piece (its Rust code panics)
    try:
        empty = any(not match.group() for match in regex.finditer(pat_str, PROBE))
    except regex.error as err:
        raise TokenizerFileError(f"{file}: pre_tokenizer pattern {pat_str!r}: {err}") from err
    if empty:
        _fail(file, f"pre_tokenizer pattern {pat_str!r} matches the empty string: not supported")
    # tiktoken drops the text no match covers: none may be lost
    if encoding.decode(encoding.encode_ordinary(PROBE)) != PROBE:
        _fail(file, f"pre_tokenizer pattern {pat_str!r} loses text: "
                    f"{encoding.decode(encoding.encode_ordinary(PROBE))!r} from {PROBE!r}")
    return encoding
