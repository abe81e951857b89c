"""A compact GPT-2: the policy and the reference model of DPO.

GPT-2 (Radford et al., 2019) as in nanoGPT: learned positions, pre-LayerNorm blocks, tanh-GELU MLP,
tied input and output embeddings, causal attention via F.scaled_dot_product_attention, GPT-2
initialisation. DPO (Rafailov et al., 2023) uses one as the policy pi_theta and a frozen copy as
pi_ref; no DPO equation lives here. The file reads top to bottom as the forward pass (GPTConfig to
GPT.forward); after it come batched sampling with a key/value cache for left-padded prompts, and
checkpoints in the Hugging Face GPT-2 layout.

Left out: a sliding context window (generating past block_size raises), untied or sharded
checkpoints, GPT-2 variants with other activations, layer-norm eps or attention scaling (rejected on
load), beam search.
"""

import dataclasses
import json
import math
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from torch.nn import functional as F


def _check_int(name, value, low, high=None, optional=False):
    """Raise ValueError unless value is an int (not a bool) in [low, high], or None when
    optional."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None
                                                                                and value > high):
        raise ValueError(f"{name} must be an int in [{low}, "
                         f"{'inf' if high is None else high}], got {value!r}")


@dataclasses.dataclass
class GPTConfig:
    block_size: int = 1024  # longest sequence: the number of learned positions
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm layers, as in GPT-2

    def __post_init__(self):
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            _check_int(f"GPTConfig.{name}", getattr(self, name), 1)
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd={self.n_embd} is not divisible by "
                             f"n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must lie in [0, 1), got {self.dropout!r}")


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        # q, k, v of all heads at once
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.dropout = config.n_head, config.dropout

    def forward(self, x, attn_mask=None, kv_cache=None, start=0):
        """x (B, T, C) -> (B, T, C). attn_mask: bool (B, 1, T, S), True where a query may see a key;
        None is plain causal attention (S == T) or, for one new token (T == 1), attention to all S
        cached keys. kv_cache: (k, v), each (B, nh, L, hs); this call writes its keys and values at
        [start, start + T)."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        # (B, nh, T, hs)
        q, k, v = (z.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for z in (q, k, v))
        if kv_cache is not None:
            k_cache, v_cache = kv_cache
            k_cache[:, :, start : start + T], v_cache[:, :, start : start + T] = k, v
            # (B, nh, S, hs), S = start + T
            k, v = k_cache[:, :, : start + T], v_cache[:, :, : start + T]
        is_causal = attn_mask is None and T > 1
        assert not is_causal or k.size(2) == T, (
            f"causal attention needs S == T, got T={T}, S={k.size(2)}")
        y = F.scaled_dot_product_attention(q, k, v, attn_mask,
                                           self.dropout if self.training else 0.0, is_causal)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):  # (B, T, C) -> (B, T, C)
        # GPT-2's "gelu_new"
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, attn_mask=None, kv_cache=None, start=0):  # (B, T, C) -> (B, T, C)
        x = x + self.attn(self.ln_1(x), attn_mask, kv_cache, start)
        return x + self.mlp(self.ln_2(x))


def _left_padding(mask):
    """mask (B, T) bool, True on real tokens -> position ids (B, T) int64 (0 at each row's first
    real token, like HF's cumsum(mask) - 1) and attention mask (B, 1, T, T) bool: causal, padded
    keys hidden. A padded query keeps its own key so that no mask row is empty (some SDPA backends
    turn those into NaNs, which leak via 0 * NaN)."""
    T = mask.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=mask.device).tril()  # (T, T)
    eye = torch.eye(T, dtype=torch.bool, device=mask.device)  # (T, T)
    return (mask.long().cumsum(dim=1) - 1).clamp(min=0), causal & (mask[:, None, None, :] | eye)

class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embeddings
            wpe=nn.Embedding(config.block_size, config.n_embd),  # learned position embeddings
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied input and output embeddings
        # GPT-2 init: weights N(0, 0.02), residual projections N(0, 0.02 / sqrt(2 n_layer)), biases
        # 0, LayerNorm 1
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 2:
                residual = name.endswith("c_proj.weight")
                nn.init.normal_(p, mean=0.0,
                                std=0.02 / math.sqrt(2 * config.n_layer) if residual else 0.02)

    def num_params(self, non_embedding=True) -> int:
        """Parameter count (the tied embedding counted once). non_embedding=True leaves out the
        position embeddings (as nanoGPT does; the token embedding stays in, since it doubles as the
        output layer)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def _check_inputs(self, idx, attention_mask):
        """Validate idx (B, T) int64 and attention_mask (B, T) bool or 0/1; return the mask as bool
        (or None)."""
        if not isinstance(idx, torch.Tensor) or idx.dtype != torch.long:
            raise TypeError("idx must be an int64 (torch.long) tensor, got "
                            f"{getattr(idx, 'dtype', type(idx))}")
        if idx.ndim != 2 or idx.numel() == 0:
            raise ValueError(f"idx must have shape (B, T) with B, T >= 1, got {tuple(idx.shape)}")
        if idx.size(1) > self.config.block_size:
            raise ValueError(f"sequence length {idx.size(1)} exceeds block_size "
                             f"{self.config.block_size}")
        lo, hi = torch.aminmax(idx)
        if lo < 0 or hi >= self.config.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}), got "
                             f"{lo.item()}..{hi.item()}")
        if attention_mask is None:
            return None
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != idx.shape:
            got = getattr(attention_mask, "shape", type(attention_mask))
            raise ValueError("attention_mask must be a tensor of idx's shape "
                             f"{tuple(idx.shape)}, got {got}")
        if attention_mask.dtype != torch.bool:
            if not ((attention_mask == 0) | (attention_mask == 1)).all():
                raise ValueError("attention_mask must hold only 0 and 1 (or be bool)")
            attention_mask = attention_mask != 0
        return attention_mask.to(idx.device)

    def _transformer(self, idx, pos, attn_mask=None, kv_caches=None, start=0):
        """idx (B, T), pos (T,) or (B, T) -> final hidden states (B, T, C). No input checks
        (internal)."""
        # (B, T, C)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for i, block in enumerate(self.transformer.h):
            x = block(x, attn_mask, None if kv_caches is None else kv_caches[i], start)
        return self.transformer.ln_f(x)  # (B, T, C)

    def hidden_states(self, idx, attention_mask=None):
        """Final hidden states, after the last LayerNorm, before lm_head. Shape: idx (B, T) int64,
        attention_mask None or (B, T) bool/0-1 marking the real tokens of LEFT-padded rows
        (positions count from each row's first real token, pads are never attended to) -> (B, T, C),
        junk at pads. Right padding needs no mask."""
        mask = self._check_inputs(idx, attention_mask)
        if mask is None or mask.all():
            return self._transformer(idx, torch.arange(idx.size(1), device=idx.device))
        return self._transformer(idx, *_left_padding(mask))

    def forward(self, idx, attention_mask=None):
        """Next-token logits. Shape: idx (B, T) int64, attention_mask as in hidden_states -> (B, T,
        V)."""
        return self.lm_head(self.hidden_states(idx, attention_mask))  # (B, T, V)

    # ---- the forward pass ends here; below: cropping, sampling, and Hugging Face GPT-2 checkpoints

    # plumbing/lora.apply_lora's default targets: every nn.Linear of the blocks (lm_head is tied)
    lora_targets = ("c_attn", "c_proj", "c_fc")

    def crop_block_size(self, block_size):
        """Keep only the first block_size position embeddings (e.g. to fine-tune a 1024-position
        GPT-2 on short sequences). Replaces a parameter: call it before building the optimizer."""
        _check_int("block_size", block_size, 1, self.config.block_size)
        self.config = dataclasses.replace(self.config, block_size=block_size)
        wpe = self.transformer.wpe
        wpe.weight, wpe.num_embeddings = (nn.Parameter(wpe.weight.detach()[:block_size].clone()),
                                          block_size)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, eos_token=None,
                 attention_mask=None):
        """Sample max_new_tokens after each prompt, with a key/value cache (one token per step after
        the prompt). Shape: idx (B, T) int64 prompts, LEFT-padded where attention_mask (B, T)
        bool/0-1 marks the real tokens -> (B, T + max_new_tokens) int64: the prompts, then the new
        tokens. temperature=0 is greedy; top_k keeps the k most likely tokens; once a row emits
        eos_token all its later positions are eos_token. Uses torch's global generator (reproducible
        under torch.manual_seed). Raises ValueError if T + max_new_tokens > block_size (the window
        is never cropped). Call model.eval() first if dropout > 0."""
        mask = self._check_inputs(idx, attention_mask)
        _check_int("max_new_tokens", max_new_tokens, 0)
        if not temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
        _check_int("top_k", top_k, 1, optional=True)
        _check_int("eos_token", eos_token, 0, self.config.vocab_size - 1, optional=True)
        (B, T), N = idx.shape, max_new_tokens
        if T + N > self.config.block_size:
            raise ValueError(f"prompt length {T} + max_new_tokens {N} exceeds block_size "
                             f"{self.config.block_size}; "
                             "this model does not crop the context window")
        if mask is not None and (not mask[:, -1].all() or (mask[:, 1:] < mask[:, :-1]).any()):
            raise ValueError("attention_mask must describe LEFT padding: per row some "
                             "0s, then only 1s")
        out = torch.cat([idx, idx.new_empty(B, N)], dim=1)  # (B, T + N), filled in step by step
        caches = self._kv_caches(B, T + N)
        if mask is None or mask.all():
            pos, attn_mask, key_mask = torch.arange(T, device=idx.device), None, None  # pos (T,)
        else:
            pos, attn_mask = _left_padding(mask)  # (B, T), (B, 1, T, T)
            key_mask = torch.cat([mask, mask.new_ones(B, N)], dim=1)  # (B, T + N)
        finished = torch.zeros(B, dtype=torch.bool, device=idx.device)  # (B,)
        # the tokens fed to the model and where their keys/values go in the caches
        x, start = idx, 0
        for t in range(T, T + N):  # t: where the next token goes in out
            hidden = self._transformer(x, pos, attn_mask, caches, start)  # (B, T or 1, C)
            next_token = _sample(self.lm_head(hidden[:, -1]), temperature, top_k)  # (B,)
            if eos_token is not None:
                next_token = next_token.masked_fill(finished, eos_token)
                finished |= next_token == eos_token
            out[:, t] = next_token
            if eos_token is not None and finished.all():
                out[:, t + 1 :] = eos_token
                break
            x, start, pos = next_token[:, None], t, pos[..., -1:] + 1  # (B, 1), (1,) or (B, 1)
            # (B, 1, 1, t + 1)
            attn_mask = None if key_mask is None else key_mask[:, None, None, : t + 1]
        return out

    def _kv_caches(self, B, length):
        """Empty key/value caches for generate: per layer (k, v), each (B, nh, length, hs) in the
        weights' dtype and device."""
        C, n_head, param = self.config.n_embd, self.config.n_head, self.lm_head.weight
        return [tuple(param.new_empty(B, n_head, length, C // n_head) for _ in "kv")
                for _ in range(self.config.n_layer)]

    @torch.no_grad()
    def complete(self, prompts, max_new_tokens, temperature=1.0, top_k=None, eos_token=None,
                 batch_size=64):
        """Continue each prompt; return only the new tokens of each, cut after the first eos_token
        (kept). Shape: prompts list[list[int]] (each non-empty) -> list[list[int]] in the order of
        prompts. Batches of up to batch_size prompts, grouped by length to keep padding small, are
        left-padded and passed to generate. Reproducible under torch.manual_seed for the same
        prompts and batch_size."""
        _check_int("batch_size", batch_size, 1)
        for i, p in enumerate(prompts):
            if not isinstance(p, (list, tuple)) or not p or not all(isinstance(t, int) for t in p):
                raise ValueError(f"prompts[{i}] must be a non-empty list of int token "
                                 f"ids, got {p!r:.80}")
        device = self.lm_head.weight.device
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        completions = [None] * len(prompts)
        for first in range(0, len(order), batch_size):
            rows = order[first : first + batch_size]
            T = max(len(prompts[i]) for i in rows)
            # (b, T), 0-padded
            idx = torch.tensor([[0] * (T - len(prompts[i])) + list(prompts[i]) for i in rows])
            mask = torch.tensor([[False] * (T - len(prompts[i])) + [True] * len(prompts[i])
                                 for i in rows])  # (b, T)
            new_tokens = self.generate(idx.to(device), max_new_tokens, temperature, top_k,
                                       eos_token,
                                       # b lists of N ids
                                       attention_mask=mask.to(device))[:, T:].tolist()
            for i, tokens in zip(rows, new_tokens):
                completions[i] = (tokens[: tokens.index(eos_token) + 1] if eos_token in tokens
                                  else tokens)
        return completions

    @classmethod
    def from_pretrained(cls, path_or_name, dropout=0.0):
        """Load a GPT-2 checkpoint in the Hugging Face layout: a directory with config.json and
        model.safetensors (or pytorch_model.bin), or a Hub name such as "gpt2" (see
        _resolve_checkpoint_dir), into a float32 model. Raises ValueError for configurations this
        model cannot represent and for missing, unexpected or mis-shaped tensors (naming them);
        unknown config keys are listed in a warning."""
        directory = _resolve_checkpoint_dir(path_or_name)
        config_file = directory / "config.json"
        hf = json.loads(config_file.read_text())
        if missing_keys := [k for k in _HF_REQUIRED if k not in hf]:
            raise ValueError(f"{config_file}: missing keys {missing_keys}")
        supported = {**{k: [v] for k, v in _HF_FIXED.items()}, "n_inner": [None, 4 * hf["n_embd"]],
                     "n_ctx": [hf["n_positions"]],
                     "architectures": [None, ["GPT2LMHeadModel"], ["GPT2Model"]]}
        for key, values in supported.items():
            if key in hf and hf[key] not in values:
                raise ValueError(f"{config_file}: {key}={hf[key]!r} is not supported by this "
                                 "GPT-2 implementation")
        if unknown := sorted(hf.keys() - set(_HF_REQUIRED) - supported.keys() - _HF_IGNORED):
            warnings.warn(f"{config_file}: ignored {len(unknown)} unknown config keys: {unknown}",
                          stacklevel=2)
        config = GPTConfig(block_size=hf["n_positions"], vocab_size=hf["vocab_size"],
                           n_layer=hf["n_layer"],
                           n_head=hf["n_head"], n_embd=hf["n_embd"], dropout=dropout, bias=True)

        if (weights_file := directory / "model.safetensors").is_file():
            raw = load_file(weights_file)
        elif (weights_file := directory / "pytorch_model.bin").is_file():
            raw = torch.load(weights_file, map_location="cpu", weights_only=True)
        else:
            raise FileNotFoundError(f"{directory} holds neither model.safetensors nor "
                                    f"pytorch_model.bin (sharded checkpoints are not supported): "
                                    f"{sorted(p.name for p in directory.iterdir())}")
        # GPT2Model: no prefix
        raw = {k if k.startswith(("transformer.", "lm_head.")) else f"transformer.{k}": v
               # buffers are not parameters
               for k, v in raw.items() if not k.endswith(_HF_MASK_BUFFERS)}
        # (out, in) as in nn.Linear
        tensors = {k: v.t() if k.endswith(_CONV1D) else v for k, v in raw.items()}
        lm_head = tensors.pop("lm_head.weight", None)
        if lm_head is not None and not torch.equal(lm_head,
                                                   tensors.get("transformer.wte.weight", lm_head)):
            raise ValueError(f"{weights_file}: lm_head.weight differs from transformer.wte.weight; "
                             "untied output embeddings are not supported")

        model = cls(config)
        target = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
        missing, unexpected = sorted(target.keys() - tensors.keys()), sorted(tensors.keys()
                                                                             - target.keys())
        if missing or unexpected:
            raise ValueError(f"{weights_file}: missing tensors {missing}, unexpected "
                             f"tensors {unexpected}")
        with torch.no_grad():
            for key, value in tensors.items():
                if value.shape != target[key].shape:
                    note = (" (after transposing HF Conv1D (in, out) to (out, in))"
                            if key.endswith(_CONV1D) else "")
                    raise ValueError(f"{weights_file}: tensor '{key}' has shape "
                                     f"{tuple(value.shape)}{note}, but config.json implies "
                                     f"{tuple(target[key].shape)}")
                target[key].copy_(value)
        return model

    def save_pretrained(self, path, eos_token_id=None):
        """Write config.json and model.safetensors in the Hugging Face GPT-2 layout, loadable by
        GPT.from_pretrained and transformers.GPT2LMHeadModel.from_pretrained (same logits). A
        bias=False model is written with zero biases: exactly the same function (it loads back with
        bias=True). eos_token_id goes in as bos/eos token."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {f"transformer.{name}.weight": self.transformer[name].weight.detach()
                   for name in ("wte", "wpe")}
        for name, module in self.transformer.named_modules(prefix="transformer"):
            if isinstance(module, (nn.Linear, nn.LayerNorm)):
                weight = module.weight.detach()
                tensors[f"{name}.weight"] = (weight.t() if f"{name}.weight".endswith(_CONV1D)
                                             else weight)
                tensors[f"{name}.bias"] = (weight.new_zeros(len(weight)) if module.bias is None
                                           else module.bias.detach())
        tensors = {k: v.contiguous().cpu() for k, v in tensors.items()}
        save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
        c = self.config
        hf_config = {"architectures": ["GPT2LMHeadModel"], **_HF_FIXED, "vocab_size": c.vocab_size,
                     "n_positions": c.block_size, "n_ctx": c.block_size, "n_embd": c.n_embd,
                     "n_layer": c.n_layer, "n_head": c.n_head, "n_inner": None,
                     "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": c.dropout,
                     "bos_token_id": eos_token_id, "eos_token_id": eos_token_id}
        (path / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")


# -----------------------------------------------------------------------------
# Sampling and Hugging Face checkpoints: helpers of the methods above

def _sample(logits, temperature, top_k):
    """logits (B, V) -> next tokens (B,) int64. temperature 0 is greedy (argmax)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth_largest = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1).squeeze(1)  # (B,)



# Hugging Face GPT-2 stores these four weights as Conv1D, shaped (in, out): the transpose of
# nn.Linear's (out, in).
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# constant causal-mask buffers in old checkpoints
_HF_MASK_BUFFERS = (".attn.bias", ".attn.masked_bias")
_HF_REQUIRED = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")
# config.json keys that change the function computed, at the only values this model has (checked on
# load, written on save); n_inner, n_ctx and architectures are checked in from_pretrained.
_HF_FIXED = {"model_type": "gpt2", "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
             "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
             "add_cross_attention": False, "tie_word_embeddings": True}
# config.json keys that do not change the logits of a model in eval mode (dropout is set by
# from_pretrained).
_HF_IGNORED = {"attn_pdrop", "embd_pdrop", "resid_pdrop", "initializer_range", "bos_token_id",
               "eos_token_id", "pad_token_id", "summary_type", "summary_use_proj",
               "summary_activation", "summary_proj_to_labels", "summary_first_dropout",
               "task_specific_params", "use_cache", "reorder_and_upcast_attn",
               "transformers_version", "torch_dtype", "dtype", "_name_or_path",
               "output_hidden_states", "output_attentions", "return_dict",
               "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id",
               "problem_type", "tokenizer_class", "gradient_checkpointing"}


def _resolve_checkpoint_dir(path_or_name):
    """A local directory as given, or a Hugging Face Hub name downloaded by huggingface_hub (when
    installed and the network answers). Raises FileNotFoundError saying what to download and where
    to put it."""
    if Path(path_or_name).is_dir():
        return Path(path_or_name)
    name, error = str(path_or_name), None
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        reason, error = "huggingface_hub is not installed", e
    else:
        try:
            local = Path(snapshot_download(name,
                                           allow_patterns=["config.json", "model.safetensors"]))
            if not (local / "model.safetensors").exists():
                local = Path(snapshot_download(name,
                                               allow_patterns=["config.json", "pytorch_model.bin"]))
            return local
        # offline, unknown repository, invalid name: all end in the same advice
        except Exception as e:
            reason, error = f"{type(e).__name__}: {e}", e
    raise FileNotFoundError(
        f"'{name}' is not a local directory and could not be fetched from the Hugging Face Hub "
        f"({reason}). Download config.json and model.safetensors from "
        f"https://huggingface.co/{name}/tree/main into one directory, e.g. checkpoints/{name}/, "
        f"and pass that directory: GPT.from_pretrained('checkpoints/{name}')"
    ) from error


if __name__ == "__main__":
    # Smoke run of the demo-sized model (byte vocabulary): a training step and a few samples, in
    # seconds on a CPU.
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=256, vocab_size=257, n_layer=4, n_head=4, n_embd=128))
    print(f"{model.config}\nparameters: {model.num_params():,} non-embedding, "
          f"{model.num_params(False):,} in all")
    x = torch.randint(0, 257, (32, 129))  # (B, T + 1)
    for _ in range(2):  # the first step warms up
        t0 = time.perf_counter()
        F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).backward()
        step_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = model.eval().generate(x[:, :8].repeat(2, 1), max_new_tokens=64, top_k=50)  # (64, 8 + 64)
    gen_s = time.perf_counter() - t0
    print(f"forward+backward, 32 x 128 tokens, fp32: {step_s * 1e3:.0f} ms; generate, 64 rows x 64 "
          f"new tokens: {64 * 64 / gen_s:,.0f} tokens/s on {torch.get_num_threads()} threads")
    print("sample (untrained, so random token ids):", out[0, 8:24].tolist())
