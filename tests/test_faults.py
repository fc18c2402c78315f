"""The faults a long run meets: checkpoints whose bytes changed, writes that fail half-way, preemption
and requeueing (also under torchrun), and hostile files. Each is one line and a documented exit
status, never a lost or corrupted run."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from helpers import TINY, tiny_config
from ddpm import Pipeline, train
from ddpm.storage.atomic import file_sha256
from ddpm.cli import main
from ddpm.errors import CheckpointDamaged
from ddpm.storage.checkpoint import TMP_PREFIX, RunDir, _sealed, load_meta, verify

DDPM = [sys.executable, "-m", "ddpm"]


def _files(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _flip_a_byte(path: Path, at: int = 200) -> None:
    data = bytearray(path.read_bytes())
    data[at % len(data)] ^= 0x40
    path.write_bytes(bytes(data))


def _weights(run: RunDir, key: str = "model") -> dict:
    return load_file(run.latest() / f"{key}.safetensors")


# ---- integrity ---------------------------------------------------------------------------------


@pytest.fixture
def two_checkpoints(tmp_path):
    """A run with checkpoints at steps 2 and 4 (of 4)."""
    return train(tiny_config(**{"train.max_steps": 4, "train.checkpoint_every": 2}), tmp_path / "run", progress=False)


def test_every_checkpoint_records_the_sha256_of_its_files(two_checkpoints):
    for folder in two_checkpoints.all_checkpoints():
        recorded = load_meta(folder)["sha256"]
        assert set(recorded) == {"model.safetensors", "ema.safetensors", "state.pt"}
        assert all(file_sha256(folder / name) == digest for name, digest in recorded.items())


def test_a_changed_checkpoint_is_passed_over_by_readers_and_refused_when_asked_for(two_checkpoints, tmp_path, capsys):
    run = two_checkpoints
    newest, older = run.all_checkpoints()[-1], run.all_checkpoints()[0]
    _flip_a_byte(newest / "ema.safetensors", at=10_000)
    capsys.readouterr()
    # a reader falls back to the newest intact checkpoint, and says which file was wrong
    pipe = Pipeline.from_run(run.path, device="cpu")
    assert pipe.step == 2 and "ema.safetensors is damaged" in capsys.readouterr().err
    assert torch.equal(pipe(2, progress=False), Pipeline.from_run(run.path, checkpoint=older, device="cpu")(2, progress=False))
    # asked for by name, it is refused: one line, exit 2, nothing written
    before = _files(run.path)
    assert main(["sample", "--run", str(run.path), "--checkpoint", str(newest), "--out", str(tmp_path / "s.npz"),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "step_000004: ema.safetensors is damaged" in err, err
    assert _files(run.path) == before and not (tmp_path / "s.npz").exists()


def test_resume_falls_back_to_the_newest_intact_checkpoint_and_ends_where_an_unbroken_run_does(tmp_path, capsys):
    """A flipped byte costs the steps since the intact checkpoint, never correctness."""
    config = tiny_config(**{"train.max_steps": 6, "train.checkpoint_every": 2})
    unbroken = train(config, tmp_path / "unbroken", progress=False)
    run = train(config, tmp_path / "run", progress=False)
    shutil.rmtree(run.checkpoints / "step_000006")  # as if it died at step 5, and then ...
    (run.checkpoints / "latest").write_text("step_000004")
    _flip_a_byte(run.latest() / "model.safetensors")  # ... step 4's weights changed on the disk
    capsys.readouterr()
    train(config, run.path, resume=True, progress=False)
    said = capsys.readouterr()
    assert "model.safetensors is damaged" in said.out + said.err and "resuming from step_000002" in said.out + said.err
    assert (run.checkpoints / ".damaged-step_000004").is_dir()  # kept aside, never loaded again
    for key in ("model", "ema"):
        a, b = _weights(unbroken, key), _weights(run, key)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_meta_json_whose_fields_changed_is_damaged_too(two_checkpoints, capsys):
    """Valid JSON with another EMA count would silently change the run: meta.json seals its own fields."""
    folder = two_checkpoints.latest()
    meta_file = folder / "meta.json"
    meta_file.write_text(meta_file.read_text().replace('"ema_updates": 4', '"ema_updates": 5'))
    assert Pipeline.from_run(two_checkpoints.path, device="cpu").step == 2
    assert "meta.json is damaged" in capsys.readouterr().err


def test_no_flipped_bit_in_meta_json_passes_unnoticed(two_checkpoints):
    """Each byte of meta.json with one bit flipped (the bit cycles with the byte's place): verify refuses
    it, unless the JSON means the same (1e-05 and 1E-05). A flip in the key "meta_sha256" once passed
    for a checkpoint from before checksums."""
    folder = two_checkpoints.latest()
    original = (folder / "meta.json").read_bytes()
    for at in range(len(original)):
        flipped = bytearray(original)
        flipped[at] ^= 1 << (at % 8)
        (folder / "meta.json").write_bytes(bytes(flipped))
        try:
            verify(folder)
        except CheckpointDamaged:
            continue
        assert json.loads(bytes(flipped)) == json.loads(original), f"byte {at}: {bytes(flipped)[at - 20:at + 5]}"


def test_a_checkpoint_from_before_checksums_still_loads(two_checkpoints):
    folder = two_checkpoints.latest()
    meta = load_meta(folder)
    del meta["sha256"], meta["meta_sha256"]
    (folder / "meta.json").write_text(json.dumps(meta))
    assert Pipeline.from_run(two_checkpoints.path, device="cpu").step == 4


def test_a_meta_json_that_is_not_json_is_passed_over_or_refused(two_checkpoints, capsys):
    run = two_checkpoints
    (run.latest() / "meta.json").write_text("{the step was")
    assert Pipeline.from_run(run.path, device="cpu").step == 2
    capsys.readouterr()
    assert main(["sample", "--run", str(run.path), "--checkpoint", str(run.checkpoints / "step_000004"),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "meta.json is not JSON" in err, err


def test_a_safetensors_header_that_claims_more_than_the_file_holds_is_refused(two_checkpoints, capsys):
    """Even with a checksum that matches (whoever wrote it rewrote meta.json too)."""
    folder = two_checkpoints.latest()
    header = json.dumps({"stem.weight": {"dtype": "F32", "shape": [10_000_000], "data_offsets": [0, 40_000_000]}}).encode()
    (folder / "ema.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 64)
    meta = load_meta(folder)
    meta["sha256"]["ema.safetensors"] = file_sha256(folder / "ema.safetensors")
    (folder / "meta.json").write_text(json.dumps(_sealed(meta)))
    capsys.readouterr()
    assert main(["sample", "--run", str(two_checkpoints.path), "--checkpoint", str(folder), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "ema.safetensors is damaged" in err, err


# ---- writes that fail --------------------------------------------------------------------------


def test_a_file_size_limit_during_a_checkpoint_leaves_the_last_one_and_no_temporary_file(tmp_path):
    """RLIMIT_FSIZE makes the checkpoint's weights fail half-written (EFBIG; Python ignores SIGXFSZ).
    The run says what failed and which checkpoint is intact, exits 4, and leaves nothing of the write."""
    config = tiny_config(**{"train.max_steps": 2, "model.channels": [32, 64], "train.tensorboard": False})
    run = train(config, tmp_path / "run", progress=False)
    before = _files(run.checkpoints)
    limit = (run.latest() / "model.safetensors").stat().st_size // 2  # the log and the config stay far below it

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run([*DDPM, "train", "--resume", str(run.path), "--max-steps", "3", "--no-progress"],
                          preexec_fn=limited, capture_output=True, text=True, timeout=300)
    assert done.returncode == 4, done.stderr[-2000:]
    err = done.stderr.strip().splitlines()[-1]
    assert "could not write checkpoint" in err and "File too large" in err and "step_000002" in err, err
    assert _files(run.checkpoints) == before  # latest and step 2 as they were ...
    assert not any(p.name.startswith(TMP_PREFIX) for p in run.checkpoints.rglob("*"))  # ... and nothing half-written
    assert main(["train", "--resume", str(run.path), "--max-steps", "3", "--no-progress"]) == 0  # room again: it goes on
    assert run.latest().name == "step_000003"


# ---- preemption and requeueing -----------------------------------------------------------------


def test_the_same_command_starts_a_run_or_resumes_it(tmp_path, capsys):
    out = str(tmp_path / "run")
    constant = {"train.lr_schedule": "constant", "train.warmup_steps": 0}  # the budget then changes no step's LR
    command = ["train", "--out", out, "--resume-if-exists", *TINY, "--set", "train.log_every=1", "--set",
               "train.checkpoint_every=2", *[f"--set={k}={v}" for k, v in constant.items()]]
    assert main([*command, "--max-steps", "4"]) == 0  # starts
    assert main([*command, "--max-steps", "6"]) == 0  # resumes: the budget may change
    assert [row.split(",")[0] for row in Path(out, "log.csv").read_text().splitlines()[1:]] == ["1", "2", "3", "4", "5", "6"]
    assert main(["train", "--out", str(tmp_path / "straight"), *command[4:], "--max-steps", "6"]) == 0
    straight = RunDir(tmp_path / "straight")
    a, b = _weights(straight), _weights(RunDir(Path(out)))
    assert all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()
    before = _files(Path(out))
    assert main([*command, "--max-steps", "8", "--lr", "0.01"]) == 2  # another setting: not this run
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "differs from this command's in train.lr" in err, err
    assert _files(Path(out)) == before


def _takes_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (its SigCgt mask in /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)


@pytest.mark.parametrize("delay", [0.0, 3.0])
def test_a_signal_while_the_command_starts_is_a_stop_request(delay, tmp_path):
    """A scheduler's SIGTERM can come before the loop runs (imports, the plugins, the data's loading):
    the training commands catch it from the command line's first act, stop at the first step with a
    checkpoint, exit 0. A plugin that takes 2 s to import holds the start open, so the signal sent
    as soon as the handler is in lands before the parser exists, whatever the machine's load."""
    (tmp_path / "slow_plugin.py").write_text("import time\nfrom pathlib import Path\ntime.sleep(2)\n"
                                             f"Path({str(tmp_path / 'imported')!r}).touch()\n")
    env = {**os.environ, "DDPM_PLUGINS": "slow_plugin",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "run"
    child = subprocess.Popen([*DDPM, "train", "--out", str(out), "--max-steps", "1000", *TINY], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while not _takes_sigterm(child.pid) and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(delay)
    if delay == 0:
        assert not (tmp_path / "imported").exists(), "the signal must land while the command starts"
    child.send_signal(signal.SIGTERM)
    stdout, stderr = child.communicate(timeout=120)
    assert child.returncode == 0, (child.returncode, stderr[-2000:])
    assert "stopped by SIGTERM" in stdout + stderr and RunDir(out).latest() is not None
    assert main(["train", "--resume", str(out), "--max-steps", "2", "--no-progress"]) == 0


def test_a_requeued_run_without_a_checkpoint_starts_again(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--max-steps", "2", *TINY]) == 0
    shutil.rmtree(out / "checkpoints")  # as if killed before its first checkpoint
    assert main(["train", "--out", str(out), "--resume-if-exists", "--max-steps", "2", *TINY]) == 0
    assert RunDir(out).latest().name == "step_000002"


def test_a_requeued_job_with_a_longer_budget_keeps_the_network_its_budget_chose(tmp_path, capsys):
    from PIL import Image

    for i in range(8):
        Image.new("RGB", (16, 16), (30 * i, 200 - 20 * i, 90)).save(tmp_path / f"{i}.png")
    out = tmp_path / "run"
    command = ["train", "--out", str(out), "--resume-if-exists", "--data", f"folder:{tmp_path}", "--batch-size", "8",
               "--timesteps", "100", "--set", "sample.steps=5", "--set", "train.grid_size=4", "--device", "cpu",
               "--no-progress"]
    assert main([*command, "--max-minutes", "5", "--max-steps", "1"]) == 0
    assert "ddpm: model.channels [16, 32, 64], chosen by the time budget: --max-minutes 5" in capsys.readouterr().out
    assert (out / "config.yaml").read_text().startswith("# model.channels: [16, 32, 64], chosen by the time budget")
    assert main([*command, "--max-minutes", "30", "--max-steps", "2"]) == 0  # 30 minutes would choose 32/64/128
    assert RunDir(out).latest().name == "step_000002" and RunDir(out).load_config().model.channels == [16, 32, 64]


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _rank_pids(agent: int) -> dict[int, int]:
    """{rank: pid} of the workers torchrun started (its children whose environment says RANK)."""
    ranks = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            parent = int(next(line for line in (proc / "status").read_text().splitlines()
                              if line.startswith("PPid:")).split()[1])
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, StopIteration, ValueError):
            continue
        rank = [e for e in environ if e.startswith(b"RANK=")]
        if parent == agent and rank:
            ranks[int(rank[0][5:])] = int(proc.name)
    return ranks


def _wait_for_steps(log: Path, steps: int, process, deadline: float = 240) -> None:
    start = time.monotonic()
    while not log.is_file() or len(log.read_text().splitlines()) <= steps:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() - start < deadline, "training did not start"
        time.sleep(0.1)


def test_under_torchrun_a_sigterm_to_one_rank_stops_every_rank_at_one_step(tmp_path):
    """A scheduler's SIGTERM reaches the ranks at different moments, or only one of them: every rank
    reads the stop at the same step (Clock.tick takes the max over ranks), and rank 0 checkpoints it."""
    out = tmp_path / "run"
    child = subprocess.Popen([*TORCHRUN, "-m", "ddpm", "--", "train", "--out", str(out), "--max-steps", "100000",
                              *TINY, "--set", "train.log_every=1", "--set", "train.checkpoint_every=100000"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_steps(out / "log.csv", 3, child)
        os.kill(_rank_pids(child.pid)[1], signal.SIGTERM)
        stdout, stderr = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 0, stderr[-3000:]
    assert stdout.count("stopped by a signal to another rank") == 1 and "ddpm train --resume" in stdout
    last = int((out / "log.csv").read_text().splitlines()[-1].split(",")[0])
    assert RunDir(out).latest().name == f"step_{last:06d}" and len(RunDir(out).all_checkpoints()) == 1


def test_torchrun_max_restarts_with_resume_if_exists_finishes_a_run_whose_worker_died(tmp_path):
    out = tmp_path / "run"
    command = [*TORCHRUN, "--max-restarts", "1", "-m", "ddpm", "--", "train", "--out", str(out), "--resume-if-exists",
               "--max-steps", "40", *TINY, "--set", "train.log_every=1", "--set", "train.checkpoint_every=5"]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_steps(out / "log.csv", 12, child)
        os.kill(_rank_pids(child.pid)[1], signal.SIGKILL)  # a worker dies; torchrun restarts them all
        stdout, stderr = child.communicate(timeout=300)
    finally:
        child.kill()
    assert child.returncode == 0, stderr[-3000:]
    steps = [int(row.split(",")[0]) for row in (out / "log.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 41)) and RunDir(out).latest().name == "step_000040"


# ---- hostile files -----------------------------------------------------------------------------


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile") / "run"
    assert main(["train", "--out", str(out), "--max-steps", "2", *TINY]) == 0
    return out


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels in a few bytes: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("case", ["npz-objects", "bomb", "bomb-warning", "folder-bomb", "yaml-tags", "run-yaml-tags"])
def test_hostile_files_are_one_line_exit_2_and_write_nothing(case, run_dir, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    out = tmp_path / "out"
    run = ["--run", str(run_dir), "--device", "cpu", "--steps", "3"]
    if case == "npz-objects":
        evil = tmp_path / "evil.npz"
        with open(evil, "wb") as handle:
            np.savez(handle, arr_0=np.array([_RunsCode(marker)], dtype=object))
        argvs, message = [["eval", "--samples", str(evil)], ["edit", "img2img", *run, "--image", str(evil), "--strength",
                                                               "0.5", "--out", str(out / "x.npz")]], "arr_0"
    elif case in ("bomb", "bomb-warning"):
        side = 30_000 if case == "bomb" else 10_000  # 900 M pixels: Pillow refuses; 100 M: Pillow only warns
        (tmp_path / "bomb.png").write_bytes(_png_header(side, side))
        argvs, message = [["edit", "img2img", *run, "--image", str(tmp_path / "bomb.png"), "--strength", "0.5",
                           "--out", str(out / "x.npz")]], "decompression bomb"
    elif case == "folder-bomb":
        (tmp_path / "pictures").mkdir()
        (tmp_path / "pictures" / "bomb.png").write_bytes(_png_header(10_000, 10_000))
        argvs, message = [["train", "--data", f"folder:{tmp_path / 'pictures'}", "--out", str(out), *TINY]], "bomb.png"
    elif case == "yaml-tags":
        (tmp_path / "evil.yaml").write_text(f"train: !!python/object/apply:builtins.open ['{marker}', 'w']\n")
        argvs, message = [["train", "--config", str(tmp_path / "evil.yaml"), "--out", str(out)]], "not valid YAML"
    else:
        copy = tmp_path / "copy"
        shutil.copytree(run_dir, copy)
        (copy / "config.yaml").write_text(f"sample: !!python/object/apply:builtins.open ['{marker}', 'w']\n")
        argvs, message = [["sample", "--run", str(copy), "--device", "cpu"]], "not valid YAML"
    before = _files(run_dir)
    for argv in argvs:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err
    assert not marker.exists() and not out.exists() and _files(run_dir) == before
    if case == "npz-objects":  # the archive really is hostile: a loader that allows pickles runs its code
        np.load(tmp_path / "evil.npz", allow_pickle=True)["arr_0"]
        assert marker.exists()
