"""FID and KID of a set of samples against a data set, with the reference features cached on disk.

Reference features depend only on (data set, resolution, count), so they are computed once and
kept in the cache folder ($DDPM_CACHE, default ~/.cache/ddpm) as reference-NAME-SIZEpx-COUNT.npy.
The reference images are a fixed random subset (seed 0) of the data set, resized to the samples'
resolution, so that both sets go through the same resize to 299 x 299.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..storage.atomic import atomic_write
from ..data.folders import cache_dir
from ..data.datasets import load_data, load_folder
from ..data.imagedata import fixed_subset
from ..errors import InputError
from .inception import InceptionFeatures
from .metrics import fid_from_features, kernel_inception_distance, precision_recall


def load_samples(path: Path) -> torch.Tensor:
    """Samples as uint8 [N, C, H, W] from a .npz (arr_0, uint8 [N, H, W, C]) or a folder of images.

    A folder is read as a `folder:` data set is: as RGB (Inception repeats gray to three channels
    anyway), each image squared and resized to the first one's size.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"sample path {path} does not exist")
    if path.is_dir():
        return load_folder(f"samples in {path}", path, in_memory=True).images
    if path.suffix != ".npz":
        raise InputError(f"{path}: samples must be a .npz file (arr_0 uint8 [N, H, W, C]) or a folder of images")
    try:
        with np.load(path) as archive:
            array = archive["arr_0"]
    except (KeyError, ValueError, OSError) as error:
        raise InputError(f"{path} is not a sample file with arr_0 ({error})") from None
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] not in (1, 3):
        raise InputError(f"{path}: arr_0 must be uint8 [N, H, W, C] with C = 1 or 3 (got {array.dtype} {array.shape})")
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def reference_features(data: str, root: str, image_size: int, count: Optional[int], extractor: InceptionFeatures,
                       progress: bool = True) -> np.ndarray:
    """Inception features of `count` images of data set `data` at `image_size`, cached on disk."""
    dataset = load_data(data, root, image_size)  # at that size as training reads it: a sized set renders or crops
    count = len(dataset) if count is None else min(count, len(dataset))
    path = cache_dir() / f"reference-{data}-{image_size}px-{count}.npy"
    if path.is_file():
        return np.load(path).astype(np.float64)
    chosen = fixed_subset(len(dataset), count)
    images = dataset.subset(chosen, progress=True).images  # decodes only these, if streamed
    features = extractor.features(images, progress=progress, desc=f"reference features ({data}, {count} images)")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_bytes(_npy_bytes(features.astype(np.float32))))
    return features


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


class Evaluator:
    """FID, KID, precision and recall against one data set: the network and reference features are loaded once,
    then each call scores a set of uint8 samples [N, C, H, W] at `image_size`."""

    def __init__(self, data: str = "mnist5k", root: str = "data", image_size: int = 28,
                 reference_count: Optional[int] = None, device: str = "cpu", progress: bool = True):
        self.data, self.image_size, self.progress = data, image_size, progress
        self.extractor = InceptionFeatures(device)
        self.reference = reference_features(data, root, image_size, reference_count, self.extractor, progress)

    def __call__(self, samples: torch.Tensor) -> dict:
        if samples.dtype != torch.uint8 or samples.ndim != 4:
            raise InputError("samples must be uint8 images [N, C, H, W]")
        if len(samples) < 2:
            raise InputError(f"FID needs at least 2 samples (got {len(samples)})")
        if samples.shape[-1] != self.image_size:
            raise InputError(f"samples are {samples.shape[-1]}px but the reference is {self.image_size}px")
        features = self.extractor.features(samples, progress=self.progress, desc="sample features")
        kid, kid_std = kernel_inception_distance(features, self.reference)
        # k = 3 needs 4 images a side; FID's minimum is 2
        precision, recall = precision_recall(self.reference, features) if min(len(features), len(self.reference)) > 3 \
            else (None, None)
        return {
            "fid": fid_from_features(features, self.reference),
            "kid": kid,
            "kid_std": kid_std,
            "precision": precision,  # Kynkaenniemi et al. 2019, k = 3: realism, and coverage of the data
            "recall": recall,
            "samples": len(features),
            "reference": len(self.reference),
            "data": self.data,
            "image_size": self.image_size,
        }


def evaluate(samples: torch.Tensor, data: str = "mnist5k", root: str = "data", reference_count: Optional[int] = None,
             device: str = "cpu", progress: bool = True) -> dict:
    """FID and KID of uint8 samples [N, C, H, W] against `data` at the samples' resolution."""
    if samples.ndim != 4:
        raise InputError("samples must be uint8 images [N, C, H, W]")
    return Evaluator(data, root, samples.shape[-1], reference_count, device, progress)(samples)
