"""Pixels or latents for color on a CPU: both arms of the budget rule at equal time, where it switches.

recipe.COLOR_CPU_BUDGET_SIZES chooses, by a color run's --max-minutes scaled by the CPU's matmul rate,
between the narrow pixel UNet (16/32/64) and latent diffusion on its own autoencoder. This trains
both arms for the same minutes, each forced by its own flags rather than by pinning the probe, so
that both are exactly what the rule would choose:

    pixel   ddpm train --data emoji --max-minutes T --set model.channels=[16,32,64] --set latent.autoencoder=null
    latent  ddpm train --data emoji --max-minutes T --autoencoder own

and scores each as benchmarks/cpu_budget.py does (the run's own sampler, FID of --n samples against
all of the data set), with the matmul rate measured before each run and the steps each made.
Runs go in the order given, so alternate the arms: a drift of the machine's speed then falls on both.

    python benchmarks/budget_arms.py 10:pixel 10:latent 5:latent 5:pixel    # each alone on the machine
    python benchmarks/budget_arms.py --table                                # the rows, as docs/cpu-default.md has them

A run whose budget.json exists is kept, so the same command resumes a plan after a crash; the
second run of a point is named by its repeat (10:pixel:1).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ARMS = {
    "pixel": ["--set", "model.channels=[16,32,64]", "--set", "latent.autoencoder=null"],
    "latent": ["--autoencoder", "own"],
}


def run_dir(out: Path, point: str) -> Path:
    minutes, arm, repeat = (point.split(":") + ["0"])[:3]
    if arm not in ARMS:
        sys.exit(f"{point}: the arm is one of {', '.join(ARMS)}, as in 10:pixel or 10:latent:1")
    return out / f"{float(minutes):g}min-{arm}-{repeat}"


def measure(out: Path, point: str, data: str, n: int) -> None:
    run = run_dir(out, point)
    if (run / "budget.json").is_file():
        print(f"{run}: measured already", flush=True)
        return
    if run.exists():  # a run cut short: measured again from the start, never resumed under another clock
        subprocess.run(["rm", "-rf", str(run)], check=True)
    minutes, arm = point.split(":")[:2]
    here = Path(__file__).parent
    subprocess.run([sys.executable, str(here / "cpu_budget.py"), "--data", data, "--minutes", minutes, "--n", str(n),
                    "--out", str(run), "--", *ARMS[arm]], check=True)


def table(out: Path) -> None:
    """One row a run: the budget, the minutes of recipe.BUDGET_SIZES_GFLOPS's CPU that its reading makes
    of it (what the rule compares with its thresholds), the steps each stage made and the scores."""
    from ddpm.config.recipe import BUDGET_SIZES_GFLOPS

    rows = []
    for path in out.glob("*/budget.json"):
        result = json.loads(path.read_text())
        minutes = float(result["budget"][1])
        ae = result.get("own_autoencoder", {}).get("steps")
        rows.append((minutes, path.parent.name, result["cpu_gflops"], minutes * result["cpu_gflops"] / BUDGET_SIZES_GFLOPS,
                     f"{ae:,}" if ae else "—", result["steps"], result["sample_seconds"], result["fid"], result["kid"]))
    print(f"| minutes | run | GFLOP/s | minutes of the {BUDGET_SIZES_GFLOPS:g} GFLOP/s CPU | autoencoder steps | "
          f"UNet steps | sample 1,000 | FID | KID |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for minutes, name, gflops, study, ae, steps, seconds, fid, kid in sorted(rows):
        print(f"| {minutes:g} | {name} | {gflops} | {study:.1f} | {ae} | {steps:,} | {seconds:.0f} s | {fid:.1f} | {kid:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("points", nargs="*", help="MINUTES:ARM[:REPEAT], run in this order, e.g. 10:pixel 10:latent")
    parser.add_argument("--data", default="emoji")
    parser.add_argument("--n", type=int, default=1000, help="samples for FID (default 1000)")
    parser.add_argument("--out", default="runs/budget-arms", help="folder of the runs (default runs/budget-arms)")
    parser.add_argument("--table", action="store_true", help="print the table of the runs measured so far")
    args = parser.parse_args()
    out = Path(args.out)
    for point in args.points:
        run_dir(out, point)  # every point checked before the first run starts
    for point in args.points:
        measure(out, point, args.data, args.n)
    if args.table or not args.points:
        table(out)


if __name__ == "__main__":
    main()
