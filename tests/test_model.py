"""Tests of model.py: logits and checkpoints against transformers' GPT-2, causality, left padding,
KV-cache generation against a naive recompute-everything loop, sampling, and the errors bad input
gets."""

import json

import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from model import GPT, GPTConfig

TINY = dict(block_size=64, vocab_size=97, n_layer=2, n_head=2, n_embd=32)


def perturbed(module, seed=0, scale=0.1):
    """Add noise to every parameter (biases and LayerNorms included), so that no parameter is
    trivially 0 or 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return module.eval()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return perturbed(GPT(GPTConfig(**TINY)))


def left_pad(rows, pad_id=5):
    """rows: list of 1-D int64 tensors -> idx (B, T) padded on the left with pad_id, mask (B, T)
    bool."""
    T = max(len(r) for r in rows)
    idx = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, r in enumerate(rows):
        idx[i, T - len(r):], mask[i, T - len(r):] = r, True
    return idx, mask


# ---- parity with transformers ----

@pytest.fixture
def offline(monkeypatch):
    """Hub offline mode: huggingface_hub reads HF_HUB_OFFLINE at import, so its constant is patched
    too."""
    import huggingface_hub.constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def hf_model():
    config = transformers.GPT2Config(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    return perturbed(transformers.GPT2LMHeadModel(config))


@pytest.mark.parametrize("fmt", ["safetensors", "legacy_bin"])
def test_from_pretrained_matches_transformers(hf_model, fmt, tmp_path, offline):
    hf_model.save_pretrained(tmp_path)
    # an old-style checkpoint: GPT2Model keys (no prefix), mask buffers, lm_head stored
    if fmt == "legacy_bin":
        (tmp_path / "model.safetensors").unlink()
        state = {k.removeprefix("transformer."): v.clone()
                 for k, v in hf_model.state_dict().items()}
        for i in range(2):
            state[f"h.{i}.attn.bias"] = torch.ones(1, 1, 64, 64).tril()
            state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
        torch.save(state, tmp_path / "pytorch_model.bin")
    ours = GPT.from_pretrained(tmp_path).eval()
    assert ours.config == GPTConfig(**TINY)
    idx = torch.randint(0, 97, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_close(ours(idx), hf_model(idx).logits, atol=1e-5, rtol=1e-5)
        # left padding: transformers given the same mask and the same position ids (cumsum(mask) -
        # 1)
        mask = torch.ones_like(idx, dtype=torch.bool)
        mask[0, :7], mask[2, :3] = False, False
        position_ids = (mask.long().cumsum(1) - 1).clamp(min=0)
        expected = hf_model(idx, attention_mask=mask.long(), position_ids=position_ids).logits
        assert_close(ours(idx, attention_mask=mask)[mask], expected[mask], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_save_pretrained_loads_in_transformers(bias, tmp_path, offline):
    torch.manual_seed(0)
    ours = perturbed(GPT(GPTConfig(**TINY, bias=bias)))
    ours.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    reloaded = GPT.from_pretrained(tmp_path).eval()
    idx = torch.randint(0, 97, (2, 33), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = ours(idx)
        assert_close(hf(idx).logits, expected, atol=1e-5, rtol=1e-5)
        assert_close(reloaded(idx), expected, atol=1e-5, rtol=1e-5)


# ---- the architecture ----

def test_init_and_sizes():
    torch.manual_seed(0)
    m = GPT(GPTConfig(**TINY))
    C, V, L, P = 32, 97, 2, 64
    per_block = 2 * 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C
                                                                                       + C)
    assert m.num_params(non_embedding=False) == V * C + P * C + L * per_block + 2 * C
    assert m.num_params() == m.num_params(non_embedding=False) - P * C
    assert m.lm_head.weight is m.transformer.wte.weight
    assert abs(m.transformer.wte.weight.std().item() - 0.02) < 0.002
    c_proj = m.transformer.h[0].mlp.c_proj.weight
    assert abs(c_proj.std().item() - 0.02 / (2 * L) ** 0.5) < 0.002
    idx = torch.randint(0, V, (2, 9))
    assert m.hidden_states(idx).shape == (2, 9, C) and m(idx).shape == (2, 9, V)


@settings(max_examples=15)
@given(st.data())
def test_causality(tiny, data):
    """Changing tokens after position t never changes the logits at positions <= t (with and without
    padding)."""
    T = data.draw(st.integers(2, 24), label="T")
    t = data.draw(st.integers(0, T - 2), label="t")
    n_pad = data.draw(st.integers(0, t), label="n_pad")
    tokens = data.draw(st.lists(st.integers(0, 96), min_size=2 * T, max_size=2 * T), label="tokens")
    a = torch.tensor(tokens[:T])[None]
    b = a.clone()
    b[0, t + 1:] = torch.tensor(tokens[T + t + 1:])
    mask = torch.arange(T)[None] >= n_pad
    with torch.no_grad():
        assert_close(tiny(a)[:, : t + 1], tiny(b)[:, : t + 1])
        assert_close(tiny(a, mask)[:, n_pad: t + 1], tiny(b, mask)[:, n_pad: t + 1])


def test_left_padded_batch_equals_rows_alone(tiny):
    g = torch.Generator().manual_seed(3)
    rows = [torch.randint(0, 97, (n,), generator=g) for n in (5, 17, 1, 11)]
    idx, mask = left_pad(rows, pad_id=96)
    with torch.no_grad():
        batch_logits = tiny(idx, attention_mask=mask.long())  # 0/1 masks are accepted too
        assert not batch_logits.isnan().any()
        for i, row in enumerate(rows):
            assert_close(batch_logits[i, mask[i]], tiny(row[None])[0], atol=1e-5, rtol=1e-5)
        assert_close(tiny(idx, torch.ones_like(mask)), tiny(idx))  # an all-ones mask is no mask


def test_crop_block_size(tiny, tmp_path):
    torch.manual_seed(0)
    m = perturbed(GPT(GPTConfig(**TINY)))
    idx = torch.randint(0, 97, (2, 10))
    with torch.no_grad():
        before = m(idx)
        m.crop_block_size(16)
        assert_close(m(idx), before)
    assert m.config.block_size == 16 and m.transformer.wpe.weight.shape == (16, 32)
    with pytest.raises(ValueError, match="block_size"):
        m(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="block_size"):
        m.crop_block_size(32)


# ---- generation ----

def naive_greedy(m, idx, n):
    """Greedy decoding that recomputes the whole forward pass at every step (no cache)."""
    for _ in range(n):
        idx = torch.cat([idx, m(idx)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


def test_greedy_kv_cache_equals_naive(tiny):
    idx = torch.randint(0, 97, (3, 7), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(tiny.generate(idx, 20, temperature=0), naive_greedy(tiny, idx, 20))
        assert torch.equal(tiny.generate(idx, 0), idx)


def test_left_padded_generation_equals_rows_alone(tiny):
    g = torch.Generator().manual_seed(5)
    rows = [torch.randint(0, 97, (n,), generator=g) for n in (3, 12, 8)]
    idx, mask = left_pad(rows)
    out = tiny.generate(idx, 15, temperature=0, attention_mask=mask)
    assert out.shape == (3, 12 + 15) and torch.equal(out[:, :12], idx)
    for i, row in enumerate(rows):
        assert torch.equal(out[i, 12:], tiny.generate(row[None], 15, temperature=0)[0, len(row):])


def test_eos_stops_each_row(tiny):
    idx = torch.randint(0, 97, (4, 6), generator=torch.Generator().manual_seed(6))
    free = tiny.generate(idx, 12, temperature=0)[:, 6:]

    def first_stop(row, eos):  # the number of tokens a row keeps: up to and including its first eos
        hits = (row == eos).nonzero()
        return int(hits[0]) + 1 if len(hits) else len(row)

    # an eos that row 0 emits and then would emit past, and that some row never emits: a test with
    # teeth
    eos = next(int(e) for e in free[0] if (free[0, first_stop(free[0], e):] != e).any()
               and any(first_stop(r, e) == 12 and r[-1] != e for r in free))
    out = tiny.generate(idx, 12, temperature=0, eos_token=eos)[:, 6:]
    completions = tiny.complete([r.tolist() for r in idx], 12, temperature=0, eos_token=eos,
                                batch_size=3)
    for i in range(4):
        stop = first_stop(free[i], eos)
        assert torch.equal(out[i, :stop], free[i, :stop])
        assert (out[i, stop:] == eos).all()
        assert completions[i] == free[i, :stop].tolist()
    assert completions[0][-1] == eos and min(map(len, completions)) < 12 == max(map(len,
                                                                                    completions))


def test_sampling_is_seeded_and_respects_top_k(tiny):
    idx = torch.randint(0, 97, (8, 5), generator=torch.Generator().manual_seed(7))
    torch.manual_seed(123)
    a = tiny.generate(idx, 16, temperature=1.5, top_k=5)
    torch.manual_seed(123)
    b = tiny.generate(idx, 16, temperature=1.5, top_k=5)
    torch.manual_seed(124)
    c = tiny.generate(idx, 16, temperature=1.5, top_k=5)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with torch.no_grad():
        # (B, 16, 5): allowed tokens at each new position
        top5 = tiny(a[:, :-1]).topk(5, dim=-1).indices[:, 4:]
    assert (top5 == a[:, 5:, None]).any(-1).all()
    assert torch.equal(tiny.generate(idx, 6, top_k=1), tiny.generate(idx, 6, temperature=0))


def test_complete_matches_generate(tiny):
    g = torch.Generator().manual_seed(8)
    prompts = [torch.randint(0, 97, (n,), generator=g).tolist() for n in (4, 9, 2, 9, 6)]
    completions = tiny.complete(prompts, 10, temperature=0, batch_size=2)
    assert len(completions) == 5
    for p, c in zip(prompts, completions):
        assert c == tiny.generate(torch.tensor([p]), 10, temperature=0)[0, len(p):].tolist()


# ---- bad input ----

def test_bad_config():
    with pytest.raises(TypeError, match="n_layers"):
        GPTConfig(n_layers=2)
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="vocab_size"):
        GPTConfig(vocab_size=0)


def test_bad_inputs(tiny):
    ok = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(TypeError, match="int64"):
        tiny(ok.float())
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        tiny(ok[0])
    with pytest.raises(ValueError, match=r"\[0, 97\)"):
        tiny(ok + 97)
    with pytest.raises(ValueError, match=r"\[0, 97\)"):
        tiny(ok - 1)
    with pytest.raises(ValueError, match="block_size"):
        tiny(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        tiny(ok, attention_mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="0 and 1"):
        tiny(ok, attention_mask=torch.full((2, 4), 2))
    with pytest.raises(ValueError, match="block_size"):
        tiny.generate(ok, 61)
    with pytest.raises(ValueError, match="LEFT"):
        tiny.generate(ok, 3, attention_mask=torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="temperature"):
        tiny.generate(ok, 3, temperature=-1.0)
    with pytest.raises(ValueError, match="prompts\\[1\\]"):
        tiny.complete([[1, 2], []], 3)


def test_from_pretrained_rejects_bad_checkpoints(tmp_path):
    from safetensors.torch import load_file, save_file
    torch.manual_seed(0)
    GPT(GPTConfig(**TINY)).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key, value in [("activation_function", "relu"), ("scale_attn_by_inverse_layer_idx", True),
                       ("n_inner", 100), ("layer_norm_epsilon", 1e-6), ("model_type", "llama")]:
        (tmp_path / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(ValueError, match=key):
            GPT.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "some_new_knob": 1}))
    with pytest.warns(UserWarning, match="some_new_knob"):
        GPT.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    tensors = load_file(tmp_path / "model.safetensors")
    bad = {**tensors, "transformer.h.1.mlp.c_fc.weight": torch.zeros(32, 100)}
    save_file(bad, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"transformer\.h\.1\.mlp\.c_fc\.weight"):
        GPT.from_pretrained(tmp_path)
    save_file({k: v for k, v in tensors.items() if k != "transformer.ln_f.bias"},
              tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing tensors \['transformer\.ln_f\.bias'\]"):
        GPT.from_pretrained(tmp_path)
    save_file({**tensors, "lm_head.weight": torch.zeros(97, 32)}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="untied"):
        GPT.from_pretrained(tmp_path)


def test_hub_name_without_network_says_what_to_download(monkeypatch, tmp_path):
    """No test touches the network: the Hub download is replaced by a failure, then made
    unimportable."""
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("simulated: no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        GPT.from_pretrained("gpt2")
    for needle in ("'gpt2'", "simulated: no network", "config.json", "model.safetensors",
                   "https://huggingface.co/gpt2", "checkpoints/gpt2"):
        assert needle in str(err.value)
    # import now raises ImportError
    monkeypatch.setitem(__import__("sys").modules, "huggingface_hub", None)
    with pytest.raises(FileNotFoundError,
                       match="huggingface_hub is not installed.*model.safetensors"):
        GPT.from_pretrained("gpt2")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="not a local directory"):
        GPT.from_pretrained(tmp_path / "config.json")  # a file, not a checkpoint directory
