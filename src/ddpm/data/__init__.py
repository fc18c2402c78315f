"""Training images: held in memory as uint8 (`imagedata`), each data set by name (`datasets`), and
what a folder of images holds (`folders`, torch-free, which the configuration reads).

The names below are imported on first use (PEP 562), so that `ddpm.data.folders` loads no torch."""

from __future__ import annotations

import importlib

_EXPORTS = {"load_data": "datasets", **dict.fromkeys(["ImageData", "iterate_batches", "to_model_range", "to_uint8"],
                                                    "imagedata")}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ddpm.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
