"""Checkpoints: atomic save, exact resume, and loading a model from any of the places `--init`
accepts.

A checkpoint is one file, `ckpt.pt`, holding everything a run needs to continue exactly where it
stopped:

    model      the model's state_dict, and (model_config) its GPTConfig or LlamaConfig as a dict
    architecture  which network model_config describes: "gpt2" (model.GPT) or "llama"
                  (llama.Llama); absent from checkpoints written before there was a choice (GPT's)
    optimizer  AdamW's state (moments, step counts)
    step       optimizer steps taken; the learning-rate schedule and the data order are pure
               functions of the step (see loop.py), so they need no state of their own
    rng        the torch (CPU and CUDA), numpy and python generator states (dropout, sampling)
    rng_by_rank  data-parallel runs (torchrun): every rank's generator states, in rank order (rank
                 0's = rng)
    config     the command ("command") and its resolved training config: --resume checks the command
               against it
    extra      what else a method needs to continue (methods/rlhf.py: the value model and its
               optimizer, the KL coefficient); absent when there is nothing
    early_stopping  the best held-out score so far, its step, and the evaluations since it
                    (run_dir.EarlyStopping as a dict)
    kind       what the weights are: "language model" (a GPT or Llama), or "reward model"
               (reward_model.RewardModel)
    lora       LoRA runs only: then "model" holds the adapters alone (lora.lora_state_dict, a few
               MB), and this entry holds their settings (rank, alpha, dropout, targets) and the
               frozen base they belong
               to: its --init path (as given and absolute) and the sha256 of its weights. Loading
               rebuilds the base from that path, checks the hash and applies the adapters
               (load_model merges them).

It is written to a temporary file in the same directory and renamed over the old one (`os.replace`
is atomic on POSIX and Windows), so a crash mid-write leaves the previous checkpoint intact. Weights
for other tools are exported separately in the Hugging Face layout with `save_pretrained`.
"""

import json
import os
import random
import tempfile

import numpy as np
import torch

from data import missing_local_path
from llama import Llama, LlamaConfig
from model import GPT, GPTConfig
from plumbing import lora

# the kind of a language model's checkpoint (reward models say reward_model.KIND)
LANGUAGE_MODEL = "language model"
# a checkpoint's "architecture": the network and the config class of its model_config
ARCHITECTURES = {"gpt2": (GPT, GPTConfig), "llama": (Llama, LlamaConfig)}
# a Hugging Face config.json's model_type: the class whose from_pretrained reads the directory
HF_MODEL_TYPES = {"gpt2": GPT, "llama": Llama, "qwen2": Llama}


class CheckpointError(ValueError):
    """A checkpoint or --init path that cannot be used (missing, not ours, or incompatible)."""


def architecture_of(model):
    """"gpt2" or "llama": the key of ARCHITECTURES whose config class model.config is (a reward
    model's config is its trunk's)."""
    for name, (_, config_class) in ARCHITECTURES.items():
        if isinstance(model.config, config_class):
            return name
    raise TypeError(f"{type(model).__name__}.config is a {type(model.config).__name__}, not one of "
                    f"{[config_class.__name__ for _, config_class in ARCHITECTURES.values()]}")


def model_from_state(state, path):
    """The untrained network a checkpoint's state (read from `path`) describes: a GPT or a Llama,
    by its "architecture" ("gpt2" when absent), built from its model_config; the caller loads the
    weights. Raises CheckpointError for an unknown architecture; the config classes raise TypeError
    or ValueError for a model_config they do not accept."""
    architecture = state.get("architecture", "gpt2")
    if architecture not in ARCHITECTURES:
        raise CheckpointError(f"{path}: architecture {architecture!r} is none of "
                              f"{sorted(ARCHITECTURES)}")
    model_class, config_class = ARCHITECTURES[architecture]
    return model_class(config_class(**state["model_config"]))


def describe_lora_base(init, model):
    """The `lora_base` argument of save_checkpoint for adapters trained on the model loaded from
    `init` (a path or hub name): {"init", "path" (absolute, for a local path), "sha256"
    (lora.base_fingerprint)}."""
    path = os.path.abspath(init) if os.path.exists(init) else None
    return {"init": init, "path": path, "sha256": lora.base_fingerprint(model)}


def rng_state():
    """This process's generator states: torch (CPU and every visible CUDA device), numpy and
    python."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def seed_generators(seed):
    """Seed every generator rng_state() saves (torch on every device, numpy, python): a run's
    generator states are a function of its seed, so a resumed run ends with the uninterrupted run's
    states."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def save_checkpoint(path, model, optimizer, step, config, early_stopping=None, lora_base=None,
                    rng_by_rank=None,
                    extra=None):
    """Write `path` (a `ckpt.pt` file) atomically. `model` may be wrapped by torch.compile.

    A model with LoRA adapters needs `lora_base` (see `describe_lora_base`): only its adapters are
    written. `rng_by_rank`: a data-parallel run's rng_state() of every rank, in rank order (stored
    as given). `extra`: a dict of anything else the run needs to resume (stored as given)."""
    # torch.compile wraps the module; save the original's weights
    model = getattr(model, "_orig_mod", model)
    has_adapters = bool(lora.lora_layers(model))
    if has_adapters and lora_base is None:
        raise ValueError("save_checkpoint: a model with LoRA adapters needs lora_base (where its "
                         "base comes from)")
    state = {
        "model": lora.lora_state_dict(model) if has_adapters else model.state_dict(),
        "model_config": vars(model.config).copy(),
        "architecture": architecture_of(model),
        "kind": getattr(model, "KIND", LANGUAGE_MODEL),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": int(step),
        "rng": rng_state(),
        "config": dict(config) if config is not None else None,
        "early_stopping": dict(early_stopping or {}),
    }
    if rng_by_rank is not None:
        state["rng_by_rank"] = list(rng_by_rank)
    if extra is not None:
        state["extra"] = dict(extra)
    if has_adapters:
        state["lora"] = {**lora.lora_settings(model), "base": dict(lora_base)}
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=".ckpt-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        # atomic: readers see the old file or the new one, never half of one
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def load_checkpoint(path, map_location="cpu", mmap=False):
    """Read a `ckpt.pt` written by `save_checkpoint` (or the directory holding one). Returns the
    state dict. mmap: map the tensors from the file instead of reading them (for a look at the
    metadata)."""
    if os.path.isdir(path):
        path = os.path.join(path, "ckpt.pt")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no checkpoint file here")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
    except Exception as e:  # a truncated or foreign file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if (not isinstance(state, dict) or "model" not in state
        or not isinstance(state.get("model_config"), dict)):
        raise CheckpointError(f"{path}: not a checkpoint written by this project (no "
                              "'model'/'model_config')")
    return state


def restore_rng(rng_state):
    """Put back the generator states saved by `save_checkpoint`, so dropout and sampling continue
    exactly."""
    torch.set_rng_state(rng_state["torch"])
    if rng_state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng_state["cuda"])
    np.random.set_state(rng_state["numpy"])
    random.setstate(rng_state["python"])


def load_model(path, map_location="cpu"):
    """Build a GPT or a Llama from `path`: our `ckpt.pt` (or a directory holding one; its
    "architecture" says which), or a Hugging Face directory (`config.json` + weights; its model_type
    says which: HF_MODEL_TYPES), or a hub name such as "gpt2" (see `GPT.from_pretrained`).

    Raises CheckpointError for a local path that does not exist (rather than asking the hub for
    it), and for a Hugging Face model_type this code has no network for."""
    if missing_local_path(path):
        raise CheckpointError(f"{path}: no such file or directory")
    if os.path.isfile(path) and not path.endswith(".pt"):
        raise CheckpointError(f"{path}: a file, but not a checkpoint (a .pt); pass "
                              f"{not_a_checkpoint_hint(path)}")
    is_ours = path.endswith(".pt") or os.path.isfile(os.path.join(path, "ckpt.pt"))
    if is_ours:
        state = load_checkpoint(path, map_location)
        if state.get("kind", LANGUAGE_MODEL) != LANGUAGE_MODEL:
            raise CheckpointError(f"{path}: holds a {state['kind']}, not a language model")
        # adapters: rebuild the base, check it is theirs, return the merged model
        if "lora" in state:
            model = load_lora_base(state, path, map_location)
            lora.apply_lora(model, state["lora"]["rank"], state["lora"]["alpha"],
                            state["lora"]["dropout"],
                            state["lora"]["targets"])
            lora.load_lora_state_dict(model, state["model"])
            return lora.merged_copy(model)
        try:
            model = model_from_state(state, path)
            model.load_state_dict(state["model"])
        except (RuntimeError, TypeError, ValueError, AttributeError) as e:
            raise CheckpointError(f"{path}: weights do not match the stored model config: "
                                  f"{' '.join(str(e).split())[:300]}") from None
        return model
    if not os.path.isdir(path):
        return GPT.from_pretrained(path)  # a hub name
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise CheckpointError(f"{path}: neither a ckpt.pt of ours nor a Hugging Face GPT-2 "
                              f"directory (config.json); pass a run's directory or its ckpt.pt, or "
                              f"a directory with config.json and model.safetensors")
    try:
        with open(config_file) as f:
            model_type = json.load(f).get("model_type", "gpt2")
    except (OSError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{config_file}: not a readable JSON object ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:200]})") from None
    if model_type not in HF_MODEL_TYPES:
        raise CheckpointError(f"{config_file}: model_type {model_type!r} is not one this code "
                              f"loads ({', '.join(sorted(HF_MODEL_TYPES))})")
    return HF_MODEL_TYPES[model_type].from_pretrained(path)


def not_a_checkpoint_hint(path):
    """What to pass instead of the file `path`: its run's directory when it sits beside a ckpt.pt, a
    Hugging Face directory when it is one's config.json, else the kinds of model this code loads."""
    directory = os.path.dirname(path) or "."
    if os.path.isfile(os.path.join(directory, "ckpt.pt")):
        return f"the run's directory {directory} (it holds ckpt.pt)"
    if os.path.basename(path) == "config.json":
        return f"the directory {directory} (a Hugging Face model is a directory)"
    return ("a ckpt.pt of ours (or its directory), a Hugging Face GPT-2, Llama or Qwen2 "
            "directory or a hub name such as gpt2")


def load_lora_base(state, path, map_location="cpu"):
    """The frozen base model of the LoRA checkpoint `state` (read from `path`), loaded from where
    the run found it (its absolute path first, then the --init value as given). Raises
    CheckpointError when it is not there or its weights are not the ones the adapters were trained
    on."""
    base = state["lora"]["base"]
    where = base["path"] if base["path"] and os.path.exists(base["path"]) else base["init"]
    try:
        model = load_model(where, map_location)
    except Exception as e:
        raise CheckpointError(f"{path}: a LoRA checkpoint whose base model {base['init']!r} cannot "
                              f"be loaded ({type(e).__name__}: {e})") from e
    if lora.base_fingerprint(model) != base["sha256"]:
        raise CheckpointError(f"{path}: its adapters were trained on other base weights than those "
                              f"now at {where!r} (sha256 differs): the base changed since the run")
    return model

