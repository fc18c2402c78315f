"""How fast `ddpm serve` shows a draw: time to the first streamed frame, and each step's latency.

    python benchmarks/serve_latency.py                     # the digits default and the color default
    python benchmarks/serve_latency.py --run runs/demo     # any runs

Without --run it trains the two default networks for a few steps (what is timed is the network's
size, not how well it is trained): the digits default (`ddpm train`) and the color default that a
10-minute budget chooses on this CPU (`ddpm train --data emoji --max-minutes 10`, with its steps
capped). Each run then draws `--repeat` times through a server in this process, over loopback, as
the page asks: the run's own sampler and steps, 4 images; the first draw warms up and is reported
apart. The time to the first frame is from sending the request to reading the first `step` event,
which carries x_t and the predicted x0 as PNGs. Prints one JSON line per run, with this machine's
matrix-multiply rate: run it alone.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from throughput import matmul_rate  # benchmarks/throughput.py, beside this script

from ddpm.serve.server import Server, load_models

DEFAULTS = {
    "digits default": ["--max-steps", "20"],
    "color default (10 minutes)": ["--data", "emoji", "--max-minutes", "10", "--set", "train.max_steps=20",
                                   "--set", "latent.own_steps=20"],
}


def draw(address, body: dict) -> dict:
    """One draw: seconds to the first step's frame, every step's arrival, and the whole draw."""
    connection = http.client.HTTPConnection(*address, timeout=600)
    started = time.perf_counter()
    connection.request("POST", "/api/draw", body=json.dumps(body).encode())
    response = connection.getresponse()
    arrivals, event, shares = [], None, []
    for line in response:
        line = line.decode().strip()
        if line.startswith("event: "):
            event = line[len("event: "):]
        elif line.startswith("data: ") and event == "step":
            arrivals.append(time.perf_counter() - started)
            shares.append(json.loads(line[len("data: "):]).get("preview_share"))
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    return {"first_frame_s": round(arrivals[0], 3), "step_ms_median": round(1000 * statistics.median(gaps), 1),
            "steps": len(arrivals), "draw_s": round(time.perf_counter() - started, 3),
            "preview_share": shares[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", help="a run directory (repeatable; default: train the two defaults)")
    parser.add_argument("--out", default="runs/serve-latency", help="where the default runs are trained")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--n", type=int, default=4)
    args = parser.parse_args()
    runs = {Path(run).name: run for run in args.run or []}
    for name, options in DEFAULTS.items() if not runs else ():
        folder = Path(args.out) / name.split()[0]
        if not folder.exists():
            subprocess.run([sys.executable, "-m", "ddpm", "train", "--out", str(folder), "--no-progress", *options],
                           check=True)
        runs[name] = str(folder)
    gflops = matmul_rate(torch.device("cpu"), torch.float32, size=2048) / 1e9
    for name, run in runs.items():
        server = Server(load_models([run], "cpu"), "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        model = server.models[0].pipe
        body = {"n": args.n, "seed": 0}
        warm = draw(server.server_address[:2], body)
        timed = [draw(server.server_address[:2], {**body, "seed": k + 1}) for k in range(args.repeat)]
        server.shutdown()
        print(json.dumps({"run": name, "cpu_gflops": round(gflops), "kind": model.config.kind,
                          "parameters": sum(p.numel() for p in model.network.parameters()),
                          "sampler": model.config.sample.sampler, "steps": model.config.sample.steps, "n": args.n,
                          "first_draw": warm, "draws": timed}), flush=True)


if __name__ == "__main__":
    main()
