"""ddpm: denoising diffusion models from scratch in PyTorch (Ho et al. 2020, Song et al. 2021,
Nichol & Dhariwal 2021), readable as a textbook and usable as a toolkit.

    from ddpm import Config, train, load_run, generate
    run = train(Config(), "runs/mnist")                   # train on the embedded MNIST-5k
    model = load_run("runs/mnist")                         # EMA weights, schedule and config
    images = generate(model.denoiser(), 16, (1, 28, 28))   # uint8 [16, 1, 28, 28]
"""

from .config import Config, DataConfig, DiffusionConfig, ModelConfig, SampleConfig, TrainConfig
from .data import ImageData, load_data
from .diffusion import Denoiser, Prediction, q_posterior, q_sample, target, to_prediction, training_loss
from .errors import InputError
from .generate import build_network, build_schedule, generate, load_run
from .samplers import SAMPLERS, ddim, ddpm
from .schedules import NoiseSchedule, make_schedule, spaced_timesteps
from .train import train
from .unet import UNet

__version__ = "0.1.0"

__all__ = [
    "Config", "DataConfig", "DiffusionConfig", "ModelConfig", "SampleConfig", "TrainConfig",
    "ImageData", "load_data",
    "Denoiser", "Prediction", "q_posterior", "q_sample", "target", "to_prediction", "training_loss",
    "InputError",
    "build_network", "build_schedule", "generate", "load_run",
    "SAMPLERS", "ddim", "ddpm",
    "NoiseSchedule", "make_schedule", "spaced_timesteps",
    "train",
    "UNet",
]
