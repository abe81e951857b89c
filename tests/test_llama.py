"""Tests of llama.py against transformers' LlamaForCausalLM and Qwen2ForCausalLM, the independent
implementation: logits (grouped-query attention, Llama 3 RoPE scaling, tied and untied heads,
Qwen2's biases, left padding), checkpoints in (single file, sharded, bfloat16) and out, KV-cache
generation against a full-forward greedy decode, a DPO step's gradients, the errors of configs this
model leaves out, and the project's own checkpoints, reward model and LoRA on a Llama."""

import json
import types
import warnings

import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch.testing import assert_close

import data
import dpo
from llama import Llama, LlamaConfig, config_from_hf, rope_frequencies
from methods.reward_model import RewardModel, load_reward_model
from model import GPT, GPTConfig
from plumbing import lora, run_dir
from plumbing.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint

V = 128
SHAPE = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
# Llama 3's scaling, with head_dim 16 and theta 1e4: wavelengths 6.3 (fast, < 64 / 4), 20 and 63
# (between) and the rest slow (> 64 / 1): every branch of the rescaling is taken
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}
# LlamaConfig's fields (GPTConfig's names where it has them); rope_scaling without the type
TINY = dict(block_size=64, vocab_size=V, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
            intermediate_size=48)
SCALING = {key: value for key, value in LLAMA3.items() if key != "rope_type"}
CASES = {
    "llama-gqa": ("llama", dict(rope_theta=10000.0)),
    "llama-mha-tied": ("llama", dict(num_key_value_heads=4, tie_word_embeddings=True)),
    "llama3-scaling": ("llama", dict(rope_scaling=LLAMA3, rope_theta=10000.0)),
    "llama-attention-bias": ("llama", dict(attention_bias=True, num_key_value_heads=1)),
    "llama-head-dim-32": ("llama", dict(head_dim=32)),
    "qwen2-tied": ("qwen2", dict(tie_word_embeddings=True, rope_theta=1e6)),
    "qwen2-untied": ("qwen2", dict()),
}


def perturbed(module, seed=0, scale=0.1):
    """Add noise to every parameter (biases and RMSNorm gains included): none is trivially 0 or
    1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g).to(p.dtype))
    return module.eval()


def hf_model(model_type="llama", **overrides):
    """A tiny random transformers LlamaForCausalLM or Qwen2ForCausalLM, every parameter
    perturbed."""
    torch.manual_seed(0)
    classes = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
               "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}
    config_class, model_class = classes[model_type]
    return perturbed(model_class(config_class(**{**SHAPE, **overrides})))


def saved(model, directory, **kwargs):
    """model.save_pretrained(directory, **kwargs) without its progress bar; returns directory."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.utils.logging.disable_progress_bar()
        model.save_pretrained(directory, **kwargs)
    return directory


def left_padded(B=3, T=21, seed=1):
    """idx (B, T) random ids, mask (B, T) bool: row 0 with 6 pads on the left, row 2 with 2."""
    idx = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, :6], mask[2, :2] = False, False
    return idx, mask


def hf_logits(hf, idx, mask=None):
    """transformers' logits, given HF position ids cumsum(mask) - 1 for left-padded rows (a plain
    forward of theirs counts positions from column 0)."""
    if mask is None:
        return hf(idx).logits
    position_ids = (mask.long().cumsum(1) - 1).clamp(min=0)
    return hf(idx, attention_mask=mask.long(), position_ids=position_ids).logits


# ---- logits against transformers ----

@pytest.mark.parametrize("case", CASES)
def test_from_pretrained_logits_equal_transformers(case, tmp_path):
    model_type, overrides = CASES[case]
    hf = hf_model(model_type, **overrides)
    ours = Llama.from_pretrained(saved(hf, tmp_path)).eval()
    assert sorted(ours.state_dict()) == sorted(hf.state_dict()), "HF's names, one for one"
    idx, mask = left_padded()
    with torch.no_grad():
        assert_close(ours(idx), hf_logits(hf, idx), rtol=1e-5, atol=1e-5)
        assert_close(ours.hidden_states(idx), hf.model(idx).last_hidden_state, rtol=1e-5,
                     atol=1e-5)
        # left padding: equal on the real tokens (the pads' rows are junk in both)
        assert_close(ours(idx, mask)[mask], hf_logits(hf, idx, mask)[mask], rtol=1e-5, atol=1e-5)
    assert ours.num_params(non_embedding=False) == hf.num_parameters()


def test_llama3_rope_frequencies_equal_transformers_and_take_every_branch():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    hf_config = transformers.LlamaConfig(**SHAPE, rope_scaling=dict(LLAMA3), rope_theta=10000.0)
    ours = rope_frequencies(config_from_hf(hf_config.to_dict(), "config.json"))
    theirs, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_config)
    assert_close(ours, theirs, rtol=0, atol=0)
    plain = 1.0 / 10000.0 ** (torch.arange(0, 16, 2).float() / 16)  # (8,)
    ratio = plain / ours  # 1 for the fast frequencies, factor for the slow, between otherwise
    assert ratio[0] == 1 and ratio[-1] == 8 and ((ratio > 1) & (ratio < 8)).sum() == 2


@settings(max_examples=15)
@given(n_kv_head=st.sampled_from([1, 2, 4]), head_dim=st.sampled_from([None, 8, 24]),
       tied=st.booleans(), model_type=st.sampled_from(["llama", "qwen2"]),
       bias=st.booleans(), scaled=st.booleans(), seed=st.integers(0, 2**16))
def test_state_dict_of_transformers_gives_equal_logits(n_kv_head, head_dim, tied, model_type, bias,
                                                       scaled, seed):
    """Any shape this model covers: transformers' state_dict loads under the same names (no
    file), and the logits agree, left padding included."""
    overrides = dict(num_key_value_heads=n_kv_head, tie_word_embeddings=tied, num_hidden_layers=1,
                     head_dim=head_dim, rope_scaling=dict(LLAMA3) if scaled else None)
    if model_type == "llama":
        overrides["attention_bias"] = bias
    hf = hf_model(model_type, **overrides)
    ours = Llama(config_from_hf({**hf.config.to_dict(), "model_type": model_type}, "config.json"))
    ours.load_state_dict(hf.state_dict())
    idx, mask = left_padded(seed=seed)
    with torch.no_grad():
        assert_close(ours(idx, mask)[mask], hf_logits(hf, idx, mask)[mask], rtol=1e-5, atol=1e-5)


def test_sharded_checkpoint_loads(tmp_path):
    hf = hf_model("llama", rope_scaling=dict(LLAMA3))
    saved(hf, tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 2
    ours = Llama.from_pretrained(tmp_path).eval()
    idx, _ = left_padded()
    with torch.no_grad():
        assert_close(ours(idx), hf(idx).logits, rtol=1e-5, atol=1e-5)


def test_bfloat16_load_builds_no_float32_model_and_matches_transformers_bf16(tmp_path):
    saved(hf_model("qwen2"), tmp_path)  # float32 weights on disk

    class Spy(Llama):
        built_on = []

        def __init__(self, config):
            super().__init__(config)
            Spy.built_on.append(self.lm_head.weight.device.type)

    ours = Spy.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert Spy.built_on == ["meta"], "built on the meta device: no float32 copy, no init"
    assert {p.dtype for p in ours.parameters()} == {torch.bfloat16}
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert hf.model.embed_tokens.weight.dtype == torch.bfloat16
    idx, mask = left_padded()
    with torch.no_grad():
        logits = ours(idx, mask)
        assert logits.dtype == torch.bfloat16
        # measured: equal bit for bit on this CPU; bf16 rounding is ~4e-3 of a logit of size 1
        assert_close(logits[mask].float(), hf_logits(hf, idx, mask)[mask].float(), rtol=2e-2,
                     atol=2e-2)


@pytest.mark.parametrize("case", ["llama3-untied", "qwen2-tied", "llama-bias-bf16"])
def test_save_pretrained_loads_in_transformers(case, tmp_path):
    config = {"llama3-untied": LlamaConfig(**TINY, rope_scaling=SCALING),
              "qwen2-tied": LlamaConfig(**TINY, qkv_bias=True, tie_embeddings=True),
              "llama-bias-bf16": LlamaConfig(**TINY, qkv_bias=True, o_bias=True)}[case]
    torch.manual_seed(0)
    ours = perturbed(Llama(config))
    if case.endswith("bf16"):
        ours = ours.to(torch.bfloat16)
    ours.save_pretrained(tmp_path, eos_token_id=3)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model_type"] == ("qwen2" if case.startswith("qwen2") else "llama")
    dtype = ours.lm_head.weight.dtype
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=dtype)
    assert type(hf).__name__ == written["architectures"][0]
    reloaded = Llama.from_pretrained(tmp_path, dtype=dtype).eval()
    assert reloaded.config == config
    idx, mask = left_padded()
    with torch.no_grad():
        expected = ours(idx, mask)[mask]
        assert_close(hf_logits(hf.eval(), idx, mask)[mask], expected, rtol=1e-5, atol=1e-5)
        assert_close(reloaded(idx, mask)[mask], expected, rtol=0, atol=0)


# ---- generation ----

def greedy_full_forward(model, prompt, n):
    """The naive decode: n times, the whole sequence through forward, the last logits' argmax."""
    tokens = list(prompt)
    for _ in range(n):
        tokens.append(model(torch.tensor([tokens]))[0, -1].argmax().item())
    return tokens[len(prompt):]


def test_generate_with_kv_cache_equals_greedy_full_forward_with_left_padding():
    torch.manual_seed(0)
    model = perturbed(Llama(LlamaConfig(**TINY, qkv_bias=True, rope_scaling={
        "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16})), scale=0.5)
    prompts = [[5, 9, 2, 7, 1, 3, 8], [4], [11, 12, 13]]
    T = max(len(p) for p in prompts)
    idx = torch.tensor([[0] * (T - len(p)) + p for p in prompts])  # (3, T), left-padded
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        expected = [greedy_full_forward(model, p, 12) for p in prompts]
        out = model.generate(idx, 12, temperature=0, attention_mask=mask)
    assert out[:, T:].tolist() == expected
    assert model.complete(prompts, 12, temperature=0, batch_size=2) == expected
    assert len(set(map(tuple, expected))) == 3, "the rows differ: the test sees each its own"


# ---- a DPO step against transformers ----

def test_dpo_step_gradients_equal_transformers():
    hf = hf_model("qwen2", tie_word_embeddings=True).train()
    ours = Llama(config_from_hf(hf.config.to_dict(), "config.json"))
    ours.load_state_dict(hf.state_dict())
    pairs = [data.EncodedPair([5, 6, 7], [8, 9, 1], [10, 1]),
             data.EncodedPair([20, 21], [22, 23, 24, 25, 1], [26, 27, 1])]
    batch = data.dpo_collate(pairs, pad_id=1)
    reference = torch.tensor([[-9.0, -7.5], [-14.0, -8.0]])  # (B, 2) log pi_ref, constants
    losses = {}
    for name, model, forward in (("ours", ours, ours),
                                 ("theirs", hf, lambda input_ids: hf(input_ids).logits)):
        policy = dpo.concatenated_logps(forward, batch, impl="torch")
        loss, _, _ = dpo.dpo_loss(policy.chosen, policy.rejected, reference[:, 0], reference[:, 1],
                                  beta=0.1)
        loss.sum().backward()
        losses[name] = loss
    assert_close(losses["ours"], losses["theirs"], rtol=1e-5, atol=1e-6)
    theirs = dict(hf.named_parameters())
    for name, p in ours.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        assert_close(p.grad, theirs[name].grad, rtol=1e-4, atol=1e-7, msg=name)


# ---- what this model leaves out ----

@pytest.mark.parametrize("model_type, change, key", [
    ("llama", {"hidden_act": "gelu"}, "hidden_act"),
    ("llama", {"mlp_bias": True}, "mlp_bias"),
    ("llama", {"rope_parameters": None, "rope_scaling": {"rope_type": "yarn", "factor": 2.0}},
     "rope_scaling"),
    ("llama", {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}},
     "rope_parameters"),
    ("llama", {"rope_parameters": None, "rope_scaling": {"rope_type": "llama3", "factor": 2.0}},
     "rope_scaling"),
    ("llama", {"rope_scaling": LLAMA3}, "rope_scaling"),  # beside rope_parameters
    ("llama", {"num_key_value_heads": 3}, "num_key_value_heads"),
    ("llama", {"hidden_size": 66, "head_dim": None}, "hidden_size"),
    ("llama", {"model_type": "mistral"}, "model_type"),
    ("llama", {"architectures": ["LlamaForSequenceClassification"]}, "architectures"),
    ("qwen2", {"use_sliding_window": True}, "use_sliding_window"),
    ("qwen2", {"layer_types": ["full_attention", "sliding_attention"]}, "layer_types"),
    ("llama", {"num_hidden_layers": None}, "num_hidden_layers"),
])
def test_unsupported_config_values_are_one_line_errors_naming_the_key(model_type, change, key,
                                                                      tmp_path):
    saved(hf_model(model_type), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config = {k: v for k, v in {**config, **change}.items() if v is not None}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as error:
        Llama.from_pretrained(tmp_path)
    message = str(error.value)
    assert key in message and str(tmp_path / "config.json") in message and "\n" not in message


def test_unknown_config_keys_are_named_in_a_warning(tmp_path):
    saved(hf_model("llama"), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "quantization_config": {}}))
    with pytest.warns(UserWarning, match="quantization_config"):
        Llama.from_pretrained(tmp_path)


@pytest.mark.parametrize("damage, words", [
    (lambda t: t.pop("model.layers.1.mlp.up_proj.weight"),
     "missing tensors ['model.layers.1.mlp.up_proj.weight']"),
    (lambda t: t.update({"model.layers.0.mlp.up_proj.bias": torch.zeros(96)}),
     "unexpected tensors ['model.layers.0.mlp.up_proj.bias']"),
    (lambda t: t.update({"model.norm.weight": torch.ones(63)}),
     "'model.norm.weight' has shape (63,), but config.json implies (64,)"),
    (lambda t: t.pop("lm_head.weight"), "missing tensors ['lm_head.weight']"),
])
def test_missing_unexpected_and_misshaped_tensors_are_named(damage, words, tmp_path):
    saved(hf_model("llama"), tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    damage(tensors)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ValueError) as error:
        Llama.from_pretrained(tmp_path)
    assert words in str(error.value)


def test_config_checks_name_the_field():
    for fields, words in [(dict(n_head=4, n_kv_head=3), "n_kv_head=3 must divide n_head=4"),
                          (dict(n_embd=30, n_head=4), "n_embd=30 is not divisible"),
                          (dict(head_dim=7), "head_dim=7 must be even"),
                          (dict(o_bias=True), "o_bias=True needs qkv_bias"),
                          (dict(rope_scaling={"factor": 8.0}), "rope_scaling must be None"),
                          (dict(rms_norm_eps=0.0), "rms_norm_eps must be a number > 0")]:
        with pytest.raises(ValueError, match=words.replace("(", r"\(")):
            LlamaConfig(**{**TINY, **fields})


# ---- the project's checkpoints, reward model, resume check and LoRA on a Llama ----

def test_checkpoint_round_trip_and_dispatch(tmp_path):
    torch.manual_seed(0)
    model = perturbed(Llama(LlamaConfig(**TINY, qkv_bias=True, tie_embeddings=True)))
    save_checkpoint(str(tmp_path / "ckpt.pt"), model, None, 3, {"command": "sft"})
    assert load_checkpoint(str(tmp_path))["architecture"] == "llama"
    loaded = load_model(str(tmp_path))
    assert isinstance(loaded, Llama) and loaded.config == model.config
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight, "still tied"
    idx, mask = left_padded()
    with torch.no_grad():
        assert_close(loaded.eval()(idx, mask), model(idx, mask), rtol=0, atol=0)
    # a checkpoint from before the "architecture" entry holds a GPT
    gpt = GPT(GPTConfig(block_size=16, vocab_size=V, n_layer=1, n_head=2, n_embd=16))
    save_checkpoint(str(tmp_path / "old.pt"), gpt, None, 0, {})
    state = torch.load(tmp_path / "old.pt", weights_only=False)
    assert state.pop("architecture") == "gpt2"
    torch.save(state, tmp_path / "old.pt")
    assert isinstance(load_model(str(tmp_path / "old.pt")), GPT)
    # Hugging Face directories: by their model_type
    assert isinstance(load_model(str(saved(hf_model("qwen2"), tmp_path / "qwen2"))), Llama)
    config = json.loads((tmp_path / "qwen2" / "config.json").read_text())
    (tmp_path / "qwen2" / "config.json").write_text(json.dumps({**config, "model_type": "t5"}))
    with pytest.raises(CheckpointError, match="model_type 't5' is not one this code loads"):
        load_model(str(tmp_path / "qwen2"))


def test_reward_model_on_a_llama_round_trips(tmp_path):
    torch.manual_seed(0)
    scorer = RewardModel(perturbed(Llama(LlamaConfig(**TINY))))
    with torch.no_grad():
        scorer.head.weight.normal_()
    save_checkpoint(str(tmp_path / "ckpt.pt"), scorer, None, 0, {})
    loaded = load_reward_model(str(tmp_path))
    assert isinstance(loaded.trunk, Llama)
    idx, _ = left_padded()
    last = torch.tensor([20, 10, 5])
    with torch.no_grad():
        assert_close(loaded(idx, last), scorer(idx, last), rtol=0, atol=0)


def test_resume_refuses_another_architecture(tmp_path):
    gpt = GPT(GPTConfig(block_size=64, vocab_size=V, n_layer=1, n_head=2, n_embd=32))
    save_checkpoint(str(tmp_path / "ckpt.pt"), gpt, None, 0, {})
    cfg = types.SimpleNamespace(init="llama-dir", tokenizer="bytes", out_dir=str(tmp_path))
    with pytest.raises(CheckpointError, match="holds a gpt2 model, --init llama-dir is a llama"):
        run_dir.check_same_model(load_checkpoint(str(tmp_path)), Llama(LlamaConfig(**TINY)), cfg,
                                 str(tmp_path / "ckpt.pt"))


def test_lora_default_targets_follow_the_model_and_adapters_off_is_the_base():
    torch.manual_seed(0)
    model = perturbed(Llama(LlamaConfig(**TINY)))
    idx, mask = left_padded()
    with torch.no_grad():
        base = model(idx, mask)
    names = lora.apply_lora(model, rank=2, alpha=4)
    assert {name.rsplit(".", 1)[-1] for name in names} == set(Llama.lora_targets)
    assert len(names) == 7 * TINY["n_layer"]
    for _, layer in lora.lora_layers(model):  # adapters that change the output
        torch.nn.init.normal_(layer.lora_B)
    with torch.no_grad():
        assert not torch.allclose(model(idx, mask), base)
        with lora.adapters_disabled(model):
            assert_close(model(idx, mask), base, rtol=0, atol=0)
    gpt = GPT(GPTConfig(block_size=16, vocab_size=V, n_layer=1, n_head=2, n_embd=16))
    assert lora.apply_lora(gpt, rank=2, alpha=4) == ["transformer.h.0.attn.c_attn",
                                                     "transformer.h.0.attn.c_proj",
                                                     "transformer.h.0.mlp.c_fc",
                                                     "transformer.h.0.mlp.c_proj"]


# The config.json files of three Hub checkpoints as shipped (every key, the values of the shape
# shrunk): what a user's download holds. SmolLM2-360M-Instruct's also has a transformers.js_config.
SHIPPED_CONFIGS = {
    "SmolLM2-360M-Instruct": {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "hidden_act": "silu", "initializer_range": 0.02, "is_llama_config": True,
        "max_position_embeddings": 8192, "mlp_bias": False, "model_type": "llama",
        "num_attention_heads": 15, "num_key_value_heads": 5, "pad_token_id": 2,
        "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_interleaved": False,
        "rope_scaling": None, "rope_theta": 100000, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16", "transformers_version": "4.42.3", "use_cache": True},
    "Qwen2.5-0.5B-Instruct": {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "hidden_act": "silu",
        "initializer_range": 0.02, "max_position_embeddings": 32768, "max_window_layers": 21,
        "model_type": "qwen2", "num_attention_heads": 14, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
        "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.43.1", "use_cache": True, "use_sliding_window": False},
    "Llama-3.2-1B": {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "head_dim": 4, "hidden_act": "silu", "initializer_range": 0.02,
        "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
        "num_attention_heads": 32, "num_key_value_heads": 8, "pretraining_tp": 1,
        "rms_norm_eps": 1e-05, "rope_scaling": {
            "factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.45.0.dev0", "use_cache": True},
}


@pytest.mark.parametrize("name", sorted(SHIPPED_CONFIGS))
def test_configs_as_the_hub_ships_them_load_with_transformers_logits(name, tmp_path):
    shipped = {**SHIPPED_CONFIGS[name], "num_hidden_layers": 2, "intermediate_size": 48,
               "vocab_size": V, "bos_token_id": 1, "eos_token_id": 2}
    shipped["hidden_size"] = 4 * shipped["num_attention_heads"]
    (tmp_path / "config.json").write_text(json.dumps(shipped))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = transformers.AutoConfig.from_pretrained(tmp_path)
        hf = perturbed(transformers.AutoModelForCausalLM.from_config(config)).float().eval()
        saved(hf, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(shipped))  # every key, as downloaded
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = Llama.from_pretrained(tmp_path).eval()
    unknown = [str(w.message) for w in caught if "unknown config keys" in str(w.message)]
    assert all("is_llama_config" in message for message in unknown), unknown  # SmolLM2's extras
    idx, mask = left_padded()
    with torch.no_grad():
        assert_close(ours(idx), hf_logits(hf, idx), rtol=1e-5, atol=1e-5)
        # left padding: equal on the real tokens (the pads' rows are junk in both)
        assert_close(ours(idx, mask)[mask], hf_logits(hf, idx, mask)[mask], rtol=1e-5, atol=1e-5)
