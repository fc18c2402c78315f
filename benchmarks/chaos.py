"""A small run under a loop of random faults, restarted each time with the same command, then compared
bit for bit with an unbroken run of the same steps.

    python benchmarks/chaos.py --rounds 100

Each round starts `ddpm train --out RUN --resume-if-exists ...` (what a requeued job runs) and meets
one fault, drawn at random:

    sigkill   SIGKILL at a random moment (a crash, an OOM kill): the steps since the checkpoint are lost
    sigterm   SIGTERM at a random moment (a scheduler's preemption): the step reached is checkpointed
    sigint    SIGINT at a random moment (Ctrl-C): likewise
    fsize     a file-size limit below a checkpoint's size (RLIMIT_FSIZE): the write fails, exit status 4
    flip      a byte of the newest checkpoint flipped before the start (a bad disk), then SIGKILL later:
              the damaged checkpoint is set aside and the run falls back to the one before

A random moment is, in one round of five, while the command starts (0 to 3 s after its handlers are in:
before them, in the interpreter's own start, a signal acts as on any Python program); else 0 to 4 s
after a step is logged. Each round records its moment.

After the rounds the same command runs to the end, and its final weights (model and EMA) must equal
those of an unbroken run bit for bit. Prints and writes OUT/chaos.json: each fault's count, exit
statuses, steps lost to fall-backs, and the comparison.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import load_file

from ddpm.storage.checkpoint import RunDir

FAULTS = ("sigkill", "sigterm", "sigint", "fsize", "flip")
EXPECTED = {"sigkill": (-signal.SIGKILL,), "sigterm": (0,), "sigint": (0,), "fsize": (4,), "flip": (-signal.SIGKILL, 0)}


def command(out: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "ddpm", "train", "--out", str(out), "--resume-if-exists", "--max-steps", str(steps),
            "--device", "cpu", "--no-progress", "--batch-size", "8", "--timesteps", "100",
            "--set", "model.channels=[8,16]", "--set", "model.attention=[false,true]", "--set", "model.time_emb_dim=16",
            "--set", "train.checkpoint_every=10", "--set", "train.log_every=5", "--set", "train.sample_every=100000",
            "--set", "train.tensorboard=false"]


def newest_step(run: RunDir) -> int:
    folder = run.newest_intact()[0]
    return int(folder.name.split("_")[1]) if folder else 0


def flip_a_byte(run: RunDir, rng: random.Random) -> str:
    folder = run.latest()
    if folder is None:
        return "nothing to flip yet"
    file = rng.choice(sorted(p for p in folder.iterdir() if p.is_file()))
    data = bytearray(file.read_bytes())
    at = rng.randrange(len(data))
    data[at] ^= 1 << rng.randrange(8)
    file.write_bytes(bytes(data))
    return f"{folder.name}/{file.name} byte {at}"


def _wait_for_a_new_step(run: RunDir, child, timeout: float = 120) -> None:
    """Until the log holds a row it did not hold when the process started, or the process ended."""
    def rows() -> int:
        return len(run.log_path.read_text().splitlines()) if run.log_path.is_file() else 0

    before, start = rows(), time.monotonic()
    while child.poll() is None and rows() <= before and time.monotonic() - start < timeout:
        time.sleep(0.05)


def _takes_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM yet (its SigCgt mask in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True  # it ended
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)


def one_round(fault: str, run: RunDir, steps: int, rng: random.Random) -> dict:
    before = newest_step(run)
    note = flip_a_byte(run, rng) if fault == "flip" else ""
    limit, moment = None, "a checkpoint's write"
    if fault == "fsize":
        weights = run.latest() / "model.safetensors" if run.latest() else None
        limit = (weights.stat().st_size if weights else 20_000) // 2

    def limited():
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    child = subprocess.Popen(command(run.path, steps), preexec_fn=limited, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    if fault != "fsize":
        if rng.random() < 0.2:  # while the command starts (imports, data, resume)
            while not _takes_sigterm(child.pid):
                time.sleep(0.001)
            delay = rng.uniform(0.0, 3.0)
            moment = f"start-up +{delay:.2f}s"
        else:  # at a random moment of training: after the next step is logged
            _wait_for_a_new_step(run, child)
            delay = rng.uniform(0.0, 4.0)
            moment = f"training +{delay:.2f}s"
        time.sleep(delay)
        child.send_signal({"sigterm": signal.SIGTERM, "sigint": signal.SIGINT}.get(fault, signal.SIGKILL))
    try:
        stdout, stderr = child.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        child.kill()
        stdout, stderr = child.communicate()
    after = newest_step(run)
    # "...; set aside as NAME, resuming from step_000150" or "..., starting again" (on stdout, by tqdm.write)
    resumed = [int(step or 0) for step in re.findall(r"set aside as \S+, (?:resuming from step_(\d+)|starting again)",
                                                     stdout + stderr)]
    fell_back = len(resumed)
    lost = fault != "fsize" and after >= steps > before  # the fault never landed: the run trained to its end
    return {"fault": fault, "moment": moment, "note": note, "status": child.returncode,
            "expected": child.returncode in EXPECTED[fault] and not lost, "signal_lost": lost,
            "checkpoint_before": before, "checkpoint_after": after, "fell_back": fell_back,
            "steps_lost": before - resumed[-1] if resumed else 0,
            "error": stderr.strip().splitlines()[-1] if child.returncode not in (0, -signal.SIGKILL) and stderr.strip() else "",
            "stderr_tail": stderr[-1500:] if lost else ""}


def same_weights(a: RunDir, b: RunDir) -> bool:
    for key in ("model", "ema"):
        x, y = load_file(a.latest() / f"{key}.safetensors"), load_file(b.latest() / f"{key}.safetensors")
        if x.keys() != y.keys() or not all(torch.equal(x[k], y[k]) for k in x):
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--steps", type=int, default=3000, help="the run's max_steps")
    parser.add_argument("--seed", type=int, default=0, help="the faults' random draws")
    parser.add_argument("--out", default="runs/chaos")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rng = random.Random(args.seed)
    run = RunDir(out / "chaos")
    rounds = []
    for number in range(args.rounds):
        fault = rng.choice(FAULTS)
        row = one_round(fault, run, args.steps, rng)
        rounds.append(row)
        print(f"round {number + 1:3d}: {fault:<7} {row['moment']:<20} status {row['status']:>3} checkpoint {row['checkpoint_before']:>5} -> "
              f"{row['checkpoint_after']:>5}{'  fell back' if row['fell_back'] else ''} {row['note']} {row['error']}",
              flush=True)
        if row["checkpoint_after"] >= args.steps:
            print("the run reached its last step; the rounds stop here", flush=True)
            break
    finish = subprocess.run(command(run.path, args.steps), capture_output=True, text=True)
    unbroken = subprocess.run(command(out / "unbroken", args.steps), capture_output=True, text=True)
    equal = finish.returncode == unbroken.returncode == 0 and same_weights(run, RunDir(out / "unbroken"))
    summary = {
        "rounds": len(rounds), "faults": dict(Counter(r["fault"] for r in rounds)),
        "statuses": {fault: dict(Counter(str(r["status"]) for r in rounds if r["fault"] == fault)) for fault in FAULTS},
        "survived": sum(r["expected"] for r in rounds), "fall_backs": sum(r["fell_back"] for r in rounds),
        "steps_lost_to_fall_backs": sum(r["steps_lost"] for r in rounds), "final_step": newest_step(run),
        "bit_exact": equal, "unexpected": [r for r in rounds if not r["expected"]],
    }
    (out / "chaos.json").write_text(json.dumps({"summary": summary, "rounds": rounds}, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
