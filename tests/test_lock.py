"""One writer per run: a second training process is refused, kill -9 leaves no stale lock, two
evaluations each append one whole row, and under torchrun rank 0 holds the lock for all ranks."""

import csv
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import TINY, tiny_config, TORCHRUN
from ddpm import InputError, train
from ddpm.evaluation.history import EVAL_FIELDS, append_eval_history
from ddpm.storage.checkpoint import RunDir, load_meta
from ddpm.storage.lock import holder

DDPM = [sys.executable, "-m", "ddpm"]
# A constant learning rate, so a run stopped at step S equals a run trained to S: see the first test.
LONG = ["--max-steps", "100000", *TINY, "--set", "train.lr_schedule=constant", "--set", "train.checkpoint_every=10",
        "--set", "train.log_every=5", "--set", "train.sample_every=100000"]


def _wait_for(condition, what: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _log_steps(run: Path) -> list[int]:
    with open(run / "log.csv", newline="") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle)]


def _start(argv, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_a_second_writer_is_refused_and_changes_nothing(tmp_path):
    run = tmp_path / "run"
    first = _start([*DDPM, "train", "--out", str(run), *LONG])
    try:
        _wait_for(lambda: RunDir(run).latest() is not None, "the first checkpoint")
        # Paused, the first writer still holds the lock, and the reference below retrains only the
        # few steps it made, not the hundreds it would make while the others start.
        first.send_signal(signal.SIGSTOP)
        assert f"PID {first.pid} " in holder(run)
        second = subprocess.run([*DDPM, "train", "--resume", str(run), "--max-steps", "100000"], capture_output=True,
                                text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        message = second.stderr.strip()
        assert message.count("\n") == 0 and f"run {run} is being written by PID {first.pid} on " in message, message
        third = subprocess.run([*DDPM, "train", "--out", str(run), *LONG], capture_output=True, text=True, timeout=120)
        assert third.returncode == 2 and "already holds a run" in third.stderr, third.stderr
    finally:
        first.send_signal(signal.SIGCONT)
        first.send_signal(signal.SIGINT)  # a pause: checkpoint, exit 0
        assert first.wait(timeout=120) == 0, first.stderr.read()
    steps = _log_steps(run)
    assert steps == sorted(set(steps)) and len(steps) > 1, steps
    # Every checkpoint is the first process's: training to the last one's step in one go gives
    # the same weights, bit for bit.
    last = load_meta(RunDir(run).latest())["step"]
    config = tiny_config(**{"train.max_steps": last, "train.lr_schedule": "constant", "train.checkpoint_every": 10,
                            "train.batch_size": 8, "diffusion.timesteps": 100, "sample.steps": 5,
                            "train.warmup_steps": 100, "train.log_every": 10})
    reference = train(config, tmp_path / "reference", progress=False)
    for key in ("model", "ema"):
        ours, theirs = (load_file(r.latest() / f"{key}.safetensors") for r in (RunDir(run), reference))
        assert all(torch.equal(ours[name], theirs[name]) for name in ours), key


def test_sigkill_leaves_no_stale_lock(tmp_path):
    run = tmp_path / "run"
    first = _start([*DDPM, "train", "--out", str(run), *LONG])
    _wait_for(lambda: RunDir(run).latest() is not None, "the first checkpoint")
    first.kill()
    first.wait(timeout=60)
    assert holder(run) is None
    step = load_meta(RunDir(run).latest())["step"]
    resumed = subprocess.run([*DDPM, "train", "--resume", str(run), "--max-steps", str(step + 3)], capture_output=True,
                             text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert load_meta(RunDir(run).latest())["step"] == step + 3
    steps = _log_steps(run)
    assert steps == sorted(set(steps)), steps


def test_a_resume_drops_the_grids_drawn_after_its_checkpoint(tmp_path):
    config = tiny_config(**{"train.max_steps": 4, "train.sample_every": 1, "train.checkpoint_every": 2})
    run = train(config, tmp_path / "run", progress=False)
    grid = run.sample_grid_path(3).read_bytes()
    (run.checkpoints / "latest").write_text("step_000002")  # as if the process had died after step 3
    resumed = train(config.override({"train.max_steps": 3}), run.path, resume=True, progress=False)
    assert [p.name for p in resumed.sample_grids()] == ["step_000001.png", "step_000002.png", "step_000003.png"]
    assert run.sample_grid_path(3).read_bytes() == grid  # redrawn by the same trajectory
    assert _log_steps(run.path) == [1, 2, 3]


def test_two_evaluations_at_once_each_append_one_whole_row(tmp_path):
    """Each round starts from no eval.csv, the moment both writers would write the header."""
    for round in range(20):
        run = tmp_path / f"run{round}"
        run.mkdir()
        start = threading.Barrier(2)

        def evaluate(seed: int) -> None:
            start.wait()
            append_eval_history(run, {"step": 10, "sampler": "ddpm", "seed": seed, "fid": 20.0 + seed, "kid": 0.01})

        threads = [threading.Thread(target=evaluate, args=(seed,)) for seed in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with open(run / "eval.csv", newline="") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
        assert reader.fieldnames == EVAL_FIELDS
        assert sorted(row["seed"] for row in rows) == ["1", "2"], (round, rows)


def test_under_torchrun_rank_0_holds_the_lock_for_all_ranks(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ranks = _start([*TORCHRUN, "train", "--out", str(run), *LONG, "--max-minutes", "0.3"], env=env)  # ends by itself
    _wait_for(lambda: RunDir(run).latest() is not None, "the first checkpoint", seconds=240)
    pid = int(holder(run).split()[1])
    environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert b"RANK=0" in environment and b"WORLD_SIZE=2" in environment  # the holder is rank 0
    third = subprocess.run([*DDPM, "train", "--resume", str(run), "--max-steps", "100000"], capture_output=True,
                           text=True, timeout=120)
    assert ranks.poll() is None, "the ranks finished before the third process was refused; raise --max-minutes"
    assert third.returncode == 2 and f"is being written by PID {pid} on " in third.stderr, third.stderr
    assert ranks.wait(timeout=240) == 0, ranks.stderr.read()[-3000:]
    assert holder(run) is None
    steps = _log_steps(run)
    assert steps == sorted(set(steps)), steps


def test_resuming_a_run_that_does_not_exist_is_one_line(tmp_path):
    with pytest.raises(InputError, match="run directory .*nothing does not exist"):
        train(tiny_config(), tmp_path / "nothing", resume=True, progress=False)
    assert not (tmp_path / "nothing").exists()
