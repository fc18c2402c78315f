"""`ddpm train`: build a config from its layers (or a run's own, to resume), then call `ddpm.train`."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from ..config import Config
from ..errors import InputError
from ..names import DATASETS
from .common import add_config_flag, config_overrides

# The named flags of `ddpm train`: the config key each sets, and its help. Type, choices and
# default come from the config field itself (common.add_config_flag).
FLAGS = [
    ("data.name", ", ".join(DATASETS), "--data", {"metavar": "NAME"}),
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
    ("diffusion.objective", "what the network predicts", None, {}),
    ("diffusion.loss", "how the error is measured", None, {}),
    ("model.num_classes", "class-conditional on the data set's K labels, with classifier-free guidance", "--classes",
     {"metavar": "K"}),
    ("train.max_steps", "stop after this many optimiser steps", None, {}),
    ("train.max_minutes", "stop after this many minutes of training in all (a resumed run counts its earlier "
                          "time); the cosine learning rate reaches zero then", None, {}),
    ("train.seed", "the random seed", None, {}),
    ("train.device", "auto, cpu, cuda or cuda:N (under torchrun: one GPU per rank)", None, {}),
    ("train.precision", "fp32, or bf16 / fp16 autocast", None, {}),
    ("train.compile", "torch.compile the UNet", None, {}),
    ("train.channels_last", "NHWC memory format (on by default; --set train.channels_last=false turns it off)", None, {}),
    ("train.grad_accum", "split each batch into K micro-batches", None, {"metavar": "K"}),
]


def add_commands(commands) -> None:
    parser = commands.add_parser("train", help="train a model (or resume a run)",
                                 description="Train a diffusion model. Settings: defaults < --preset < --config < "
                                             "flags < --set.")
    parser.add_argument("--preset", help="a named configuration (see 'ddpm presets')")
    parser.add_argument("--config", help="a YAML config file (sections model, diffusion, data, train, sample)")
    parser.add_argument("--out", help="run directory to create (default runs/DATA-DATE-TIME)")
    parser.add_argument("--resume", metavar="RUN", help="continue the run in this directory from its newest checkpoint")
    for key, help, flag, extra in FLAGS:
        add_config_flag(parser, key, help, flag, **extra)
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="any config key, e.g. train.ema_decay=0.9995 (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(command=run)


def run(args: argparse.Namespace) -> int:
    from ..presets import compose_config
    from ..storage.checkpoint import RunDir
    from ..training.loop import train

    overrides = config_overrides(args)
    if args.resume:
        out = Path(args.resume)
        if args.out and Path(args.out) != out:
            raise InputError("--resume continues a run in its own directory; drop --out")
        if args.preset or args.config:
            raise InputError("--resume reads the run's own config.yaml; drop --preset and --config")
        config: Config = RunDir(out).load_config().resumed(overrides, str(out))
    else:
        config = compose_config(args.preset, args.config, overrides)
        out = Path(args.out) if args.out else Path("runs") / f"{args.preset or config.data.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    config.validate()
    run_dir = train(config, out, resume=bool(args.resume), progress=not args.no_progress)
    if int(os.environ.get("RANK", 0)) == 0:  # under torchrun, one line from rank 0
        print(f"run written to {run_dir.path}")
    return 0
