"""The `ddpm` command line: parse, validate, and call the same Python API a user would.

Settings are layered: defaults < --preset < --config FILE < named flags < --set section.key=value.
Bad input ends in one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from .config import LOSSES, OBJECTIVES, OPTIMIZERS, SAMPLERS, SCHEDULES, Config
from .errors import InputError

# Named flags of `ddpm train` and the config keys they set.
TRAIN_FLAGS = {
    "data": "data.name",
    "data_root": "data.root",
    "image_size": "data.image_size",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "optimizer": "train.optimizer",
    "timesteps": "diffusion.timesteps",
    "schedule": "diffusion.schedule",
    "objective": "diffusion.objective",
    "loss": "diffusion.loss",
    "max_steps": "train.max_steps",
    "max_minutes": "train.max_minutes",
    "seed": "train.seed",
    "device": "train.device",
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.command(args)
    except InputError as error:
        print(f"ddpm: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ddpm: interrupted", file=sys.stderr)
        return 130


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
    print(f"run written to {run.path}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .generate import generate, load_run
    from .images import save_grid, save_npz

    model = load_run(Path(args.run), checkpoint=args.checkpoint, use_ema=not args.no_ema, device=args.device)
    s = model.config.sample
    sampler = args.sampler or s.sampler
    steps = s.steps if args.steps is None else args.steps
    eta = s.eta if args.eta is None else args.eta
    _check_sampling(sampler, steps, eta, model.schedule.timesteps, args.n)
    shape = (model.config.data.channels, model.config.data.image_size, model.config.data.image_size)
    images = generate(model.denoiser(s.clip_denoised), args.n, shape, sampler, steps, eta, args.seed, args.batch_size)
    out = Path(args.out) if args.out else Path(args.run) / "samples.npz"
    grid = Path(args.grid) if args.grid else Path(args.run) / "grid.png"
    save_npz(out, images)
    save_grid(images[: args.grid_n], grid)
    print(f"{len(images)} samples from step {model.step} written to {out}; grid written to {grid}")
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
                  "train.sample_every", "train.checkpoint_every", "train.keep_checkpoints"}
    fixed = sorted(key for key in overrides if key not in changeable)
    if fixed:
        raise InputError(f"--resume continues {run_dir} with its own config; it cannot change {', '.join(fixed)} "
                         f"(only the budget, e.g. --max-steps or --max-minutes)")
    return config.override(overrides)


def _parse_set(items: Sequence[str]) -> dict:
    overrides = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--set {item!r} must look like section.key=value, e.g. --set train.ema_decay=0.9995")
        overrides[key.strip()] = value
    return overrides


def _check_sampling(sampler: str, steps: int, eta: float, timesteps: int, n: int) -> None:
    from .samplers import get_sampler

    get_sampler(sampler)
    if not 1 <= steps <= timesteps:
        raise InputError(f"--steps must be between 1 and the model's T = {timesteps} (got {steps})")
    if not 0 <= eta <= 1:
        raise InputError(f"--eta must lie in [0, 1] (got {eta})")
    if n < 1:
        raise InputError(f"--n must be >= 1 (got {n})")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddpm", description="Train and sample denoising diffusion models.")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a model (or resume a run)",
                                description="Train a diffusion model. Settings: defaults < --preset < --config < flags < --set.")
    train.add_argument("--preset", help="a named configuration (see 'ddpm presets')")
    train.add_argument("--config", help="a YAML config file (sections model, diffusion, data, train, sample)")
    train.add_argument("--out", help="run directory to create (default runs/DATA-DATE-TIME)")
    train.add_argument("--resume", metavar="RUN", help="continue the run in this directory from its newest checkpoint")
    train.add_argument("--data", help="data set name (default mnist5k)")
    train.add_argument("--data-root", help="where data sets live (default ./data)")
    train.add_argument("--image-size", type=int, help="resize images to N x N (default: the data set's size)")
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float, help="peak learning rate")
    train.add_argument("--optimizer", choices=OPTIMIZERS)
    train.add_argument("--timesteps", type=int, help="T, the number of diffusion steps")
    train.add_argument("--schedule", choices=SCHEDULES, help="noise schedule")
    train.add_argument("--objective", choices=OBJECTIVES, help="what the network predicts")
    train.add_argument("--loss", choices=LOSSES)
    train.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    train.add_argument("--max-minutes", type=float, help="stop after this many minutes of wall-clock time")
    train.add_argument("--seed", type=int)
    train.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config key, e.g. train.ema_decay=0.9995 (repeatable)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(command=cmd_train)

    sample = commands.add_parser("sample", help="draw samples from a trained run", description="Draw samples from a run's EMA model.")
    sample.add_argument("--run", required=True, help="run directory")
    sample.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    sample.add_argument("--sampler", help=f"one of {', '.join(SAMPLERS)} (default: the run's, ddim)")
    sample.add_argument("--steps", type=int, help="sampling steps, i.e. network evaluations (default: the run's, 50)")
    sample.add_argument("--eta", type=float, help="DDIM's eta: 0 deterministic, 1 ancestral (default 0)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--batch-size", type=int, default=256)
    sample.add_argument("--out", help="samples as .npz: arr_0 uint8 [N, H, W, C] (default RUN/samples.npz)")
    sample.add_argument("--grid", help="PNG grid of the samples (default RUN/grid.png)")
    sample.add_argument("--grid-n", type=int, default=64, help="how many samples the grid shows (default 64)")
    sample.add_argument("--checkpoint", help="a checkpoint folder of the run (default: the newest)")
    sample.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    sample.add_argument("--device", default="auto")
    sample.set_defaults(command=cmd_sample)

    presets = commands.add_parser("presets", help="list the named configurations")
    presets.set_defaults(command=cmd_presets)
    return parser


if __name__ == "__main__":
    sys.exit(main())
