"""ddpm: denoising diffusion models from scratch in PyTorch (Ho et al. 2020, Song et al. 2021,
Nichol & Dhariwal 2021), readable as a textbook and usable as a toolkit.

    from ddpm import Config, Pipeline, train
    train(Config(), "runs/mnist")                    # train on the embedded MNIST-5k
    pipe = Pipeline.from_run("runs/mnist")           # EMA weights, diffusion process and config
    images = pipe(16)                                # uint8 [16, 1, 28, 28]

The public names below are imported on first use (PEP 562), so `import ddpm` and `import
ddpm.config` do not load torch.
"""

from __future__ import annotations

import importlib

# public name -> the module (below ddpm) that defines it
_EXPORTS = {
    **dict.fromkeys(["Config", "DataConfig", "DiffusionConfig", "ModelConfig", "SampleConfig", "TrainConfig"], "config"),
    **dict.fromkeys(["InputError", "TrainingDiverged"], "errors"),
    **dict.fromkeys(["Pipeline", "Plan"], "pipeline"),
    "Editor": "editor",
    **dict.fromkeys(["build_diffusion", "build_network", "build_optimizer", "build_schedule"], "factory"),
    **dict.fromkeys(["Denoiser", "Diffusion", "Prediction", "q_posterior", "q_sample", "target", "to_prediction",
                     "training_loss"], "diffusion.process"),
    **dict.fromkeys(["EDM", "Objective"], "diffusion.objectives"),
    **dict.fromkeys(["get_sampler", "sample_ddim", "sample_ddpm", "sample_dpmpp_2m", "sample_edm", "sample_heun"],
                    "diffusion.samplers"),
    **dict.fromkeys(["DATASETS", "NETWORKS", "OBJECTIVES", "SAMPLERS", "STUDENTS", "DatasetSpec", "NetworkSpec",
                     "ObjectiveSpec", "SamplerSpec", "StudentSpec"], "registry"),
    **dict.fromkeys(["NoiseSchedule", "make_schedule", "spaced_timesteps"], "diffusion.schedules"),
    "UNet": "models.unet",
    "ImageData": "data.imagedata",
    "load_data": "data.datasets",
    "train": "training.loop", "distill": "training.distill",
    "sample_consistency": "diffusion.consistency",
}

__all__ = sorted(_EXPORTS)

# Torch-free: a folder `ddpm export` writes names its classes in ddpm.models, which diffusers finds
# among the imported modules, so `import ddpm` is all a diffusers user adds (models/__init__.py).
from . import models  # noqa: E402, F401


def _version() -> str:
    from importlib import metadata  # on first use: reading the installed metadata costs a command's start

    try:
        return metadata.version("ddpm-textbook")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str):
    if name == "__version__":
        globals()[name] = value = _version()
        return value
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ddpm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
