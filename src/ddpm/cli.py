"""The `ddpm` command line: parse, validate, and call the same Python API a user would.

Settings are layered: defaults < --preset < --config FILE < named flags < --set section.key=value.
Bad input ends in one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from .config import LOSSES, OBJECTIVES, OPTIMIZERS, PRECISIONS, SAMPLERS, SCHEDULES, VARIANCES, Config
from .schedules import SPACINGS
from .errors import InputError

# Named flags of `ddpm train` and the config keys they set.
TRAIN_FLAGS = {
    "data": "data.name",
    "data_root": "data.root",
    "image_size": "data.image_size",
    "crop": "data.crop",
    "flip": "data.flip",
    "channels": "data.channels",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "optimizer": "train.optimizer",
    "timesteps": "diffusion.timesteps",
    "schedule": "diffusion.schedule",
    "objective": "diffusion.objective",
    "loss": "diffusion.loss",
    "classes": "model.num_classes",
    "max_steps": "train.max_steps",
    "max_minutes": "train.max_minutes",
    "seed": "train.seed",
    "device": "train.device",
    "precision": "train.precision",
    "compile": "train.compile",
    "channels_last": "train.channels_last",
    "grad_accum": "train.grad_accum",
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit:  # --help, or a usage error already printed on one line
        return exit.code
    try:
        return args.command(args)
    except InputError as error:
        print(f"ddpm: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ddpm: interrupted", file=sys.stderr)
        return 130
    finally:
        from .distributed import close_distributed

        close_distributed()  # under torchrun


# ---- commands --------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    overrides = {key: getattr(args, flag) for flag, key in TRAIN_FLAGS.items() if getattr(args, flag) is not None}
    overrides.update(_parse_set(args.set))
    if args.resume:
        out = Path(args.resume)
        if args.out and Path(args.out) != out:
            raise InputError("--resume continues a run in its own directory; drop --out")
        if args.preset or args.config:
            raise InputError("--resume reads the run's own config.yaml; drop --preset and --config")
        config = _resumed_config(out, overrides)
    else:
        config = _build_config(args.preset, args.config, overrides)
        out = Path(args.out) if args.out else Path("runs") / f"{args.preset or config.data.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    config.validate()
    run = train(config, out, resume=bool(args.resume), progress=not args.no_progress)
    if int(os.environ.get("RANK", 0)) == 0:  # under torchrun, one line from rank 0
        print(f"run written to {run.path}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .images import save_class_grid, save_grid, save_npz

    images, labels, source = _sample_run(args)
    if not source["writes"]:
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


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from .datasets import DATASETS, known
    from .evaluate import evaluate, load_samples

    if bool(args.samples) == bool(args.run):
        raise InputError("give either --samples PATH (.npz or folder of images) or --run RUN")
    data = args.data
    if data is not None and not known(data):  # before minutes of sampling
        raise InputError(f"unknown data set {data!r}; known data sets: {', '.join(DATASETS)}")
    if args.samples:
        images = load_samples(Path(args.samples))
        source = {"samples": str(args.samples)}
    else:
        images, _, source = _sample_run(args)
        if not source.pop("writes"):
            return 0  # another rank of torchrun evaluates
        data = data or source["data"]
    result = {**source, **evaluate(images, data or "mnist5k", args.data_root, args.ref_n, _eval_device(args.device))}
    print(f"FID {result['fid']:.3f}")
    print(f"KID {result['kid']:.5f}")
    print(f"({result['samples']} samples against {result['reference']} {result['data']} images at "
          f"{result['image_size']}px; FID is biased upward at small counts, compare equal counts only)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.run:
        _append_eval_history(Path(args.run), result)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .evaluate import Evaluator
    from .generate import load_run
    from .images import plot_sweep
    from .samplers import get_sampler
    from .sweep import sweep

    samplers = [name.strip() for name in args.samplers.split(",") if name.strip()]
    steps = _parse_ints(args.steps, "--steps", "5,10,20")
    if not samplers or min(steps) < 1:
        raise InputError("--samplers and --steps need at least one entry each, and steps must be >= 1")
    if args.n < 2:
        raise InputError(f"--n must be >= 2 for FID (got {args.n})")
    for name in samplers:
        get_sampler(name)  # before the reference features, which can take minutes
    model = load_run(Path(args.run), device=args.device)
    out = Path(args.out) if args.out else Path(args.run)
    out.mkdir(parents=True, exist_ok=True)
    evaluator = Evaluator(args.data or model.config.data.name, args.data_root, model.config.data.image_size, args.ref_n,
                          _eval_device(args.device))
    rows = sweep(model, samplers, steps, args.n, evaluator, args.spacing, args.seed, args.batch_size, out / "sweep.csv")
    plot_sweep(rows, out / "sweep.png", f"{Path(args.run).name}, step {model.step}, {args.n} samples")
    print(f"sweep written to {out / 'sweep.csv'} and {out / 'sweep.png'}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from . import pictures
    from .checkpoint import RunDir
    from .images import save_gif, save_picture

    if args.picture == "forward":
        from .data import load_data

        timesteps = _parse_ints(args.t, "--t", "0,100,250,500,750,999")
        picture = pictures.forward_picture(load_data(args.data, args.data_root), args.index, timesteps, args.timesteps,
                                           args.seed)
        out = save_picture(picture, _picture_out(args.out, Path("forward.png")))
        print(f"forward process written to {out}")
        return 0

    from .generate import class_labels, load_run

    if not args.run:
        raise InputError(f"ddpm show {args.picture} needs --run RUN")
    n = args.n if args.n is not None else (4 if args.picture == "trajectory" else 8)
    if n < 1:
        raise InputError(f"--n must be >= 1 (got {n})")
    model = load_run(Path(args.run), device=args.device)
    s = model.config.sample
    sampler, steps, spacing, eta, variance = _sampling_choice(model, args.sampler, args.steps, args.spacing, None, None)
    shape = (model.config.data.channels, model.config.data.image_size, model.config.data.image_size)
    labels = class_labels(n, range(model.config.model.num_classes)) if model.config.model.num_classes else None
    out = _picture_out(args.out, RunDir(args.run).picture_path(args.picture))
    if args.picture == "trajectory":
        denoiser = model.denoiser(s.clip_denoised)
        if labels is not None:  # a class-conditional run: classes 0, 1, 2, ... with the run's guidance
            denoiser = denoiser.conditioned(labels.to(next(model.network.parameters()).device), s.guidance)
        picture, frames = pictures.trajectory(denoiser, n, shape, sampler, steps, args.frames, spacing, eta, args.seed,
                                              variance)
        save_picture(picture, out)
        gif = save_gif(frames, out.with_suffix(".gif"))
        print(f"trajectory written to {out} and {gif} ({len(frames)} frames)")
    else:
        save_picture(pictures.progression(model, Path(args.run), n, sampler, steps, spacing, eta, args.seed, labels,
                                          variance), out)
        print(f"progression written to {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    out, sections = write_report(Path(args.run), Path(args.out) if args.out else None)
    print(f"report written to {out} (sections: {', '.join(sections)})")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from .presets import list_presets

    presets = list_presets()
    width = max(map(len, presets))
    for name, description in presets.items():
        print(f"{name:<{width}}  {description}")
    return 0


# ---- helpers ---------------------------------------------------------------------------------


def _build_config(preset: Optional[str], config_file: Optional[str], overrides: dict) -> Config:
    from .presets import load_preset

    config = load_preset(preset) if preset else Config()
    if config_file:
        config = Config.from_yaml(Path(config_file), base=config)
    return config.override(overrides)


def _resumed_config(run_dir: Path, overrides: dict) -> Config:
    """The run's own config; only the budget and logging may change when resuming."""
    from .checkpoint import RunDir

    config = RunDir(run_dir).load_config()
    changeable = {"train.max_steps", "train.max_minutes", "train.device", "train.log_every",
                  "train.sample_every", "train.checkpoint_every", "train.keep_checkpoints", "train.precision",
                  "train.compile", "train.channels_last", "train.grad_accum"}
    fixed = sorted(key for key in overrides if key not in changeable)
    if fixed:
        raise InputError(f"--resume continues {run_dir} with its own config; it cannot change {', '.join(fixed)} "
                         f"(only the budget, e.g. --max-steps or --max-minutes)")
    return config.override(overrides)


def _eval_device(name: str) -> str:
    from .generate import resolve_device

    return str(resolve_device(name))


EVAL_FIELDS = ["step", "weights", "sampler", "steps", "spacing", "eta", "variance", "guidance", "seed", "samples",
               "reference", "data", "fid", "kid"]  # every setting that changes the score, so rows can be told apart


def _append_eval_history(run_dir: Path, result: dict) -> None:
    """RUN/eval.csv: one row per evaluation, the run's FID history. A history written under other
    columns (by a version that recorded fewer settings) is first rewritten under today's header, its
    rows kept, with blanks where they did not say."""
    import csv

    path = run_dir / "eval.csv"
    rows, rewrite = [], True
    if path.is_file():
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            rewrite = reader.fieldnames != EVAL_FIELDS
            rows = list(reader) if rewrite else []
    if rewrite:
        partial = path.with_name(path.name + ".partial")
        with open(partial, "w", newline="") as handle:
            writer = csv.DictWriter(handle, EVAL_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(partial, path)
    with open(path, "a", newline="") as handle:
        csv.DictWriter(handle, EVAL_FIELDS, extrasaction="ignore").writerow(result)


def _parse_ints(text: str, flag: str, example: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise InputError(f"{flag} must be comma-separated integers, e.g. {example} (got {text!r})")
    return values


def _picture_out(out: Optional[str], default: Path) -> Path:
    path = Path(out) if out else default
    if path.suffix.lower() != ".png":
        raise InputError(f"--out must name a .png file (got {path})")
    return path


def _parse_set(items: Sequence[str]) -> dict:
    overrides = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--set {item!r} must look like section.key=value, e.g. --set train.ema_decay=0.9995")
        overrides[key.strip()] = value
    return overrides


def _sample_run(args: argparse.Namespace):
    """Samples from `args.run` with the sampling flags, each defaulting to the run's own config.

    Returns (uint8 images, their class labels or None, a description of how they were drawn).
    """
    from .distributed import init_distributed
    from .generate import class_labels, generate, load_run
    from .samplers import network_evaluations

    ranks, device = init_distributed(args.device)  # under torchrun the ranks share the sampling
    model = load_run(Path(args.run), checkpoint=args.checkpoint, use_ema=not args.no_ema, device=device)
    s = model.config.sample
    sampler, steps, spacing, eta, variance = _sampling_choice(model, args.sampler, args.steps, args.spacing, args.eta,
                                                              args.variance)
    if args.n < 1:
        raise InputError(f"--n must be >= 1 (got {args.n})")
    classes = _parse_classes(args.classes, model.config.model.num_classes, args.run)
    guidance = s.guidance if args.guidance is None else args.guidance
    if guidance < 0 or (args.guidance is not None and classes is None):
        raise InputError(f"--guidance needs a class-conditional run and a weight >= 0 (got {guidance})")
    labels = None if classes is None else class_labels(args.n, classes)
    shape = (model.config.data.channels, model.config.data.image_size, model.config.data.image_size)
    images = generate(model.denoiser(s.clip_denoised), args.n, shape, sampler, steps, eta, spacing, args.seed,
                      args.batch_size, labels=labels, guidance=guidance, ranks=ranks, variance=variance)
    source = {"run": str(args.run), "step": model.step, "weights": "model" if args.no_ema else "ema", "sampler": sampler,
              "steps": steps, "spacing": spacing, "nfe": network_evaluations(sampler, steps), "seed": args.seed,
              "data": model.config.data.name, "writes": ranks.is_main}
    if sampler == "ddim":
        source["eta"] = eta
    if sampler == "ddpm":
        source["variance"] = variance
    if classes is not None:
        source.update(classes=args.classes or "all", guidance=guidance)
    return images, labels, source


def _sampling_choice(model, sampler: Optional[str], steps: Optional[int], spacing: Optional[str],
                     eta: Optional[float], variance: Optional[str]) -> tuple[str, int, str, float, str]:
    """The sampling flags, each one left out taking the run's own `sample` config, checked before any work."""
    from .samplers import get_sampler

    s = model.config.sample
    sampler = sampler or s.sampler
    steps = s.steps if steps is None else steps
    spacing = spacing or s.spacing
    eta = s.eta_for(sampler) if eta is None else eta
    variance = s.variance_for(sampler) if variance is None else variance
    get_sampler(sampler, eta, variance)  # refuses an unknown name, or an eta or variance the sampler does not take
    if not 1 <= steps <= model.schedule.timesteps:
        raise InputError(f"--steps must be between 1 and the model's T = {model.schedule.timesteps} (got {steps})")
    return sampler, steps, spacing, eta, variance


def _parse_classes(text: Optional[str], num_classes: int, run: str) -> Optional[list[int]]:
    """--class: "3", "1,4,7" or "all" (the default for a class-conditional run); None if unconditional."""
    if not num_classes:
        if text is not None:
            raise InputError(f"run {run} was trained without classes; train with --classes K to use --class")
        return None
    if text is None or text == "all":
        return list(range(num_classes))
    try:
        classes = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        classes = []
    if not classes or not all(0 <= c < num_classes for c in classes):
        raise InputError(f"--class must be 'all' or class numbers in 0..{num_classes - 1}, e.g. 3 or 1,4,7 (got {text!r})")
    return classes


def _add_sampling_args(parser: argparse.ArgumentParser, n: int) -> None:
    """Flags for drawing samples from a run; each defaults to the run's own `sample` config."""
    parser.add_argument("--n", type=int, default=n, help=f"number of samples (default {n})")
    parser.add_argument("--sampler", help=f"one of {', '.join(SAMPLERS)} (default: the run's)")
    parser.add_argument("--steps", type=int, help="timesteps to visit (default: the run's, 50); heun evaluates 2 x steps - 1")
    parser.add_argument("--spacing", choices=SPACINGS, help="how the timesteps are chosen (default: the run's, uniform)")
    parser.add_argument("--eta", type=float, help="DDIM's eta: 0 deterministic, 1 ancestral (default 0)")
    parser.add_argument("--variance", choices=VARIANCES,
                        help="DDPM's fixed variance: small (the posterior's beta~_t) or large (beta_t) (default: the run's)")
    parser.add_argument("--class", dest="classes", metavar="CLASSES",
                        help="class-conditional runs: a class, a list (1,4,7) or all (default all, cycled)")
    parser.add_argument("--guidance", type=float,
                        help="classifier-free guidance weight: 0 unconditional, 1 conditional, >1 guided (default: the run's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--checkpoint", help="a checkpoint folder of the run (default: the newest)")
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    parser.add_argument("--device", default="auto")


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors on one line like every other error of `ddpm`."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ddpm", description="Train and sample denoising diffusion models.")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a model (or resume a run)",
                                description="Train a diffusion model. Settings: defaults < --preset < --config < flags < --set.")
    train.add_argument("--preset", help="a named configuration (see 'ddpm presets')")
    train.add_argument("--config", help="a YAML config file (sections model, diffusion, data, train, sample)")
    train.add_argument("--out", help="run directory to create (default runs/DATA-DATE-TIME)")
    train.add_argument("--resume", metavar="RUN", help="continue the run in this directory from its newest checkpoint")
    train.add_argument("--data", help="mnist5k (default), digits, mnist, fashion-mnist, cifar10, celeba, stanford-cars "
                                      "or folder:PATH")
    train.add_argument("--data-root", help="where data sets live and are downloaded to (default ./data)")
    train.add_argument("--image-size", type=int, help="resize images to N x N (default: the data set's size)")
    train.add_argument("--crop", type=int, help="center-crop to N x N before resizing")
    train.add_argument("--flip", action="store_true", default=None, help="random horizontal flips")
    train.add_argument("--channels", type=int, choices=(1, 3), help="1 grayscale or 3 RGB (default: the data's)")
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float, help="peak learning rate")
    train.add_argument("--optimizer", choices=OPTIMIZERS)
    train.add_argument("--timesteps", type=int, help="T, the number of diffusion steps")
    train.add_argument("--schedule", choices=SCHEDULES, help="noise schedule")
    train.add_argument("--objective", choices=OBJECTIVES, help="what the network predicts")
    train.add_argument("--loss", choices=LOSSES)
    train.add_argument("--classes", type=int, metavar="K",
                       help="class-conditional on the data set's K labels, with classifier-free guidance (default 0: unconditional)")
    train.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    train.add_argument("--max-minutes", type=float, help="stop after this many minutes of training in all (a resumed run counts its earlier time); the cosine learning rate reaches zero then")
    train.add_argument("--seed", type=int)
    train.add_argument("--device", help="auto, cpu, cuda or cuda:N (under torchrun: one GPU per rank)")
    train.add_argument("--precision", choices=PRECISIONS, help="fp32 (default), or bf16 / fp16 autocast")
    train.add_argument("--compile", action="store_true", default=None, help="torch.compile the UNet")
    train.add_argument("--channels-last", action="store_true", default=None, help="NHWC memory format (the default; --set train.channels_last=false turns it off)")
    train.add_argument("--grad-accum", type=int, metavar="K", help="split each batch into K micro-batches")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config key, e.g. train.ema_decay=0.9995 (repeatable)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(command=cmd_train)

    sample = commands.add_parser("sample", help="draw samples from a trained run", description="Draw samples from a run's EMA model.")
    sample.add_argument("--run", required=True, help="run directory")
    _add_sampling_args(sample, n=64)
    sample.add_argument("--out", help="samples as .npz: arr_0 uint8 [N, H, W, C] (default RUN/samples.npz)")
    sample.add_argument("--grid", help="PNG grid of the samples (default RUN/grid.png)")
    sample.add_argument("--grid-n", type=int, default=64, help="how many samples the grid shows (default 64)")
    sample.set_defaults(command=cmd_sample)

    evaluate = commands.add_parser("eval", help="FID and KID of samples against a data set",
                                   description="FID and KID of a sample set (.npz, image folder, or a run that is sampled) "
                                               "against a data set. Reference features are cached in $DDPM_CACHE (~/.cache/ddpm).")
    evaluate.add_argument("--samples", help="a .npz (arr_0 uint8 [N, H, W, C]) or a folder of images")
    evaluate.add_argument("--run", help="a run directory: sample --n images from it first")
    _add_sampling_args(evaluate, n=1000)
    evaluate.add_argument("--data", help="reference data set (default: the run's, else mnist5k)")
    evaluate.add_argument("--data-root", default="data")
    evaluate.add_argument("--ref-n", type=int, help="reference images (default: the whole data set)")
    evaluate.add_argument("--json", help="also write the result as JSON here")
    evaluate.set_defaults(command=cmd_eval)

    sweep = commands.add_parser("sweep", help="FID and wall time for each sampler and step count",
                                description="Sample a run with every sampler at every step count; write sweep.csv and "
                                            "sweep.png (FID against network evaluations) into the run or --out.")
    sweep.add_argument("--run", required=True)
    sweep.add_argument("--samplers", default="ddpm,ddim,dpm++2m,heun", help="comma-separated (default ddpm,ddim,dpm++2m,heun)")
    sweep.add_argument("--steps", default="5,10,20,50,100,1000", help="comma-separated step counts (default 5,10,20,50,100,1000)")
    sweep.add_argument("--n", type=int, default=1000, help="samples per pair (default 1000)")
    sweep.add_argument("--spacing", choices=SPACINGS, help="timestep spacing (default: the run's)")
    sweep.add_argument("--seed", type=int, default=0)
    sweep.add_argument("--batch-size", type=int, default=256)
    sweep.add_argument("--data", help="reference data set (default: the run's)")
    sweep.add_argument("--data-root", default="data")
    sweep.add_argument("--ref-n", type=int, help="reference images (default: the whole data set)")
    sweep.add_argument("--out", help="folder for sweep.csv and sweep.png (default: the run directory)")
    sweep.add_argument("--device", default="auto")
    sweep.set_defaults(command=cmd_sweep)

    show = commands.add_parser(
        "show", help="pictures of each stage: forward, trajectory, progression",
        description="forward: a data image noised at chosen t under each schedule, and alpha_bar_t and log SNR; "
                    "trajectory: x_t and the predicted x0 along the reverse process (PNG and animated GIF); "
                    "progression: samples from the same noise at each checkpoint of a run.")
    show.add_argument("picture", choices=("forward", "trajectory", "progression"))
    show.add_argument("--out", help="the PNG to write (default forward.png, or RUN/trajectory.png and .gif, "
                                    "RUN/progression.png)")
    show.add_argument("--data", default="mnist5k", help="forward: the data set (default mnist5k)")
    show.add_argument("--data-root", default="data")
    show.add_argument("--index", type=int, default=0, help="forward: which image of the data set (default 0)")
    show.add_argument("--t", default="0,100,250,500,750,999", help="forward: timesteps (default 0,100,250,500,750,999)")
    show.add_argument("--timesteps", type=int, default=1000, help="forward: T (default 1000)")
    show.add_argument("--run", help="trajectory, progression: the run directory")
    show.add_argument("--n", type=int, help="samples (default 4 for trajectory, 8 for progression)")
    show.add_argument("--frames", type=int, default=10, help="trajectory: steps shown and GIF frames (default 10)")
    show.add_argument("--sampler", help=f"one of {', '.join(SAMPLERS)} (default: the run's)")
    show.add_argument("--steps", type=int, help="sampling steps (default: the run's)")
    show.add_argument("--spacing", choices=SPACINGS, help="timestep spacing (default: the run's)")
    show.add_argument("--seed", type=int, default=0)
    show.add_argument("--device", default="auto")
    show.set_defaults(command=cmd_show)

    report = commands.add_parser("report", help="one self-contained HTML page for a run",
                                 description="Gather a run's config, loss curve, sample grids, progression, trajectory, "
                                             "FID history and sampler sweep (those that exist) into one HTML file with "
                                             "the images embedded.")
    report.add_argument("--run", required=True)
    report.add_argument("--out", help="the HTML file (default RUN/report.html)")
    report.set_defaults(command=cmd_report)

    presets = commands.add_parser("presets", help="list the named configurations")
    presets.set_defaults(command=cmd_presets)
    return parser


if __name__ == "__main__":
    sys.exit(main())
