"""Few-step students against their teacher's samplers, at equal network evaluations.

    python benchmarks/distillation.py --data mnist5k --minutes 30     # the digits
    python benchmarks/distillation.py --data emoji --minutes 30       # color

1. A teacher trains for --minutes with the data set's defaults (`ddpm train --max-minutes`).
2. `ddpm distill --run TEACHER --steps 1 --from-steps 64` with its default budget: the teacher's
   training time shared out over the six halvings, so distilling to 4 steps (four of them) costs
   two thirds of what the teacher did. Each halving's student is kept (32, 16, 8, 4, 2, 1 steps).
3. `ddpm sweep` scores, with --n samples against the whole data set, the teacher's DDIM and
   DPM-Solver++(2M) at 1, 2, 4 and 8 steps and its own sampler (DDPM, 50 steps), and beside them the
   students at 8, 4, 2 and 1 steps.

Writes OUT/distillation.json (and the sweep's csv and plot) and prints the table's rows, with the
matmul rate and the wall times of training and distilling.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from throughput import matmul_rate  # beside this script

from ddpm.storage.checkpoint import load_meta

DDPM = [sys.executable, "-m", "ddpm"]


def timed(arguments: list[str]) -> float:
    print("$ ddpm " + " ".join(arguments), flush=True)
    started = time.perf_counter()
    subprocess.run(DDPM + arguments, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist5k")
    parser.add_argument("--minutes", type=float, default=30.0, help="the teacher's training budget")
    parser.add_argument("--n", type=int, default=1000, help="samples for each FID")
    parser.add_argument("--out", default=None, help="default runs/distillation-DATA")
    parser.add_argument("--teacher", default=None, help="a trained teacher run to use instead of training one")
    args = parser.parse_args()
    out = Path(args.out or f"runs/distillation-{args.data.replace(':', '-').replace('/', '-')}")
    out.mkdir(parents=True, exist_ok=True)
    gflops = matmul_rate(torch.device("cpu"), torch.float32, size=2048) / 1e9
    print(f"this machine: {gflops:.0f} GFLOP/s fp32 matrix multiply", flush=True)
    teacher = Path(args.teacher) if args.teacher else out / "teacher"
    train_seconds = None
    if not args.teacher:
        train_seconds = timed(["train", "--out", str(teacher), "--data", args.data, "--max-minutes", f"{args.minutes:g}",
                               "--no-progress"])
    student = out / "student"
    distill_seconds = timed(["distill", "--run", str(teacher), "--out", str(student), "--steps", "1", "--from-steps", "64",
                             "--no-progress"])
    phases = {load_meta(folder)["student_steps"]: load_meta(folder) for folder in sorted((student / "checkpoints").glob("step_*"))
              if load_meta(folder).get("keep")}
    sweep_seconds = timed(["sweep", "--run", str(teacher), "--samplers", "ddim,dpm++2m", "--steps", "1,2,4,8",
                           "--student", str(student), "--n", str(args.n), "--out", str(out)])
    timed(["eval", "--run", str(teacher), "--n", str(args.n), "--json", str(out / "teacher-own.json")])
    with open(out / "sweep.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    own = json.loads((out / "teacher-own.json").read_text())
    rows.append({"sampler": f"teacher's own ({own['sampler']})", "steps": own["steps"], "nfe": own["nfe"],
                 "fid": round(own["fid"], 2), "kid": own["kid"]})
    teacher_meta = load_meta(sorted((teacher / "checkpoints").glob("step_*"))[-1])
    result = {"data": args.data, "cpu_gflops": round(gflops), "n": args.n,
              "teacher_steps": teacher_meta["step"], "teacher_train_minutes": round(teacher_meta["train_seconds"] / 60, 2),
              "teacher_command_minutes": round(train_seconds / 60, 2) if train_seconds else None,
              "distill_minutes": round(distill_seconds / 60, 2),
              "distill_minutes_to_4_steps": round(phases[4]["train_seconds"] / 60, 2) if 4 in phases else None,
              "sweep_minutes": round(sweep_seconds / 60, 2), "rows": rows}
    (out / "distillation.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
