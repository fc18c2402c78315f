"""The configuration: what a run is, declared once, and what a new run starts from. No torch.

    schema    the sections of a run (Config) and of an autoencoder run (AutoencoderRun)
    settings  how a setting is declared: default, help, range, flag, checked once at the edge
    names     the choice sets of the settings that name a kind (schedules, norms, losses, ...)
    options   per-spec option sets (a sampler's eta, an objective's sigma_data)
    students  the sections of a student run (distill, consistency)
    presets   the named configurations shipped in ddpm/presets/
    recipe    the measured defaults over the schema: color, the CPU time budget, the composition

`from ddpm.config import Config` gives the schema's names; the rest come from their modules.
"""

from .schema import (
    OWN,
    AutoencoderConfig,
    AutoencoderRun,
    Config,
    DataConfig,
    DiffusionConfig,
    LatentConfig,
    ModelConfig,
    SampleConfig,
    TrainConfig,
    check_unet_size,
    read_config,
)

__all__ = ["OWN", "AutoencoderConfig", "AutoencoderRun", "Config", "DataConfig", "DiffusionConfig", "LatentConfig",
           "ModelConfig", "SampleConfig", "TrainConfig", "check_unet_size", "read_config"]
