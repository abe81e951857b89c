"""Tests of plumbing/lora.py: LoRALinear against the dense formula x (W0 + (alpha/r) B A)^T + b, a
fresh adapter model and the adapters-off model against the base model, gradients and optimizer
steps, merging, merged checkpoints loaded by transformers, adapter state round trips, the trainable
parameter count, and the errors bad input gets."""

import copy

import pytest
import torch
import torch.nn as nn
import transformers
from hypothesis import given
from hypothesis import strategies as st
from torch.nn import functional as F
from torch.testing import assert_close

from model import GPT, GPTConfig
from plumbing.lora import (
    LoRALinear,
    adapters_disabled,
    apply_lora,
    count_trainable,
    load_lora_state_dict,
    lora_layers,
    lora_state_dict,
    merge_lora,
    merged_copy,
    unmerge_lora,
)
from test_model import perturbed  # noise on every parameter

TINY = dict(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=16)
TARGET_SHAPES = {"attn.c_attn": (16, 48), "attn.c_proj": (16, 16), "mlp.c_fc": (16, 64),
                 "mlp.c_proj": (64, 16)}


@pytest.fixture
def base():
    torch.manual_seed(0)
    return perturbed(GPT(GPTConfig(**TINY)))


@pytest.fixture
def idx():
    return torch.randint(0, TINY["vocab_size"], (3, 12), generator=torch.Generator().manual_seed(1))


def randomize_adapters(model, seed=1):
    """Give every B (zero after apply_lora) and A random values, so that the adapters change the
    output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in lora_layers(model):
            m.lora_A.copy_(0.3 * torch.randn(m.lora_A.shape, generator=g))
            m.lora_B.copy_(0.3 * torch.randn(m.lora_B.shape, generator=g))
    return model


def train_steps(model, idx, steps=3):
    """A few AdamW steps on next-token cross-entropy over all of model.parameters() (frozen ones
    included)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(steps):
        logits = model(idx[:, :-1])  # (B, T - 1, V)
        F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def model_of(base, rank=3, alpha=6, seed=1):
    """An adapted deep copy of base with random adapters."""
    model = copy.deepcopy(base)
    apply_lora(model, rank=rank, alpha=alpha)
    return randomize_adapters(model, seed)


# ---- LoRALinear against the dense formula ----

@given(in_f=st.integers(1, 12), out_f=st.integers(1, 12), rank=st.integers(1, 8),
       bias=st.booleans(),
       alpha=st.floats(0.1, 64.0), lead=st.lists(st.integers(1, 3), min_size=0, max_size=2),
       seed=st.integers(0, 99))
def test_forward_matches_dense_formula(in_f, out_f, rank, bias, alpha, lead, seed):
    torch.manual_seed(seed)
    layer = LoRALinear(nn.Linear(in_f, out_f, bias=bias), rank, alpha)
    with torch.no_grad():
        layer.lora_B.normal_()  # zero at init: make the adapter visible
    x = torch.randn(*lead, in_f)  # (..., in)
    W0, A, B = layer.base.weight, layer.lora_A, layer.lora_B
    expected = x @ (W0 + (alpha / rank) * B @ A).t()  # (..., out)
    if bias:
        expected = expected + layer.base.bias
    assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    layer.enabled = False
    # adapters off: the base layer's output, bit for bit
    assert torch.equal(layer(x), layer.base(x))


def test_forward_bf16_base():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(24, 40).to(torch.bfloat16), rank=4, alpha=8)
    assert layer.base.weight.dtype == torch.bfloat16 and not layer.base.weight.requires_grad
    assert layer.lora_A.dtype == layer.lora_B.dtype == torch.float32
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(5, 24).to(torch.bfloat16)  # (B, in)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    W0, b = layer.base.weight.float(), layer.base.bias.float()
    expected = x.float() @ (W0 + 2.0 * layer.lora_B @ layer.lora_A).t() + b  # (B, out) float32
    assert_close(y.float(), expected, atol=2e-2, rtol=1.6e-2)
    y.float().sum().backward()
    assert layer.lora_A.grad.dtype == torch.float32 and layer.base.weight.grad is None
    layer.enabled = False
    assert torch.equal(layer(x), layer.base(x))


# ---- the adapted GPT against the base GPT ----

def test_fresh_adapters_give_base_logits(base, idx):
    model = copy.deepcopy(base)
    names = apply_lora(model, rank=4, alpha=8)
    assert names == [f"transformer.h.{i}.{t}" for i in range(2) for t in TARGET_SHAPES]
    with torch.no_grad():
        assert torch.equal(model(idx), base(idx))  # B = 0: exactly the base model


def test_adapters_disabled_gives_base_logits_after_training(base, idx):
    model = copy.deepcopy(base)
    apply_lora(model, rank=4, alpha=8)
    before = lora_state_dict(model)
    train_steps(model, idx)
    after = lora_state_dict(model)
    assert all(not torch.equal(before[k], after[k]) for k in before)  # every A and B moved
    with torch.no_grad():
        expected, adapted = base(idx), model(idx)
        assert not torch.allclose(adapted, expected)
        with adapters_disabled(model) as m:
            assert m is model and not any(layer.enabled for _, layer in lora_layers(model))
            assert torch.equal(model(idx), expected)
        assert all(layer.enabled for _, layer in lora_layers(model))
        assert torch.equal(model(idx), adapted)


def test_adapters_disabled_restores_state_on_exception(base):
    model = copy.deepcopy(base)
    apply_lora(model, rank=2, alpha=2)
    layers = [m for _, m in lora_layers(model)]
    layers[1].enabled = False  # a mixed previous state, restored as it was
    with pytest.raises(KeyError, match="inside"):
        with adapters_disabled(model):
            raise KeyError("inside")
    assert [m.enabled for m in layers] == [i != 1 for i in range(len(layers))]


def test_gradients_only_reach_adapters(base, idx):
    model = copy.deepcopy(base)
    apply_lora(model, rank=4, alpha=8)
    randomize_adapters(model)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    model(idx).square().mean().backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == ("lora_" in name), name
        assert p.requires_grad == ("lora_" in name), name
    train_steps(model, idx)
    for k, v in model.state_dict().items():
        if "lora_" not in k:
            # bit-identical base weights (AdamW's weight decay included)
            assert torch.equal(v, frozen[k]), k


# ---- merging ----

def test_merge_unmerge_round_trip(base, idx):
    model = model_of(base)
    W0 = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    with torch.no_grad():
        unmerged = model(idx)
        merge_lora(model)
        assert all(m.merged for _, m in lora_layers(model))
        key = "transformer.h.0.attn.c_attn.base.weight"
        assert not torch.equal(model.state_dict()[key], W0[key])
        assert_close(model(idx), unmerged, atol=1e-5, rtol=1e-5)
        with pytest.raises(RuntimeError, match="already merged"):
            merge_lora(model)
        with pytest.raises(RuntimeError, match="merged"):
            with adapters_disabled(model):
                pass
        unmerge_lora(model)
        for k, v in model.state_dict().items():
            if "lora_" not in k:
                assert_close(v, W0[k], atol=1e-6, rtol=1e-6)
        assert_close(model(idx), unmerged, atol=1e-5, rtol=1e-5)


@pytest.fixture
def offline(monkeypatch):
    """Hub offline mode: huggingface_hub reads HF_HUB_OFFLINE at import, so its constant is patched
    too."""
    import huggingface_hub.constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_merged_copy_saves_plain_gpt2(base, idx, tmp_path, offline):
    model = model_of(base)
    with torch.no_grad():
        expected = model(idx)
    plain = merged_copy(model)
    assert not lora_layers(plain) and type(plain.transformer.h[1].mlp.c_fc) is nn.Linear
    assert plain.lm_head.weight is plain.transformer.wte.weight  # still tied
    assert all(p.requires_grad for p in plain.parameters())
    assert all(not m.merged for _, m in lora_layers(model))  # the original is untouched
    plain.save_pretrained(tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    reloaded = GPT.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert_close(plain(idx), expected, atol=1e-5, rtol=1e-5)
        assert_close(hf(idx).logits, expected, atol=1e-5, rtol=1e-5)
        assert_close(reloaded(idx), expected, atol=1e-5, rtol=1e-5)
        assert torch.equal(model(idx), expected)


# ---- adapter state ----

def test_lora_state_dict_round_trip(base, idx):
    model = model_of(base, seed=3)
    state = lora_state_dict(model)
    assert sorted(state) == sorted(f"transformer.h.{i}.{t}.lora_{ab}" for i in range(2)
                                   for t in TARGET_SHAPES
                                   for ab in "AB")
    fresh = copy.deepcopy(base)
    apply_lora(fresh, rank=3, alpha=6)
    load_lora_state_dict(fresh, state)
    with torch.no_grad():
        assert torch.equal(fresh(idx), model(idx))


@pytest.mark.parametrize("edit, match", [
    (lambda s: s.pop("transformer.h.0.attn.c_attn.lora_A"),
     r"missing keys \['transformer.h.0.attn.c_attn.lora_A'\]"),
    (lambda s: s.update(extra=torch.zeros(1)), r"unexpected keys \['extra'\]"),
    (lambda s: s.update({"transformer.h.1.mlp.c_fc.lora_B": torch.zeros(64, 5)}),
     r"mlp.c_fc.lora_B' has shape \(64, 5\)"),
])
def test_load_lora_state_dict_is_strict(base, edit, match):
    model = model_of(base)
    state = lora_state_dict(model)
    edit(state)
    fresh = copy.deepcopy(base)
    apply_lora(fresh, rank=3, alpha=6)
    before = lora_state_dict(fresh)
    with pytest.raises(ValueError, match=match):
        load_lora_state_dict(fresh, state)
    # nothing copied
    assert all(torch.equal(v, lora_state_dict(fresh)[k]) for k, v in before.items())


# ---- counts, targets and errors ----

@pytest.mark.parametrize("rank", [1, 4])
def test_count_trainable_by_hand(base, rank):
    model = copy.deepcopy(base)
    apply_lora(model, rank=rank, alpha=1)
    # r * (in + out) per adapted Linear
    per_layer = sum(rank * (i + o) for i, o in TARGET_SHAPES.values())
    assert count_trainable(model) == 2 * per_layer == 2 * rank * (64 + 32 + 80 + 80)
    assert count_trainable(base) == base.num_params(non_embedding=False)


def test_dotted_target_and_dropout(base, idx):
    model = copy.deepcopy(base)
    names = apply_lora(model, rank=2, alpha=4, dropout=0.5, targets=("attn.c_proj",))
    assert names == ["transformer.h.0.attn.c_proj", "transformer.h.1.attn.c_proj"]
    assert type(model.transformer.h[0].mlp.c_proj) is nn.Linear
    randomize_adapters(model)
    with torch.no_grad():
        model.train()
        assert not torch.equal(model(idx), model(idx))  # dropout on the adapter input
        model.eval()
        assert torch.equal(model(idx), model(idx))


@pytest.mark.parametrize("kwargs, match", [
    (dict(rank=0), "rank must be an int >= 1"),
    (dict(rank=2.0), "rank must be an int >= 1"),
    (dict(alpha=0), "alpha must be a finite number > 0"),
    (dict(alpha=-1.0), "alpha must be a finite number > 0"),
    (dict(alpha=float("nan")), "alpha must be a finite number > 0"),
    (dict(dropout=1.0), r"dropout must lie in \[0, 1\)"),
    (dict(dropout=-0.1), r"dropout must lie in \[0, 1\)"),
    (dict(targets=("c_attn", "q_proj")), r"targets \['q_proj'\] match no nn.Linear"),
    (dict(targets=()), "non-empty"),
    (dict(targets=("lm_head",)), "tied embeddings"),
])
def test_apply_lora_rejects_bad_input(base, kwargs, match):
    model = copy.deepcopy(base)
    with pytest.raises(ValueError, match=match):
        apply_lora(model, **{"rank": 2, "alpha": 4, **kwargs})
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())  # unchanged


def test_errors_on_adapter_state(base):
    model = copy.deepcopy(base)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        with adapters_disabled(model):
            pass
    for fn in (merge_lora, lora_state_dict, merged_copy):
        with pytest.raises(ValueError, match="no LoRA adapters"):
            fn(model)
    apply_lora(model, rank=2, alpha=4)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        apply_lora(model, rank=2, alpha=4)
    with pytest.raises(RuntimeError, match="not merged"):
        unmerge_lora(model)
    with pytest.raises(TypeError, match="wraps an nn.Linear"):
        LoRALinear(nn.Conv1d(2, 2, 1), rank=1, alpha=1)
