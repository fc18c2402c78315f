"""Mixed precision: the forward pass under autocast, and for fp16 a gradient scaler.

bf16 keeps fp32's exponent range, so it needs no loss scaling; fp16 does (Micikevicius et al.
2018): the loss is multiplied before backward so that small gradients do not flush to zero, and
a step whose scaled gradients overflowed is skipped while the scale shrinks.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """Run the network's matrix multiplies and convolutions in `precision` (fp32: no change)."""
    return torch.autocast(device.type, dtype=PRECISIONS[precision], enabled=precision != "fp32")


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A gradient scaler that is active for fp16 only; otherwise every call passes through."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
