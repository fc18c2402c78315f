"""`ddpm export` and `ddpm import`: a run as a diffusers DDPMPipeline folder, and one as a run
(storage/diffusers_folders.py). Neither needs diffusers installed."""

from __future__ import annotations

import argparse
from pathlib import Path

from .ema import add_ema_flag, checkpoint_of


def add_commands(commands) -> None:
    export = commands.add_parser("export", help="write a run as a diffusers DDPMPipeline folder",
                                 description="Write RUN's network (its EMA weights) and schedule as a folder that "
                                             "diffusers' DDPMPipeline and DDIMPipeline load with from_pretrained "
                                             "(a latent run: LDMPipeline). The network is a UNet2DModel where one "
                                             "computes it, else ddpm's own network class (import ddpm "
                                             "first). What DDPMScheduler cannot "
                                             "express is refused.")
    export.add_argument("--run", required=True)
    add_ema_flag(export)
    export.add_argument("--out", required=True, help="the folder to create")
    export.add_argument("--checkpoint", help="a checkpoint folder of the run (default: the newest)")
    export.add_argument("--no-ema", action="store_true", help="the raw weights instead of the EMA")
    export.add_argument("--spacing", choices=("uniform", "trailing", "leading"),
                        help="the scheduler's timestep spacing (default: the run's)")
    export.set_defaults(command=run_export)

    imported = commands.add_parser("import", help="a diffusers DDPM folder as a ddpm run directory",
                                   description="Convert a diffusers DDPM folder (UNet2DModel and DDPMScheduler, e.g. "
                                               "a download of google/ddpm-cifar10-32) into a run directory that every "
                                               "ddpm command takes: sample, eval, sweep, show, edit, distil.")
    imported.add_argument("--from", dest="source", required=True, help="the diffusers folder")
    imported.add_argument("--out", required=True, help="the run directory to create")
    imported.add_argument("--data", default="cifar10", help="the data set the model models, which eval compares "
                                                            "against (default cifar10)")
    imported.set_defaults(command=run_import)


def run_export(args: argparse.Namespace) -> int:
    from ..factory import load_run, run_codec
    from ..storage.diffusers_folders import MODELS, export_run

    loaded = load_run(args.run, checkpoint_of(args.run, args.checkpoint, args.ema), "model" if args.no_ema else "ema")
    codec = run_codec(loaded.config, args.run)
    done = export_run(loaded.config, loaded.network.state_dict(), Path(args.out), args.spacing, codec)
    load = f"{done.pipeline}.from_pretrained('{done.path}')"
    own = [name for name in (done.unet, done.vqvae) if name.startswith("Ddpm")]
    if not own:
        print(f"{args.run} (step {loaded.meta['step']}) written to {done.path}: {load}")
        return 0
    print(f"{args.run} (step {loaded.meta['step']}) written to {done.path} with ddpm's own {' and '.join(own)}, "
          f"exactly the run's: import {MODELS}; {load}")
    if done.why:
        print(f"  (a UNet2DModel cannot compute this network: {done.why})")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from ..registry import DATASETS
    from ..storage.diffusers_folders import import_config, write_imported_run

    DATASETS.get(args.data, "data set")
    config, weights = import_config(Path(args.source), args.data)
    out = write_imported_run(config, weights, Path(args.out), Path(args.source))
    print(f"{args.source} imported to {out}: ddpm sample --run {out}")
    return 0
