"""`ddpm ema`: post-hoc EMA, the EMA of any length rebuilt from a run's snapshots (training/ema.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from ..errors import InputError


def add_commands(commands) -> None:
    parser = commands.add_parser(
        "ema", help="rebuild the EMA of any length from a run's post-hoc EMA snapshots",
        description="Post-hoc EMA (Karras et al. 2024): a run trained with --set train.posthoc_ema=[0.05,0.1] keeps "
                    "snapshots of two power EMAs; this rebuilds the EMA of each length sigma_rel at the run's final "
                    "step by least squares over them, and stores it in the run, where sample, eval, sweep, edit, "
                    "show, export and distill take it as --ema SIGMA_REL.")
    parser.add_argument("--run", required=True, help="the run")
    parser.add_argument("--sigma-rel", type=float, nargs="+", required=True, metavar="X",
                        help="the lengths to rebuild: the profile's std over its mean, e.g. 0.05 0.08 0.12")
    parser.set_defaults(command=run)


def run(args: argparse.Namespace) -> int:
    from ..training.ema import reconstruct

    for folder in reconstruct(args.run, args.sigma_rel):
        sigma_rel = float(folder.name.split("_")[1])
        print(f"EMA of length {sigma_rel:g} written to {folder}: ddpm sample --run {args.run} --ema {sigma_rel:g}")
    return 0


def add_ema_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ema", type=float, metavar="SIGMA_REL",
                        help="the weights: the post-hoc EMA of this length that 'ddpm ema' rebuilt in the run "
                             "(default: the run's classic EMA)")


def checkpoint_of(run: str, checkpoint: Optional[str], sigma_rel: Optional[float]) -> Optional[str]:
    """The checkpoint folder that --checkpoint or --ema names (None: the run's newest)."""
    if sigma_rel is None:
        return checkpoint
    if checkpoint is not None:
        raise InputError("--ema loads a rebuilt EMA, --checkpoint a checkpoint; give one of them")
    from ..storage.checkpoint import RunDir

    folder = RunDir(Path(run)).reconstructed(sigma_rel)
    if not (folder / "meta.json").is_file():
        raise InputError(f"{run} has no EMA of length {sigma_rel:g}; rebuild it with 'ddpm ema --run {run} --sigma-rel "
                         f"{sigma_rel:g}'")
    return str(folder)
