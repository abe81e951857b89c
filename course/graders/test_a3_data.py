"""Graded tests of Assignment 3: the data path (data.encoding.truncate_pair,
data.batches.collate_responses, dpo.concatenated_logps).

Literal worked examples (from the modules' docstrings, derived by hand), properties of the
truncation policy and of the collate layout (hypothesis), and the concatenated forward against two
separate forwards scored by logprob_kernels.naive (the naive log-prob reference, which is not part
of the assignment). 23 points.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import data
import dpo
import logprob_kernels
from data.encoding import truncate_pair
from logprob_kernels.naive import naive_sequence_logprobs
from model import GPT, GPTConfig

SETTINGS = settings(derandomize=True, deadline=None, max_examples=60)
IGNORE = -100


# --------------------------------------------------------------------------------------- truncation

@pytest.mark.points(2)
def test_truncation_worked_example():
    """data/encoding.py's docstring: max_length 8, max_prompt_length 3."""
    prompt, chosen, rejected = ([72, 101, 108, 108, 111],
                                [72, 105, 32, 116, 104, 101, 114, 101, 256], [110, 111, 256])
    assert truncate_pair(prompt, chosen, rejected, max_length=8, max_prompt_length=3) == (
        [108, 108, 111], [72, 105, 32, 116, 104], [110, 111, 256])


@pytest.mark.points(1)
def test_a_pair_that_fits_is_untouched():
    pair = ([1, 2, 3], [4, 5], [6, 7, 8])
    assert truncate_pair(*pair, max_length=6, max_prompt_length=2) == pair


ids = st.lists(st.integers(0, 300), min_size=1, max_size=40)


@pytest.mark.points(3)
@SETTINGS
@given(ids, ids, ids, st.integers(2, 60), st.integers(1, 30))
def test_truncation_properties(prompt, chosen, rejected, max_length, max_prompt_length):
    p, c, r = truncate_pair(prompt, chosen, rejected, max_length=max_length,
                            max_prompt_length=max_prompt_length)
    assert prompt[len(prompt) - len(p):] == p, "the prompt keeps its end"
    assert chosen[:len(c)] == c and rejected[:len(r)] == r, "the responses keep their starts"
    fits = len(prompt) + max(len(chosen), len(rejected)) <= max_length
    if fits:
        assert (p, c, r) == (prompt, chosen, rejected)
    else:
        assert len(p) == min(len(prompt), max_prompt_length), (
            "a too-long pair keeps max_prompt_length prompt tokens")
        assert len(p) + max(len(c), len(r)) <= max(max_length, len(p))
        if len(p) + max(len(chosen), len(rejected)) <= max_length:
            assert (c, r) == (chosen, rejected), (
                "responses are cut only when the cut prompt is not enough")


# ------------------------------------------------------------------------------------------ collate

@pytest.mark.points(3)
def test_collate_worked_example():
    """data/batches.py's docstring: prompt [5, 6], response [7, 8], pad 0 (one longer row sets T =
    5)."""
    batch = data.collate_responses([([5, 6], [7, 8]), ([1, 2, 3], [4, 9])], pad_id=0)
    assert torch.equal(batch["input_ids"], torch.tensor([[5, 6, 7, 8, 0], [1, 2, 3, 4, 9]]))
    assert torch.equal(batch["labels"],
                       torch.tensor([[6, 7, 8, IGNORE, IGNORE], [2, 3, 4, 9, IGNORE]]))
    assert torch.equal(batch["mask"], torch.tensor([[False, True, True, False, False],
                                                    [False, False, True, True, False]]))
    assert batch["input_ids"].dtype == torch.int64 and batch["mask"].dtype == torch.bool


rows = st.lists(st.tuples(ids, ids), min_size=1, max_size=6)


@pytest.mark.points(4)
@SETTINGS
@given(rows, st.integers(0, 300))
def test_collate_layout(rows, pad_id):
    batch = data.collate_responses(rows, pad_id)
    ids, labels, mask = (batch[k] for k in ("input_ids", "labels", "mask"))
    longest = max(len(a) + len(b) for a, b in rows)
    assert ids.shape == labels.shape == mask.shape == (len(rows), longest)
    for i, (prompt_ids, response_ids) in enumerate(rows):
        n = len(prompt_ids) + len(response_ids)
        assert ids[i, :n].tolist() == prompt_ids + response_ids and ids[i, n:].eq(pad_id).all()
        assert labels[i, :n - 1].tolist() == (prompt_ids + response_ids)[1:], \
            "labels[t] is the token after ids[t]"
        assert labels[i, n - 1:].eq(IGNORE).all()
        assert mask[i].nonzero().flatten().tolist() == list(range(len(prompt_ids) - 1, n - 1)), \
            "the mask marks exactly the positions whose label is a response token"
        assert labels[i][mask[i]].tolist() == response_ids


@pytest.mark.points(2)
def test_dpo_and_sft_collates_order_rows():
    pairs = [data.EncodedPair([1, 2], [3], [4, 5]), data.EncodedPair([6], [7, 8], [9])]
    batch = data.dpo_collate(pairs, pad_id=0)
    # chosen, rejected
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0], [6, 7, 8, 0], [1, 2, 4, 5], [6, 9, 0, 0]]
    assert batch["labels"][batch["mask"]].tolist() == [3, 7, 8, 4, 5, 9]
    sft = data.sft_collate(pairs, pad_id=0)
    assert sft["input_ids"].tolist() == [[1, 2, 3], [6, 7, 8]]


@pytest.mark.points(1)
def test_collate_rejects_rows_without_prompt_or_response():
    for bad in ([([], [1])], [([1], [])], []):
        with pytest.raises(ValueError):
            data.collate_responses(bad, pad_id=0)


# ------------------------------------------------------------------------------------------ forward

def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=32, vocab_size=50, n_layer=1, n_head=2, n_embd=16)).eval()


pair_lists = st.lists(st.tuples(st.lists(st.integers(0, 49), min_size=1, max_size=6),
                                st.lists(st.integers(0, 49), min_size=1, max_size=8),
                                st.lists(st.integers(0, 49), min_size=1, max_size=8)), min_size=1,
                      max_size=4)


@pytest.mark.points(5)
@settings(derandomize=True, deadline=None, max_examples=25)
@given(pair_lists)
def test_concatenated_forward_equals_two_separate_forwards(pairs):
    """One forward over 2B rows gives, row for row, what separate forwards of the chosen and
    rejected rows give."""
    model = tiny_gpt()
    encoded = [data.EncodedPair(*p) for p in pairs]
    with torch.no_grad():
        out = dpo.concatenated_logps(model, data.dpo_collate(encoded, pad_id=0), impl="torch")
        for name, index in (("chosen", 1), ("rejected", 2)):
            half = data.collate_responses([(p[0], p[index]) for p in pairs], pad_id=0)
            expected = naive_sequence_logprobs(model(half["input_ids"]), half["labels"],
                                               half["mask"])
            torch.testing.assert_close(getattr(out, name), expected, rtol=1e-5, atol=1e-5)
    assert out.chosen_tokens.tolist() == [len(p[1]) for p in pairs]
    assert out.rejected_tokens.tolist() == [len(p[2]) for p in pairs]
    assert out.chosen.dtype == torch.float32 and out.chosen_tokens.dtype == torch.int64


@pytest.fixture
def log_probs_by_the_specification(monkeypatch):
    """Log-probs through logprob_kernels/naive.py instead of the kernels: A3's grader must not need
    A2's backward (a student who has done only A3 gets full marks)."""
    monkeypatch.setattr(logprob_kernels, "sequence_logprobs",
                        lambda logits, labels, mask, **_: naive_sequence_logprobs(logits, labels,
                                                                                  mask))


@pytest.mark.points(2)
def test_concatenated_forward_is_differentiable_and_checks_its_batch(
        log_probs_by_the_specification):
    model = tiny_gpt().train()
    batch = data.dpo_collate([data.EncodedPair([1, 2], [3, 4], [5])], pad_id=0)
    out = dpo.concatenated_logps(model, batch, impl="torch")
    (out.chosen - out.rejected).sum().backward()
    assert model.transformer.wte.weight.grad is not None
    with pytest.raises((KeyError, ValueError)):
        dpo.concatenated_logps(model, {"input_ids": batch["input_ids"]})
    with pytest.raises(ValueError):
        dpo.concatenated_logps(model, {k: v[:1] for k, v in batch.items()})  # an odd number of rows
