"""Tests for data.tokenizer, data.encoding and data.batches: tokenization, truncation, masks and
labels."""

import pytest
import tiktoken
import torch
from hypothesis import given
from hypothesis import strategies as st

import data
from data.batches import IGNORE_INDEX
from logprob_kernels.naive import naive_sequence_logprobs

ENC = data.get_tokenizer("bytes")
EOS = ENC.eot_token
EOT_TEXT = "<|endoftext|>"

# ---------------------------------------------------------------------------------------- tokenizer


def test_byte_tokenizer_vocabulary():
    assert (ENC.n_vocab, EOS) == (257, 256)
    assert ENC.encode_ordinary("A é") == [65, 32, 0xC3, 0xA9]
    assert ENC.decode([72, 105, EOS]) == "Hi" + EOT_TEXT
    assert data.get_tokenizer("bytes") is ENC  # built once


@given(st.text())
def test_byte_tokenizer_round_trip_matches_utf8(text):
    ids = ENC.encode_ordinary(text)
    # independent implementation: the UTF-8 bytes themselves
    assert ids == list(text.encode("utf-8"))
    assert ENC.decode(ids) == text


def test_endoftext_literal_is_ordinary_text():
    text = f"a{EOT_TEXT}b"
    assert ENC.encode_ordinary(text) == list(text.encode())
    pairs = data.encode_preferences([data.PreferenceRecord(text, text + "!", "no")], ENC,
                                    max_length=64,
                                    max_prompt_length=32)
    assert EOS not in pairs[0].prompt_ids
    assert pairs[0].chosen_ids.count(EOS) == 1 and pairs[0].chosen_ids[-1] == EOS


def test_gpt2_unavailable_gives_clear_error(monkeypatch):
    # what tiktoken raises with no network (requests' ConnectionError is an OSError)
    def offline(name):
        raise OSError("Failed to resolve 'openaipublic.blob.core.windows.net'")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(data.TokenizerUnavailableError, match="TIKTOKEN_CACHE_DIR") as info:
        data.get_tokenizer("gpt2")
    assert '"bytes"' in str(info.value) and isinstance(info.value.__cause__, OSError)
    with pytest.raises(ValueError, match="unknown tokenizer"):
        data.get_tokenizer("gpt3")


# ------------------------------------------------------------------------------ encoding/truncation


def test_truncation_worked_example_from_docstring():
    record = data.PreferenceRecord("Hello", "Hi there", "no")
    (pair,), report = data.encode_preferences([record], ENC, max_length=8, max_prompt_length=3,
                                              return_report=True)
    assert pair.prompt_ids == [108, 108, 111]  # "llo"
    assert pair.chosen_ids == [72, 105, 32, 116, 104]  # "Hi th", EOS cut
    assert pair.rejected_ids == [110, 111, 256]  # "no" + EOS
    assert (report.prompt_truncated, report.responses_truncated, report.n_encoded) == (1, 1, 1)


def test_no_truncation_when_it_fits():
    (pair,) = data.encode_preferences([data.PreferenceRecord("Hello", "Hi", "no")], ENC,
                                      max_length=8,
                                      max_prompt_length=2)
    # 5 + 3 = 8
    assert pair == data.EncodedPair([72, 101, 108, 108, 111], [72, 105, EOS], [110, 111, EOS])


@given(prompt=st.lists(st.integers(0, 255), max_size=40),
       chosen=st.lists(st.integers(0, 255), min_size=1, max_size=40),
       rejected=st.lists(st.integers(0, 255), min_size=1, max_size=40),
       max_length=st.integers(2, 60),
       max_prompt_length=st.integers(1, 60))
def test_truncation_policy_properties(prompt, chosen, rejected, max_length, max_prompt_length):
    p, c, r = data.truncate_pair(prompt, chosen, rejected, max_length=max_length,
                                 max_prompt_length=max_prompt_length)
    longer = max(len(chosen), len(rejected))
    if len(prompt) + longer <= max_length:  # fits: nothing changes
        assert (p, c, r) == (prompt, chosen, rejected)
        return
    assert p == prompt[-max_prompt_length:] if prompt else p == []  # the LAST prompt tokens
    assert c == chosen[:len(c)] and r == rejected[:len(r)]  # the FIRST response tokens
    room = max_length - len(p)
    if len(p) + longer <= max_length:
        assert (c, r) == (chosen, rejected)  # prompt truncation was enough
    else:
        assert max(len(c), len(r)) == max(room, 0)  # responses cut exactly to fit
        assert len(c) == min(len(chosen), max(room, 0))
        assert len(r) == min(len(rejected), max(room, 0))
    if len(p) >= max_length:  # max_prompt_length >= max_length: the prompt alone fills the budget
        assert c == [] and r == []  # (encode_preferences then drops the pair and counts it)
    else:
        assert len(p) + len(c) <= max_length and len(p) + len(r) <= max_length


@given(prompt=st.text(max_size=30), chosen=st.text(max_size=30), rejected=st.text(max_size=30),
       max_length=st.integers(2, 80), max_prompt_length=st.integers(1, 80))
def test_encode_preferences_unicode(prompt, chosen, rejected, max_length, max_prompt_length):
    record = data.PreferenceRecord(prompt, chosen, rejected)
    pairs, report = data.encode_preferences([record], ENC, max_length=max_length,
                                            max_prompt_length=max_prompt_length, return_report=True)
    full_p = list(prompt.encode()) or [EOS]
    full_c, full_r = list(chosen.encode()) + [EOS], list(rejected.encode()) + [EOS]
    expect = data.truncate_pair(full_p, full_c, full_r, max_length=max_length,
                                max_prompt_length=max_prompt_length)
    assert report.n_records == 1 and report.empty_prompt_given_eos == (prompt == "")
    if not expect[1] or not expect[2] or expect[1] == expect[2]:
        assert pairs == [] and sum(report.dropped.values()) == 1
    else:
        assert pairs == [data.EncodedPair(*expect)] and not report.dropped


def test_encode_drops_and_counts():
    # prompt fills max_length: no response token left
    records = [data.PreferenceRecord("x" * 10, "a", "b"),
               # identical after truncation
               data.PreferenceRecord("p", "same start A", "same start B"),
               data.PreferenceRecord("", "yes", "no")]  # empty prompt -> [EOS]
    pairs, report = data.encode_preferences(records, ENC, max_length=6, max_prompt_length=6,
                                            return_report=True)
    assert pairs == [data.EncodedPair([EOS], list(b"yes") + [EOS], list(b"no") + [EOS])]
    assert report.dropped == {"no response token left after truncation": 1,
                              "chosen == rejected after tokenization/truncation": 1}
    assert report.empty_prompt_given_eos == 1
    with pytest.raises(ValueError, match="max_prompt_length"):
        data.encode_preferences(records, ENC, max_length=6, max_prompt_length=0)
    with pytest.raises(TypeError, match="max_length"):
        data.encode_preferences(records, ENC, max_length=6.0, max_prompt_length=2)


# ------------------------------------------------------------------------------------------ collate


def test_collate_worked_example_from_docstring():
    batch = data.sft_collate([data.EncodedPair([5, 6], [7, 8], [9, 8])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8]]  # T = longest row; no padding needed here
    batch = data.dpo_collate([data.EncodedPair([5, 6], [7, 8], [9, 10, 8])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 0], [5, 6, 9, 10, 8]]
    assert batch["labels"].tolist() == [[6, 7, 8, -100, -100], [6, 9, 10, 8, -100]]
    assert batch["mask"].tolist() == [[False, True, True, False, False],
                                      [False, True, True, True, False]]


token_lists = st.lists(st.integers(0, 256), min_size=1, max_size=12)
pair_lists = st.lists(st.builds(data.EncodedPair, token_lists, token_lists, token_lists),
                      min_size=1, max_size=5)


@given(pairs=pair_lists, pad_id=st.integers(0, 300))
def test_dpo_collate_marks_response_in_both_halves(pairs, pad_id):
    batch = data.dpo_collate(pairs, pad_id)
    B = len(pairs)
    input_ids, labels, mask = batch["input_ids"], batch["labels"], batch["mask"]
    T = max(len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) for p in pairs)
    assert input_ids.shape == labels.shape == mask.shape == (2 * B, T)
    assert (input_ids.dtype, labels.dtype, mask.dtype) == (torch.int64, torch.int64, torch.bool)
    for row in range(2 * B):
        pair = pairs[row % B]
        # the rejected half is masked too
        response = pair.chosen_ids if row < B else pair.rejected_ids
        seq = pair.prompt_ids + response
        L = len(seq)
        assert input_ids[row, :L].tolist() == seq and (input_ids[row, L:] == pad_id).all()
        assert labels[row, :L - 1].tolist() == seq[1:]  # labels are the inputs shifted by one
        assert (labels[row, L - 1:] == IGNORE_INDEX).all()
        assert labels[row][mask[row]].tolist() == response  # exactly the response tokens ...
        # ... at exactly these positions
        expected = [len(pair.prompt_ids) - 1 <= t < L - 1 for t in range(T)]
        assert mask[row].tolist() == expected


@given(texts=st.lists(st.tuples(st.text(min_size=1, max_size=15), st.text(max_size=15),
                                st.text(max_size=15)),
                      min_size=1, max_size=4))
def test_decoded_masked_labels_are_response_plus_eos(texts):
    records = [data.PreferenceRecord(*t) for t in texts]
    pairs = data.encode_preferences(records, ENC, max_length=200, max_prompt_length=100)
    kept = [r for r in records if r.chosen != r.rejected]
    B = len(pairs)
    assert B == len(kept)
    if not B:
        return
    batch = data.dpo_collate(pairs, pad_id=EOS)
    for row in range(2 * B):
        record = kept[row % B]
        response = record.chosen if row < B else record.rejected
        selected = batch["labels"][row][batch["mask"][row]].tolist()
        assert ENC.decode(selected) == response + EOT_TEXT


def test_sft_collate_is_the_chosen_half():
    pairs = [data.EncodedPair([1, 2, 3], [4], [5, 6]), data.EncodedPair([7], [8, 9, 10], [11])]
    sft, dpo_batch = data.sft_collate(pairs, 0), data.dpo_collate(pairs, 0)
    T = sft["input_ids"].shape[1]
    for key in ("input_ids", "labels", "mask"):
        assert torch.equal(sft[key], dpo_batch[key][:2, :T])
    with pytest.raises(ValueError, match="empty"):
        data.sft_collate([], 0)
    with pytest.raises(ValueError, match="response token"):
        data.dpo_collate([data.EncodedPair([1], [2], [])], 0)
    with pytest.raises(ValueError, match="prompt token"):
        data.dpo_collate([data.EncodedPair([], [2], [3])], 0)


def test_collate_logprobs_match_unpadded_model_rows():
    """Padded batch + pre-shifted labels + mask give the same log pi(y|x) as each row alone (tiny
    GPT)."""
    from model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=257, n_layer=1, n_head=2, n_embd=16)).eval()
    pairs = [data.EncodedPair([1, 2, 3], [4, 5, EOS], [6, EOS]),
             data.EncodedPair([7], [8, 9, 10, 11, EOS], [EOS])]
    batch = data.dpo_collate(pairs, pad_id=0)
    with torch.no_grad():
        # (4,)
        batched = naive_sequence_logprobs(model(batch["input_ids"]), batch["labels"], batch["mask"])
        expected = []
        for prompt, response in [(p.prompt_ids, p.chosen_ids) for p in pairs] + \
                                [(p.prompt_ids, p.rejected_ids) for p in pairs]:
            seq = torch.tensor([prompt + response])  # (1, L)
            logp = torch.log_softmax(model(seq)[0].double(), dim=-1)  # (L, V)
            expected.append(sum(logp[t - 1, seq[0, t]] for t in range(len(prompt), seq.shape[1])))
    torch.testing.assert_close(batched.double(), torch.stack(expected), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------- lm_batches


def test_lm_batches_windows_and_determinism():
    stream = torch.arange(1000)  # (N,) token i has value i, so a window's first token is its start
    batches = list(data.lm_batches(stream, 4, 16, generator=torch.Generator().manual_seed(3),
                                   num_batches=5))
    again = list(data.lm_batches(stream.tolist(), 4, 16, generator=torch.Generator().manual_seed(3),
                                 num_batches=5))
    assert len(batches) == 5
    for (x, y), (x2, y2) in zip(batches, again):
        assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
        assert torch.equal(x, x2) and torch.equal(y, y2)
        for row_x, row_y in zip(x, y):
            start = row_x[0].item()
            assert torch.equal(row_x, stream[start:start + 16])  # a contiguous window ...
            assert torch.equal(row_y, stream[start + 1:start + 17])  # ... and its next tokens
    other = next(data.lm_batches(stream, 4, 16, generator=torch.Generator().manual_seed(4)))
    assert not torch.equal(other[0], batches[0][0])
    endless = data.lm_batches(stream, 2, 8, generator=torch.Generator().manual_seed(0))
    assert all(next(endless)[0].shape == (2, 8) for _ in range(3))
    with pytest.raises(ValueError, match="block_size"):
        next(data.lm_batches(stream[:16], 2, 16, generator=torch.Generator()))
