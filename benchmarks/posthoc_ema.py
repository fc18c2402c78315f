"""Post-hoc EMA's own gain: FID of a run's classic EMA beside the EMAs of several lengths rebuilt from its
snapshots (a run trained with --set train.posthoc_ema=[0.05,0.1]).

    python benchmarks/posthoc_ema.py --run runs/mp/unet-a --data emoji --sigma-rel 0.05 0.1 0.2

Each length is rebuilt (`ddpm ema`), sampled as the run samples (`ddpm sample --ema X --n N`) and scored
(`ddpm eval` against all of --data, from the cache of reference features). Prints a table and writes
RUN/posthoc.json; the classic EMA's row is the run's own budget.json, where cpu_budget.py wrote it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import torch
from throughput import matmul_rate  # benchmarks/throughput.py, beside this script

DDPM = [sys.executable, "-m", "ddpm"]


def _ddpm(arguments: list[str]) -> None:
    print("$ ddpm " + shlex.join(arguments), flush=True)
    subprocess.run(DDPM + arguments, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--data", default="mnist5k")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--sigma-rel", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    args = parser.parse_args()
    run = Path(args.run)
    rows = []
    budget = run / "budget.json"
    if budget.is_file():
        rows.append({"ema": "classic", "fid": json.loads(budget.read_text()).get("fid")})
    _ddpm(["ema", "--run", str(run), "--sigma-rel", *map(str, args.sigma_rel)])
    for sigma_rel in args.sigma_rel:
        samples = run / f"samples-ema-{sigma_rel:g}.npz"
        _ddpm(["sample", "--run", str(run), "--ema", str(sigma_rel), "--n", str(args.n), "--out", str(samples),
               "--grid", str(run / f"grid-ema-{sigma_rel:g}.png")])
        scores = run / f"fid-ema-{sigma_rel:g}.json"
        _ddpm(["eval", "--samples", str(samples), "--data", args.data, "--json", str(scores)])
        rows.append({"ema": sigma_rel, "fid": round(json.loads(scores.read_text())["fid"], 2)})
    gflops = matmul_rate(torch.device("cpu"), torch.float32, size=2048) / 1e9
    result = {"run": str(run), "n": args.n, "cpu_gflops": round(gflops), "rows": rows}
    (run / "posthoc.json").write_text(json.dumps(result, indent=2))
    for row in rows:
        print(f"{row['ema']!s:>8}  FID {row['fid']}")


if __name__ == "__main__":
    main()
