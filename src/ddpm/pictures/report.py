"""A run on one page: a self-contained HTML report (images embedded, nothing fetched from a network).

Sections, each present only when the run holds its data:

    config       config.yaml
    loss         the training loss curve, from log.csv
    grid         the newest sample grid written during training (samples/step_*.png)
    autoencoder  an autoencoder run's newest reconstructions, and its rFID and PSNR (ddpm eval --reconstruct)
    progression  samples from the same noise at each checkpoint (ddpm show progression)
    trajectory   the reverse process, x_t and predicted x0 (ddpm show trajectory), and its GIF
    edits        inpainting, img2img, DDIM inversion and interpolation (ddpm show edits)
    fid          the FID history (eval.csv, appended by ddpm eval --run)
    sweep        FID against network evaluations for each sampler (sweep.csv and sweep.png)
    ema          FID against the post-hoc EMA's length (ddpm ema --sweep: ema/sweep.csv and ema/sweep.png)
"""

from __future__ import annotations

import base64
import csv
import html
import io
import time
from pathlib import Path
from typing import Optional


from ..errors import InputError
from ..storage.checkpoint import RunDir
from ..storage.atomic import atomic_write
from ..storage.files import plot_loss

MIN_WIDTH = 400  # pixels: narrower images are shown at an integer multiple of their size
SECTIONS = ("config", "loss", "grid", "autoencoder", "progression", "trajectory", "edits", "fid", "sweep", "ema")

STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: .85em; }
img { max-width: 100%; image-rendering: pixelated; border: 1px solid #eee; }
table { border-collapse: collapse; font-size: .9em; } td, th { border: 1px solid #ccc; padding: .2em .6em; text-align: right; }
.caption { color: #666; font-size: .9em; }
"""


def write_report(run_dir: Path, out: Optional[Path] = None) -> tuple[Path, list[str]]:
    """Write the report of `run_dir` to `out` (default RUN/report.html); returns the path and the
    sections it holds."""
    run = RunDir(run_dir)
    config = run.load_config()  # refuses a folder that is not a run
    out = Path(out) if out else run.path / "report.html"
    if out.is_dir():
        raise InputError(f"--out {out} is a folder; give a file name such as {out / 'report.html'}")
    sections: dict[str, str] = {"config": _pre(run.config_path.read_text())}

    loss_curve = plot_loss(run.log_path) if run.log_path.is_file() else None  # drawn afresh, the run is not touched
    if loss_curve:
        sections["loss"] = _image(loss_curve, "loss.png", "training loss (mean over each logging interval), log scale")
    grids = run.sample_grids()
    if config.kind == "autoencoder":
        if grids:
            sections["autoencoder"] = _file(grids[-1], f"data set images (top) and their reconstructions (bottom) at "
                                                       f"{_step_of(grids[-1])}, f = {config.autoencoder.factor}")
        if (run.path / "eval.csv").is_file():
            sections["autoencoder"] = sections.get("autoencoder", "") + _table(run.path / "eval.csv")
    elif grids:
        sections["grid"] = _file(grids[-1], f"EMA samples at {_step_of(grids[-1])}, sampler {config.sample.sampler}, "
                                             f"{config.sample.steps} steps")
    if run.picture_path("progression").is_file():
        sections["progression"] = _file(run.picture_path("progression"), "the same noise, sampled at each checkpoint")
    if run.picture_path("trajectory").is_file():
        sections["trajectory"] = _file(run.picture_path("trajectory"), "x_t and the predicted x0 along the reverse process")
        gif = run.picture_path("trajectory").with_suffix(".gif")
        if gif.is_file():
            sections["trajectory"] += _file(gif, "the same, animated")
    if run.picture_path("edits").is_file():
        sections["edits"] = _file(run.picture_path("edits"), "images of the data set inpainted (the center square), "
                                                             "edited at strength 0.5, inverted and interpolated")
    if (run.path / "eval.csv").is_file() and "autoencoder" not in sections:
        sections["fid"] = _table(run.path / "eval.csv")
    if (run.path / "sweep.csv").is_file():
        sections["sweep"] = _table(run.path / "sweep.csv")
        if (run.path / "sweep.png").is_file():
            sections["sweep"] = _file(run.path / "sweep.png", "FID against network evaluations") + sections["sweep"]

    if (run.path / "ema" / "sweep.csv").is_file():
        sections["ema"] = _table(run.path / "ema" / "sweep.csv")
        if (run.path / "ema" / "sweep.png").is_file():
            sections["ema"] = _file(run.path / "ema" / "sweep.png", "FID against the post-hoc EMA's length "
                                                                    "(ddpm ema --sweep)") + sections["ema"]

    titles = {"config": "Config", "loss": "Training loss", "grid": "Latest samples", "autoencoder": "Reconstructions", "progression": "Progression",
              "trajectory": "Reverse trajectory", "edits": "Editing", "fid": "FID history", "sweep": "Sampler sweep", "ema": "Post-hoc EMA"}
    body = "".join(f'<section id="{name}"><h2>{titles[name]}</h2>{sections[name]}</section>\n'
                   for name in SECTIONS if name in sections)
    name = html.escape(run.path.name)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>ddpm run {name}</title>'
            f"<style>{STYLE}</style></head>\n<body><h1>ddpm run {name}</h1>"
            f'<p class="caption">{html.escape(str(run.path.resolve()))}, report written {time.strftime("%Y-%m-%d %H:%M")}</p>\n'
            f"{body}</body></html>\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: tmp.write_text(page))
    return out, [name for name in SECTIONS if name in sections]


def _file(path: Path, caption: str) -> str:
    return _image(path.read_bytes(), path.name, caption)


def _image(data: bytes, name: str, caption: str) -> str:
    """A PNG or GIF inline as a data URI; small ones (a 28 px training grid) are shown enlarged."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        kind = image.format.lower()
        width = image.width * max(1, MIN_WIDTH // image.width)
    encoded = base64.b64encode(data).decode("ascii")
    return (f'<figure><img src="data:image/{kind};base64,{encoded}" width="{width}" alt="{html.escape(name)}">'
            f'<figcaption class="caption">{html.escape(caption)}</figcaption></figure>')


def _pre(text: str) -> str:
    return f"<pre>{html.escape(text)}</pre>"


def _table(path: Path) -> str:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return '<p class="caption">(empty)</p>'
    header = "".join(f"<th>{html.escape(cell)}</th>" for cell in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows[1:])
    return f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


def _step_of(grid: Path) -> str:
    return f"step {int(grid.stem.split('_')[1])}"
