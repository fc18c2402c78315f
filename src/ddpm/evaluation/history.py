"""A run's FID history, RUN/eval.csv: one row per `ddpm eval --run`, with every setting that
changes the score, so that rows can be told apart."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from ..storage.lock import appending

EVAL_FIELDS = ["step", "weights", "sampler", "steps", "spacing", "eta", "variance", "guidance", "seed", "samples",
               "reference", "data", "fid", "kid"]
RECONSTRUCT_FIELDS = ["sha256", "samples", "reference", "data", "psnr", "fid", "kid"]  # an autoencoder's: fid is rFID


def append_eval_history(run_dir: Path, result: dict, fields: list[str] = EVAL_FIELDS) -> None:
    """Append `result` as a row of RUN/eval.csv. A history written under other columns (by a version
    that recorded fewer settings) is first rewritten under today's header, its rows kept, with
    blanks where they did not say."""
    path = Path(run_dir) / "eval.csv"
    with appending(path):  # two evaluations at once: each adds one whole row
        _append(path, result, fields)


def _append(path: Path, result: dict, fields: list[str]) -> None:
    rows, rewrite = [], True
    if path.is_file():
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            rewrite = reader.fieldnames != fields
            rows = list(reader) if rewrite else []
    if rewrite:
        partial = path.with_name(path.name + ".partial")
        with open(partial, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(partial, path)
    with open(path, "a", newline="") as handle:
        csv.DictWriter(handle, fields, extrasaction="ignore").writerow(result)
