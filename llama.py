"""The decoder of Llama: the policy and reference model of DPO when they start from Llama 2,
Llama 3, TinyLlama, SmolLM2 or Qwen2 weights.

The network of Llama (Touvron et al., 2023), kept by Llama 3 (Grattafiori et al., 2024), SmolLM2
and TinyLlama, and by Qwen2 with biases on q, k, v. It has model.GPT's interface (forward,
hidden_states, lm_head, generate, complete, num_params, from_pretrained, save_pretrained), so the
rest of the code trains it as it trains GPT-2. Its blocks, on x (B, T, C), hs = head_dim:

    RMSNorm     x / sqrt(mean_C(x^2) + eps) * w: no mean subtracted, no bias; computed in float32
                and cast back to x's dtype before the gain w, as Hugging Face does
    RoPE        no position embeddings: queries and keys are rotated by their position p.
                Dimension i of a head and dimension i + hs/2 form a pair, turned by the angle
                p * f_i with f_i = theta^(-2i / hs), i < hs/2:  x * cos + rotate_half(x) * sin,
                where rotate_half(x1, x2) = (-x2, x1) for x's two halves: HF's layout, so its
                weights load without permutation. Llama 3's rope_scaling divides the slow
                frequencies (wavelength 2 pi / f_i above original_max_position_embeddings /
                low_freq_factor) by factor, keeps the fast ones (below
                original_max_position_embeddings / high_freq_factor) and interpolates between the
                two (rope_frequencies)
    attention   grouped-query: n_head query heads share n_kv_head key/value heads (query head h
                reads k/v head h // (n_head / n_kv_head)); softmax(q k^T / sqrt(hs)) v, causal
    SwiGLU MLP  down(silu(gate(x)) * up(x)),  silu(z) = z * sigmoid(z)
    block       x = x + o_proj(attention(RMSNorm(x)));  x = x + mlp(RMSNorm(x))

and after the last block an RMSNorm and lm_head, tied to the token embedding or not. Module names
are Hugging Face's (model.layers.N.self_attn.q_proj, ...), so state-dict keys are HF's, one for one.

Left out: dropout, the other RoPE scalings (linear, dynamic, yarn, longrope), sliding-window
attention (Qwen2's use_sliding_window), MLP biases and other activations (rejected on load),
pytorch_model.bin weights and Hub names (pass a local directory), the Llama tokenizers.
"""

import dataclasses
import json
import math
import warnings
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file
from torch.nn import functional as F

from model import GPT, _check_int, _left_padding


@dataclasses.dataclass
class LlamaConfig:
    """A Llama's shape. Fields that GPTConfig also has keep its names (block_size, vocab_size,
    n_layer, n_head, n_embd), so code written for a GPT reads either config; from_pretrained maps
    Hugging Face's names (_HF_NAMES). The defaults are TinyLlama-1.1B's."""

    block_size: int = 2048  # longest sequence (HF max_position_embeddings); RoPE has no table
    vocab_size: int = 32000
    n_layer: int = 22
    n_head: int = 32
    n_kv_head: int = 4  # key/value heads, dividing n_head (n_head: plain multi-head attention)
    n_embd: int = 2048
    head_dim: int | None = None  # None: n_embd // n_head (set so by __post_init__)
    intermediate_size: int = 5632  # the MLP's hidden width
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0  # RoPE's base: f_i = rope_theta^(-2i / head_dim)
    # None, or Llama 3's {"factor", "low_freq_factor", "high_freq_factor",
    # "original_max_position_embeddings"}
    rope_scaling: dict | None = None
    qkv_bias: bool = False  # biases on q_proj, k_proj, v_proj (Qwen2; Llama's attention_bias)
    o_bias: bool = False  # a bias on o_proj (Llama's attention_bias)
    tie_embeddings: bool = False  # lm_head.weight is the token embedding table

    def __post_init__(self):
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd",
                     "intermediate_size"):
            _check_int(f"LlamaConfig.{name}", getattr(self, name), 1)
        if self.n_head % self.n_kv_head:
            raise ValueError(f"LlamaConfig.n_kv_head={self.n_kv_head} must divide "
                             f"n_head={self.n_head}")
        if self.head_dim is None:
            if self.n_embd % self.n_head:
                raise ValueError(f"LlamaConfig.n_embd={self.n_embd} is not divisible by "
                                 f"n_head={self.n_head} (give head_dim)")
            self.head_dim = self.n_embd // self.n_head
        _check_int("LlamaConfig.head_dim", self.head_dim, 2)
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig.head_dim={self.head_dim} must be even (RoPE turns "
                             "pairs)")
        for name in ("rms_norm_eps", "rope_theta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"LlamaConfig.{name} must be a number > 0, got {value!r}")
        for name in ("qkv_bias", "o_bias", "tie_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"LlamaConfig.{name} must be a bool, got {getattr(self, name)!r}")
        if self.o_bias and not self.qkv_bias:
            raise ValueError("LlamaConfig.o_bias=True needs qkv_bias=True (Llama biases all four "
                             "projections, Qwen2 q, k, v)")
        if self.rope_scaling is not None:
            _check_rope_scaling(self.rope_scaling)


def _check_rope_scaling(scaling):
    """Raise ValueError unless scaling holds exactly Llama 3's four RoPE-scaling numbers, usable."""
    keys = {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
    if not isinstance(scaling, dict) or scaling.keys() != keys:
        raise ValueError(f"LlamaConfig.rope_scaling must be None or a dict of {sorted(keys)}, got "
                         f"{scaling!r}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
               for v in scaling.values()):
        raise ValueError(f"LlamaConfig.rope_scaling values must be numbers > 0, got {scaling}")
    if not scaling["low_freq_factor"] < scaling["high_freq_factor"]:
        raise ValueError(f"LlamaConfig.rope_scaling: low_freq_factor must be below "
                         f"high_freq_factor, got {scaling}")


class RMSNorm(nn.Module):
    """x / sqrt(mean_C(x^2) + eps) * weight over the last dimension, in float32 (HF's rounding)."""

    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):  # (..., C) -> (..., C) in x's dtype
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)  # (..., C)
        return self.weight * normed.to(x.dtype)


def rope_frequencies(config):
    """RoPE's f_i = rope_theta^(-2i / hs), i < hs/2: (hs/2,) float32 on the CPU; with Llama 3's
    rope_scaling rescaled exactly as Hugging Face's _compute_llama3_parameters does."""
    hs = config.head_dim
    # (hs/2,)
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, hs, 2, dtype=torch.int64).float() / hs))
    if config.rope_scaling is None:
        return inv_freq
    factor, low, high, old_length = (config.rope_scaling[k] for k in (
        "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"))
    wavelength = 2 * math.pi / inv_freq  # (hs/2,) positions per turn
    slow = wavelength > old_length / low  # longer than the trained context: divided by factor
    fast = wavelength < old_length / high  # many turns within the context: kept
    scaled = torch.where(slow, inv_freq / factor, inv_freq)  # (hs/2,)
    smooth = (old_length / wavelength - low) / (high - low)  # (hs/2,) 0 at the slow edge, 1 fast
    between = (1 - smooth) * scaled / factor + smooth * scaled  # (hs/2,)
    return torch.where(~slow & ~fast, between, scaled)


def rope_cos_sin(pos, inv_freq, dtype):
    """pos (T,) or (B, T) int64 positions -> cos, sin: (T, hs) or (B, T, hs) in dtype, the angles
    p * f_i computed in float32 (dimension i and i + hs/2 share one)."""
    angles = pos[..., None].float() * inv_freq.to(pos.device)  # (..., T, hs/2)
    angles = torch.cat([angles, angles], dim=-1)  # (..., T, hs)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x, cos, sin):
    """x (B, nh, T, hs) turned by RoPE: x * cos + rotate_half(x) * sin. cos, sin (T, hs) or (B, T,
    hs) -> (B, nh, T, hs)."""
    cos, sin = cos.unsqueeze(-3), sin.unsqueeze(-3)  # (1 or B, 1, T, hs)
    x1, x2 = x.chunk(2, dim=-1)  # (B, nh, T, hs/2) each
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin  # (B, nh, T, hs)


class GroupedQueryAttention(nn.Module):
    """Causal attention with RoPE on q and k; n_kv_head key/value heads shared by n_head queries."""

    def __init__(self, config):
        super().__init__()
        C, hs, n_head, n_kv_head = config.n_embd, config.head_dim, config.n_head, config.n_kv_head
        self.q_proj = nn.Linear(C, n_head * hs, bias=config.qkv_bias)
        self.k_proj = nn.Linear(C, n_kv_head * hs, bias=config.qkv_bias)
        self.v_proj = nn.Linear(C, n_kv_head * hs, bias=config.qkv_bias)
        self.o_proj = nn.Linear(n_head * hs, C, bias=config.o_bias)
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, hs

    def forward(self, x, cos, sin, attn_mask=None, kv_cache=None, start=0):
        """x (B, T, C) -> (B, T, C); cos, sin as apply_rope takes them. attn_mask, kv_cache and
        start as model.CausalSelfAttention takes them, the cache holding n_kv_head heads: (k, v),
        each (B, n_kv_head, L, hs), keys stored after RoPE."""
        B, T, _ = x.shape
        hs = self.head_dim
        q = self.q_proj(x).view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, self.n_kv_head, hs).transpose(1, 2)  # (B, n_kv, T, hs)
        v = self.v_proj(x).view(B, T, self.n_kv_head, hs).transpose(1, 2)  # (B, n_kv, T, hs)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv_cache is not None:
            k_cache, v_cache = kv_cache
            k_cache[:, :, start : start + T], v_cache[:, :, start : start + T] = k, v
            # (B, n_kv, S, hs), S = start + T
            k, v = k_cache[:, :, : start + T], v_cache[:, :, : start + T]
        is_causal = attn_mask is None and T > 1
        assert not is_causal or k.size(2) == T, (
            f"causal attention needs S == T, got T={T}, S={k.size(2)}")
        group = self.n_head // self.n_kv_head
        if group > 1:  # query head h reads k/v head h // group
            # (B, nh, S, hs)
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask, is_causal=is_causal)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * hs))  # (B, T, C)


class SwiGLU(nn.Module):
    """The MLP: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.n_embd, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.n_embd, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.n_embd, bias=False)

    def forward(self, x):  # (B, T, C) -> (B, T, C)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm residual block: attention, then the MLP, each after its own RMSNorm."""

    def __init__(self, config):
        super().__init__()
        self.input_layernorm = RMSNorm(config.n_embd, config.rms_norm_eps)
        self.self_attn = GroupedQueryAttention(config)
        self.post_attention_layernorm = RMSNorm(config.n_embd, config.rms_norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x, cos, sin, attn_mask=None, kv_cache=None, start=0):  # (B, T, C) -> same
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn_mask, kv_cache, start)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    """The decoder: token embedding, n_layer Blocks, a final RMSNorm, lm_head. model.GPT's
    interface, so it is the policy or reference wherever a GPT is."""

    # plumbing/lora.apply_lora's default targets: every projection of the blocks
    lora_targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.model = nn.ModuleDict(dict(
            embed_tokens=nn.Embedding(config.vocab_size, config.n_embd),  # token embeddings
            layers=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            norm=RMSNorm(config.n_embd, config.rms_norm_eps),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        # Hugging Face's init: matrices N(0, 0.02), biases 0, RMSNorm gains 1
        for name, p in self.named_parameters():
            if p.dim() == 2:
                nn.init.normal_(p, mean=0.0, std=0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def num_params(self, non_embedding=True) -> int:
        """Parameter count (a tied embedding counted once). non_embedding=True leaves out the input
        embedding table when lm_head has its own (a tied table is the output layer and counts, as in
        GPT.num_params)."""
        n = sum(p.numel() for p in self.parameters())
        untied = not self.config.tie_embeddings
        return n - self.model.embed_tokens.weight.numel() if non_embedding and untied else n

    # idx (B, T) int64 and attention_mask checked as GPT checks them (block_size, vocab_size)
    _check_inputs = GPT._check_inputs

    def _transformer(self, idx, pos, attn_mask=None, kv_caches=None, start=0):
        """idx (B, T), pos (T,) or (B, T) -> final hidden states (B, T, C). No input checks
        (internal)."""
        x = self.model.embed_tokens(idx)  # (B, T, C)
        # (T, hs) or (B, T, hs) each
        cos, sin = rope_cos_sin(pos, rope_frequencies(self.config), x.dtype)
        for i, block in enumerate(self.model.layers):
            x = block(x, cos, sin, attn_mask, None if kv_caches is None else kv_caches[i], start)
        return self.model.norm(x)  # (B, T, C)

    def hidden_states(self, idx, attention_mask=None):
        """Final hidden states, after the last RMSNorm, before lm_head. Shape: idx (B, T) int64,
        attention_mask None or (B, T) bool/0-1 marking the real tokens of LEFT-padded rows (RoPE
        positions count from each row's first real token, pads are never attended to) -> (B, T, C)
        in the weights' dtype, junk at pads. Right padding needs no mask."""
        mask = self._check_inputs(idx, attention_mask)
        if mask is None or mask.all():
            return self._transformer(idx, torch.arange(idx.size(1), device=idx.device))
        return self._transformer(idx, *_left_padding(mask))

    def forward(self, idx, attention_mask=None):
        """Next-token logits. Shape: idx (B, T) int64, attention_mask as in hidden_states -> (B, T,
        V)."""
        return self.lm_head(self.hidden_states(idx, attention_mask))  # (B, T, V)

    # ---- the forward pass ends here; below: sampling and Hugging Face checkpoints

    # GPT's sampling, word for word: it needs _check_inputs, _kv_caches, _transformer and lm_head
    generate = GPT.generate
    complete = GPT.complete

    def _kv_caches(self, B, length):
        """Empty key/value caches for generate: per layer (k, v), each (B, n_kv_head, length, hs) in
        the weights' dtype and device."""
        c, param = self.config, self.lm_head.weight
        return [tuple(param.new_empty(B, c.n_kv_head, length, c.head_dim) for _ in "kv")
                for _ in range(c.n_layer)]

    @classmethod
    def from_pretrained(cls, path, dtype=torch.float32):
        """Load a LlamaForCausalLM or Qwen2ForCausalLM checkpoint: a local directory with
        config.json and model.safetensors, or model.safetensors.index.json and its shards, into a
        model whose parameters have dtype (float32, bfloat16, ...). The model is built on the meta
        device (no memory, no init), then each tensor is read from its file, cast to dtype and put
        in place as the parameter: a bfloat16 load never holds a float32 copy of the model, only
        one tensor at a time. Raises ValueError (naming the file and the key) for config values
        this model cannot represent and for missing, unexpected or mis-shaped tensors; unknown
        config keys are listed in a warning."""
        directory = Path(path)
        if not directory.is_dir():
            raise FileNotFoundError(f"{path}: not a directory; Llama.from_pretrained reads a local "
                                    f"directory with config.json and model.safetensors")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        config_file = directory / "config.json"
        config = config_from_hf(json.loads(config_file.read_text()), config_file)
        files = _weight_files(directory)  # {tensor name: its file}
        with torch.device("meta"):
            model = cls(config)
        expected = dict(model.named_parameters())  # tied: lm_head.weight is embed_tokens'
        tied_head = files.pop("lm_head.weight", None) if config.tie_embeddings else None
        where = directory / (_INDEX if (directory / _INDEX).is_file() else "model.safetensors")
        missing, unexpected = sorted(expected.keys() - files.keys()), sorted(files.keys()
                                                                             - expected.keys())
        if missing or unexpected:
            raise ValueError(f"{where}: missing tensors {missing}, unexpected tensors {unexpected}")
        for name, file in files.items():  # the headers alone: every shape before any tensor
            with safe_open(file, framework="pt") as f:
                shape = tuple(f.get_slice(name).get_shape())
            if shape != tuple(expected[name].shape):
                raise ValueError(f"{file}: tensor '{name}' has shape {shape}, but config.json "
                                 f"implies {tuple(expected[name].shape)}")
        for file in sorted(set(files.values())):  # shard by shard, tensor by tensor
            with safe_open(file, framework="pt") as f:
                for name in [n for n, in_file in files.items() if in_file == file]:
                    module, _, attribute = name.rpartition(".")
                    setattr(model.get_submodule(module), attribute,
                            nn.Parameter(f.get_tensor(name).to(dtype)))
        if config.tie_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
            if tied_head is not None:
                with safe_open(tied_head, framework="pt") as f:
                    head = f.get_tensor("lm_head.weight").to(dtype)
                if not torch.equal(head, model.lm_head.weight.detach()):
                    raise ValueError(f"{tied_head}: lm_head.weight differs from "
                                     "model.embed_tokens.weight, but config.json says "
                                     "tie_word_embeddings")
        assert not any(p.is_meta for p in model.parameters()), "a parameter was not loaded"
        return model

    def save_pretrained(self, path, eos_token_id=None):
        """Write config.json and model.safetensors (the weights in their dtype) in the Hugging Face
        layout: a LlamaForCausalLM, or a Qwen2ForCausalLM for biases on q, k, v alone; loadable by
        Llama.from_pretrained and transformers.AutoModelForCausalLM.from_pretrained (same logits).
        A tied lm_head is left out, as HF writes it. eos_token_id goes in as bos/eos token."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {name: p.detach().contiguous().cpu() for name, p in self.named_parameters()}
        save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
        hf = hf_config(self.config, eos_token_id, self.lm_head.weight.dtype)
        (path / "config.json").write_text(json.dumps(hf, indent=2) + "\n")


# -----------------------------------------------------------------------------
# Hugging Face configs and weight files: helpers of from_pretrained and save_pretrained

_INDEX = "model.safetensors.index.json"
# LlamaConfig field: config.json key, for the keys every checkpoint states
_HF_NAMES = {"block_size": "max_position_embeddings", "vocab_size": "vocab_size",
             "n_layer": "num_hidden_layers", "n_head": "num_attention_heads",
             "n_embd": "hidden_size", "intermediate_size": "intermediate_size"}
# config.json keys that change the function computed, at the only values this model has
_HF_FIXED = {"hidden_act": ["silu"], "mlp_bias": [False], "attention_dropout": [0, 0.0],
             "use_sliding_window": [False], "partial_rotary_factor": [1, 1.0]}
# config.json keys read by config_from_hf beside _HF_NAMES and _HF_FIXED
_HF_READ = {"model_type", "architectures", "num_key_value_heads", "head_dim", "rms_norm_eps",
            "rope_theta", "rope_scaling", "rope_parameters", "tie_word_embeddings",
            "attention_bias", "layer_types"}
# config.json keys that do not change the logits (sliding_window: only with use_sliding_window)
_HF_IGNORED = {"bos_token_id", "eos_token_id", "pad_token_id", "initializer_range", "use_cache",
               "pretraining_tp", "sliding_window", "max_window_layers", "transformers_version",
               "torch_dtype", "dtype", "_name_or_path", "output_hidden_states", "output_attentions",
               "return_dict", "is_encoder_decoder", "id2label", "label2id", "problem_type",
               "tokenizer_class", "chunk_size_feed_forward", "tie_encoder_decoder"}
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def config_from_hf(hf, config_file):
    """A LlamaConfig from the dict of a Hugging Face config.json (`config_file`, named in errors):
    model_type "llama" or "qwen2". Raises ValueError, naming the key, for what this model cannot
    represent; warns about unknown keys."""
    def reject(key, why="is not supported by this Llama implementation"):
        raise ValueError(f"{config_file}: {key}={hf.get(key)!r} {why}")

    if hf.get("model_type") not in _ARCHITECTURES:
        reject("model_type", "is not a Llama: this loader reads 'llama' and 'qwen2'")
    if missing_keys := [k for k in _HF_NAMES.values() if k not in hf]:
        raise ValueError(f"{config_file}: missing keys {missing_keys}")
    if hf.get("architectures", None) not in (None, [_ARCHITECTURES[hf["model_type"]]]):
        reject("architectures")
    for key, values in _HF_FIXED.items():
        if key in hf and hf[key] not in values:
            reject(key)
    if any(kind != "full_attention" for kind in hf.get("layer_types") or []):
        reject("layer_types", "asks for sliding-window attention, which this model leaves out")
    if unknown := sorted(hf.keys() - set(_HF_NAMES.values()) - _HF_FIXED.keys() - _HF_READ
                         - _HF_IGNORED):
        warnings.warn(f"{config_file}: ignored {len(unknown)} unknown config keys: {unknown}",
                      stacklevel=3)
    qwen2 = hf["model_type"] == "qwen2"  # Qwen2: biases on q, k, v, none on o
    attention_bias = hf.get("attention_bias", False)
    rope_theta, rope_scaling = _rope_from_hf(hf, config_file)
    fields = {ours: hf[theirs] for ours, theirs in _HF_NAMES.items()}
    fields.update(n_kv_head=hf.get("num_key_value_heads") or hf["num_attention_heads"],
                  head_dim=hf.get("head_dim"), rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
                  rope_theta=rope_theta, rope_scaling=rope_scaling,
                  qkv_bias=True if qwen2 else attention_bias,
                  o_bias=False if qwen2 else attention_bias,
                  tie_embeddings=hf.get("tie_word_embeddings", False))
    try:
        return LlamaConfig(**fields)
    except ValueError as e:
        theirs = {**_HF_NAMES, "n_kv_head": "num_key_value_heads", "qkv_bias": "attention_bias",
                  "o_bias": "attention_bias", "tie_embeddings": "tie_word_embeddings"}
        named = [f"{ours}: {key}" for ours, key in theirs.items() if ours != key
                 and f"{ours}=" in str(e)]
        raise ValueError(f"{config_file}: {e} [in config.json {', '.join(named)}]" if named
                         else f"{config_file}: {e}") from None


def _rope_from_hf(hf, config_file):
    """(rope_theta, rope_scaling for LlamaConfig) from a config.json: transformers 4's rope_theta
    and rope_scaling, or transformers 5's rope_parameters (the theta inside)."""
    if hf.get("rope_parameters") and hf.get("rope_scaling"):
        raise ValueError(f"{config_file}: rope_scaling={hf['rope_scaling']!r} beside "
                         "rope_parameters: give one of the two")
    key = "rope_parameters" if hf.get("rope_parameters") else "rope_scaling"
    rope = dict(hf.get(key) or {})
    theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = rope.pop("rope_type", rope.pop("type", "default"))
    if rope.get("partial_rotary_factor", 1.0) in (1, 1.0):
        rope.pop("partial_rotary_factor", None)
    if rope_type == "default" and not rope:
        return theta, None
    if rope_type != "llama3":
        raise ValueError(f"{config_file}: {key}={hf[key]!r} is not supported by this Llama "
                         "implementation (only Llama 3's rope_type 'llama3', or none)")
    # as Hugging Face: without it, the trained context is max_position_embeddings
    rope.setdefault("original_max_position_embeddings", hf["max_position_embeddings"])
    try:
        _check_rope_scaling(rope)
    except ValueError as e:
        raise ValueError(f"{config_file}: {key}: {e}") from None
    return theta, rope


def hf_config(config, eos_token_id, dtype):
    """The config.json dict of a Llama (LlamaForCausalLM; Qwen2ForCausalLM for biases on q, k, v
    alone), in transformers 4's rope keys, which transformers 5 reads too."""
    model_type = "qwen2" if config.qkv_bias and not config.o_bias else "llama"
    scaling = None if config.rope_scaling is None else {"rope_type": "llama3",
                                                        **config.rope_scaling}
    hf = {"architectures": [_ARCHITECTURES[model_type]], "model_type": model_type,
          **{theirs: getattr(config, ours) for ours, theirs in _HF_NAMES.items()},
          "num_key_value_heads": config.n_kv_head, "head_dim": config.head_dim,
          "hidden_act": "silu", "rms_norm_eps": config.rms_norm_eps,
          "rope_theta": config.rope_theta, "rope_scaling": scaling,
          "tie_word_embeddings": config.tie_embeddings, "bos_token_id": eos_token_id,
          "eos_token_id": eos_token_id, "torch_dtype": str(dtype).removeprefix("torch.")}
    if model_type == "llama":
        hf.update(attention_bias=config.qkv_bias, mlp_bias=False)
    else:
        hf.update(use_sliding_window=False)
    return hf


def _weight_files(directory):
    """{tensor name: its .safetensors file} of a checkpoint directory, from the shard index or the
    single model.safetensors (its header alone is read). Raises FileNotFoundError without either."""
    if (index := directory / _INDEX).is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = {name: directory / file for name, file in weight_map.items()}
    elif (single := directory / "model.safetensors").is_file():
        with safe_open(single, framework="pt") as f:
            files = dict.fromkeys(f.keys(), single)
    else:
        raise FileNotFoundError(f"{directory} holds neither model.safetensors nor {_INDEX} "
                                f"(pytorch_model.bin is not read): "
                                f"{sorted(p.name for p in directory.iterdir())}")
    if absent := sorted({str(f) for f in files.values() if not f.is_file()}):
        raise FileNotFoundError(f"{directory / _INDEX}: names shards that are not there: {absent}")
    # old checkpoints store RoPE's frequencies; they are computed here
    return {name: file for name, file in files.items() if not name.endswith("rotary_emb.inv_freq")}
