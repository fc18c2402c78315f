"""A sampler sweep: FID and wall time for every (sampler, steps) pair on one trained run."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Optional, Sequence

from .evaluate import Evaluator
from .generate import TrainedModel, class_labels, generate
from .samplers import get_sampler, network_evaluations

FIELDS = ("sampler", "steps", "nfe", "fid", "kid", "seconds", "samples")


def sweep(model: TrainedModel, samplers: Sequence[str], steps: Sequence[int], n: int, evaluator: Evaluator,
          spacing: Optional[str] = None, seed: int = 0, batch_size: int = 256, out_csv: Optional[Path] = None) -> list[dict]:
    """Sample `n` images with each sampler at each step count, time it, and score it.

    Every pair starts from the same seed. Rows are appended to `out_csv` as they finish, so a
    long sweep that is stopped keeps what it measured.
    """
    for name in samplers:
        get_sampler(name)  # refuse an unknown name before hours of work
    config = model.config
    shape = (config.data.channels, config.data.image_size, config.data.image_size)
    spacing = spacing or config.sample.spacing
    denoiser = model.denoiser(config.sample.clip_denoised)
    num_classes = config.model.num_classes  # a class-conditional run: every class, with the run's guidance
    labels = class_labels(n, range(num_classes)) if num_classes else None
    if out_csv is not None:
        with open(out_csv, "w", newline="") as handle:
            csv.DictWriter(handle, FIELDS).writeheader()
    rows = []
    for name in samplers:
        for k in steps:
            if k > model.schedule.timesteps:
                continue
            started = time.perf_counter()
            images = generate(denoiser, n, shape, name, k, 0.0, spacing, seed, batch_size, labels=labels,
                              guidance=config.sample.guidance, variance=config.sample.variance_for(name))
            seconds = time.perf_counter() - started
            scores = evaluator(images)
            row = {"sampler": name, "steps": k, "nfe": network_evaluations(name, k), "fid": round(scores["fid"], 4),
                   "kid": round(scores["kid"], 6), "seconds": round(seconds, 2), "samples": n}
            rows.append(row)
            print(f"{name:>8} {k:>5} steps ({row['nfe']:>5} NFE): FID {row['fid']:8.3f}  KID {row['kid']:.5f}  "
                  f"{seconds:7.1f} s", flush=True)
            if out_csv is not None:
                with open(out_csv, "a", newline="") as handle:
                    csv.DictWriter(handle, FIELDS).writerow(row)
    return rows
