"""Tests for the embedded sentiment task: review generator, prompts, VADER reward, preference-pair
building."""

import math
import statistics

import pytest
import torch

import data
import sentiment
from sentiment import reviews
from sentiment.fluency import words

ENC = data.get_tokenizer("bytes")
EOS = ENC.eot_token


def test_reviews_are_deterministic_per_seed_and_sized():
    assert reviews.make_reviews(50, seed=1) == reviews.make_reviews(50, seed=1)
    assert reviews.make_reviews(50, seed=1) != reviews.make_reviews(50, seed=2)
    corpus = reviews.make_corpus(100_000, seed=3)
    total = sum(len(r.text.encode()) for r in corpus)
    assert 100_000 <= total < 100_000 + 200
    for r in corpus:
        assert r.opening.endswith(" and") and r.body.startswith(" ") and r.sentiment in (-1, 0, 1)
        assert (40 <= len(r.body.encode()) <= 90 and len(r.opening.encode())
                <= reviews.MAX_OPENING_BYTES)
    assert len({r.text for r in corpus}) > 0.95 * len(corpus)  # real variety, not a few templates
    shares = [sum(r.sentiment == s for r in corpus) / len(corpus) for s in (1, -1, 0)]
    assert abs(shares[0] - shares[1]) < 0.01 and abs(shares[2] - 0.1) < 0.01  # blocks of 9 + 9 + 2


def test_vader_agrees_with_the_intended_sentiment():
    sample = reviews.make_reviews(1500, seed=4)
    stats = sentiment.corpus_statistics(sample)
    assert stats["positive"]["mean"] > 0.7 and stats["negative"]["mean"] < -0.7
    assert stats["positive"]["agreement"] > 0.97 and stats["negative"]["agreement"] > 0.97
    assert stats["neutral"]["agreement"] > 0.9
    overall = statistics.fmean(sentiment.sentiment_reward([r.body for r in sample]))
    assert abs(overall) < 0.1  # balanced: a base model's continuations should average near 0


def test_sentiment_reward_known_values():
    scores = sentiment.sentiment_reward(["the acting was great", "the plot was awful",
                                         "the plot was long", ""])
    assert scores[0] > 0.5 and scores[1] < -0.4 and scores[2] == 0.0 and scores[3] == 0.0
    # VADER's rules: negation flips, "but" shifts the weight to the clause after it
    (not_bad, contrast), = [sentiment.sentiment_reward(["it was not bad at all",
                                                        "the pacing was a little slow, but the "
                                                        "ending was great"])]
    assert not_bad > 0 and contrast > 0.5
    with pytest.raises(TypeError, match="list"):
        sentiment.sentiment_reward("great")


def test_corpus_tokens_is_reviews_separated_by_eos():
    stream = sentiment.corpus_tokens(ENC, n_bytes=20_000, seed=5)
    assert stream.dtype == torch.int64 and stream.dim() == 1
    texts = [r.text for r in reviews.make_corpus(20_000, seed=5)]
    assert int((stream == EOS).sum()) == len(texts) and stream[-1] == EOS
    pieces = ENC.decode(stream.tolist()).split("<|endoftext|>")
    assert pieces[:-1] == texts and pieces[-1] == ""
    assert torch.equal(stream, sentiment.corpus_tokens(ENC, n_bytes=20_000, seed=5))


def test_prompts_are_distinct_disjoint_and_neutral():
    train, held_out = reviews.make_prompts(n_train=300, n_heldout=100, seed=0)
    assert (len(train), len(held_out)) == (300, 100)
    assert len(set(train)) == 300 and len(set(held_out)) == 100 and not set(train) & set(held_out)
    assert (train, held_out) == reviews.make_prompts(n_train=300, n_heldout=100, seed=0)
    assert reviews.make_prompts(n_train=300, n_heldout=100, seed=1) != (train, held_out)
    assert all(score == 0.0 for score in sentiment.sentiment_reward(train + held_out))
    assert all(p.endswith(" and") and len(p.encode()) <= reviews.MAX_OPENING_BYTES for p in train
               + held_out)
    with pytest.raises(ValueError, match="distinct prompts"):
        reviews.make_prompts(n_train=10_000, n_heldout=10_000)


# ------------------------------------------------------------------------------------ pair building

CANNED = [" the acting was superb. I loved it.", " the plot was awful and the ending was horrible.",
          " the score was long.", " it was a great film!", " the sets were ugly"]


class StubModel(torch.nn.Module):
    """Samples one of CANNED per prompt from torch's global RNG, as GPT.complete samples with
    multinomial."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.calls = []

    def complete(self, prompts, max_new_tokens, temperature=1.0, top_k=None, eos_token=None,
                 batch_size=64):
        self.calls.append((len(prompts), self.training, batch_size))
        picks = torch.randint(len(CANNED), (len(prompts),)).tolist()
        out = [ENC.encode_ordinary(CANNED[i])[:max_new_tokens] for i in picks]
        return ([ids + [eos_token] if CANNED[i] != " the sets were ugly" else ids
                 for ids, i in zip(out, picks)])


def test_pairs_from_a_stub_model(tmp_path):
    model = StubModel().train()
    prompts = reviews.make_prompts(n_train=40, n_heldout=1, seed=0)[0]
    rng_before = torch.get_rng_state()
    records, report = sentiment.build_preference_pairs(model, ENC, prompts, k=3, min_reward_gap=0.5,
                                                       seed=7,
                                                       batch_size=16, path=tmp_path / "pairs.jsonl",
                                                       return_report=True)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is untouched
    assert model.training and model.calls == [(120, False, 16)]  # one batched call, in eval mode
    assert report.n_pairs == len(records) and report.n_pairs + report.n_dropped_small_gap == 40
    assert report.n_dropped_small_gap > 0 and report.n_without_eos > 0
    for record in records:
        assert record.prompt in prompts and record.chosen in CANNED and record.rejected in CANNED
        chosen, rejected = sentiment.sentiment_reward([record.chosen, record.rejected])
        assert chosen - rejected >= 0.5
    assert report.mean_chosen_reward > report.mean_rejected_reward
    # standard JSONL, read back as is
    assert data.load_preferences(tmp_path / "pairs.jsonl") == records
    again = sentiment.build_preference_pairs(StubModel(), ENC, prompts, k=3, min_reward_gap=0.5,
                                             seed=7)
    other = sentiment.build_preference_pairs(StubModel(), ENC, prompts, k=3, min_reward_gap=0.5,
                                             seed=8)
    assert again == records and other != records
    with pytest.raises(ValueError, match="k must be >= 2"):
        sentiment.build_preference_pairs(model, ENC, prompts, k=1)


def test_pairs_from_a_tiny_random_gpt(tmp_path):
    """The real GPT.complete interface: k samples per prompt, EOS handling, seeding, JSONL round
    trip."""
    from model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=96, vocab_size=ENC.n_vocab, n_layer=1, n_head=2, n_embd=16))
    prompts = reviews.make_prompts(n_train=6, n_heldout=2, seed=0)[0]
    path = tmp_path / "pairs.jsonl.gz"
    def n_bytes(texts):  # random bytes rarely hit VADER's lexicon
        return [float(len(t.encode())) for t in texts]
    records, report = sentiment.build_preference_pairs(model, ENC, prompts, k=4, max_new_tokens=24,
                                                       seed=1,
                                                       reward_fn=n_bytes, path=path,
                                                       return_report=True)
    assert report.n_completions == 24 and report.n_pairs + report.n_dropped_small_gap == 6
    assert report.n_pairs == len(records) > 0
    for record in records:
        assert (record.prompt in prompts and len(record.chosen.encode())
                > len(record.rejected.encode()))
    assert data.load_preferences(path) == records
    assert sentiment.build_preference_pairs(model, ENC, prompts, k=4, max_new_tokens=24, seed=1,
                                            reward_fn=n_bytes) == records
    samples = sentiment.sample_completions(model, ENC, prompts, k=2, max_new_tokens=8, seed=2)
    assert [len(group) for group in samples.texts] == [2] * 6 and 0 <= samples.n_without_eos <= 12
    # the texts are the ids, EOS removed
    for ids_group, text_group in zip(samples.token_ids, samples.texts):
        assert ([ENC.decode([t for t in ids if t != EOS], errors="replace") for ids in ids_group]
                == text_group)
    assert samples.prompt_ids == [ENC.encode_ordinary(p) for p in prompts]
    pairs = data.encode_preferences(records, ENC, max_length=96, max_prompt_length=64)
    batch = data.dpo_collate(pairs, pad_id=EOS)
    assert batch["input_ids"].shape[0] == 2 * len(pairs)


def test_sampling_runs_on_its_threads_and_gives_the_same_samples(monkeypatch):
    """sample_completions samples on `threads` CPU threads (one by default, the policy
    bench/bench_threads.py measured), sets the caller's count back, and draws the same samples on
    any count."""
    from model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=96, vocab_size=ENC.n_vocab, n_layer=2, n_head=2, n_embd=32))
    prompts = reviews.make_prompts(n_train=4, n_heldout=1, seed=0)[0]
    seen = []
    complete = model.complete

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return complete(*args, **kwargs)

    monkeypatch.setattr(model, "complete", spy)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        one = sentiment.sample_completions(model, ENC, prompts, k=2, max_new_tokens=12, seed=3)
        two = sentiment.sample_completions(model, ENC, prompts, k=2, max_new_tokens=12, seed=3,
                                           threads=2)
        assert seen == [1, 2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert one.token_ids == two.token_ids


def test_sample_report_leaves_the_caller_as_it_was():
    """sample_report restores the models' train/eval modes and the caller's RNG (it once left both
    models in eval mode and reseeded every device while forking only the CPU generator); same model:
    KL 0, all ties."""
    from model import GPT, GPTConfig

    torch.manual_seed(0)
    shape = GPTConfig(block_size=96, vocab_size=ENC.n_vocab, n_layer=1, n_head=2, n_embd=16)
    policy, reference = GPT(shape).train(), GPT(shape).eval()
    reference.load_state_dict(policy.state_dict())
    prompts = reviews.make_prompts(n_train=1, n_heldout=4, seed=0)[1]
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    report = sentiment.sample_report(policy, reference, ENC, prompts, sentiment.sentiment_reward,
                                     max_new_tokens=8,
                                     seed=5)
    assert policy.training and not reference.training
    assert torch.equal(torch.get_rng_state(), cpu_rng)
    if cuda_rng is not None:
        assert all(torch.equal(a, b) for a, b in zip(torch.cuda.get_rng_state_all(), cuda_rng))
    assert report["samples_policy"] == report["samples_reference"]  # the same seed and weights
    assert report["kl_policy_reference"] == pytest.approx(0.0, abs=1e-6)
    assert report["tie_rate"] == 1.0 and report["win_rate"] == 0.0


# ------------------------------------------------------------------------------------------ fluency


def test_fluency_on_hand_made_strings():
    assert sentiment.fluency(["the acting was great.", "I loved it!"]) == 1.0
    # "ine", "ling", "nding", "w", "re", "b" are not words of the corpus; "tv", "was", "perfect",
    # "really", "movie" are: 6 of 12 words
    assert sentiment.fluency(["ine ling . TV was perfect nding was w re really b movie"]) == 0.5
    assert sentiment.fluency(["great", "xyzzy", "...", ""]) == 0.5  # texts with no word add nothing
    assert math.isnan(sentiment.fluency(["", "!!"]))
    # bigrams: "it was", "was a", "a so" (the grammar writes "it was a so great film") and "loved
    # it" are pairs of the corpus, "so loved" is not: 4 of 5
    assert sentiment.bigram_fluency(["it was a so loved it."]) == pytest.approx(4 / 5)
    # a one-word text has no pair
    assert sentiment.bigram_fluency(["great", "the plot was awful"]) == 1.0
    with pytest.raises(TypeError, match="list of texts"):
        sentiment.fluency("great")


def test_corpus_vocabulary_covers_the_grammar():
    vocabulary = sentiment.corpus_vocabulary()
    for word_list in (reviews.POSITIVE, reviews.NEGATIVE, reviews.NEUTRAL, reviews.FILM,
                      reviews.PREMISES, reviews.OBJECTS, reviews.CONTEXTS,
                      [a for a, _ in reviews.ASPECTS]):
        for phrase in word_list:
            assert set(words(phrase)) <= vocabulary, phrase
    held_out = [r.text for r in reviews.make_reviews(500, seed=123)]  # other seed, same grammar
    assert sentiment.fluency(held_out) == 1.0 and sentiment.bigram_fluency(held_out) > 0.99


def test_confidence_intervals():
    mean, half = sentiment.mean_ci95([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and half == pytest.approx(1.96 * statistics.stdev([1, 2, 3, 4]) / 2)
    ratio, half = sentiment.ratio_ci95([1, 2, 3], [2, 2, 4])  # pooled 6 / 8
    residuals = [1 - 0.75 * 2, 2 - 0.75 * 2, 3 - 0.75 * 4]
    expected = 1.96 * math.sqrt(sum(r * r for r in residuals) / 2 / 3) / (8 / 3)
    assert ratio == 0.75 and half == pytest.approx(expected)
