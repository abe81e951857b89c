"""Tests for BPE-file tokenizers (data.tokenizer) and the sentiment task's shipped vocabulary
(sentiment.tokenizer)."""

import pytest
import tiktoken
import tiktoken.load
from hypothesis import given
from hypothesis import strategies as st

import data
from data.tokenizer import GPT2_PATTERN, load_ranks, save_ranks, tokenizer_description
from sentiment.tokenizer import SETTINGS, TOKENIZER_FILE, train_reviews_bpe

ENC = data.get_tokenizer(TOKENIZER_FILE)
EOT_TEXT = "<|endoftext|>"
SAMPLE = ("I watched this film last night and the acting was really superb. Avoid it! 123 "
          "<|endoftext|> é")


def test_pattern_is_tiktokens_gpt2_pattern():
    from tiktoken_ext.openai_public import r50k_pat_str

    assert GPT2_PATTERN == r50k_pat_str


def test_file_tokenizer_vocabulary():
    ranks = load_ranks(TOKENIZER_FILE)
    assert ENC.name == "reviews_bpe"
    assert (ENC.n_vocab, ENC.eot_token) == (len(ranks) + 1, len(ranks))
    assert ENC.decode([ENC.eot_token]) == EOT_TEXT
    assert data.get_tokenizer(TOKENIZER_FILE) is ENC  # built once per absolute path


def test_shipped_ranks_are_consistent():
    ranks = load_ranks(TOKENIZER_FILE)
    assert len(ranks) == SETTINGS["vocab_size"]
    assert list(ranks.values()) == list(range(len(ranks)))  # file order = rank order, 0..n-1
    # the single bytes first, id = byte value
    assert list(ranks)[:256] == [bytes([b]) for b in range(256)]
    for token in list(ranks)[256:]:  # every merge joins two tokens that already had a (lower) rank
        assert any(token[:i] in ranks and token[i:] in ranks
                   and max(ranks[token[:i]], ranks[token[i:]]) <
                   ranks[token] for i in range(1, len(token)))


@given(st.text())
def test_file_tokenizer_round_trip(text):
    assert ENC.decode(ENC.encode_ordinary(text)) == text


def test_endoftext_literal_is_ordinary_text():
    ids = ENC.encode_ordinary(f"a{EOT_TEXT}b")
    assert ENC.eot_token not in ids and len(ids) > 1
    assert ENC.decode(ids) == f"a{EOT_TEXT}b"


@pytest.mark.parametrize("word", [" great", " awful", " film", " acting", " the", " wonderful",
                                  " terrible", " recommended", "I", "Yesterday"])
def test_corpus_words_are_single_tokens(word):
    assert len(ENC.encode_ordinary(word)) == 1


def test_missing_file_names_the_path(tmp_path):
    path = str(tmp_path / "absent.tiktoken")
    with pytest.raises(data.TokenizerUnavailableError, match="absent.tiktoken"):
        data.get_tokenizer(path)


@pytest.mark.parametrize("content", [b"not base64! 0\n", b"QQ== zero\n", b"QQ== 0 1\n", b"",
                                     b"QQ== 0\nQg== 0\n",  # repeated rank
                                     # ranks fine, but most single bytes missing
                                     b"QQ== 0\nQg== 1\n"])
def test_corrupt_file_names_the_path(tmp_path, content):
    path = tmp_path / "corrupt.tiktoken"
    path.write_bytes(content)
    with pytest.raises(data.TokenizerUnavailableError, match="corrupt.tiktoken") as info:
        data.get_tokenizer(str(path))
    assert isinstance(info.value.__cause__, ValueError)


def test_unknown_name_lists_the_accepted_ones():
    with pytest.raises(ValueError, match="unknown tokenizer") as info:
        data.get_tokenizer("reviews_bpe.json")
    assert all(word in str(info.value) for word in ("'bytes'", "'gpt2'", ".tiktoken"))


def test_description_rebuilds_the_same_encoding_with_tiktoken_alone(monkeypatch):
    description = tokenizer_description(ENC)
    assert description == {"name": "reviews_bpe", "pat_str": GPT2_PATTERN, "n_vocab": ENC.n_vocab,
                           "eot_token": ENC.eot_token}
    # "": tiktoken reads the file itself, no cached copy
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    rebuilt = tiktoken.Encoding(description["name"], pat_str=description["pat_str"],
                                mergeable_ranks=tiktoken.load.load_tiktoken_bpe(TOKENIZER_FILE),
                                special_tokens={EOT_TEXT: description["eot_token"]})
    assert rebuilt.n_vocab == description["n_vocab"]
    assert rebuilt.encode_ordinary(SAMPLE) == ENC.encode_ordinary(SAMPLE)
    assert tokenizer_description(data.get_tokenizer("bytes"))["eot_token"] == 256


def test_save_load_round_trip(tmp_path):
    ranks = {bytes([b]): b for b in range(256)} | {b"ab": 256, b" \xff": 257}
    save_ranks(ranks, str(tmp_path / "r.tiktoken"))
    assert load_ranks(str(tmp_path / "r.tiktoken")) == ranks


@pytest.mark.slow
def test_retraining_reproduces_the_shipped_file():
    # ~14 s: the educational trainer is pure Python. Same settings, same ranks, in the same order.
    assert list(train_reviews_bpe(**SETTINGS).items()) == list(load_ranks(TOKENIZER_FILE).items())


def test_too_large_vocab_is_a_clear_error():
    with pytest.raises(ValueError, match="more than"):
        train_reviews_bpe(vocab_size=10_000, n_bytes=200)
