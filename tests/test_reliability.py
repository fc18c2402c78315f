"""Crashes, signals, hostile files and full disks: a run never loses more than the steps since its
last checkpoint, and never runs code hidden in a checkpoint."""

import errno
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from helpers import tiny_config
from ddpm import InputError, Pipeline, train
from ddpm.storage.atomic import file_sha256
from ddpm.storage.checkpoint import TMP_PREFIX, RunDir, _sealed, load_meta, load_state, load_weights
from ddpm.cli import main
from ddpm.errors import TrainingDiverged

DDPM = [sys.executable, "-m", "ddpm"]
KILL_IN_CHECKPOINT = Path(__file__).with_name("kill_in_checkpoint.py")


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


def test_sigkill_at_every_moment_of_a_checkpoint_write_never_breaks_latest(tmp_path):
    """Resume a run in a fresh process and SIGKILL it at each moment of the checkpoint write that
    follows its first step (before every write, fsync, rename and deletion, and with each file torn
    in half): `latest` must name a complete checkpoint, move to the new one at a single moment, and
    the next process must clean up the leftovers and go on training."""
    config = tiny_config(**{"model.channels": [32, 64], "train.checkpoint_every": 1, "train.keep_checkpoints": 2})
    pristine = train(config.override({"train.max_steps": 2}), tmp_path / "pristine", progress=False)
    counted = _resume_and_kill(RunDir(shutil.copytree(pristine.path, tmp_path / "counted")), -1)
    assert counted.returncode == 0, counted.stderr
    moments = int(counted.stdout)
    assert moments >= 15, f"the write has only {moments} moments; is the test still wrapping its operations?"
    runs = [RunDir(shutil.copytree(pristine.path, tmp_path / f"killed-{moment}")) for moment in range(moments)]
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:  # each process on its own copy of the run
        kills = list(pool.map(_resume_and_kill, runs, range(moments)))
    moved, left_behind = [], 0
    for moment, (run, killed) in enumerate(zip(runs, kills)):
        assert killed.returncode == -signal.SIGKILL, f"moment {moment}: {killed.stderr}"
        left_behind += any(p.name.startswith(TMP_PREFIX) for p in run.checkpoints.iterdir())
        step = _assert_resumable(run)
        assert step in (2, 3), f"moment {moment}: latest names step {step}"
        moved.append(step == 3)
        train(config.override({"train.max_steps": step + 1}), run.path, resume=True, progress=False)
        assert Pipeline.from_run(run.path, device="cpu").step == step + 1
        assert not any(p.name.startswith(TMP_PREFIX) for p in run.checkpoints.iterdir())
    assert moved == sorted(moved) and not moved[0] and moved[-1], f"latest moved at more than one moment: {moved}"
    assert left_behind >= moments // 2, f"only {left_behind} of {moments} kills left a half-written checkpoint behind"


def _resume_and_kill(run: RunDir, moment: int) -> subprocess.CompletedProcess:
    """`ddpm train --resume` in a fresh process that SIGKILLs itself at `moment` of its first checkpoint write."""
    return subprocess.run([sys.executable, str(KILL_IN_CHECKPOINT), str(moment), "train", "--resume", str(run.path),
                           "--max-steps", "100000", "--no-progress"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # two at a time on two cores


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
    # refused before it is ever unpickled: its bytes are not those its checkpoint recorded ...
    assert "state.pt is damaged (its bytes changed after it was written" in capsys.readouterr().err
    # ... and one who rewrote the checksum too meets the refusal to unpickle objects
    meta = json.loads((run.latest() / "meta.json").read_text())
    meta["sha256"]["state.pt"] = file_sha256(state)
    (run.latest() / "meta.json").write_text(json.dumps(_sealed(meta)))
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

    monkeypatch.setattr("ddpm.storage.checkpoint.save_file", disk_full)
    assert main(["train", "--resume", str(run.path), "--max-steps", "4", "--no-progress"]) == 4  # errors.WriteFailed
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "No space left on device" in err and "newest intact checkpoint is" in err
    assert err.endswith("make room and run the same command again") and "step_000002" in err
    assert _files(run.checkpoints) == checkpoints
    assert _assert_resumable(run) == 2


def _nan_at_step(monkeypatch, bad_steps):
    """Make the training loss NaN at the given (1-based) steps."""
    module = importlib.import_module("ddpm.diffusion.process")  # where Diffusion.loss finds training_loss
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
