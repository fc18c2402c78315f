"""Crashes, signals, hostile files and full disks: a run never loses more than the steps since its
last checkpoint, and never runs code hidden in a checkpoint."""

import errno
import importlib
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import tiny_config
from ddpm import InputError, load_run, train
from ddpm.checkpoint import TMP_PREFIX, RunDir, load_meta, load_state, load_weights, save_checkpoint
from ddpm.cli import main
from ddpm.train import TrainingDiverged

DDPM = [sys.executable, "-m", "ddpm"]


def _files(folder):
    """Every file under `folder` with its bytes: to show that nothing changed."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_resumable(run: RunDir) -> int:
    folder = run.latest()
    assert folder is not None, "latest names no complete checkpoint"
    meta = load_meta(folder)
    assert folder.name == f"step_{meta['step']:06d}"
    load_state(folder)
    for key in ("model", "ema"):
        assert all(torch.isfinite(t).all() for t in load_weights(folder, key).values())
    return meta["step"]


def test_sigkill_while_writing_checkpoints_never_breaks_latest(tmp_path):
    """20 times: resume the run in a fresh process, SIGKILL it at a random moment of the checkpoint
    write that follows its first step, and check that `latest` still names a complete checkpoint,
    which the next process resumes."""
    config = tiny_config(**{"model.channels": [32, 64], "train.checkpoint_every": 1, "train.keep_checkpoints": 2})
    run = train(config.override({"train.max_steps": 1}), tmp_path / "run", progress=False)
    write_time = _time_checkpoint_write(run, tmp_path / "scratch")
    rng = random.Random(0)
    outcomes = {"before or during the write": 0, "after the write": 0}
    mid_write = 0
    for attempt in range(20):
        step = _assert_resumable(run)
        started = time.time()
        child = subprocess.Popen([*DDPM, "train", "--resume", str(run.path), "--max-steps", "100000", "--no-progress"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:  # the log row of step + 1 is written just before that step's checkpoint
            deadline = time.monotonic() + 60
            while not _logged_since(run, step + 1, started):
                assert child.poll() is None, child.stderr.read().decode()
                assert time.monotonic() < deadline, "the resumed process made no step within 60 s"
                time.sleep(0.001)
            time.sleep(rng.uniform(0, write_time))
        finally:
            child.kill()
            child.wait()
            child.stderr.close()
        mid_write += any(p.name.startswith(TMP_PREFIX) and p.stat().st_mtime > started for p in run.checkpoints.iterdir())
        after = _assert_resumable(run)
        assert after in (step, step + 1), f"attempt {attempt}: latest moved from step {step} to {after}"
        outcomes["after the write" if after > step else "before or during the write"] += 1
    assert mid_write >= 5, f"only {mid_write} of 20 kills landed inside a checkpoint write ({outcomes})"
    # The last survivor resumes in this process too, and samples.
    step = _assert_resumable(run)
    train(config.override({"train.max_steps": step + 2}), run.path, resume=True, progress=False)
    assert load_run(run.path, device="cpu").step == step + 2
    assert not any(p.name.startswith(TMP_PREFIX) for p in run.checkpoints.iterdir())


def _logged_since(run: RunDir, step: int, since: float) -> bool:
    """Has a process started after `since` logged `step`? (An earlier one may have logged it too.)"""
    try:
        return run.log_path.stat().st_mtime > since and f"\n{step}," in run.log_path.read_text()
    except FileNotFoundError:
        return False


def _time_checkpoint_write(run: RunDir, scratch) -> float:
    folder = run.latest()
    tensors = {key: load_weights(folder, key) for key in ("model", "ema")}
    started = time.perf_counter()
    save_checkpoint(RunDir(scratch), 1, tensors, load_state(folder), load_meta(folder))
    return time.perf_counter() - started


def test_sigint_checkpoints_the_step_reached_and_exits_0(tmp_path):
    out = tmp_path / "run"
    child = subprocess.Popen(
        [*DDPM, "train", "--out", str(out), "--max-steps", "100000", "--device", "cpu", "--no-progress",
         "--batch-size", "8", "--timesteps", "100", "--set", "model.channels=[8,16]", "--set", "model.attention=[false,true]",
         "--set", "train.log_every=1", "--set", "train.checkpoint_every=100000", "--set", "train.grid_size=4",
         "--set", "sample.steps=4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / "log.csv").is_file() or len((out / "log.csv").read_text().splitlines()) < 4:
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    stdout, stderr = child.communicate(timeout=60)
    assert child.returncode == 0, stderr
    assert f"ddpm train --resume {out}" in stderr + stdout
    last_logged = int((out / "log.csv").read_text().splitlines()[-1].split(",")[0])
    assert last_logged >= 3
    assert _assert_resumable(RunDir(out)) == last_logged


class _RunsCode:
    """Unpickling this creates a file: stands for any code an attacker would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys):
    run = train(tiny_config(**{"train.max_steps": 2}), tmp_path / "run", progress=False)
    marker = tmp_path / "code-ran"
    state = run.latest() / "state.pt"
    torch.save({"optimizer": _RunsCode(marker)}, state)
    with pytest.raises(InputError, match="refusing to load .*state.pt"):
        load_state(run.latest())
    assert main(["train", "--resume", str(run.path), "--max-steps", "4", "--no-progress"]) == 2
    assert "refusing to load" in capsys.readouterr().err
    assert not marker.exists()
    # The file is really hostile: a plain unpickling runs its code.
    torch.load(state, weights_only=False)
    assert marker.exists()


def test_a_full_disk_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    run = train(tiny_config(**{"train.max_steps": 2}), tmp_path / "run", progress=False)
    checkpoints = _files(run.checkpoints)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("ddpm.checkpoint.save_file", disk_full)
    assert main(["train", "--resume", str(run.path), "--max-steps", "4", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "No space left on device" in err and "previous checkpoint is intact" in err
    assert _files(run.checkpoints) == checkpoints
    assert _assert_resumable(run) == 2


def _nan_at_step(monkeypatch, bad_steps):
    """Make the training loss NaN at the given (1-based) steps."""
    module = importlib.import_module("ddpm.train")  # the module, not the function ddpm.train
    real, calls = module.training_loss, []

    def loss(*args, **kwargs):
        calls.append(1)
        value = real(*args, **kwargs)
        return value * float("nan") if len(calls) in bad_steps else value

    monkeypatch.setattr(module, "training_loss", loss)


def test_a_nan_loss_stops_at_its_step_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    _nan_at_step(monkeypatch, {5})
    config = tiny_config(**{"train.max_steps": 8, "train.checkpoint_every": 2})
    with pytest.raises(TrainingDiverged, match="at step 5; the last checkpoint .*step_000004"):
        train(config, tmp_path / "run", progress=False)
    assert _assert_resumable(RunDir(tmp_path / "run")) == 4


def test_nonfinite_skip_leaves_the_weights_untouched_and_goes_on(tmp_path, monkeypatch, capsys):
    _nan_at_step(monkeypatch, {3, 4})
    config = tiny_config(**{"train.max_steps": 6, "train.nonfinite": "skip"})
    run = train(config, tmp_path / "run", progress=False)
    assert _assert_resumable(run) == 6
    captured = capsys.readouterr()
    assert "step 3: the loss became nan; step skipped (1 in a row)" in captured.out + captured.err
    steps_logged = [line.split(",")[0] for line in run.log_path.read_text().splitlines()[1:]]
    assert steps_logged == ["1", "2", "5", "6"]


@pytest.mark.parametrize("name", ["state.pt", "model.safetensors"])
def test_a_damaged_checkpoint_file_is_a_one_line_error(tmp_path, capsys, name):
    run = train(tiny_config(**{"train.max_steps": 2}), tmp_path / "run", progress=False)
    damaged = run.latest() / name
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    command = ["train", "--resume", str(run.path), "--max-steps", "4", "--no-progress"]
    assert main(command) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{name} is damaged" in err, err
