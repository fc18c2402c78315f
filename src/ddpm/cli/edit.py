"""`ddpm edit inpaint|img2img|invert|interpolate`: edit images with a trained run, through its Pipeline.

Every input is read and checked before anything is written. The results go to --out in a form the
next tool reads: a .npz in `ddpm sample`'s convention (which `ddpm edit --image` and `ddpm eval
--samples` take), a PNG grid, or a folder of one PNG per image; invert writes x_T as .npy. The
labelled comparison (input | masked | results) is a separate picture, --figure.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from .common import parse_classes
from .ema import add_ema_flag, checkpoint_of


RESULTS = "a .npz (arr_0 uint8 [N, H, W, C], as ddpm sample writes), a .png grid, or a folder (one PNG per image)"


def add_commands(commands) -> None:
    edit = commands.add_parser("edit", help="edit images with a trained run: inpaint, img2img, invert, interpolate",
                               description="Edit images with a trained run (see docs/editing.md).")
    kinds = edit.add_subparsers(title="edits", required=True, metavar="EDIT")

    def add(name: str, help: str, out: str = f"the results: {RESULTS}", figure: str = ""):
        parser = kinds.add_parser(name, help=help, description=help)
        parser.add_argument("--run", required=True, help="run directory")
        add_ema_flag(parser)
        parser.add_argument("--steps", type=int, help="sampling steps (default: the run's)")
        parser.add_argument("--seed", type=int, default=0, help="the random seed (default 0)")
        parser.add_argument("--device", default="auto")
        parser.add_argument("--out", required=True, help=out)
        if figure:
            parser.add_argument("--figure", help=figure)
        return parser

    image_help = "an image file, or a .npz of images (arr_0 uint8 [N, H, W, C], e.g. another edit's --out)"
    inpaint = add("inpaint", "fill the white part of --mask in --image (black is kept exactly); RePaint resampling",
                  figure="also a labelled picture (.png): input, masked input, completions")
    inpaint.add_argument("--image", required=True, help=image_help)
    inpaint.add_argument("--mask", required=True, help="same size as the image: white = fill, black = keep")
    inpaint.add_argument("--sampler", help="ddpm (the default) or ddim")
    inpaint.add_argument("--resample", type=int, default=1, help="RePaint's N: 1 is plain replacement (default 1)")
    inpaint.add_argument("--jump", type=int, default=10, help="RePaint's jump length J in steps (default 10)")
    inpaint.add_argument("--n", type=int, default=4, help="completions of each image (default 4)")
    _add_class_args(inpaint)
    inpaint.set_defaults(command=run_inpaint)

    img2img = add("img2img", "SDEdit: noise --image to --strength and sample it back",
                  figure="also a labelled picture (.png): input, then the results")
    img2img.add_argument("--image", required=True, help=image_help)
    img2img.add_argument("--strength", type=float, required=True, help="0 returns the input, 1 is plain sampling")
    img2img.add_argument("--sampler", help="any sampler (default: the run's)")
    img2img.add_argument("--n", type=int, default=4, help="results of each image (default 4)")
    _add_class_args(img2img)
    img2img.set_defaults(command=run_img2img)

    invert = add("invert", "DDIM inversion: the x_T from which deterministic DDIM returns --image",
                 out="where x_T goes (.npy, float32 [C, H, W], or [N, C, H, W] for several images)")
    invert.add_argument("--image", required=True, help=image_help)
    invert.set_defaults(command=run_invert)

    interpolate = add("interpolate", "invert --a and --b, walk a spherical path between their noises, sample each "
                                     "point with DDIM",
                      figure="also a labelled strip (.png), with an animated .gif beside it")
    interpolate.add_argument("--a", required=True, help=image_help + "; one image")
    interpolate.add_argument("--b", required=True, help=image_help + "; one image")
    interpolate.add_argument("--frames", type=int, default=8, help="images along the path, ends included (default 8)")
    interpolate.set_defaults(command=run_interpolate)


def _add_class_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--class", dest="classes", metavar="CLASSES", help="class-conditional runs: the class(es)")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance weight (default: the run's)")


def run_inpaint(args: argparse.Namespace) -> int:
    edit, image = _editor_and_image(args, args.image)
    mask = _read(args.mask, gray=True, what="mask")
    results = edit.inpaint(image, mask, args.n, args.sampler, args.steps, args.resample, args.jump, args.seed,
                           parse_classes(args.classes), args.guidance)
    _save(args, results)
    if args.figure:
        inputs = edit.image_tensor(image)
        masked = inputs * (edit.mask_tensor(mask) < 0.5).to(edit.pipe.device)  # the part to fill: mid-gray
        _save_figure(args.figure, inputs, [masked], results, ["masked"])
    return 0


def run_img2img(args: argparse.Namespace) -> int:
    edit, image = _editor_and_image(args, args.image)
    results = edit.img2img(image, args.strength, args.n, args.sampler, args.steps, args.seed,
                           parse_classes(args.classes), args.guidance)
    _save(args, results)
    if args.figure:
        _save_figure(args.figure, edit.image_tensor(image), [], results, [], f"s={args.strength:g} ")
    return 0


def run_invert(args: argparse.Namespace) -> int:
    import numpy as np

    if Path(args.out).suffix.lower() != ".npy":
        raise InputError(f"--out must name a .npy file (got {args.out})")
    edit, image = _editor_and_image(args, args.image)
    x_T = edit.invert(image, args.steps)
    error = (edit.reconstruct(x_T, args.steps, output="float") * 2 - 1 - edit.image_tensor(image).cpu()).abs().mean()
    array = x_T.cpu().numpy().astype(np.float32)
    np.save(args.out, array[0] if len(array) == 1 else array)
    print(f"x_T written to {args.out}; DDIM from it returns the image within a mean error of {error:.4f} "
          f"(in [-1, 1]; fewer with more --steps)")
    return 0


def run_interpolate(args: argparse.Namespace) -> int:
    from ..pictures.stages import labelled_grid
    from ..storage.files import save_gif, save_picture

    edit, a = _editor_and_image(args, args.a)
    b = _read(args.b, gray=edit.pipe.image_shape[0] == 1)
    frames = edit.interpolate(a, b, args.frames, args.steps)
    _save(args, frames)
    if args.figure:
        labels = [f"{k / (args.frames - 1):.2f}" for k in range(args.frames)]
        out = save_picture(labelled_grid([frames], ["a -> b"], labels), Path(args.figure))
        gif = save_gif([labelled_grid([frame[None]], [label]) for frame, label in zip(frames, labels)],
                       out.with_suffix(".gif"))
        print(f"interpolation pictured in {out} and {gif}")
    return 0


# ---- helpers ---------------------------------------------------------------------------------


def _editor_and_image(args: argparse.Namespace, image: str):
    """The run's editor and the first image(s), both checked, and --out and --figure, before any work."""
    from ..editor import Editor
    from ..pipeline import Pipeline
    from ..storage.files import check_results_path

    if getattr(args, "figure", None) and Path(args.figure).suffix.lower() != ".png":
        raise InputError(f"--figure must name a .png file (got {args.figure})")
    if args.command is not run_invert:
        check_results_path(Path(args.out))
    edit = Editor(Pipeline.from_run(args.run, checkpoint_of(args.run, None, args.ema), device=args.device))
    picture = _read(image, gray=edit.pipe.image_shape[0] == 1)
    edit.image_tensor(picture)  # the right size and channels
    return edit, picture


def _read(path: str, gray: bool, what: str = "image"):
    """An image file as a PIL image, grayscale or RGB as the run makes; or a .npz of images (as `ddpm
    sample` and `ddpm edit --out` write them) as uint8 [N, C, H, W]. A color image for a gray run (or
    the other way round) is refused rather than converted behind the user's back. A mask may be of
    any mode: it is read as gray."""
    if Path(path).suffix.lower() == ".npz" and what != "mask":
        from ..evaluation.fid import load_samples

        images = load_samples(Path(path))
        if (images.shape[1] == 1) != gray:
            raise InputError(f"{path} holds {'gray' if images.shape[1] == 1 else 'color'} images but the run makes "
                             f"{'grayscale' if gray else 'color'} images")
        return images
    from ..data.imagedata import open_image

    picture = open_image(path, what)
    if what == "mask":
        return picture.convert("L")
    is_gray = picture.mode in ("1", "L", "LA", "I", "I;16", "F")
    if gray and not is_gray and picture.getbands() != ("P",):
        raise InputError(f"{path} is a color image but the run makes grayscale images; convert it to grayscale first")
    return picture.convert("L" if gray or is_gray else "RGB")


def _save(args: argparse.Namespace, results) -> None:
    from ..storage.files import save_results

    print(f"{len(results)} results written to {save_results(results, Path(args.out))}")


def _save_figure(out: str, inputs, extra, results, extra_labels, prefix: str = "") -> None:
    """input | extra columns | the results, in one labelled row per input image."""
    import torch

    from ..data.imagedata import to_uint8
    from ..pictures.stages import labelled_grid
    from ..storage.files import save_picture

    per_input = len(results) // len(inputs)
    rows = []
    for k in range(len(inputs)):
        columns = [inputs[k:k + 1], *[e[k:k + 1] for e in extra], results[k * per_input:(k + 1) * per_input]]
        rows.append(torch.cat([to_uint8(c.cpu()) if c.dtype != torch.uint8 else c.cpu() for c in columns]))
    labels = ["input", *extra_labels, *[f"{prefix}#{k + 1}" for k in range(per_input)]]
    path = save_picture(labelled_grid(rows, [f"image {k + 1}" for k in range(len(inputs))], labels), Path(out))
    print(f"figure written to {path}")
