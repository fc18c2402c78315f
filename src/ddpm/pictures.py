"""Pictures of every stage: the forward process, the reverse trajectory, and samples across training.

Each picture is a grid of images with a label on every row (and column), composed with PIL so its
size in pixels is exact: cells of side `image_size * scale` separated by `PADDING` pixels.

- `forward_picture`: one data image noised at chosen t under each schedule (x_t = q_sample), and
  alpha_bar_t and log SNR for the linear, cosine and sigmoid schedules;
- `trajectory`: x_t and the predicted x0 of a few samples along the reverse process, as a picture
  and as the frames of an animated GIF;
- `progression`: samples from the same noise at each saved checkpoint, one row per training step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from .checkpoint import RunDir, load_into, load_meta, load_weights
from .data import ImageData, to_model_range, to_uint8
from .diffusion import Denoiser, q_sample
from .errors import InputError
from .generate import TrainedModel, batch_seed, generate
from .images import figure_to_image, pyplot
from .samplers import get_sampler
from .schedules import make_schedule, spaced_timesteps

PADDING = 2
SCHEDULES = ("linear", "cosine", "sigmoid")
CELL = 64  # small images are enlarged (nearest neighbour) to about this many pixels, so labels fit


def labelled_grid(rows: Sequence[Tensor], row_labels: Sequence[str], column_labels: Optional[Sequence[str]] = None,
                  scale: Optional[int] = None) -> Image.Image:
    """A grid of uint8 images, row i being rows[i] [K, C, H, W], with a label left of every row and,
    if given, above every column. White background; images enlarged `scale` times (default: to
    about CELL pixels)."""
    if len(rows) != len(row_labels):
        raise ValueError("one label per row")
    height, width = rows[0].shape[-2:]
    scale = scale or max(1, CELL // height)
    cell_h, cell_w = height * scale, width * scale
    font = ImageFont.load_default()
    label_w = max(_text_size(font, label)[0] for label in row_labels) + 2 * PADDING
    header_h = _text_size(font, "t=999")[1] + 2 * PADDING if column_labels else 0
    columns = max(len(r) for r in rows)
    canvas = Image.new("RGB", (label_w + columns * (cell_w + PADDING) + PADDING,
                               header_h + len(rows) * (cell_h + PADDING) + PADDING), "white")
    draw = ImageDraw.Draw(canvas)
    for j, label in enumerate(column_labels or []):
        draw.text((label_w + PADDING + j * (cell_w + PADDING), PADDING), label, fill="black", font=font)
    for i, (row, label) in enumerate(zip(rows, row_labels)):
        top = header_h + PADDING + i * (cell_h + PADDING)
        draw.text((PADDING, top + (cell_h - _text_size(font, label)[1]) // 2), label, fill="black", font=font)
        for j, image in enumerate(row):
            picture = _to_pil(image).resize((cell_w, cell_h), Image.NEAREST)
            canvas.paste(picture, (label_w + PADDING + j * (cell_w + PADDING), top))
    return canvas


# ---- the forward process ---------------------------------------------------------------------


def forward_picture(data: ImageData, index: int, timesteps: Sequence[int], T: int = 1000, seed: int = 0) -> Image.Image:
    """Image `index` of `data` noised at each t of `timesteps` under each schedule (one row per
    schedule, the same noise in every cell), above plots of alpha_bar_t and log SNR."""
    if not 0 <= index < len(data):
        raise InputError(f"--index must be in 0..{len(data) - 1} for data set {data.name!r} (got {index})")
    bad = [t for t in timesteps if not 0 <= t < T]
    if bad or not timesteps:
        raise InputError(f"--t must be timesteps in 0..{T - 1}, e.g. 0,100,250,500,999 (got {list(timesteps)})")
    x0 = to_model_range(data.subset(torch.tensor([index])).images)  # [1, C, H, W] in [-1, 1]
    rows = [to_uint8(noised(x0, make_schedule(name, T), timesteps, seed)) for name in SCHEDULES]
    strip = labelled_grid(rows, list(SCHEDULES), [f"t={s}" for s in timesteps])
    return _stack([strip, schedule_plot(T)])


def noised(x0: Tensor, schedule, timesteps: Sequence[int], seed: int = 0) -> Tensor:
    """x_t ~ q(x_t | x0) for one image x0 [1, C, H, W] at each of `timesteps`, all with the same noise,
    so that the row shows only what the schedule does."""
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    t = torch.tensor(list(timesteps))
    return q_sample(schedule, x0.expand(len(t), -1, -1, -1), t, noise.expand(len(t), -1, -1, -1))


def schedule_plot(T: int = 1000) -> Image.Image:
    """alpha_bar_t and log SNR_t = log(alpha_bar / (1 - alpha_bar)) against t / T for each schedule."""
    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(8, 3), dpi=100)
    fraction = torch.arange(T) / (T - 1)
    for name in SCHEDULES:
        schedule = make_schedule(name, T)
        left.plot(fraction, schedule.alpha_bar, label=name)
        right.plot(fraction, schedule.log_snr, label=name)
    left.set_ylabel("alpha_bar_t")
    right.set_ylabel("log SNR_t")
    for axes in (left, right):
        axes.set_xlabel("t / T")
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    return figure_to_image(figure)


# ---- the reverse process ---------------------------------------------------------------------


def trajectory(denoiser: Denoiser, n: int, shape: tuple[int, int, int], sampler: str, steps: int, frames: int,
               spacing: str = "uniform", eta: float = 0.0, seed: int = 0,
               variance: str = "small") -> tuple[Image.Image, list[Image.Image]]:
    """Sample n images and record, at `frames` of the sampler's steps (first and last included),
    the input x_t and the network's prediction of x0. Returns the picture (for each sample a row
    of x_t and a row of x0, one column per recorded step) and one GIF frame per recorded step."""
    schedule = denoiser.schedule
    timesteps = spaced_timesteps(schedule.timesteps, steps, spacing, schedule)
    if not 2 <= frames <= len(timesteps):
        raise InputError(f"--frames must be between 2 and the number of steps, {len(timesteps)} (got {frames})")
    chosen = {round(k * (len(timesteps) - 1) / (frames - 1)) for k in range(frames)}
    device = next(denoiser.parameters()).device
    generator = torch.Generator(device=device).manual_seed(batch_seed(seed, 0))  # the noise of `ddpm sample --seed`
    x = torch.randn((n, *shape), generator=generator, device=device)
    recorded: list[tuple[int, Tensor, Tensor]] = []
    current = x

    def record(i, t, x_next, prediction):
        nonlocal current
        if i in chosen:
            recorded.append((t, to_uint8(current).cpu(), to_uint8(prediction.x0).cpu()))
        current = x_next

    get_sampler(sampler, eta, variance)(denoiser, x, schedule, timesteps, generator=generator, callback=record)
    columns = [f"t={t}" for t, _, _ in recorded]
    rows, row_labels = [], []
    for k in range(n):
        rows += [torch.stack([x_t[k] for _, x_t, _ in recorded]), torch.stack([x0[k] for _, _, x0 in recorded])]
        row_labels += [f"x_t #{k + 1}", f"x0 #{k + 1}"]
    picture = labelled_grid(rows, row_labels, columns)
    gif = [labelled_grid([x_t, x0], [f"x_t {column}", "x0"]) for column, (_, x_t, x0) in zip(columns, recorded)]
    return picture, gif


# ---- training progression ----------------------------------------------------------------------


def progression(model: TrainedModel, run_dir: Path, n: int, sampler: str, steps: int, spacing: str = "uniform",
                eta: float = 0.0, seed: int = 0, labels: Optional[Tensor] = None, variance: str = "small") -> Image.Image:
    """n samples from the same noise at every complete checkpoint of the run, one row per checkpoint
    labelled with its training step, oldest first (the EMA weights, as `ddpm sample` uses; they
    are loaded into `model.network` in turn). A class-conditional run needs `labels`, one per sample,
    and uses its own guidance weight."""
    run = RunDir(run_dir)
    folders = run.all_checkpoints()
    if not folders:
        raise InputError(f"run {run.path} has no checkpoint yet; train it first")
    config = model.config
    shape = (config.data.channels, config.data.image_size, config.data.image_size)
    rows, row_labels = [], []
    for folder in folders:
        load_into(model.network, load_weights(folder, "ema"), folder, run.config_path)
        denoiser = model.denoiser(config.sample.clip_denoised)
        rows.append(generate(denoiser, n, shape, sampler, steps, eta, spacing, seed=seed, progress=False, labels=labels,
                             guidance=config.sample.guidance, variance=variance))
        row_labels.append(f"step {load_meta(folder)['step']}")
    return labelled_grid(rows, row_labels)


# ---- helpers -----------------------------------------------------------------------------------


def _to_pil(image: Tensor) -> Image.Image:
    array = image.permute(1, 2, 0).numpy()
    return Image.fromarray(array[:, :, 0], "L") if array.shape[2] == 1 else Image.fromarray(array, "RGB")


def _text_size(font, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return right - left, bottom - top


def _stack(pictures: Sequence[Image.Image]) -> Image.Image:
    """Pictures one above the other, left-aligned, on white."""
    canvas = Image.new("RGB", (max(p.width for p in pictures), sum(p.height for p in pictures)), "white")
    top = 0
    for picture in pictures:
        canvas.paste(picture, (0, top))
        top += picture.height
    return canvas
