"""A run's FID history, RUN/eval.csv: one row per `ddpm eval --run`, with every setting that
changes the score, so that rows can be told apart."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

from ..storage.atomic import atomic_write
from ..registry import SAMPLERS, option_fields
from ..storage.lock import appending


EVAL_FIELDS = ["step", "weights", "sampler", "steps", "spacing", "eta", "variance", "guidance", "seed", "samples",
               "reference", "data", "fid", "kid", "precision", "recall"]


def eval_fields(path: Path, result: dict) -> list[str]:
    """eval.csv's columns: EVAL_FIELDS, how the samples were drawn and their scores, then an option of
    another sampler (EDM's churn, ...) once a row uses it, appended so that no column moves."""
    extra = []
    if path.is_file():
        with open(path, newline="") as handle:
            extra = [name for name in csv.DictReader(handle).fieldnames or [] if name not in EVAL_FIELDS]
    options = [name for name in option_fields(SAMPLERS) if result.get(name) is not None]
    return EVAL_FIELDS + extra + [name for name in options if name not in EVAL_FIELDS + extra]


RECONSTRUCT_FIELDS = ["sha256", "samples", "reference", "data", "psnr", "fid", "kid"]  # an autoencoder's: fid is rFID


def append_eval_history(run_dir: Path, result: dict, fields: Optional[list[str]] = None) -> None:
    """Append `result` as a row of RUN/eval.csv. A history written under other columns (by a version
    that recorded fewer settings) is first rewritten under today's header, its rows kept, with
    blanks where they did not say."""
    path = Path(run_dir) / "eval.csv"
    with appending(path):  # two evaluations at once: each adds one whole row
        _append(path, result, fields or eval_fields(path, result))


def _append(path: Path, result: dict, fields: list[str]) -> None:
    rows, rewrite = [], True
    if path.is_file():
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            rewrite = reader.fieldnames != fields
            rows = list(reader) if rewrite else []
    if rewrite:
        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fields, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)

        atomic_write(path, write)
    with open(path, "a", newline="") as handle:
        csv.DictWriter(handle, fields, extrasaction="ignore").writerow(result)
