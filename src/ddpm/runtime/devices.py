"""Choosing the device a run or a pipeline works on."""

from __future__ import annotations

import torch

from ..errors import InputError


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` is CUDA when there is a GPU, else the CPU; a named device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name} was asked for but CUDA is not available; use --device cpu")
    return device
