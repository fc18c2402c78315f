"""`ddpm train`: build a config from its layers (or a run's own, to resume), then call `ddpm.train`."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ..config import AutoencoderRun, Config
from ..config.students import student_sections
from ..errors import InputError
from ..registry import DEFAULT_STUDENT, STUDENTS
from .common import add_config_flags, config_overrides
from .ema import add_ema_flag, checkpoint_of

# The flags of each command, by config section or key; each flag's spelling, help and range are
# declared once, with its field (config/schema.py).
TRAIN_SECTIONS = ("data", "train", "diffusion", "latent", "model")
AUTOENCODER_SECTIONS = ("data", "train", "autoencoder")
DISTILL_KEYS = ("train.lr", "train.batch_size", "train.seed", "train.device", "train.grad_accum", "train.max_steps",
                "train.max_minutes")


def add_commands(commands) -> None:
    parser = commands.add_parser("train", help="train a model (or resume a run)",
                                 description="Train a diffusion model. Settings: defaults < --preset < --config < "
                                             "flags < --set.")
    parser.add_argument("--preset", help="a named configuration (see 'ddpm presets')")
    parser.add_argument("--config", help="a YAML config file (sections model, diffusion, data, train, sample)")
    parser.add_argument("--out", help="run directory to create (default runs/DATA-DATE-TIME)")
    parser.add_argument("--resume", metavar="RUN", help="continue the run in this directory from its newest checkpoint")
    parser.add_argument("--resume-if-exists", action="store_true",
                        help="with --out: start the run, or resume it if it exists (a requeued job's command); the "
                             "settings given must be the run's, but for the budget")
    add_config_flags(parser, Config, TRAIN_SECTIONS)
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="any config key, e.g. train.ema_decay=0.9995 (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(command=run)

    parser = commands.add_parser("train-autoencoder", help="train the autoencoder of latent diffusion (or resume one)",
                                 description="Train a KL autoencoder (Rombach et al. 2022) whose latents 'ddpm train "
                                             "--autoencoder RUN' then diffuses in. Settings: defaults < --config < "
                                             "flags < --set.")
    parser.add_argument("--config", help="a YAML config file (sections autoencoder, data, train)")
    parser.add_argument("--out", help="run directory to create (default runs/autoencoder-DATA-DATE-TIME)")
    parser.add_argument("--resume", metavar="RUN", help="continue the run in this directory from its newest checkpoint")
    add_config_flags(parser, AutoencoderRun, AUTOENCODER_SECTIONS)
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="any config key, e.g. autoencoder.kl_weight=1e-5 (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(command=run_autoencoder)
    add_distill(commands)


def add_distill(commands) -> None:
    methods = "; ".join(f"--method {spec.name} ({spec.citation}): {spec.description}" for spec in STUDENTS)
    parser = commands.add_parser("distill", help="distil a run into a student that samples in a few steps",
                                 description=f"Train a student from a teacher run. {methods}. The student is a run "
                                             f"directory like any other (resume it with 'ddpm train --resume "
                                             f"STUDENT').")
    parser.add_argument("--run", required=True, help="the teacher run")
    parser.add_argument("--out", required=True, help="the student run directory to create")
    add_config_flags(parser, Config, student_sections(), DISTILL_KEYS)
    parser.add_argument("--checkpoint", help="a checkpoint folder of the teacher (default: its newest intact)")
    add_ema_flag(parser)
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="any train.* key of the student, a key of its method's own section (consistency.*), "
                             "or model.dropout")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(command=run_distill)


def run_distill(args: argparse.Namespace) -> int:
    from ..training.distill import distill, method_for

    overrides = config_overrides(args)
    settings = {key.split(".")[1]: overrides.pop(key) for key in list(overrides) if key.startswith("distill.")}
    sections = ("train",) + student_sections()[1:]
    other = sorted(key for key in overrides if key.split(".")[0] not in sections and key != "model.dropout")
    if other:
        raise InputError(f"a student keeps its teacher's network and process; --set takes "
                         f"{', '.join(s + '.*' for s in sections)} and model.dropout (got {other[0]})")
    chosen = method_for(settings)
    if "method" not in settings and chosen != DEFAULT_STUDENT:
        print(f"ddpm: --steps {settings['steps']} without --method: {STUDENTS.get(chosen).called}, the "
              f"method that measured best at 1 and 2 steps (docs/samplers.md); --method "
              f"{' or '.join(name for name in STUDENTS.names() if name != chosen)} for another", file=sys.stderr)
    run_dir = distill(args.run, args.out, **settings, checkpoint=checkpoint_of(args.run, args.checkpoint, args.ema), overrides=overrides,
                      progress=not args.no_progress)
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"student written to {run_dir.path}: ddpm sample --run {run_dir.path}")
    return 0


def run(args: argparse.Namespace) -> int:
    from ..config.recipe import compose_config

    def compose(overrides: dict) -> Config:
        return compose_config(args.preset, args.config, overrides)

    return _train(args, Config, compose, lambda config: args.preset or config.data.name)


def run_autoencoder(args: argparse.Namespace) -> int:
    def compose(overrides: dict) -> AutoencoderRun:
        config = AutoencoderRun.from_yaml(args.config) if args.config else AutoencoderRun()
        return config.override(overrides)

    args.preset = None
    return _train(args, AutoencoderRun, compose, lambda config: f"autoencoder-{config.data.name}")


def _train(args: argparse.Namespace, kind: type, compose, name) -> int:
    from ..config.recipe import said_by_budget
    from ..storage.checkpoint import RunDir
    from ..training.loop import train

    overrides = config_overrides(args)
    if args.resume:
        out = Path(args.resume)
        if args.out and Path(args.out) != out:
            raise InputError("--resume continues a run in its own directory; drop --out")
        if args.preset or args.config:
            raise InputError("--resume reads the run's own config.yaml; drop --preset and --config")
        config = RunDir(out).load_config()
        if not isinstance(config, kind):
            other = "train-autoencoder" if kind is Config else "train"
            raise InputError(f"{out} is {'an autoencoder' if kind is Config else 'a diffusion'} run; resume it with "
                             f"'ddpm {other} --resume {out}'")
        config = config.resumed(overrides, str(out))
    else:
        config = compose(overrides)
        if getattr(args, "resume_if_exists", False) and not args.out:
            raise InputError("--resume-if-exists needs --out RUN: the run to start or resume")
        out = Path(args.out) if args.out else Path("runs") / f"{name(config)}-{time.strftime('%Y%m%d-%H%M%S')}"
        for line in said_by_budget(config) if int(os.environ.get("RANK", 0)) == 0 else ():
            print(f"ddpm: {line}")
    config.validate()
    run_dir = train(config, out, resume=bool(args.resume), progress=not args.no_progress,
                    resume_if_exists=getattr(args, "resume_if_exists", False))
    if int(os.environ.get("RANK", 0)) == 0:  # under torchrun, one line from rank 0
        print(f"run written to {run_dir.path}")
    return 0
