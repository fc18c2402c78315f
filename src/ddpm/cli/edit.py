"""`ddpm edit inpaint|img2img|invert|interpolate`: edit images with a trained run, through its Pipeline.

Every input is read and checked before anything is written; each command writes one picture (or,
for invert, one .npy of x_T) and says where.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from .common import parse_classes


def add_commands(commands) -> None:
    edit = commands.add_parser("edit", help="edit images with a trained run: inpaint, img2img, invert, interpolate",
                               description="Edit images with a trained run (see docs/editing.md).")
    kinds = edit.add_subparsers(title="edits", required=True, metavar="EDIT")

    def add(name: str, help: str, out: str):
        parser = kinds.add_parser(name, help=help, description=help)
        parser.add_argument("--run", required=True, help="run directory")
        parser.add_argument("--steps", type=int, help="sampling steps (default: the run's)")
        parser.add_argument("--seed", type=int, default=0, help="the random seed (default 0)")
        parser.add_argument("--device", default="auto")
        parser.add_argument("--out", required=True, help=out)
        return parser

    inpaint = add("inpaint", "fill the white part of --mask in --image (black is kept exactly); RePaint resampling",
                  "the picture to write (.png): input, masked input, completions")
    inpaint.add_argument("--image", required=True)
    inpaint.add_argument("--mask", required=True, help="same size as the image: white = fill, black = keep")
    inpaint.add_argument("--sampler", help="ddpm (the default) or ddim")
    inpaint.add_argument("--resample", type=int, default=1, help="RePaint's N: 1 is plain replacement (default 1)")
    inpaint.add_argument("--jump", type=int, default=10, help="RePaint's jump length J in steps (default 10)")
    inpaint.add_argument("--n", type=int, default=4, help="completions (default 4)")
    _add_class_args(inpaint)
    inpaint.set_defaults(command=run_inpaint)

    img2img = add("img2img", "SDEdit: noise --image to --strength and sample it back",
                  "the picture to write (.png): input, then the results")
    img2img.add_argument("--image", required=True)
    img2img.add_argument("--strength", type=float, required=True, help="0 returns the input, 1 is plain sampling")
    img2img.add_argument("--sampler", help="any sampler (default: the run's)")
    img2img.add_argument("--n", type=int, default=4, help="results (default 4)")
    _add_class_args(img2img)
    img2img.set_defaults(command=run_img2img)

    invert = add("invert", "DDIM inversion: the x_T from which deterministic DDIM returns --image",
                 "where x_T goes (.npy, float32 [C, H, W])")
    invert.add_argument("--image", required=True)
    invert.set_defaults(command=run_invert)

    interpolate = add("interpolate", "invert --a and --b, walk a spherical path between their noises, sample each "
                                     "point with DDIM", "the strip to write (.png); an animated .gif goes beside it")
    interpolate.add_argument("--a", required=True)
    interpolate.add_argument("--b", required=True)
    interpolate.add_argument("--frames", type=int, default=8, help="images along the path, ends included (default 8)")
    interpolate.set_defaults(command=run_interpolate)


def _add_class_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--class", dest="classes", metavar="CLASSES", help="class-conditional runs: the class(es)")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance weight (default: the run's)")


def run_inpaint(args: argparse.Namespace) -> int:
    pipe, image = _pipe_and_image(args, args.image, ".png")
    mask = _read(args.mask, gray=True, what="mask")
    results = pipe.inpaint(image, mask, args.n, args.sampler, args.steps, args.resample, args.jump, args.seed,
                           parse_classes(args.classes), args.guidance)
    masked = pipe.image_tensor(image) * (pipe.mask_tensor(mask) < 0.5).to(pipe.device)  # the part to fill: mid-gray
    _save_row(args.out, [pipe.image_tensor(image), masked, results], ["input", "masked", *[f"#{k + 1}" for k in range(args.n)]])
    return 0


def run_img2img(args: argparse.Namespace) -> int:
    pipe, image = _pipe_and_image(args, args.image, ".png")
    results = pipe.img2img(image, args.strength, args.n, args.sampler, args.steps, args.seed,
                           parse_classes(args.classes), args.guidance)
    _save_row(args.out, [pipe.image_tensor(image), results], ["input", *[f"s={args.strength:g} #{k + 1}" for k in range(args.n)]])
    return 0


def run_invert(args: argparse.Namespace) -> int:
    import numpy as np

    pipe, image = _pipe_and_image(args, args.image, ".npy")
    x_T = pipe.invert(image, args.steps)
    error = (pipe.reconstruct(x_T, args.steps, output="float") * 2 - 1 - pipe.image_tensor(image).cpu()).abs().mean()
    np.save(args.out, x_T[0].cpu().numpy().astype(np.float32))
    print(f"x_T written to {args.out}; DDIM from it returns the image within a mean error of {error:.4f} "
          f"(in [-1, 1]; fewer with more --steps)")
    return 0


def run_interpolate(args: argparse.Namespace) -> int:
    from ..pictures.stages import labelled_grid
    from ..storage.files import save_gif, save_picture

    pipe, a = _pipe_and_image(args, args.a, ".png")
    b = _read(args.b, gray=pipe.image_shape[0] == 1)
    frames = pipe.interpolate(a, b, args.frames, args.steps)
    labels = [f"{k / (args.frames - 1):.2f}" for k in range(args.frames)]
    out = save_picture(labelled_grid([frames], ["a -> b"], labels), Path(args.out))
    gif = save_gif([labelled_grid([frame[None]], [label]) for frame, label in zip(frames, labels)], out.with_suffix(".gif"))
    print(f"interpolation written to {out} and {gif}")
    return 0


# ---- helpers ---------------------------------------------------------------------------------


def _pipe_and_image(args: argparse.Namespace, image: str, suffix: str):
    """The run's pipeline and the first image, both checked, and the --out suffix, before any work."""
    from ..pipeline import Pipeline

    if Path(args.out).suffix.lower() != suffix:
        raise InputError(f"--out must name a {suffix} file (got {args.out})")
    pipe = Pipeline.from_run(args.run, device=args.device)
    picture = _read(image, gray=pipe.image_shape[0] == 1)
    pipe.image_tensor(picture)  # the right size and channels
    return pipe, picture


def _read(path: str, gray: bool, what: str = "image"):
    """An image file as a PIL image, grayscale or RGB as the run makes; a color file for a gray run
    (or the other way round) is refused rather than converted behind the user's back. A mask may
    be of any mode: it is read as gray."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            picture = image
    except Exception as error:  # missing, unreadable, not an image
        raise InputError(f"cannot read {what} {path}: {error}") from None
    if what == "mask":
        return picture.convert("L")
    is_gray = picture.mode in ("1", "L", "LA", "I", "I;16", "F")
    if gray and not is_gray and picture.getbands() != ("P",):
        raise InputError(f"{path} is a color image but the run makes grayscale images; convert it to grayscale first")
    return picture.convert("L" if gray or is_gray else "RGB")


def _save_row(out: str, rows, labels) -> None:
    import torch

    from ..data.imagedata import to_uint8
    from ..pictures.stages import labelled_grid
    from ..storage.files import save_picture

    images = torch.cat([to_uint8(r.cpu()) if r.dtype != torch.uint8 else r.cpu() for r in rows])
    path = save_picture(labelled_grid([images], ["edit"], labels), Path(out))
    print(f"written to {path}")
