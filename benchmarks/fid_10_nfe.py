"""How close do 10 network evaluations get to 1000-step DDPM?  (issue: evaluation and fast samplers)

For a trained run, FID of n samples with each fast sampler at <= 10 NFE, divided by the FID of
1000-step DDPM from the same starting noise. The goal is a ratio of at most 1.15.

    python benchmarks/fid_10_nfe.py --run runs/demo --n 1000

On 2 CPU cores 1000-step DDPM is the slow part (n x 1000 network evaluations); --n 250 gives a
rough answer in a fraction of the time. Prints a table and writes RUN/fid_10_nfe.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ddpm import Pipeline
from ddpm.evaluation.fid import Evaluator

# (sampler, steps, spacing): each uses at most 10 network evaluations; heun needs 2 K - 1.
FAST = [("ddim", 10, "uniform"), ("ddim", 10, "trailing"), ("dpm++2m", 10, "uniform"), ("dpm++2m", 10, "trailing"),
        ("dpm++2m", 10, "quadratic"), ("dpm++2m", 10, "logsnr"), ("heun", 5, "uniform"), ("heun", 5, "trailing"),
        ("heun", 5, "logsnr")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--ref-n", type=int, default=None)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    pipe = Pipeline.from_run(args.run, device=args.device)
    c = pipe.config
    evaluator = Evaluator(c.data.name, c.data.root, c.data.image_size, args.ref_n, str(pipe.device))

    def score(sampler: str, steps: int, spacing: str) -> dict:
        started = time.perf_counter()
        images = pipe(args.n, sampler, steps, seed=0, spacing=spacing)
        seconds = time.perf_counter() - started
        fid = evaluator(images)["fid"]
        row = {"sampler": sampler, "steps": steps, "spacing": spacing, "nfe": pipe.plan(None, sampler, steps).nfe,
               "fid": round(fid, 3), "seconds": round(seconds, 1)}
        print(f"{sampler:>8} {steps:>5} steps {spacing:>9} ({row['nfe']:>4} NFE): FID {fid:8.3f}  ({seconds:.0f} s)", flush=True)
        return row

    fast = [score(*setting) for setting in FAST]
    reference = score("ddpm", c.diffusion.timesteps, "uniform")
    best = min(fast, key=lambda r: r["fid"])
    ratio = best["fid"] / reference["fid"]
    print(f"\nbest at <= 10 NFE: {best['sampler']} {best['spacing']} FID {best['fid']:.3f}; "
          f"DDPM {c.diffusion.timesteps} steps FID {reference['fid']:.3f}; ratio {ratio:.3f} (goal <= 1.15)")
    result = {"run": args.run, "step": pipe.step, "n": args.n, "fast": fast, "ddpm": reference, "ratio": ratio}
    (Path(args.run) / "fid_10_nfe.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
