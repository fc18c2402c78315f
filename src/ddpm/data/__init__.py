"""Training images: held in memory as uint8 (`imagedata`), and each data set by name (`datasets`)."""

from .datasets import load_data
from .imagedata import ImageData, iterate_batches, to_model_range, to_uint8

__all__ = ["ImageData", "iterate_batches", "load_data", "to_model_range", "to_uint8"]
