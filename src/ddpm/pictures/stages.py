"""Pictures of every stage: the forward process, the reverse trajectory, and samples across training.

Each picture is a grid of images with a label on every row (and column), composed with PIL so its
size in pixels is exact: cells of side `image_size * scale` separated by `PADDING` pixels.

- `forward_picture`: one data image noised at chosen t under each schedule (x_t = q_sample), and
  alpha_bar_t and log SNR for the linear, cosine and sigmoid schedules;
- `trajectory`: x_t and the predicted x0 of a few samples along the reverse process, as a picture
  and as the frames of an animated GIF;
- `progression`: samples from the same noise at each saved checkpoint, one row per training step;
- `edits_picture`: images of the data set inpainted, edited (img2img), inverted and interpolated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ..data.imagedata import ImageData, to_model_range, to_pil, to_uint8
from ..diffusion.process import levels, q_sample
from ..diffusion.schedules import make_schedule
from ..editor import Editor
from ..errors import InputError
from ..config.names import SCHEDULES
from ..pipeline import Pipeline
from ..storage.checkpoint import RunDir
from ..storage.files import figure_to_image, pyplot

PADDING = 2
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
            picture = to_pil(image).resize((cell_w, cell_h), Image.NEAREST)
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


def trajectory(pipe: Pipeline, n: int, frames: int, seed: int = 0, **options) -> tuple[Image.Image, list[Image.Image]]:
    """Sample n images with `pipe` (its run's options, overridden by `options`: sampler, steps,
    spacing, ...) and record, at `frames` of the sampler's steps (first and last included), the
    input x_t and the network's prediction of x0. Returns the picture (for each sample a row of x_t
    and a row of x0, one column per recorded step) and one GIF frame per recorded step.

    The noise is that of `ddpm sample --seed` (batch 0), and a class-conditional run draws classes
    0, 1, 2, ... with its own guidance."""
    plan = pipe.plan(n, **options)
    steps = plan.steps
    if not 2 <= frames <= steps:
        raise InputError(f"--frames must be between 2 and the number of steps, {steps} (got {frames})")
    chosen = {round(k * (steps - 1) / (frames - 1)) for k in range(frames)}
    recorded: list[tuple[int, Tensor, Tensor]] = []

    def record(i, t, x_next, prediction):
        if i in chosen:  # the step's input x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps: a Prediction is consistent
            alpha, s, _ = levels(pipe.diffusion.schedule, torch.full((n,), t, device=pipe.device), prediction.x0)
            x_t = alpha * prediction.x0 + s * prediction.eps
            recorded.append((t, to_uint8(pipe.to_images(x_t)), to_uint8(pipe.to_images(prediction.x0))))  # a latent run decodes both

    pipe.draw(plan, seed, progress=False, batch_size=n, callback=record)
    columns = [f"t={t:.0f}" for t, _, _ in recorded]  # EDM's sampler visits fractional timesteps
    rows, row_labels = [], []
    for k in range(n):
        rows += [torch.stack([x_t[k] for _, x_t, _ in recorded]), torch.stack([x0[k] for _, _, x0 in recorded])]
        row_labels += [f"x_t #{k + 1}", f"x0 #{k + 1}"]
    picture = labelled_grid(rows, row_labels, columns)
    gif = [labelled_grid([x_t, x0], [f"x_t {column}", "x0"]) for column, (_, x_t, x0) in zip(columns, recorded)]
    return picture, gif


# ---- training progression ----------------------------------------------------------------------


def progression(pipe: Pipeline, run_dir: Path, n: int, seed: int = 0, **options) -> Image.Image:
    """n samples from the same noise at every complete checkpoint of the run, one row per checkpoint
    labelled with its training step, oldest first (the EMA weights, as `ddpm sample` uses; they
    are loaded into `pipe` in turn). Options (sampler, steps, ...) default to the run's own."""
    run = RunDir(run_dir)
    folders = run.all_checkpoints()
    if not folders:
        raise InputError(f"run {run.path} has no checkpoint yet; train it first")
    plan = pipe.plan(n, **options)
    rows, row_labels = [], []
    for folder in folders:
        step = pipe.load_checkpoint(folder)
        rows.append(pipe.draw(plan, seed, progress=False))
        row_labels.append(f"step {step}")
    return labelled_grid(rows, row_labels)


# ---- editing ----------------------------------------------------------------------------------------


def edits_picture(pipe: Pipeline, data: ImageData, seed: int = 0, steps: Optional[int] = None,
                  count: int = 4, frames: int = 8) -> Image.Image:
    """`count` images of the run's data set, edited four ways (diffusion/editing.py): inpainting of
    a center square (RePaint, N = 5), img2img at strength 0.5, DDIM inversion and back, and an
    interpolation between the first two. One row per edit."""
    if len(data) < 2:
        raise InputError(f"data set {data.name!r} has fewer than 2 images to edit")
    chosen = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:count]
    images = data.subset(chosen).images
    side = images.shape[-1]
    mask = torch.zeros(side, side)
    mask[side // 4 : side - side // 4, side // 4 : side - side // 4] = 1  # white: fill
    edit = Editor(pipe)
    inpainted = torch.cat([edit.inpaint(image, mask, steps=steps, resample=5, jump=5, seed=seed) for image in images])
    edited = torch.cat([edit.img2img(image, 0.5, steps=steps, seed=seed) for image in images])
    round_trip = torch.cat([edit.reconstruct(edit.invert(image, steps), steps) for image in images])
    masked = to_uint8(to_model_range(images) * (1 - mask))  # the part to fill shown mid-gray
    walk = edit.interpolate(images[0], images[1], frames, steps)
    rows = [images, masked, inpainted, edited, round_trip, walk]
    labels = ["input", "masked", "inpainted (N=5)", "img2img 0.5", "DDIM inverted, back", f"a to b, {frames} frames"]
    return labelled_grid(rows, labels)


# ---- helpers -----------------------------------------------------------------------------------


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
