"""Device and dtype choice: `auto` means fp16 on CUDA, fp32 on CPU."""

from __future__ import annotations

import torch

from idforge.errors import ParameterError


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then CPU; an unavailable explicit device is a clear error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ParameterError("device", f"{name!r} is not a device name ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError("device", f"{name!r} requested but CUDA is not available in this torch build")
    return device


def device_name(device: torch.device) -> str:
    """The device as recipes record it, with its index: "cpu", "cuda:0", "mps"."""
    if device.type == "cuda" and device.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`: half precision where it is fast and safe (CUDA), full precision elsewhere."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]
    if dtype == torch.float16 and device.type == "cpu":
        raise ParameterError("dtype", "float16 is not supported on CPU; use float32 or bfloat16")
    return dtype
