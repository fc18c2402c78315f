"""Today's UNet layout against UNet2DModel's, at equal time: does the exportable layout cost FID?

diffusers' UNet2DModel keeps a skip after every residual block, a middle of two residual blocks,
a time embedding as wide as its first level and one GroupNorm size. ddpm's CPU default keeps one
skip per level, a one-block neck, a 64-wide sinusoid and GroupNorms of four channels. This trains
the default ("level") and the default made expressible as a UNet2DModel ("block": model.skips
block, neck_length 2, time_emb_dim = channels[0], norm_groups = channels[0] / 4, which keeps the
first level's groups) for the same minutes, alternating arms so that a drift of the machine's speed
falls on both, then scores each run's own sampler: FID of --n samples against --ref-n data images.

    python benchmarks/unet_layout.py --data mnist5k --repeats 3          # 6 x 10 minutes, then the FIDs
    python benchmarks/unet_layout.py --data emoji --out runs/layout-emoji

Run it alone on the machine: the budget is minutes, and a second torch process steals them.
Writes OUT/layout.json, one row a run, with the matmul rate measured before each. The network's
size follows the first reading for every run (DDPM_CPU_GFLOPS), so both arms get the same one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch
from cpu_budget import _run, last_logged  # benchmarks/, beside this script
from throughput import matmul_rate

from ddpm.config.recipe import compose_config
from ddpm.runtime.speed import CPU_GFLOPS_VARIABLE


def arms(data: str, minutes: float) -> dict[str, list[str]]:
    """The ddpm train options of each layout, for the network the recipe sizes for this data and budget."""
    first = compose_config(overrides={"data.name": data, "train.max_minutes": minutes}).model.channels[0]
    block = {"model.skips": "block", "model.neck_length": 2, "model.time_emb_dim": first, "model.norm_groups": first // 4}
    return {"level": [], "block": [f for key, value in block.items() for f in ("--set", f"{key}={value}")]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist5k")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n", type=int, default=1000, help="samples for FID (default 1000)")
    parser.add_argument("--ref-n", type=int, default=1000, help="data images FID compares against (default 1000)")
    parser.add_argument("--out", default=None, help="folder of the runs (default runs/layout-DATA)")
    args = parser.parse_args()
    out = Path(args.out or f"runs/layout-{args.data}")
    # Every run sizes its network by this machine's rate (a color run may choose latents): the first
    # reading, for all of them, so that the arms differ in their layout only.
    os.environ.setdefault(CPU_GFLOPS_VARIABLE, f"{matmul_rate(torch.device('cpu'), torch.float32, size=2048) / 1e9:.0f}")
    rows = []
    for repeat in range(args.repeats):
        for name, options in arms(args.data, args.minutes).items():
            run = out / f"{name}-{repeat}"
            if not (run / "layout.json").is_file():  # a rerun after a crash keeps the runs that finished
                shutil.rmtree(run, ignore_errors=True)
                gflops = matmul_rate(torch.device("cpu"), torch.float32, size=2048) / 1e9
                print(f"{run}: this machine at {gflops:.0f} GFLOP/s", flush=True)
                started = time.perf_counter()
                _run(["train", "--out", str(run), "--data", args.data, "--max-minutes", f"{args.minutes:g}",
                      "--no-progress", *options])
                (run / "layout.json").write_text(json.dumps({"gflops": round(gflops), "options": options,
                                                             "wall_minutes": round((time.perf_counter() - started) / 60, 2)}))
            rows.append(run)
    results = []
    for run in rows:  # scored after every run trained: scoring needs no idle machine
        scores = run / "fid.json"
        if not scores.is_file():
            _run(["eval", "--run", str(run), "--n", str(args.n), "--ref-n", str(args.ref_n), "--json", str(scores)])
        score, last = json.loads(scores.read_text()), last_logged(run)
        results.append({"run": str(run), **json.loads((run / "layout.json").read_text()), "steps": int(last["step"]),
                        "images_per_s": float(last["images_per_s"]), "fid": round(score["fid"], 2), "kid": score["kid"]})
        print(json.dumps(results[-1]), flush=True)
    (out / "layout.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
