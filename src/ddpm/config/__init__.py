"""The configuration: what a run is, declared once, and what a new run starts from. No torch.

    schema    the sections of a run (Config) and of an autoencoder run (AutoencoderRun)
    settings  how a setting is declared: default, help, range, flag, checked once at the edge
    names     the choice sets of the settings that name a kind (schedules, norms, losses, ...)
    options   per-spec option sets (a sampler's eta, an objective's sigma_data)
    students  the sections of a student run (distill, consistency)
    presets   the named configurations shipped in ddpm/presets/
    recipe    the measured defaults over the schema: color, the CPU time budget, the composition

`from ddpm.config import Config` gives the schema's names (on first use); the rest come from their modules.
"""

from __future__ import annotations

import importlib

__all__ = ["OWN", "AutoencoderConfig", "AutoencoderRun", "Config", "DataConfig", "DiffusionConfig", "LatentConfig",
           "ModelConfig", "SampleConfig", "TrainConfig", "check_unet_size", "read_config"]


def __getattr__(name: str):
    """The schema's names, imported on first use (PEP 562): the registries import config.options,
    and the schema imports the registries, so this package must not import the schema itself."""
    if name not in __all__:
        raise AttributeError(f"module 'ddpm.config' has no attribute {name!r}")
    value = getattr(importlib.import_module(".schema", __name__), name)
    globals()[name] = value
    return value
