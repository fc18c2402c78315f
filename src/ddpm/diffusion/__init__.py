"""The mathematics of diffusion: noise schedules, the forward process and its losses, classifier-free
guidance, and the samplers that run the reverse process."""

from .process import (
           Denoiser,
           Diffusion,
           Prediction,
           q_posterior,
           q_sample,
           target,
           to_prediction,
           training_loss,
)
from .samplers import (
           SAMPLERS,
           get_sampler,
           sample_ddim,
           sample_ddpm,
           sample_dpmpp_2m,
           sample_heun,
)
from .schedules import NoiseSchedule, make_schedule, spaced_timesteps

__all__ = ["Denoiser", "Diffusion", "Prediction", "q_posterior", "q_sample", "target", "to_prediction",
           "training_loss", "SAMPLERS", "get_sampler", "sample_ddim", "sample_ddpm", "sample_dpmpp_2m", "sample_heun",
           "NoiseSchedule", "make_schedule", "spaced_timesteps"]
