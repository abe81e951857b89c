"""Input checks shared by the torch and Triton log-prob paths (logprob_kernels/__init__.py calls
them once per call), and the choice between the two (`resolve_impl`).

They turn the caller's mask into a bool `keep` (B, T) and raise a typed error that names the
argument at fault and the offending value, instead of letting a kernel read out of bounds or
silently reinterpret a mask.
"""

import os

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
IMPLS = ("auto", "torch", "triton")
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def resolve_impl(impl: str, x: torch.Tensor, what: str = "logits") -> str:
    """The implementation `impl` names for input `x` ("torch" or "triton"); raises for an unusable
    choice.

    "auto" is Triton for CUDA tensors of a Triton dtype, torch otherwise. `what` names x in the
    errors."""
    if impl not in IMPLS:
        raise ValueError(f"logprob_kernels: impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return "triton" if x.is_cuda and x.dtype in TRITON_DTYPES else "torch"
    if impl == "triton":
        if x.dtype not in TRITON_DTYPES:
            raise TypeError(f"logprob_kernels: impl='triton' takes {what} in {TRITON_DTYPES}, got "
                            f"{x.dtype}; use impl='torch' for float64")
        if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("logprob_kernels: impl='triton' on CPU tensors needs "
                             "TRITON_INTERPRET=1 set before triton is first imported (the Triton "
                             "CPU interpreter); or use impl='torch'")
    return impl


def check_inputs(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, *,
                 check_values: bool = True) -> torch.Tensor:
    """Validate shapes, dtypes and devices; return keep = (mask != 0) as a (B, T) bool tensor.

    Shape: logits (B, T, V) float; labels (B, T) integer; mask (B, T) bool or numeric 0/1.
    check_values: also check that labels lie in [0, V) wherever mask is 1 and that a non-bool mask
    holds only 0 and 1. This reads labels and mask once and synchronises with the device (one
    .item()).
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logprob_kernels: logits must be a (B, T, V) tensor, got {got}")
    if logits.dtype not in FLOAT_DTYPES:
        raise TypeError(f"logprob_kernels: logits dtype must be one of {FLOAT_DTYPES}, "
                        f"got {logits.dtype}")
    B, T, V = logits.shape
    if V == 0:
        raise ValueError("logprob_kernels: logits has an empty vocabulary dimension (V = 0)")
    for name, t in (("labels", labels), ("mask", mask)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"logprob_kernels: {name} must be a torch.Tensor, got "
                            f"{type(t).__name__}")
        if tuple(t.shape) != (B, T):
            raise ValueError(f"logprob_kernels: {name} must have shape (B, T) = {(B, T)} matching "
                             f"logits {tuple(logits.shape)}, got {tuple(t.shape)}")
        if t.device != logits.device:
            raise ValueError(f"logprob_kernels: {name} is on {t.device} but logits are on "
                             f"{logits.device}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError("logprob_kernels: labels must be an integer tensor (int64), "
                        f"got {labels.dtype}")
    keep = mask if mask.dtype == torch.bool else mask != 0  # (B, T) bool
    if check_values and labels.numel() > 0:
        bad_label = keep & ((labels < 0) | (labels >= V))                          # (B, T)
        bad_mask = torch.zeros_like(keep) if mask.dtype == torch.bool else (mask != 0) & (mask != 1)
        if bool((bad_label | bad_mask).any()):  # the one host sync of the check
            if bool(bad_mask.any()):
                b, t = (int(i) for i in bad_mask.nonzero()[0])
                raise ValueError(f"logprob_kernels: mask must hold only 0 and 1, got mask[{b}, "
                                 f"{t}] = {mask[b, t].item()}")
            b, t = (int(i) for i in bad_label.nonzero()[0])
            raise ValueError(f"logprob_kernels: labels[{b}, {t}] = {int(labels[b, t])} is outside "
                             f"the vocabulary [0, {V}) at an unmasked position (mask[{b}, {t}] = "
                             f"1); {int(bad_label.sum())} such position(s) in total")
    return keep
