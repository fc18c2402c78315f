"""The mathematics of diffusion: noise schedules, the objectives and the forward process with its
loss, classifier-free guidance, the samplers that run the reverse process, and editing."""

from .objectives import EDM, Eps, Objective, V, X0
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
           get_sampler,
           sample_ddim,
           sample_ddpm,
           sample_dpmpp_2m,
           sample_edm,
           sample_heun,
)
from .schedules import NoiseSchedule, make_schedule, spaced_timesteps

__all__ = ["EDM", "Eps", "Objective", "V", "X0", "Denoiser", "Diffusion", "Prediction", "q_posterior", "q_sample",
           "target", "to_prediction", "training_loss", "get_sampler", "sample_ddim", "sample_ddpm", "sample_dpmpp_2m",
           "sample_edm", "sample_heun", "NoiseSchedule", "make_schedule", "spaced_timesteps"]
