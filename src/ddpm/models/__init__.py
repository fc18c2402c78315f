"""The networks: the UNet that denoises."""

from .unet import UNet

__all__ = ["UNet"]
