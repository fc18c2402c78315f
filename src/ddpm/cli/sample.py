"""`ddpm sample`, `ddpm eval` and `ddpm sweep`: draw images from a run through its Pipeline, and score them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import InputError
from ..config.names import SPACINGS
from ..registry import DATASETS, SAMPLERS
from .common import (
    add_sampling_args,
    parse_classes,
    parse_ints,
    positive,
    sampling_kwargs,
    split_names,
)
from .ema import add_ema_flag, checkpoint_of


def add_commands(commands) -> None:
    sample = commands.add_parser("sample", help="draw samples from a trained run",
                                 description="Draw samples from a run's EMA model.")
    sample.add_argument("--run", required=True, help="run directory")
    add_sampling_args(sample, n=64)
    sample.add_argument("--out", help="samples as .npz: arr_0 uint8 [N, H, W, C] (default RUN/samples.npz)")
    sample.add_argument("--grid", help="PNG grid of the samples (default RUN/grid.png)")
    sample.add_argument("--grid-n", type=int, default=64, help="how many samples the grid shows (default 64)")
    sample.set_defaults(command=run_sample)

    evaluate = commands.add_parser("eval", help="FID, KID, precision and recall of samples against a data set",
                                   description="FID and KID of a sample set (.npz, image folder, or a run that is "
                                               "sampled) against a data set. Reference features are cached in "
                                               "$DDPM_CACHE (~/.cache/ddpm).")
    evaluate.add_argument("--samples", help="a .npz (arr_0 uint8 [N, H, W, C]) or a folder of images")
    evaluate.add_argument("--run", help="a run directory: sample --n images from it first")
    evaluate.add_argument("--reconstruct", metavar="AUTOENCODER",
                          help="an autoencoder run (or diffusers:PATH): rFID and PSNR of --n reconstructions of its data")
    add_sampling_args(evaluate, n=1000)
    evaluate.add_argument("--data", help="reference data set (default: the run's, else mnist5k)")
    evaluate.add_argument("--data-root", default="data")
    evaluate.add_argument("--ref-n", type=int, help="reference images (default: the whole data set)")
    evaluate.add_argument("--json", help="also write the result as JSON here")
    evaluate.set_defaults(command=run_eval)

    sweep = commands.add_parser("sweep", help="FID and wall time for each sampler and step count",
                                description="Sample a run with every sampler at every step count; write sweep.csv and "
                                            "sweep.png (FID against network evaluations) into the run or --out.")
    sweep.add_argument("--run", required=True)
    add_ema_flag(sweep)
    sweep.add_argument("--samplers", help=f"comma-separated (default all: {','.join(SAMPLERS.names())})")
    sweep.add_argument("--steps", default="5,10,20,50,100,1000", help="comma-separated step counts (default 5,10,20,50,100,1000)")
    sweep.add_argument("--n", type=int, default=1000, help="samples per pair (default 1000)")
    sweep.add_argument("--spacing", choices=SPACINGS, help="timestep spacing (default: the run's)")
    sweep.add_argument("--seed", type=int, default=0)
    sweep.add_argument("--batch-size", type=int, default=256)
    sweep.add_argument("--data", help="reference data set (default: the run's)")
    sweep.add_argument("--data-root", default="data")
    sweep.add_argument("--ref-n", type=int, help="reference images (default: the whole data set)")
    sweep.add_argument("--out", help="folder for sweep.csv and sweep.png (default: the run directory)")
    sweep.add_argument("--student", action="append", default=[], metavar="RUN",
                       help="a student of the run (ddpm distill) beside the samplers: a progressive one's every "
                            "phase, a consistency one at each --steps up to 8")
    sweep.add_argument("--device", default="auto")
    sweep.set_defaults(command=run_sweep)


def run_sample(args: argparse.Namespace) -> int:
    from ..storage.files import save_class_grid, save_grid, save_npz

    images, labels, source = _draw(args)
    if not source.pop("writes"):
        return 0  # another rank of torchrun writes the files
    out = Path(args.out) if args.out else Path(args.run) / "samples.npz"
    grid = Path(args.grid) if args.grid else Path(args.run) / "grid.png"
    save_npz(out, images, labels)
    if labels is None:
        save_grid(images[: args.grid_n], grid)
    else:
        save_class_grid(images, labels, grid, args.grid_n)
    print(f"{len(images)} samples from step {source['step']} written to {out}; grid written to {grid}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from ..evaluation.fid import evaluate, load_samples
    from ..evaluation.history import RECONSTRUCT_FIELDS, append_eval_history
    from ..runtime.devices import resolve_device

    if sum(map(bool, (args.samples, args.run, args.reconstruct))) != 1:
        raise InputError("give one of --samples PATH (.npz or folder of images), --run RUN or --reconstruct AUTOENCODER")
    data = args.data
    if data is not None:  # before minutes of sampling
        DATASETS.get(data, "data set")
    extra = {}
    if args.reconstruct:
        images, source, extra = _reconstruct(args)
        data = source["data"]
    elif args.samples:
        images = load_samples(Path(args.samples))
        source = {"samples": str(args.samples)}
    else:
        images, _, source = _draw(args)
        if not source.pop("writes"):
            return 0  # another rank of torchrun evaluates
        data = data or source["data"]
    result = {**source, **evaluate(images, data or "mnist5k", args.data_root, args.ref_n,
                                   str(resolve_device(args.device))), **extra}
    if args.reconstruct:
        print(f"PSNR {result['psnr']:.2f} dB")
    print(f"{'rFID' if args.reconstruct else 'FID'} {result['fid']:.3f}")
    print(f"KID {result['kid']:.5f}")
    if result["precision"] is not None:
        print(f"precision {result['precision']:.3f}, recall {result['recall']:.3f} (Kynkaenniemi et al. 2019, k = 3)")
    print(f"({result['samples']} samples against {result['reference']} {result['data']} images at "
          f"{result['image_size']}px; FID is biased upward at small counts, compare equal counts only)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.run:
        append_eval_history(Path(args.run), result)
    elif args.reconstruct and not args.reconstruct.startswith("diffusers:"):
        append_eval_history(Path(args.reconstruct), result, RECONSTRUCT_FIELDS)  # the autoencoder's report shows it
    return 0


def _reconstruct(args: argparse.Namespace):
    """--n reconstructions of the autoencoder's data (its run's, or --data for a diffusers one)."""
    from ..config import DataConfig
    from ..data.datasets import load_data
    from ..evaluation.reconstruct import psnr, reconstruct
    from ..factory import load_codec
    from ..models.codec import DIFFUSERS
    from ..runtime.devices import resolve_device
    from ..storage.checkpoint import RunDir

    positive(args.n, "--n")
    device = resolve_device(args.device)
    if args.reconstruct.startswith(DIFFUSERS):
        if args.data is None:
            raise InputError("--reconstruct diffusers:PATH needs --data, the images to reconstruct")
        d = DataConfig(name=args.data, root=args.data_root)
    else:
        config = RunDir(Path(args.reconstruct)).load_config()
        if config.kind != "autoencoder":
            raise InputError(f"{args.reconstruct} is a diffusion run; --reconstruct takes an autoencoder run")
        d = config.data if args.data is None else DataConfig(name=args.data, root=args.data_root,
                                                             image_size=config.data.image_size)
    codec = load_codec(args.reconstruct, device=device)
    data = load_data(d)
    originals, rebuilt = reconstruct(codec, data, min(args.n, len(data)), device)
    source = {"reconstruct": args.reconstruct, "sha256": codec.sha256, "data": d.name}
    return rebuilt, source, {"psnr": round(psnr(originals, rebuilt), 3), "metric": "rFID"}


def run_sweep(args: argparse.Namespace) -> int:
    from ..evaluation.fid import Evaluator
    from ..evaluation.sweep import sweep
    from ..pipeline import Pipeline
    from ..runtime.devices import resolve_device
    from ..storage.files import plot_sweep

    samplers = split_names(args.samplers) if args.samplers else list(SAMPLERS.names())
    steps = parse_ints(args.steps, "--steps", "5,10,20")
    if not samplers or min(steps) < 1:
        raise InputError("--samplers and --steps need at least one entry each, and steps must be >= 1")
    positive(args.n, "--n", 2)
    pipe = Pipeline.from_run(args.run, checkpoint_of(args.run, None, args.ema), device=args.device)
    for name in samplers:
        SAMPLERS.get(name)  # before the reference features, which can take minutes
    out = Path(args.out) if args.out else Path(args.run)
    out.mkdir(parents=True, exist_ok=True)
    evaluator = Evaluator(args.data or pipe.config.data.name, args.data_root, pipe.config.data.image_size, args.ref_n,
                          str(resolve_device(args.device)))
    rows = sweep(pipe, samplers, steps, args.n, evaluator, args.spacing, args.seed, args.batch_size, out / "sweep.csv",
                 [Path(student) for student in args.student])
    plot_sweep(rows, out / "sweep.png", f"{Path(args.run).name}, step {pipe.step}, {args.n} samples")
    print(f"sweep written to {out / 'sweep.csv'} and {out / 'sweep.png'}")
    return 0


def _draw(args: argparse.Namespace):
    """Samples from `args.run` with the sampling flags given, the run's own options for the rest.

    Returns (uint8 images, their class labels or None, a record of how they were drawn).
    """
    from ..pipeline import Pipeline

    positive(args.n, "--n")
    checkpoint = checkpoint_of(args.run, args.checkpoint, args.ema)
    pipe = Pipeline.from_run(args.run, checkpoint=checkpoint, ema=not args.no_ema, device=args.device)
    kwargs = sampling_kwargs(args)
    batch_size = kwargs.pop("batch_size", 256)
    plan = pipe.plan(args.n, classes=parse_classes(args.classes), **kwargs)
    images = pipe.draw(plan, seed=args.seed, batch_size=batch_size)
    source = {"run": str(args.run), "step": pipe.step, "weights": "model" if args.no_ema else "ema",
              **plan.record(), "seed": args.seed, "data": pipe.config.data.name, "writes": pipe.ranks.is_main}
    if plan.labels is not None:
        source.update(classes=args.classes or "all", guidance=plan.guidance)
    return images, plan.labels, source
