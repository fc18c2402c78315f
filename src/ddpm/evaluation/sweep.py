"""A sampler sweep: FID and wall time for every (sampler, steps) pair on one trained run."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Optional, Sequence

from ..pipeline import Pipeline
from ..registry import STUDENTS
from .fid import Evaluator

FIELDS = ("sampler", "steps", "nfe", "fid", "kid", "seconds", "samples")


def sweep(pipe: Pipeline, samplers: Sequence[str], steps: Sequence[int], n: int, evaluator: Evaluator,
          spacing: Optional[str] = None, seed: int = 0, batch_size: int = 256, out_csv: Optional[Path] = None,
          students: Sequence[Path] = ()) -> list[dict]:
    """Sample `n` images with each sampler at each step count, time it, and score it; then, beside
    them, each student of `students` as its method's spec says: one trained for its own steps alone at
    each kept checkpoint (a progressive student's every phase), at the steps it was trained for; one
    that samples in 1 to max_steps steps with its own sampler at each of `steps` it takes.

    Every pair starts from the same seed, with the run's own options for the rest (a
    class-conditional run draws every class with its guidance). Rows are appended to `out_csv` as
    they finish, so a long sweep that is stopped keeps what it measured. Step counts above the
    model's T are left out.
    """
    jobs = [(pipe, None, pipe.plan(n, name, k, spacing), None) for name in samplers for k in steps
            if k <= pipe.diffusion.timesteps]
    for path in students:
        student = Pipeline.from_run(path, device=str(pipe.device))
        spec = STUDENTS.get(student.config.student)
        if spec.fixed_steps:  # each kept checkpoint (or the newest) in the steps it was trained for
            jobs += [(student, folder, None, "student") for folder in student_phases(path) or [None]]
        else:  # its own sampler at each step count it takes
            jobs += [(student, None, student.plan(n, steps=k), None) for k in steps if k <= spec.max_steps]
    if out_csv is not None:  # every plan was checked above: an unknown name fails before hours of work
        with open(out_csv, "w", newline="") as handle:
            csv.DictWriter(handle, FIELDS).writeheader()
    rows = []
    for drawer, folder, plan, label in jobs:
        if folder is not None:  # a stage's student: its weights
            drawer.load_checkpoint(folder)
        plan = plan or drawer.plan(n)  # a student trained for its own steps: its sampler in those steps
        name = label or plan.sampler
        started = time.perf_counter()
        images = drawer.draw(plan, seed, batch_size=batch_size)
        seconds = time.perf_counter() - started
        scores = evaluator(images)
        row = {"sampler": name, "steps": plan.steps, "nfe": plan.nfe, "fid": round(scores["fid"], 4),
               "kid": round(scores["kid"], 6), "seconds": round(seconds, 2), "samples": n}
        rows.append(row)
        print(f"{name:>8} {plan.steps:>5} steps ({plan.nfe:>5} NFE): FID {row['fid']:8.3f}  "
              f"KID {row['kid']:.5f}  {seconds:7.1f} s", flush=True)
        if out_csv is not None:
            with open(out_csv, "a", newline="") as handle:
                csv.DictWriter(handle, FIELDS).writerow(row)
    return rows


def student_phases(path: Path) -> list[Path]:
    """A student run's kept checkpoints, one per finished phase, oldest (most steps) first."""
    from ..storage.checkpoint import RunDir, verify

    return [folder for folder in RunDir(Path(path)).all_checkpoints() if verify(folder).get("keep")]
