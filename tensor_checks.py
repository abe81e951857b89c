"""Argument checks shared by the loss functions (dpo.py and the other methods' files): a clear
TypeError or ValueError that names the argument at fault and what it got, instead of a shape error
deep inside the math (or none at all); and the dtype a loss computes in."""

import math
import numbers

import torch


def check_logps(named_logps: dict[str, torch.Tensor], *, same_dtype: bool = True) -> None:
    """Raise unless every value is a 1-D floating-point tensor of one shape and device (and dtype,
    by default).

    named_logps: {argument name: tensor}, the first one the yardstick."""
    first_name, first = next(iter(named_logps.items()))
    for name, t in named_logps.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (B,), got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
        if t.dim() != 1:
            raise ValueError(f"{name} must have shape (B,), got {tuple(t.shape)}")
        if t.shape != first.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but {first_name} has "
                             f"{tuple(first.shape)}")
        if same_dtype and t.dtype != first.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {first_name} has {first.dtype}")
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}")


def check_lengths(name: str, lengths, like: torch.Tensor) -> None:
    """Raise unless `lengths` is a (B,) int or float tensor shaped and placed like `like`, all > 0
    (token counts)."""
    if not isinstance(lengths, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B,), got "
                        f"{type(lengths).__name__}")
    if lengths.dtype == torch.bool or lengths.is_complex():
        raise TypeError(f"{name} must be an integer or floating-point tensor, got dtype "
                        f"{lengths.dtype}")
    if lengths.shape != like.shape:
        raise ValueError(f"{name} must have shape (B,) = {tuple(like.shape)}, got "
                         f"{tuple(lengths.shape)}")
    if lengths.device != like.device:
        raise ValueError(f"{name} is on {lengths.device} but the log-probs are on {like.device}")
    if not bool((lengths > 0).all()):  # one host sync; NaN fails too
        raise ValueError(f"{name} must be > 0 everywhere (token counts), got "
                         f"{lengths[~(lengths > 0)].tolist()}")


def math_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype a loss computes in: float64 for float64 inputs (so that gradcheck can test it),
    else float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def check_positive(name: str, value) -> None:
    """Raise a TypeError unless value is a real number, a ValueError unless it is finite and > 0 (a
    beta)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value}")


def check_coefficient(name: str, value, high: float = math.inf) -> None:
    """Raise a TypeError unless value is a real number, a ValueError unless it is finite and in [0,
    high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not (math.isfinite(value) and 0 <= value <= high):
        raise ValueError(f"{name} must be finite and in [0, {high}], got {value}")
