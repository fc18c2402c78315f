"""How far apart readings of the CPU probe fall on an idle machine: one window, or several reduced.

The time budget of a color run on the CPU chooses its arm by speed.cpu_gflops(), read once when the
run starts. This reads each way --calls times, the ways alternating, in one process (the cache is
bypassed), and prints every reading, the largest relative gap between two readings of one way and
the largest between two consecutive ones, so that a probe is chosen by how steady it reads.

    python benchmarks/probe_spread.py               # alone on the machine
    python benchmarks/probe_spread.py --calls 20

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ddpm.runtime.speed import matmul_rates

CPU = torch.device("cpu")
WAYS = {  # name: (seconds, windows, how the windows' rates become one)
    "one 1 s window (speed.cpu_gflops)": (1.0, 1, max),
    "one 3 s window (the benchmarks' reading)": (3.0, 1, max),
    "best of 6 windows in 1.5 s": (1.5, 6, max),
    "median of 5 windows in 1.5 s": (1.5, 5, statistics.median),
    "median of 10 windows in 3 s": (3.0, 10, statistics.median),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10)
    args = parser.parse_args()
    readings: dict[str, list[float]] = {way: [] for way in WAYS}
    seconds = dict.fromkeys(WAYS, 0.0)
    for _ in range(args.calls):
        for way, (length, windows, reduce) in WAYS.items():
            started = time.perf_counter()
            readings[way].append(reduce(matmul_rates(CPU, torch.float32, 2048, length, windows)) / 1e9)
            seconds[way] += time.perf_counter() - started
    result = {way: {"readings": [round(r, 1) for r in values],
                    "largest_gap": round(max(values) / min(values) - 1, 4),
                    "largest_consecutive_gap": round(max(max(a, b) / min(a, b) - 1 for a, b in zip(values, values[1:])), 4),
                    "seconds_per_call": round(seconds[way] / args.calls, 2)} for way, values in readings.items()}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
