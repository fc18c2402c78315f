"""The networks: the UNet that denoises (unet.py), latent diffusion's autoencoder (autoencoder.py)
and the codec that wraps it or a diffusers VAE (codec.py), and ddpm's own networks as diffusers
models (for_diffusers.py), for what UNet2DModel cannot compute.

The names below are imported on first use (PEP 562), so `import ddpm`, which imports this package,
loads neither torch nor diffusers. A folder `ddpm export` writes names its own classes in
`ddpm.models` (["ddpm.models", "DdpmUNet"]): diffusers resolves a library it does not know among the
modules already imported, and looks up that module's loaders (ModelMixin, ConfigMixin) there too.
The name cannot be `ddpm` itself: diffusers resolves a library named like one of its own pipeline
modules to that module first, and `diffusers.pipelines.ddpm` exists.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"UNet": ".unet", "DdpmUNet": ".for_diffusers", "DdpmAutoencoder": ".for_diffusers",
            "ModelMixin": "diffusers", "ConfigMixin": "diffusers"}

__all__ = ["UNet"]  # DdpmUNet and DdpmAutoencoder need diffusers: by name only


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ddpm.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
