"""Device and dtype choice, in one place: fp16 weights on CUDA, fp32 everywhere else."""

from __future__ import annotations

import torch

from .errors import UsageError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA when present; an explicit 'cuda' without CUDA is an error that says so."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} was asked for but this PyTorch has no CUDA "
                         f"(torch {torch.__version__}); use --device cpu, or install a CUDA build (see README)")
    if device not in ("cpu",) and not device.startswith("cuda") and device != "mps":
        raise UsageError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    return torch.device(device)


def weights_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.float32
