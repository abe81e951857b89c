"""Low-rank adapters (LoRA) for model.GPT and llama.Llama: fine-tune a few small matrices, keep the
pretrained weights frozen.

Paper: Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models" (arXiv 2106.09685), Eq.
3:

    h = W0 x + (alpha / r) * B A x,     W0 (out, in) frozen,  A (r, in),  B (out, r),  r << min(in,
    out)

Only A and B are trained: r * (in + out) numbers per adapted layer instead of in * out.
  * Initialisation. A is random (here kaiming_uniform_ with a=sqrt(5), as nn.Linear initialises its
    weight and as the authors' loralib does), B is zero. So B A = 0 and the model starts out as
    exactly the base model, bit for
    bit: the adapter adds +0.0 to every output. Gradients still flow: dL/dB = (dL/dh) (A x)^T is
    non-zero, and A starts moving once B has.
  * Scaling alpha / r. The update is scaled by alpha / r, so that changing r does not force
    re-tuning the learning rate (section 4.1: "tuning alpha is roughly the same as tuning the
    learning rate"; they set alpha to the first r they try and leave it).
  * Merging. W = W0 + (alpha / r) B A is an ordinary (out, in) matrix: merge() adds it into W0 in
    place, after which the layer costs exactly what nn.Linear costs (no inference latency, section
    4.1); unmerge() subtracts it
    back (exact up to float rounding). merged_copy() gives a plain model.GPT that save_pretrained
    writes as an
    ordinary GPT-2 checkpoint.
  * Memory for DPO. DPO needs pi_ref, the model before fine-tuning. With LoRA the reference is the
    same network with the adapters switched off (adapters_disabled), so no second copy of the
    weights is kept, and the optimizer holds state only for A and B.
  * Dtypes. The adapter parameters are float32 even when the base is bfloat16: the adapter path is
    computed in float32 (x cast up) and its result cast to the base output's dtype before the add.
    With the adapters off, or at initialisation, the output is the base layer's own output.

Left out: QLoRA (a quantised W0), per-layer ranks or alphas, training biases or LayerNorms (the
paper's "bias-only" variants), adapters on the embeddings or the tied lm_head (rejected: merging
would change the input embedding too), and rsLoRA / DoRA style rescalings.
"""

import contextlib
import copy
import hashlib
import math

import torch
import torch.nn as nn


def _check_hparams(rank, alpha, dropout):
    """Raise ValueError unless rank is an int >= 1, alpha a finite number > 0 and dropout in [0,
    1)."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be an int >= 1, got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (0 < alpha < math.inf):
        raise ValueError(f"LoRA alpha must be a finite number > 0, got {alpha!r}")
    if (isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout
        < 1.0):
        raise ValueError(f"LoRA dropout must lie in [0, 1), got {dropout!r}")


class LoRALinear(nn.Module):
    """y = base(x) + (alpha / r) * B A dropout(x), with base (an nn.Linear) frozen in its own dtype
    and A, B float32.

    enabled=False (or a merged layer) returns base(x) itself. merge()/unmerge() fold the update into
    base.weight and back; while merged, forward is base(x) (which then includes the update), and the
    adapters get no gradient.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        _check_hparams(rank, alpha, dropout)
        self.base = base.requires_grad_(False)
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        device = base.weight.device
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=device,
                                               dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=device,
                                               dtype=torch.float32))
        # as nn.Linear's weight: U(-1/sqrt(in), 1/sqrt(in))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.enabled, self.merged = True, False

    def extra_repr(self):
        return f"rank={self.rank}, alpha={self.alpha}, enabled={self.enabled}, merged={self.merged}"

    def delta_weight(self):
        """(alpha / r) * B @ A: (out, in) float32, the update Eq. 3 adds to W0."""
        return self.scaling * (self.lora_B @ self.lora_A)  # (out, r) @ (r, in) -> (out, in)

    def forward(self, x):  # (..., in) -> (..., out), in the base layer's output dtype
        y = self.base(x)  # (..., out)
        if self.merged:
            if not self.enabled:
                raise RuntimeError("this LoRALinear is merged: unmerge() it before switching "
                                   "the adapter off")
            return y
        if not self.enabled:
            return y
        h = self.lora_dropout(x.float()) @ self.lora_A.t()  # (..., r) float32
        return y + (self.scaling * (h @ self.lora_B.t())).to(y.dtype)  # (..., out)

    @torch.no_grad()
    def merge(self):
        """W0 <- W0 + (alpha / r) B A, in place (added in float32, stored in W0's dtype)."""
        if self.merged:
            raise RuntimeError("LoRALinear.merge: already merged")
        w = self.base.weight
        w.copy_((w.float() + self.delta_weight()).to(w.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self):
        """W0 <- W0 - (alpha / r) B A: undoes merge() (exactly up to rounding; bf16 weights lose
        more)."""
        if not self.merged:
            raise RuntimeError("LoRALinear.unmerge: not merged")
        w = self.base.weight
        w.copy_((w.float() - self.delta_weight()).to(w.dtype))
        self.merged = False


def lora_layers(model):
    """[(name, LoRALinear)] of model, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]


def _require_lora(model, what):
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"{what}: the model has no LoRA adapters (call apply_lora first)")
    return layers


def _set_submodule(model, name, module):
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _matches(name, target):
    """'c_proj' matches 'transformer.h.0.attn.c_proj' and '...mlp.c_proj'; 'attn.c_proj' only the
    first."""
    return name == target or name.endswith("." + target)


def apply_lora(model, rank, alpha, dropout=0.0, targets=None):
    """Replace, in place, every nn.Linear of model whose name ends with a target (a module name such
    as "c_proj", which matches both attention's and the MLP's, or a dotted suffix such as
    "attn.c_proj") by a LoRALinear, and freeze every other parameter. targets=None: the model's own
    lora_targets (GPT: c_attn, c_proj, c_fc; Llama: its seven projections). Returns the replaced
    module names. Raises ValueError for rank < 1, alpha <= 0, dropout outside [0, 1), a target that
    matches no nn.Linear, a target on a tied weight (lm_head), targets=None for a model without
    lora_targets, or a model that already has adapters; nothing is changed when it raises."""
    if not isinstance(model, nn.Module):
        raise TypeError("apply_lora needs an nn.Module (a model.GPT or llama.Llama), got "
                        f"{type(model).__name__}")
    _check_hparams(rank, alpha, dropout)
    if targets is None:
        if not hasattr(model, "lora_targets"):
            raise ValueError(f"apply_lora: a {type(model).__name__} has no default lora_targets; "
                             "pass targets")
        targets = model.lora_targets
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"targets must be a non-empty sequence of module names, got {targets!r}")
    if lora_layers(model):
        raise ValueError("apply_lora: the model already has LoRA adapters")
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if unmatched := [t for t in targets if not any(_matches(n, t) for n in linears)]:
        raise ValueError(f"apply_lora: targets {unmatched} match no nn.Linear of the model; its "
                         f"nn.Linear modules are named like "
                         f"{sorted({n.rsplit('.', 1)[-1] for n in linears})}")
    names = [n for n in linears if any(_matches(n, t) for t in targets)]
    uses = {}  # id(parameter) -> how many modules hold it (2 for the tied wte / lm_head weight)
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    if tied := [n for n in names if uses[id(model.get_submodule(n).weight)] > 1]:
        raise ValueError(f"apply_lora: {tied} share their weight with another module (tied "
                         "embeddings); merging an "
                         "adapter into it would change that module too")
    model.requires_grad_(False)
    for name in names:
        _set_submodule(model, name, LoRALinear(model.get_submodule(name), rank, alpha, dropout))
    return names


@contextlib.contextmanager
def adapters_disabled(model):
    """Within the block every LoRALinear of model returns its base layer's output (the model is the
    base model, e.g. DPO's pi_ref); afterwards each layer's previous enabled flag is restored, also
    on an exception."""
    layers = _require_lora(model, "adapters_disabled")
    if merged := [name for name, m in layers if m.merged]:
        raise RuntimeError(f"adapters_disabled: {merged} are merged; unmerge_lora(model) first")
    previous = [m.enabled for _, m in layers]
    try:
        for _, m in layers:
            m.enabled = False
        yield model
    finally:
        for (_, m), enabled in zip(layers, previous):
            m.enabled = enabled


def merge_lora(model):
    """Merge every adapter into its base weight (see LoRALinear.merge). Returns model."""
    for _, m in _require_lora(model, "merge_lora"):
        m.merge()
    return model


def unmerge_lora(model):
    """Undo merge_lora. Returns model."""
    for _, m in _require_lora(model, "unmerge_lora"):
        m.unmerge()
    return model


def lora_state_dict(model):
    """{"<module>.lora_A": (r, in), "<module>.lora_B": (out, r)}: copies of the adapter tensors only
    (float32). rank is implied by the shapes; alpha is not stored: pass the same alpha to apply_lora
    before loading."""
    state = {}
    for name, m in _require_lora(model, "lora_state_dict"):
        state[f"{name}.lora_A"] = m.lora_A.detach().clone()
        state[f"{name}.lora_B"] = m.lora_B.detach().clone()
    return state


@torch.no_grad()
def load_lora_state_dict(model, state):
    """Copy a lora_state_dict into model's adapters. Strict: raises ValueError naming missing or
    unexpected keys and mis-shaped tensors (nothing is copied then); RuntimeError if the adapters
    are merged."""
    layers = _require_lora(model, "load_lora_state_dict")
    if merged := [name for name, m in layers if m.merged]:
        raise RuntimeError(f"load_lora_state_dict: {merged} are merged; unmerge_lora(model) first")
    params = {f"{name}.{p}": getattr(m, p) for name, m in layers for p in ("lora_A", "lora_B")}
    missing, unexpected = sorted(params.keys() - state.keys()), sorted(state.keys() - params.keys())
    if missing or unexpected:
        raise ValueError(f"load_lora_state_dict: missing keys {missing}, unexpected "
                         f"keys {unexpected}")
    for key, param in params.items():
        if not isinstance(state[key], torch.Tensor) or state[key].shape != param.shape:
            got = (tuple(state[key].shape) if isinstance(state[key], torch.Tensor)
                   else type(state[key]).__name__)
            raise ValueError(f"load_lora_state_dict: '{key}' has shape {got}, the model's is "
                             f"{tuple(param.shape)} "
                             "(a different rank?)")
    for key, param in params.items():
        param.copy_(state[key])


def merged_copy(model):
    """A deep copy of model with every adapter merged and each LoRALinear replaced by its (merged)
    nn.Linear: an ordinary model (all parameters trainable again) that model.GPT.save_pretrained
    writes as plain GPT-2 weights. model itself is unchanged. Adapters switched off count too (the
    copy is the adapted model)."""
    _require_lora(model, "merged_copy")
    out = copy.deepcopy(model)  # deepcopy keeps tied parameters tied
    for name, m in lora_layers(out):
        if not m.merged:
            m.merge()
        _set_submodule(out, name, m.base)
    return out.requires_grad_(True)


def count_trainable(model):
    """Number of trainable parameter elements (tied parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora_settings(model):
    """{"rank", "alpha", "dropout", "targets"}: what apply_lora needs to rebuild model's adapters
    (targets are the full module names it replaced). Raises ValueError for a model without
    adapters."""
    layers = _require_lora(model, "lora_settings")
    first = layers[0][1]
    dropout = first.lora_dropout.p if isinstance(first.lora_dropout, nn.Dropout) else 0.0
    return {"rank": first.rank, "alpha": first.alpha, "dropout": dropout,
            "targets": [name for name, _ in layers]}


def base_state_dict(model):
    """The frozen base weights of model under the names a plain model.GPT uses
    ("....c_attn.base.weight" -> "....c_attn.weight"), adapters left out; for a model without
    adapters, its state_dict."""
    return {k.replace(".base.", "."): v for k, v in model.state_dict().items()
            if not k.endswith((".lora_A", ".lora_B"))}


def base_fingerprint(model):
    """sha256 (hex) of the base weights (base_state_dict: names, shapes, dtypes and bytes): the same
    for a plain model and for it with adapters applied, so an adapter checkpoint can tell whether it
    meets its own base."""
    digest = hashlib.sha256()
    for name, tensor in sorted(base_state_dict(model).items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class BaseModelView:
    """pi_ref for DPO on a LoRA policy: calling it runs the policy's own network with every adapter
    switched off, in eval mode (no dropout), and puts the previous mode and adapter flags back. No
    second copy of the weights exists; the reference costs one extra forward where it is needed
    (precomputed once or live each step). Call it under torch.no_grad(): the base weights are frozen
    and the reference is a constant of the loss.

        reference = BaseModelView(policy)
        logits = reference(input_ids)  # (B, T) int64 -> (B, T, V): the base model's logits
    """

    def __init__(self, model):
        _require_lora(model, "BaseModelView")
        self.model = model

    def __call__(self, input_ids):  # (B, T) int64 -> (B, T, V) logits of the base model
        return self._base_model_run(self.model, input_ids)

    # (B, T) int64 -> (B, T, d): for log-probs without the logits
    def hidden_states(self, input_ids):
        return self._base_model_run(self.model.hidden_states, input_ids)

    @property
    def lm_head(self):
        """The model's lm_head (never adapted: it is tied to the embedding table)."""
        return self.model.lm_head

    def _base_model_run(self, fn, input_ids):
        was_training = self.model.training
        self.model.eval()
        try:
            with adapters_disabled(self.model):
                return fn(input_ids)
        finally:
            self.model.train(was_training)
