"""`ddpm train`: build a config from its layers (or a run's own, to resume), then call `ddpm.train`."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from ..config import AutoencoderRun, Config
from ..errors import InputError
from ..registry import DATASETS, OBJECTIVES
from .common import add_config_flag, config_overrides

# The named flags of `ddpm train`: the config key each sets, and its help. Type, choices and
# default come from the config field itself (common.add_config_flag).
FLAGS = [
    ("data.name", lambda: ", ".join(DATASETS.names()), "--data", {"metavar": "NAME"}),
    ("data.root", "where data sets live and are downloaded to", "--data-root", {}),
    ("data.image_size", "resize images to N x N (default: the data set's size)", None, {"metavar": "N"}),
    ("data.crop", "center-crop to N x N before resizing", None, {"metavar": "N"}),
    ("data.flip", "random horizontal flips", None, {}),
    ("data.channels", "1 grayscale or 3 RGB (default: the data's)", None, {"choices": (1, 3)}),
    ("train.batch_size", "the global batch", None, {}),
    ("train.lr", "peak learning rate", None, {}),
    ("train.optimizer", "the optimiser", None, {}),
    ("diffusion.timesteps", "T, the number of diffusion steps", None, {}),
    ("diffusion.schedule", "noise schedule", None, {}),
    ("diffusion.objective", "what the network predicts", None, {"registry": OBJECTIVES}),
    ("diffusion.loss", "how the error is measured", None, {}),
    ("latent.autoencoder", "latent diffusion: denoise the latents of this autoencoder (a run of ddpm "
                           "train-autoencoder, diffusers:PATH, or own: train one first in RUN/autoencoder, for "
                           "latent.own_share of --max-minutes)", "--autoencoder", {"metavar": "RUN"}),
    ("latent.posterior", "latent runs denoise each image's posterior mean, or a latent drawn from its posterior "
                         "at every step", None, {}),
    ("model.num_classes", "class-conditional on the data set's K labels, with classifier-free guidance", "--classes",
     {"metavar": "K"}),
    ("train.max_steps", "stop after this many optimiser steps", None, {}),
    ("train.max_minutes", "stop after this many minutes of training in all (a resumed run counts its earlier "
                          "time); the cosine learning rate reaches zero then. On the CPU, color data trains the "
                          "narrower 16/32/64 within 11 minutes of a 171 GFLOP/s CPU, scaled by this one's matrix-multiply "
                          "rate, and its own autoencoder with latent diffusion within 80 (32x32 and 64x64 images; "
                          "config.COLOR_CPU_BUDGET_SIZES; DDPM_CPU_GFLOPS=R gives the rate)", None, {}),
    ("train.seed", "the random seed", None, {}),
    ("train.device", "auto, cpu, cuda or cuda:N (under torchrun: one GPU per rank)", None, {}),
    ("train.precision", "fp32, or bf16 / fp16 autocast", None, {}),
    ("train.compile", "torch.compile the UNet", None, {}),
    ("train.channels_last", "NHWC memory format (on by default; --set train.channels_last=false turns it off)", None, {}),
    ("train.grad_accum", "split each batch into K micro-batches", None, {"metavar": "K"}),
]


# `ddpm train-autoencoder` shares the data and budget flags, and names the autoencoder's own.
SHARED = ("data.", "train.batch_size", "train.lr", "train.max_", "train.seed", "train.device", "train.precision",
          "train.channels_last", "train.grad_accum")
AUTOENCODER_FLAGS = [flag for flag in FLAGS if flag[0].startswith(SHARED)] + [
    ("autoencoder.channels", "widths of the levels; f = 2^(levels - 1), e.g. [64,128,128] for f = 4", "--widths",
     {"metavar": "[C,...]"}),
    ("autoencoder.z_channels", "channels of the latent", None, {}),
    ("autoencoder.kl_weight", "weight of the KL term", None, {}),
    ("autoencoder.reconstruction", "the reconstruction loss", None, {}),
    ("autoencoder.disc_weight", "weight of the adversarial term of a patch discriminator (0: none)", None, {}),
    ("autoencoder.disc_start", "the step from which the discriminator trains", None, {}),
]


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
    for key, help, flag, extra in FLAGS:
        add_config_flag(parser, key, help() if callable(help) else help, flag, **extra)
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
    for key, help, flag, extra in AUTOENCODER_FLAGS:
        add_config_flag(parser, key, help() if callable(help) else help, flag, schema=AutoencoderRun, **extra)
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="any config key, e.g. autoencoder.kl_weight=1e-5 (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(command=run_autoencoder)
    add_distill(commands)


def add_distill(commands) -> None:
    parser = commands.add_parser("distill", help="distil a run into a student that samples in few DDIM steps",
                                 description="Progressive distillation (Salimans & Ho 2022): a student learns to take "
                                             "in one DDIM step what the teacher takes in two, from --from-steps down "
                                             "to --steps. The student is a run directory like any other (resume it "
                                             "with 'ddpm train --resume STUDENT').")
    parser.add_argument("--run", required=True, help="the teacher run")
    parser.add_argument("--out", required=True, help="the student run directory to create")
    parser.add_argument("--steps", type=int, default=4, help="the student's DDIM steps: a power of two (default 4)")
    parser.add_argument("--from-steps", type=int, default=64, help="the teacher's DDIM steps at the start: a power of "
                                                                    "two (default 64)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--phase-steps", type=int, help="each halving's optimiser steps")
    budget.add_argument("--phase-minutes", type=float, help="each halving's minutes (default: the teacher's training "
                                                            "time shared out over the halvings)")
    parser.add_argument("--guidance", type=float, help="a class-conditional teacher's guidance weight, fixed in the student")
    parser.add_argument("--checkpoint", help="a checkpoint folder of the teacher (default: its newest intact)")
    for key, help, flag, extra in FLAGS:
        if key in ("train.lr", "train.batch_size", "train.seed", "train.device", "train.grad_accum"):
            add_config_flag(parser, key, help, flag, **extra)
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="any train.* key of the student")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(command=run_distill)


def run_distill(args: argparse.Namespace) -> int:
    from ..training.loop import distill

    overrides = config_overrides(args)
    other = sorted(key for key in overrides if not key.startswith("train."))
    if other:
        raise InputError(f"a student keeps its teacher's network and process; --set takes train.* keys (got {other[0]})")
    run_dir = distill(args.run, args.out, args.steps, args.from_steps, args.phase_steps, args.phase_minutes,
                      args.guidance, args.checkpoint, overrides, progress=not args.no_progress)
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"student written to {run_dir.path}: ddpm sample --run {run_dir.path}")
    return 0


def run(args: argparse.Namespace) -> int:
    from ..presets import compose_config

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
        for key, why in config.chosen.items() if int(os.environ.get("RANK", 0)) == 0 else ():
            print(f"ddpm: {key} {why}")
    config.validate()
    run_dir = train(config, out, resume=bool(args.resume), progress=not args.no_progress,
                    resume_if_exists=getattr(args, "resume_if_exists", False))
    if int(os.environ.get("RANK", 0)) == 0:  # under torchrun, one line from rank 0
        print(f"run written to {run_dir.path}")
    return 0
