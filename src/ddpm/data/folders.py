"""What a run's images will be, known before they load: the files of a folder, the size the run
trains at, and whether the images are held in memory. A leaf (no torch), so that the config's
rules, which choose settings by the data (recipe.sized_by_budget), can ask before anything loads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from ..registry import DATASETS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
STREAM_ABOVE = 20_000  # folders with more images are decoded on the fly by DataLoader workers


def cache_dir() -> Path:
    """Where ddpm keeps what it derives once (reference features, rendered data sets): $DDPM_CACHE,
    default ~/.cache/ddpm."""
    return Path(os.environ.get("DDPM_CACHE", Path.home() / ".cache" / "ddpm"))


def image_files(path: Path) -> list[Path]:
    """Every image file under `path`, recursively, in sorted order."""
    return sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def planned(name: str, image_size: Optional[int], crop: Optional[int]) -> tuple[Optional[int], bool]:
    """The image size a run on the data set `name` trains at (its image_size and crop as given), and
    whether its images are held in memory. A folder's size is its first image's shorter side, read
    from the file's header, as datasets.load_folder crops and sizes it; None where it cannot be told
    (loading it says why)."""
    spec = DATASETS.get(name, "data set")
    if not spec.prefix:
        return image_size or (None if spec.sized else crop) or spec.size, not spec.streamed
    path = Path(name.split(":", 1)[1]).expanduser()
    files = image_files(path) if path.is_dir() else []
    if not files:
        return image_size, False
    if image_size or crop:
        return image_size or crop, len(files) <= STREAM_ABOVE
    from PIL import Image

    try:
        with Image.open(files[0]) as picture:
            return min(picture.size), len(files) <= STREAM_ABOVE
    except Exception:  # not an image after all: loading it says so
        return None, False
