"""Writing pictures and sample files: image grids, PNGs and GIFs, the .npz sample format, plots."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from .atomic import atomic_write
from ..data.imagedata import to_pil
from ..errors import InputError

if TYPE_CHECKING:
    from PIL import Image


def save_grid(images: Tensor, path: Path, nrow: Optional[int] = None, padding: int = 2) -> Path:
    """Save uint8 images [N, C, H, W] as one PNG grid, about square unless `nrow` is given."""
    from torchvision.utils import (  # imported here: it takes a second
        make_grid,
        save_image,
    )

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nrow = nrow or max(1, math.ceil(math.sqrt(len(images))))
    grid = make_grid(images.float() / 255.0, nrow=nrow, padding=padding, pad_value=1.0)
    atomic_write(path, lambda tmp: save_image(grid, tmp, format="png"))
    return path


def save_class_grid(images: Tensor, labels: Tensor, path: Path, max_images: int = 64) -> Path:
    """Save a grid with one row per class (in label order), at most `max_images` images in all."""
    classes = labels.unique().tolist()
    per_class = min(int((labels == c).sum()) for c in classes)
    per_row = max(1, min(per_class, max_images // len(classes)))
    rows = [torch.nonzero(labels == c).flatten()[:per_row] for c in classes]
    return save_grid(images[torch.cat(rows)], path, nrow=per_row)


def save_picture(picture: Image.Image, path: Path) -> Path:
    """Save a PIL picture as PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))
    return path


def save_gif(frames: Sequence[Image.Image], path: Path, seconds_per_frame: float = 0.4) -> Path:
    """An animated GIF that loops, holding the last frame three times as long."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    durations = [round(1000 * seconds_per_frame)] * (len(frames) - 1) + [round(3000 * seconds_per_frame)]
    atomic_write(path, lambda tmp: frames[0].save(tmp, format="GIF", save_all=True, append_images=list(frames[1:]),
                                             duration=durations, loop=0))
    return path


def save_npz(path: Path, images: Tensor, labels: Optional[Tensor] = None) -> Path:
    """Save samples the way OpenAI's evaluation suite reads them: arr_0 uint8 [N, H, W, C].

    Class labels, when there are any, go into arr_1.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            write_npz(handle, images, labels)

    atomic_write(path, write)
    return path


def write_npz(handle, images: Tensor, labels: Optional[Tensor] = None) -> None:
    """The .npz of `save_npz`, into an open binary file (or a BytesIO, as `ddpm serve` offers it)."""
    arrays = [images.permute(0, 2, 3, 1).contiguous().cpu().numpy().astype(np.uint8)]
    if labels is not None:
        arrays.append(labels.cpu().numpy().astype(np.int64))
    np.savez(handle, *arrays)


RESULT_KINDS = ".npz (arr_0 uint8 [N, H, W, C], as ddpm sample writes), .png (a grid), or a folder (one PNG per image)"


def check_results_path(path: Path) -> Path:
    """Where `save_results` can write: a .npz, a .png, or a folder (no suffix, or one that exists)."""
    path = Path(path)
    if path.suffix.lower() not in (".npz", ".png") and path.suffix and not path.is_dir():
        raise InputError(f"--out must name a {RESULT_KINDS} (got {path})")
    if path.suffix.lower() in (".npz", ".png") and path.is_dir():
        raise InputError(f"--out {path} is a folder; name a file, or a folder without a suffix")
    return path


def save_results(images: Tensor, path: Path, labels: Optional[Tensor] = None) -> Path:
    """uint8 images [N, C, H, W] as `check_results_path` allows: an .npz that the next command can read
    (ddpm edit --image, ddpm eval --samples), a PNG grid, or PATH/000000.png, ... one per image."""
    path = check_results_path(path)
    if path.suffix.lower() == ".npz":
        return save_npz(path, images, labels)
    if path.suffix.lower() == ".png":
        return save_grid(images, path)
    path.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        save_picture(to_pil(image), path / f"{i:06d}.png")
    return path


def plot_loss(log_csv: Path, path: Optional[Path] = None) -> Optional[bytes]:
    """Plot the training loss from the run's CSV log (log scale), as PNG bytes, also written to
    `path` if given; None if nothing is logged yet."""
    steps, losses = [], []
    with open(log_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            steps.append(int(row["step"]))
            losses.append(float(row["loss"]))
    if not steps:
        return None
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    axes.plot(steps, losses, lw=1)
    weighted = min(losses) <= 0  # EDM2's learned weighting adds u(sigma), which may be negative
    axes.set_yscale("linear" if weighted else "log")
    axes.set_xlabel("step")
    axes.set_ylabel("training loss" + (" (uncertainty-weighted)" if weighted else ""))
    axes.grid(alpha=0.3)
    figure.tight_layout()
    png = figure_png(figure)
    if path is not None:
        atomic_write(Path(path), lambda tmp: tmp.write_bytes(png))
    return png


def plot_sweep(rows: list[dict], path: Path, title: str = "") -> Path:
    """FID against network evaluations (log scale), one line per sampler."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    for sampler in dict.fromkeys(row["sampler"] for row in rows):
        points = sorted((float(r["nfe"]), float(r["fid"])) for r in rows if r["sampler"] == sampler)
        axes.plot(*zip(*points), marker="o", label=sampler)
    axes.set_xscale("log")
    axes.set_xlabel("network evaluations per sample (NFE)")
    axes.set_ylabel("FID")
    axes.set_title(title)
    axes.grid(alpha=0.3, which="both")
    axes.legend()
    figure.tight_layout()
    atomic_write(Path(path), lambda tmp: figure.savefig(tmp, format="png"))
    plt.close(figure)
    return Path(path)


def plot_ema_sweep(rows: list[dict], path: Path, title: str = "") -> Path:
    """FID against the post-hoc EMA's length sigma_rel, the classic EMA's FID as a dashed line."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    points = sorted((float(r["sigma_rel"]), float(r["fid"])) for r in rows if r["sigma_rel"] is not None)
    axes.plot(*zip(*points), marker="o", label="post-hoc EMA")
    for row in rows:
        if row["sigma_rel"] is None:
            axes.axhline(float(row["fid"]), color="gray", linestyle="--", label="classic EMA")
    axes.set_xlabel("EMA length sigma_rel (std of the averaging profile over its mean)")
    axes.set_ylabel("FID")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    atomic_write(Path(path), lambda tmp: figure.savefig(tmp, format="png"))
    plt.close(figure)
    return Path(path)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(figure) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    pyplot().close(figure)
    return buffer.getvalue()


def figure_to_image(figure) -> Image.Image:
    """A matplotlib figure as an RGB PIL image (the figure is closed)."""
    from PIL import Image

    return Image.open(io.BytesIO(figure_png(figure))).convert("RGB")

