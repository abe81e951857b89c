"""Tests for Hugging Face tokenizers read into tiktoken (data/hf_tokenizer.py) and chat templates on
conversational rows (data/chat_template.py).

Each tokenizer is trained here with the `tokenizers` library on a small corpus and saved to a
temporary directory, with the pre-tokenizers of the checkpoints the module names (GPT-2's
ByteLevel, Llama 3's and Qwen2's Split regex, SmolLM2's Digits + ByteLevel, Qwen2's NFC normalizer
and an added token that is not special); one more is transformers' conversion of a tiktoken
vocabulary (every split of a token listed as a merge, ignore_merges, as Llama 3's file). Our ids
are checked against `tokenizers` (and transformers' PreTrainedTokenizerFast) on Hypothesis strings
and fixed cases: `encode_ordinary` against Hugging Face with split_special_tokens (special tokens as
text), `encode(allowed_special="all")` against its default (special tokens as tokens).
"""

import copy
import json
import os
import pickle
import sys
import unicodedata

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    trainers,
)

import data
import train
from data.chat_template import _compiled
from data.tokenizer import load_ranks
from sentiment.tokenizer import TOKENIZER_FILE

# transformers' TikTokenConverter default: Llama 3's pattern; Qwen2's takes digits one at a time
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# the tokenizers' training text: a frozen copy of an earlier README (English prose, Markdown, code),
# so that editing the README does not change the tokenizers these tests train
CORPUS_FILE = os.path.join(os.path.dirname(__file__), "text_fixtures", "tokenizer_corpus.txt")
CORPUS = (open(CORPUS_FILE, encoding="utf-8").read().splitlines()
          + ["Ça va? Très bien, naïve café. 日本語のテキストです。 😀👍🏽 İstanbul ſ",
             "x = [1, 22, 333, 4444, 55555];\n\n\tif x:\r\n        return 'it''s'"] * 20)
# SmolLM2-Instruct's template, shortened: ChatML with a default system prompt
CHATML = ("{% for message in messages %}"
          "{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
          "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
          "{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def train_tokenizer(kind: str) -> Tokenizer:
    """A byte-level BPE of 700 tokens on CORPUS, with the pre-tokenizer of checkpoint `kind`."""
    if kind == "llama3_from_tiktoken":  # transformers' conversion of a tiktoken vocabulary
        from transformers.convert_slow_tokenizer import TikTokenConverter

        converter = TikTokenConverter(vocab_file=TOKENIZER_FILE, pattern=LLAMA3_PATTERN,
                                      extra_special_tokens=SPECIALS)
        converter.load_tiktoken_bpe = load_ranks  # our reader: tiktoken's caches files by path
        return converter.converted()
    tokenizer = Tokenizer(models.BPE())
    split = {"llama3": LLAMA3_PATTERN, "qwen2": QWEN2_PATTERN}.get(kind)
    if kind == "gpt2":
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    elif kind == "smollm2":
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False)])
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    if kind == "qwen2":
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=700, special_tokens=SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if kind == "qwen2":  # Qwen2.5's <tool_call> is an added token that is not special
        tokenizer.add_tokens([AddedToken("<tool_call>", special=False, normalized=False)])
    return tokenizer


KINDS = ("gpt2", "llama3", "qwen2", "smollm2", "llama3_from_tiktoken")


@pytest.fixture(scope="module")
def specs():
    """kind -> the tokenizer.json of that kind, as a dict."""
    return {kind: json.loads(train_tokenizer(kind).to_str()) for kind in KINDS}


def write_checkpoint(directory, spec, **configs):
    """Write tokenizer.json and the config files {"tokenizer_config": {...}, ...} into
    `directory`; returns its path as a string. Without configs: EOS <|im_end|>, ChatML."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    if not configs:
        configs = {"tokenizer_config": {"eos_token": "<|im_end|>", "chat_template": CHATML}}
    for name, config in configs.items():
        (directory / f"{name}.json").write_text(json.dumps(config), encoding="utf-8")
    return str(directory)


@pytest.fixture(scope="module")
def checkpoints(specs, tmp_path_factory):
    """kind -> (directory, our encoding, HF with special tokens as text, HF with them as tokens)."""
    out = {}
    for kind, spec in specs.items():
        directory = write_checkpoint(tmp_path_factory.mktemp(kind), spec)
        as_text = Tokenizer.from_str(json.dumps(spec))
        as_text.encode_special_tokens = True
        out[kind] = (directory, data.get_tokenizer(directory), as_text,
                     Tokenizer.from_str(json.dumps(spec)))
    return out


FRAGMENTS = ["   ", "\t", "\n", "\n\n\n", "\r\n", " \n ", "0", "12", "345", "2024", "123456", "é",
             "e\u0301", "naïve", "Ça", "日本語", "中文", "😀", "👍🏽", "'s", "'LL", " it's",
             "don't", "Hello", " world", ",", "!!", "...", "\u00a0", "\u3000", "\u2028", "ſ", "İ",
             "\x00", "<|im_end|>", "<|endoftext|>", "<tool_call>", "<|im_start|>user"]
# Characters Unicode 3.2 already had: newer ones may differ between the Unicode tables of Python,
# tiktoken and tokenizers (the module docstring's limit), which is not what these tests check.
OLD_CHARACTERS = st.characters(exclude_categories=("Cs",)).filter(
    lambda c: unicodedata.ucd_3_2_0.category(c) != "Cn")
PIECES = st.one_of(st.sampled_from(FRAGMENTS), st.text(OLD_CHARACTERS, max_size=3))
TEXTS = st.one_of(st.text(OLD_CHARACTERS, max_size=30), st.lists(PIECES, max_size=10).map("".join))
FIXED = ["", " ", "    leading", "trailing    ", "a  b   c\n\n\nd", "tabs\t\tand\r\n\r\nCRLF",
         "1234567890 12 3.14159", "café naïve résumé", "e\u0301 combining", "日本語のテキスト",
         "Emoji: 😀👍🏽🇺🇸 ❤️", "I'm sure they'll say it's fine, DON'T", "x<|im_end|>y",
         "<|endoftext|>", "a<tool_call>b", "\u00a0\u3000\u2028\u0085 odd spaces", "ſ İ K"]


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=200, deadline=None)
@given(text=TEXTS)
def test_same_ids_as_tokenizers(checkpoints, kind, text):
    _, enc, as_text, as_tokens = checkpoints[kind]
    assert enc.encode_ordinary(text) == as_text.encode(text, add_special_tokens=False).ids
    assert (enc.encode(text, allowed_special="all")
            == as_tokens.encode(text, add_special_tokens=False).ids)
    normal = unicodedata.normalize("NFC", text) if kind == "qwen2" else text  # Qwen2's NFC
    assert enc.decode(enc.encode_ordinary(text)) == normal


@pytest.mark.parametrize("kind", KINDS)
def test_fixed_cases_and_transformers(checkpoints, kind):
    from transformers import AutoTokenizer

    directory, enc, as_text, _ = checkpoints[kind]
    fast = AutoTokenizer.from_pretrained(directory, split_special_tokens=True)
    for text in FIXED:
        ids = enc.encode_ordinary(text)
        assert ids == as_text.encode(text, add_special_tokens=False).ids, text
        assert ids == fast(text, add_special_tokens=False)["input_ids"], text
    assert (enc.eot_token, enc.n_vocab) == (fast.eos_token_id, len(fast))


def test_special_tokens_are_text_to_encode_ordinary_and_tokens_when_allowed(checkpoints):
    _, enc, _, _ = checkpoints["qwen2"]
    im_end = enc.encode_single_token("<|im_end|>")
    tool_call = enc.encode_single_token("<tool_call>")
    ordinary = enc.encode_ordinary("a<|im_end|>b<tool_call>c")
    assert im_end not in ordinary and tool_call in ordinary  # as Hugging Face: added, not special
    assert im_end in enc.encode("a<|im_end|>b", allowed_special={"<|im_end|>"})
    with pytest.raises(ValueError, match="disallowed special token"):
        enc.encode("a<|im_end|>b")
    assert enc.encode("a<tool_call>b") == enc.encode_ordinary("a<tool_call>b")
    assert enc.encode_ordinary_batch(["a<tool_call>", "b"]) == [enc.encode_ordinary("a<tool_call>"),
                                                                 enc.encode_ordinary("b")]
    with pytest.raises(NotImplementedError, match="use encode"):
        enc.encode_to_numpy("a")


def test_converted_tiktoken_vocabulary_matches_tiktoken_itself(checkpoints):
    """Three implementations agree: the reviews' tiktoken ranks with Llama 3's pattern, Hugging
    Face's conversion of them (several merges a token, ignore_merges), and our reading of that."""
    _, enc, _, _ = checkpoints["llama3_from_tiktoken"]
    original = tiktoken.Encoding("reviews", pat_str=LLAMA3_PATTERN,
                                 mergeable_ranks=load_ranks(TOKENIZER_FILE), special_tokens={})
    for text in FIXED + CORPUS[:50]:
        assert enc.encode_ordinary(text) == original.encode_ordinary(text), text


def test_encoding_is_cached_pickled_and_described(checkpoints):
    directory, enc, _, _ = checkpoints["gpt2"]
    assert data.get_tokenizer(directory) is enc
    assert data.get_tokenizer(f"{directory}/tokenizer.json").encode_ordinary("Hi there") == (
        enc.encode_ordinary("Hi there"))
    copied = pickle.loads(pickle.dumps(enc))
    assert (copied.eot_token, copied.encode_ordinary("Hi 12")) == (enc.eot_token,
                                                                    enc.encode_ordinary("Hi 12"))
    assert data.tokenizer_description(enc)["eot_token"] == enc.encode_single_token("<|im_end|>")


# --------------------------------------------------------------------------------------------------
# EOS, BOS and pad from the checkpoint's files


def test_special_tokens_come_from_the_files_in_order(specs, tmp_path):
    spec = specs["gpt2"]
    endoftext, im_start, im_end = range(3)  # the trainer gives the special tokens ids 0, 1, 2
    first = data.load_hf_tokenizer(write_checkpoint(
        tmp_path / "a", spec, tokenizer_config={"eos_token": {"content": "<|im_end|>"},
                                                "bos_token": "<|im_start|>"},
        generation_config={"eos_token_id": [endoftext], "pad_token_id": endoftext}))
    assert (first.eot_token, first.bos_token, first.pad_token) == (im_end, im_start, endoftext)
    assert first.special_token_sources == {"eos_token": "tokenizer_config.json eos_token",
                                           "bos_token": "tokenizer_config.json bos_token",
                                           "pad_token": "generation_config.json pad_token_id"}
    assert first.special_token_texts["eos_token"] == "<|im_end|>"
    second = data.load_hf_tokenizer(write_checkpoint(
        tmp_path / "b", spec, generation_config={"eos_token_id": [im_end, endoftext]},
        config={"eos_token_id": endoftext, "bos_token_id": im_start}))
    assert (second.eot_token, second.bos_token, second.pad_token) == (im_end, im_start, None)
    third = data.load_hf_tokenizer(write_checkpoint(tmp_path / "c", spec,
                                                    config={"eos_token_id": endoftext}))
    assert third.eot_token == endoftext and third.special_token_sources == {
        "eos_token": "config.json eos_token_id"}
    qwen_like = data.load_hf_tokenizer(write_checkpoint(  # a null decides: no BOS
        tmp_path / "d", spec, tokenizer_config={"eos_token": "<|im_end|>", "bos_token": None},
        config={"bos_token_id": endoftext}))
    assert qwen_like.bos_token is None and "bos_token" not in qwen_like.special_token_texts


def test_missing_or_unknown_eos_names_the_files(specs, tmp_path):
    with pytest.raises(data.TokenizerFileError, match="no EOS token: none of tokenizer_config"):
        data.load_hf_tokenizer(write_checkpoint(tmp_path / "a", specs["gpt2"], config={}))
    with pytest.raises(data.TokenizerFileError,
                       match=r"tokenizer_config.json: eos_token '</s>' is not a token of"):
        data.load_hf_tokenizer(write_checkpoint(tmp_path / "b", specs["gpt2"],
                                                tokenizer_config={"eos_token": "</s>"}))


# --------------------------------------------------------------------------------------------------
# Files that tiktoken cannot read exactly: one-line errors naming the file and the key


def edited(spec, path, value):
    """A deep copy of `spec` with the key at `path` (a tuple of keys) set to `value`."""
    spec = copy.deepcopy(spec)
    target = spec
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return spec


METASPACE = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
UNSUPPORTED = [
    (("model", "type"), "Unigram", "model.type 'Unigram' is not supported"),
    (("model", "type"), "WordPiece", "model.type 'WordPiece' is not supported"),
    (("model", "byte_fallback"), True, "model.byte_fallback True is not supported"),
    (("pre_tokenizer",), METASPACE, "pre_tokenizer Metaspace"),
    (("pre_tokenizer",), None, "pre_tokenizer null"),
    (("pre_tokenizer", "add_prefix_space"), True, "add_prefix_space=true is not supported"),
    (("normalizer",), {"type": "Lowercase"}, "normalizer Lowercase is not supported"),
    (("decoder",), {"type": "Metaspace"}, "decoder 'Metaspace' is not supported"),
    (("added_tokens", 0, "lstrip"), True, "added token '<|endoftext|>' has lstrip=true"),
    (("model", "vocab", "▁the"), 699, "holds '▁', which is none of byte-level BPE's"),
]


@pytest.mark.parametrize("path, value, message", UNSUPPORTED,
                         ids=[m.split(" is")[0].split(" has")[0] for _, _, m in UNSUPPORTED])
def test_unsupported_files_are_one_line_errors(specs, tmp_path, path, value, message):
    directory = write_checkpoint(tmp_path, edited(specs["gpt2"], path, value))
    with pytest.raises(data.TokenizerUnavailableError) as info:
        data.get_tokenizer(directory)
    assert message in str(info.value) and f"{directory}/tokenizer.json" in str(info.value)
    assert "\n" not in str(info.value)


def test_merges_out_of_id_order_name_the_first_offending_merge(specs, tmp_path):
    merges = copy.deepcopy(specs["gpt2"]["model"]["merges"])
    merges[10], merges[11] = merges[11], merges[10]
    directory = write_checkpoint(tmp_path, edited(specs["gpt2"], ("model", "merges"), merges))
    with pytest.raises(data.TokenizerFileError,
                       match=r"model.merges\[11\] .* follows a merge whose result has id"):
        data.load_hf_tokenizer(directory)


def test_split_patterns_keep_the_text_between_matches_and_lose_none(specs, tmp_path):
    """Hugging Face keeps the text between a Split pattern's matches as pieces; tiktoken keeps only
    matches, so the pattern is given an alternative for that text. A pattern that matches the empty
    string would still lose text: an error."""
    path = ("pre_tokenizer", "pretokenizers", 0, "pattern", "Regex")
    spec = edited(specs["llama3"], path, r"\p{L}+| ?\p{N}")
    enc = data.load_hf_tokenizer(write_checkpoint(tmp_path / "a", spec))
    hf = Tokenizer.from_str(json.dumps(spec))
    hf.encode_special_tokens = True
    for text in FIXED + ["!!?? ...", "a-b_c", "  12  "]:
        assert enc.encode_ordinary(text) == hf.encode(text, add_special_tokens=False).ids, text
    with pytest.raises(data.TokenizerFileError, match=r"pattern .* matches the empty string"):
        data.load_hf_tokenizer(write_checkpoint(tmp_path / "b", edited(spec, path, r"\p{L}*")))


def test_merges_in_both_forms_are_read(specs, tmp_path):
    as_strings = [" ".join(pair) for pair in specs["gpt2"]["model"]["merges"]]
    directory = write_checkpoint(tmp_path, edited(specs["gpt2"], ("model", "merges"), as_strings))
    text = "I'm sure they'll say it's fine"
    assert data.load_hf_tokenizer(directory).encode_ordinary(text) == Tokenizer.from_file(
        f"{directory}/tokenizer.json").encode(text, add_special_tokens=False).ids


def test_tokens_no_merge_makes(specs, tmp_path):
    """"QZ" (a pair tiktoken would merge, no listed merge makes it) is an error; "QZX" (neither
    makes it) is one too, unless ignore_merges: then both take it only as a whole piece."""
    spec = edited(specs["gpt2"], ("model", "vocab", "QZ"), 700)
    with pytest.raises(data.TokenizerFileError, match="'QZ' .* tiktoken would make it"):
        data.load_hf_tokenizer(write_checkpoint(tmp_path / "a", spec))
    spec = edited(specs["gpt2"], ("model", "vocab", "QZX"), 700)
    with pytest.raises(data.TokenizerFileError, match="'QZX' .* tiktoken takes it"):
        data.load_hf_tokenizer(write_checkpoint(tmp_path / "b", spec))
    spec = edited(spec, ("model", "ignore_merges"), True)
    enc = data.load_hf_tokenizer(write_checkpoint(tmp_path / "c", spec))
    hf = Tokenizer.from_str(json.dumps(spec))
    for text in ("QZX", " QZX", "QZXQZX", "aQZX"):
        assert enc.encode_ordinary(text) == hf.encode(text, add_special_tokens=False).ids
    assert 700 in enc.encode_ordinary("QZX")


def test_absent_bytes(specs, tmp_path):
    """A byte UTF-8 never uses may be absent; another is an error where Hugging Face drops it."""
    vocab = {token: i for token, i in specs["gpt2"]["model"]["vocab"].items()
             if token not in (data.hf_tokenizer.BYTE_CHARACTER[0xFF],
                              data.hf_tokenizer.BYTE_CHARACTER[0x01])}
    directory = write_checkpoint(tmp_path, edited(specs["gpt2"], ("model", "vocab"), vocab))
    enc = data.load_hf_tokenizer(directory)
    assert enc.decode(enc.encode_ordinary("ÿ é 😀")) == "ÿ é 😀"
    with pytest.raises(ValueError, match=r"'\\x01' needs byte 0x01, which has no token"):
        enc.encode_ordinary("a\x01b")
    assert len(Tokenizer.from_file(f"{directory}/tokenizer.json").encode(
        "a\x01b", add_special_tokens=False).ids) == 2  # Hugging Face: the byte is gone


def test_config_accepts_checkpoint_directories(checkpoints, tmp_path):
    from plumbing.config import ConfigError, check_config, command_config

    directory = checkpoints["gpt2"][0]
    prefs = tmp_path / "p.jsonl"
    prefs.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    check_config("sft", command_config("sft", data=str(prefs), tokenizer=directory))
    check_config("sft", command_config("sft", data=str(prefs), tokenizer=f"{directory}/tokenizer."
                                                                           "json"))
    (tmp_path / "reviews.json").write_text("{}")
    for value, message in ((str(tmp_path / "no/tokenizer.json"), "no such file or directory"),
                           (str(tmp_path / "reviews.json"), "a Hugging Face checkpoint directory")):
        with pytest.raises(ConfigError, match=message):
            check_config("sft", command_config("sft", data=str(prefs), tokenizer=value))
    with pytest.raises(ConfigError, match="--chat-template 'x.jinja': must be auto, hh or"):
        check_config("sft", command_config("sft", data=str(prefs), chat_template="x.jinja"))


# --------------------------------------------------------------------------------------------------
# Chat templates on conversational rows


def conversation(user="Hi there", chosen="Hello!", rejected="Go away.", system=None):
    prompt = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}]
    return {"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def write_rows(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def encode_rows(rows, enc, template, tmp_path, **kwargs):
    records = data.load_preferences(write_rows(tmp_path / "rows.jsonl", rows), **kwargs)
    return data.encode_preferences(records, enc, max_length=400, max_prompt_length=200,
                                   chat_template=template)


# Llama 3's template, shortened, with this file's special tokens: BOS first, the header in the
# prompt, the turn ends with the EOS and nothing after it
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '<|im_end|>\n\n' + message['content'] | trim "
    "+ '<|endoftext|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_end|>\n\n' }}{% endif %}")
TEMPLATES = {  # kind -> (tokenizer_config.json, the chosen response's text, what follows it)
    "qwen2": ({"eos_token": "<|im_end|>", "chat_template": CHATML}, "It is 4.<|im_end|>", "\n"),
    "llama3_from_tiktoken": ({"eos_token": "<|endoftext|>", "bos_token": "<|im_start|>",
                              "chat_template": LLAMA3_TEMPLATE}, "It is 4.<|endoftext|>", ""),
}


@pytest.mark.parametrize("kind", TEMPLATES)
def test_chat_template_masks_the_assistants_turn_as_transformers_renders_it(specs, kind,
                                                                             tmp_path):
    from transformers import AutoTokenizer

    config, chosen_text, after = TEMPLATES[kind]
    directory = write_checkpoint(tmp_path / kind, specs[kind], tokenizer_config=config)
    enc = data.load_hf_tokenizer(directory)
    template = data.resolve_chat_template("auto", enc)
    assert template.source == f"{directory}/tokenizer_config.json (chat_template)"
    row = conversation(user="What is 2 + 2?", chosen="It is 4.", rejected="No idea.")
    (pair,) = encode_rows([row], enc, template, tmp_path)
    assert enc.decode(pair.chosen_ids) == chosen_text  # ends with the template's EOS, once
    assert pair.chosen_ids[-1] == enc.eot_token and pair.chosen_ids.count(enc.eot_token) == 1
    batch = data.dpo_collate([pair], pad_id=enc.eot_token)
    scored = batch["labels"][0][batch["mask"][0]].tolist()  # the loss sees the assistant's turn
    assert scored == pair.chosen_ids
    fast = AutoTokenizer.from_pretrained(directory)
    prompt = fast.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True,
                                      return_dict=False)
    full = fast.apply_chat_template(row["prompt"] + row["chosen"], tokenize=True,
                                    return_dict=False)
    assert pair.prompt_ids == prompt
    cut = len(pair.prompt_ids) + len(pair.chosen_ids)
    assert pair.prompt_ids + pair.chosen_ids == full[:cut] and fast.decode(full[cut:]) == after


def test_message_text_that_spells_a_special_token_stays_text(checkpoints, tmp_path):
    _, enc, _, _ = checkpoints["gpt2"]
    template = data.resolve_chat_template("auto", enc)
    (pair,) = encode_rows([conversation(user="say <|im_end|> please", chosen="<|im_start|>ok")],
                          enc, template, tmp_path)
    im_start = enc.encode_single_token("<|im_start|>")
    im_end = enc.encode_single_token("<|im_end|>")
    assert pair.prompt_ids.count(im_end) == 2  # the system and user turns' ends, not the content
    assert "say <|im_end|> please<|im_end|>" in enc.decode(pair.prompt_ids)
    assert im_start not in pair.chosen_ids
    assert enc.decode(pair.chosen_ids) == "<|im_start|>ok<|im_end|>"


def test_a_base_checkpoints_template_gets_the_eos_appended(specs, tmp_path):
    directory = write_checkpoint(tmp_path / "base", specs["gpt2"], tokenizer_config={
        "eos_token": "<|endoftext|>", "chat_template": CHATML})
    enc = data.load_hf_tokenizer(directory)
    (pair,) = encode_rows([conversation()], enc, data.resolve_chat_template("auto", enc), tmp_path)
    assert enc.decode(pair.chosen_ids) == "Hello!<|im_end|>\n<|endoftext|>"


def test_template_sources(specs, tmp_path):
    """chat_template.jinja wins over tokenizer_config.json, a list's "default" entry is taken, a
    file can be named, and "hh" (or a tokenizer without a template) keeps the HH text."""
    directory = write_checkpoint(tmp_path / "a", specs["gpt2"], tokenizer_config={
        "eos_token": "<|im_end|>", "chat_template": [{"name": "tool_use", "template": "x"},
                                                     {"name": "default", "template": CHATML}]})
    enc = data.load_hf_tokenizer(directory)
    assert data.find_chat_template(directory).source.endswith("(chat_template 'default')")
    (tmp_path / "a" / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    assert data.find_chat_template(directory).text == "{{ messages[0]['content'] }}"
    assert data.resolve_chat_template(str(tmp_path / "a" / "chat_template.jinja"), enc).source == (
        str(tmp_path / "a" / "chat_template.jinja"))
    generation = "{% generation %}{{ messages[0]['content'] }}{% endgeneration %}!"
    assert data.ChatTemplate(generation, "transformers' generation block").render(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=False, special_tokens={},
        where="row 0") == "Hi!"
    assert data.resolve_chat_template("hh", enc) is None
    assert data.resolve_chat_template("auto", data.get_tokenizer("bytes")) is None
    rows = [conversation(), conversation(user="Again?")]
    plain = encode_rows(rows, enc, None, tmp_path)
    assert plain == data.encode_preferences(  # byte for byte the HH text, as before
        [data.PreferenceRecord(r.prompt, r.chosen, r.rejected)
         for r in data.load_preferences(str(tmp_path / "rows.jsonl"))], enc, max_length=400,
        max_prompt_length=200)
    assert enc.decode(plain[0].prompt_ids) == "\n\nHuman: Hi there\n\nAssistant:"


BAD_TEMPLATES = [
    ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
     "{% endif %}" + CHATML, dict(system="Be brief."),
     "rows.jsonl, line 1: TemplateError: System role not supported"),
    ("{{ messages[0]['content'] | nosuchfilter }}", {}, "TemplateAssertionError: No filter"),
    ("{% if add_generation_prompt %}PROMPT{% endif %}" + CHATML, {},
     "rows.jsonl, line 1: the conversation renders as"),
    (CHATML.replace("<|im_end|>\n' }}{% endfor %}", "<|im_end|>\nmore' }}{% endfor %}"), {},
     "rows.jsonl, line 1: the response has '\\nmore' after its last EOS"),
    ("{% for m in messages %}{{ m['content'][:2] }}<|im_end|>{% endfor %}",
     dict(user="<|im_end|> x"), "line 1: the template cut into a message's special token text"),
]


@pytest.mark.parametrize("text, row, message", BAD_TEMPLATES,
                         ids=["raise_exception", "unknown filter", "not a prefix", "after EOS",
                              "cut placeholder"])
def test_templates_that_cannot_be_rendered_or_split_name_the_source_and_row(checkpoints, tmp_path,
                                                                          text, row, message):
    _, enc, _, _ = checkpoints["gpt2"]
    template_file = tmp_path / "bad.jinja"
    template_file.write_text(text)
    with pytest.raises(data.ChatTemplateError) as info:
        template = data.resolve_chat_template(str(template_file), enc)
        encode_rows([conversation(**row)], enc, template, tmp_path)
    assert message in str(info.value) and f"chat template {template_file}" in str(info.value)


def test_unpaired_examples_use_the_template(checkpoints, tmp_path):
    _, enc, _, _ = checkpoints["gpt2"]
    template = data.resolve_chat_template("auto", enc)
    path = write_rows(tmp_path / "rows.jsonl", [conversation(), conversation(user="Again?")])
    (pair, _) = data.encode_preferences(data.load_preferences(path), enc, max_length=400,
                                        max_prompt_length=200, chat_template=template)
    examples = data.encode_unpaired(data.load_unpaired(path), enc, max_length=400,
                                    max_prompt_length=200, chat_template=template)
    assert (examples[0].prompt_ids, examples[0].completion_ids) == (pair.prompt_ids,
                                                                    pair.chosen_ids)
    assert examples[1].completion_ids == pair.rejected_ids and not examples[1].desirable


def test_without_jinja_the_error_says_how_to_install_it(checkpoints, monkeypatch):
    _, enc, _, _ = checkpoints["gpt2"]
    monkeypatch.setitem(sys.modules, "jinja2", None)
    _compiled.cache_clear()
    with pytest.raises(ImportError, match=r'pip install -e "\.\[chat\]"'):
        data.resolve_chat_template("auto", enc)
    _compiled.cache_clear()


def test_sft_on_conversations_with_a_checkpoints_tokenizer(checkpoints, tmp_path, capsys):
    directory, enc, _, _ = checkpoints["gpt2"]
    rows = write_rows(tmp_path / "rows.jsonl", [conversation(user=f"Q{i}?", chosen=f"A{i}.")
                                                for i in range(12)])
    common = ["--data", rows, "--tokenizer", directory, "--steps", "1", "--batch-size", "2",
              "--n-layer", "1", "--n-head", "1", "--n-embd", "16", "--block-size", "64",
              "--eval-every", "1", "--device", "cpu"]
    assert train.main(["sft", "--out-dir", str(tmp_path / "sft"), *common]) == 0
    assert f"chat template {directory}/tokenizer_config.json" in capsys.readouterr().out
    assert train.main(["sft", "--out-dir", str(tmp_path / "hh"), "--chat-template", "hh",
                       *common]) == 0
    assert "the HH text template" in capsys.readouterr().out
