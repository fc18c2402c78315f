"""`ddpm ema`: post-hoc EMA, the EMA of any length rebuilt from a run's snapshots (training/ema.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from ..errors import InputError

SWEEP = (0.03, 0.05, 0.07, 0.10, 0.13, 0.16, 0.20)  # the lengths --sweep scores unless told


def add_commands(commands) -> None:
    parser = commands.add_parser(
        "ema", help="rebuild the EMA of any length from a run's post-hoc EMA snapshots",
        description="Post-hoc EMA (Karras et al. 2024): a run trained with --set train.posthoc_ema=[0.05,0.1] keeps "
                    "snapshots of two power EMAs; this rebuilds the EMA of each length sigma_rel at the run's final "
                    "step by least squares over them, and stores it in the run, where sample, eval, sweep, edit, "
                    "show, export and distill take it as --ema SIGMA_REL.")
    parser.add_argument("--run", required=True, help="the run")
    parser.add_argument("--sigma-rel", type=float, nargs="+", metavar="X",
                        help="the lengths to rebuild: the profile's std over its mean, e.g. 0.05 0.08 0.12 (with "
                             f"--sweep, those to score; default {' '.join(map(str, SWEEP))})")
    parser.add_argument("--sweep", action="store_true",
                        help="score the classic EMA and each length by FID, and make the best the run's default "
                             "weights; writes ema/sweep.csv, ema/sweep.png and ema/chosen.json into the run")
    parser.add_argument("--n", type=int, default=500, help="with --sweep: samples per length (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="with --sweep: the noise every length samples from")
    parser.add_argument("--data", help="with --sweep: the reference data set (default: the run's)")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--ref-n", type=int, help="with --sweep: reference images (default: the whole data set)")
    parser.add_argument("--device", default="auto")
    parser.set_defaults(command=run)


def run(args: argparse.Namespace) -> int:
    from ..training.ema import reconstruct

    if not args.sweep:
        if not args.sigma_rel:
            raise InputError("give the lengths to rebuild (--sigma-rel X [X ...]) or --sweep to score a range")
        for folder in reconstruct(args.run, args.sigma_rel):
            sigma_rel = float(folder.name.split("_")[1])
            print(f"EMA of length {sigma_rel:g} written to {folder}: ddpm sample --run {args.run} --ema {sigma_rel:g}")
        return 0
    return _sweep(args)


def _sweep(args: argparse.Namespace) -> int:
    from ..evaluation.fid import Evaluator
    from ..registry import DATASETS
    from ..runtime.devices import resolve_device
    from ..storage.checkpoint import RunDir
    from ..training.ema import residuals, sweep

    if args.n < 2:
        raise InputError(f"--n must be >= 2: FID needs two samples (got {args.n})")
    config = RunDir(Path(args.run)).load_config()
    lengths = args.sigma_rel or list(SWEEP)
    residuals(args.run, lengths)  # a run without snapshots is refused before the reference features
    data = args.data or config.data.name
    DATASETS.get(data, "data set")
    device = str(resolve_device(args.device))
    evaluator = Evaluator(data, args.data_root, config.data.image_size, args.ref_n, device)
    rows, chosen = sweep(args.run, lengths, args.n, evaluator, device, args.seed)
    choice = "the classic EMA" if chosen["sigma_rel"] is None else f"the EMA of length {chosen['sigma_rel']:g}"
    print(f"{choice} scored best (FID {chosen['fid']:.3f}; classic {chosen['classic_fid']:.3f}) and is now the run's "
          f"default weights; {Path(args.run) / 'ema' / 'sweep.png'} plots them all")
    return 0


def add_ema_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ema", type=_length, metavar="SIGMA_REL",
                        help="the weights: the post-hoc EMA of this length that 'ddpm ema' rebuilt in the run, or "
                             "classic (default: the length 'ddpm ema --sweep' chose, else the classic EMA)")


def _length(text: str) -> "float | str":
    if text == "classic":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a length sigma_rel such as 0.1, or classic (got {text!r})") from None


def checkpoint_of(run: str, checkpoint: Optional[str], sigma_rel: "float | str | None") -> Optional[str]:
    """The checkpoint folder that --checkpoint or --ema names, or the EMA the run chose (None: the
    run's newest checkpoint); a chosen one is said on stderr."""
    from ..storage.checkpoint import RunDir

    run_dir = RunDir(Path(run))
    folder = run_dir.weights(checkpoint, sigma_rel)
    if folder is not None and checkpoint is None and sigma_rel is None:
        print(f"ddpm: {run}: the post-hoc EMA of length {run_dir.chosen()['sigma_rel']:g} that 'ddpm ema --sweep' "
              f"chose (--ema classic for the classic EMA)", file=sys.stderr)
    return folder and str(folder)
