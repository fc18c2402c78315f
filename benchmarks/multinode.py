"""Throughput on loopback: one process, 1 node x 2 processes, and 2 nodes x 1 process (two torchrun
agents on this machine, c10d rendezvous on 127.0.0.1), training the same run for the same steps;
then, on paper, the bandwidth a 2-node CUDA run of the cifar10-ddpm preset needs.

    python benchmarks/multinode.py --steps 60

Each arm runs alone. images/s is the run's own (log.csv, after the first --skip steps). The
communication share of a step is 1 - t(one process on half the batch) / t(2 ranks on the whole
batch): each rank computes half the batch, and what it spends beyond that is the all-reduce and
waiting. The paper estimate: DDP all-reduces the fp32 gradient once a step; a ring over 2 nodes
sends and receives the gradient's size per node, which must take at most 1/9 of the compute time
for 90 % scaling when nothing overlaps (DDP does overlap it with the backward pass, so this bounds
from above).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from throughput import matmul_rate  # benchmarks/throughput.py, beside this script

RUN = ["train", "--data", "digits", "--batch-size", "64", "--device", "cpu", "--no-progress",
       "--set", "train.log_every=1", "--set", "train.sample_every=100000", "--set", "train.checkpoint_every=100000"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _seconds_per_step(run: Path, skip: int) -> float:
    with open(run / "log.csv", newline="") as handle:
        rows = [(int(r["step"]), float(r["elapsed_min"])) for r in csv.DictReader(handle)]
    (s0, m0), (s1, m1) = rows[skip - 1], rows[-1]
    return (m1 - m0) * 60 / (s1 - s0)


def _torchrun(nnodes: int, nproc: int, argv: list, root: Path) -> None:
    port = _free_port()
    agents = []
    for node in range(nnodes):
        home = root / f"node{node}"
        home.mkdir(parents=True, exist_ok=True)
        # one thread per process, as torchrun gives several on one node: two "nodes" share these cores
        env = {**os.environ, "HOME": str(home), "TMPDIR": str(home), "OMP_NUM_THREADS": "1"}
        agents.append(subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--nproc_per_node", str(nproc),
             "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "bench",
             "-m", "ddpm", "--", *argv], env=env))
    for agent in agents:
        if agent.wait():
            raise SystemExit(f"torchrun exited with {agent.returncode}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--skip", type=int, default=10, help="steps left out of the timing (warm-up)")
    parser.add_argument("--out", default="runs/multinode.json")
    args = parser.parse_args()
    import torch

    gflops = matmul_rate(torch.device("cpu"), torch.float32, 1024) / 1e9
    print(f"this machine: {gflops:.0f} GFLOP/s fp32 matrix multiply", flush=True)
    root = Path(tempfile.mkdtemp(prefix="ddpm-multinode-"))
    steps = ["--max-steps", str(args.steps)]
    arms = {}
    try:
        half = root / "half"  # one process, half the batch: what each of 2 ranks computes
        subprocess.run([sys.executable, "-m", "ddpm", *RUN, *steps, "--out", str(half), "--batch-size", "32"],
                       check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        compute = _seconds_per_step(half, args.skip)
        one = root / "one"
        subprocess.run([sys.executable, "-m", "ddpm", *RUN, *steps, "--out", str(one)], check=True)
        arms["1 process (2 threads)"] = _seconds_per_step(one, args.skip)
        _torchrun(1, 2, [*RUN, *steps, "--out", str(root / "1x2")], root / "agents-1x2")
        arms["1 node x 2 processes"] = _seconds_per_step(root / "1x2", args.skip)
        _torchrun(2, 1, [*RUN, *steps, "--out", str(root / "2x1")], root / "agents-2x1")
        arms["2 nodes x 1 process"] = _seconds_per_step(root / "2x1", args.skip)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = {name: {"seconds_per_step": round(t, 4), "images_per_s": round(64 / t, 1),
                   "communication_share": None if name.startswith("1 process") else round(max(0.0, 1 - compute / t), 3)}
            for name, t in arms.items()}
    print(f"{'arm':<24} {'s/step':>8} {'images/s':>9} {'comm. share':>12}")
    for name, row in rows.items():
        share = "-" if row["communication_share"] is None else f"{row['communication_share']:.0%}"
        print(f"{name:<24} {row['seconds_per_step']:>8.3f} {row['images_per_s']:>9.1f} {share:>12}")
    print(f"(one process on half the batch, 1 thread: {compute:.3f} s/step)")
    paper = _paper()
    print(paper)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"gflops": round(gflops), "steps": args.steps, "half_batch_seconds": compute,
                                          "arms": rows, "paper": paper}, indent=2))


def _paper() -> str:
    """The bandwidth between 2 nodes that keeps a cifar10-ddpm step at 90 % scaling, without overlap."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ddpm.config.presets import load_preset
    from ddpm.factory import build_network

    config = load_preset("cifar10-ddpm").override({"data.channels": 3, "data.image_size": 32})
    network = build_network(config)
    params = sum(p.numel() for p in network.parameters())
    x = torch.randn(1, 3, 32, 32)
    with FlopCounterMode(display=False) as counter:
        network(x, torch.tensor([500])).sum().backward()
    per_image = counter.get_total_flops()  # forward and backward
    rate = 495e12 * 0.4  # an H100's dense TF32 (494.7 TFLOP/s) at 40 % utilisation
    per_gpu = config.train.batch_size // 2  # the preset's global batch over 2 nodes of one GPU each
    step = per_image * per_gpu / rate
    gradient = params * 4
    needed = gradient / (step / 9)  # a 2-rank ring sends and receives the whole gradient once per rank and step
    return (f"on paper: cifar10-ddpm has {params / 1e6:.1f} M parameters ({gradient / 1e6:.0f} MB of fp32 gradient) and "
            f"{per_image / 1e9:.1f} GFLOP per image forward and backward; its global batch of {config.train.batch_size} "
            f"on 2 nodes is {per_gpu} images per GPU, {step * 1e3:.1f} ms at {rate / 1e12:.0f} TFLOP/s; 90 % scaling "
            f"needs the gradient across in {step / 9 * 1e3:.2f} ms: {needed * 8 / 1e9:.0f} Gbit/s ({needed / 1e9:.0f} "
            f"GB/s) if nothing overlapped")

if __name__ == "__main__":
    main()
