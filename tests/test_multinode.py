"""Several nodes under torchrun's own rendezvous, on loopback: two agents on this machine are two
"nodes" (c10d rendezvous on 127.0.0.1, each with its own HOME and TMPDIR), one of them lost mid-run.

The run is the global batch's: its data order, draws and learning-rate schedule follow (seed, step),
so the same run on 2 nodes x 1 process equals, bit for bit, the run on 1 node x 2 processes, and a
run that loses a node goes on with the same global batch through gradient accumulation.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import TINY, TORCHRUN
from ddpm.cli import main
from ddpm.storage.checkpoint import RunDir, load_state
from ddpm.training.loop import _keep_global_batch
from ddpm.runtime.distributed import Distributed
from ddpm.errors import InputError

TRAIN = ["train", *TINY, "--set", "train.log_every=1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _agent(tmp_path: Path, name: str, port: int, nnodes: str, argv: list, **extra) -> subprocess.Popen:
    """One torchrun agent, a "node": one worker, its own HOME and TMPDIR, its own session (so that the
    whole node can be killed at once)."""
    home = tmp_path / name
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    # One thread per process, as torchrun gives each of several processes on one node: the same kernels.
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(home / "tmp"), "DDPM_CACHE": str(home / "cache"),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", nnodes, "--nproc_per_node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "ddpm-test",
               "--rdzv-conf", "last_call_timeout=2,join_timeout=60", *extra.pop("torchrun", []), "-m", "ddpm", "--",
               *argv]
    return subprocess.Popen(command, env=env, cwd=home, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _children(parent: int) -> list[int]:
    """The processes whose parent is `parent` (an agent's workers)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and any(line.split()[1] == str(parent) for line in
                                           (proc / "status").read_text().splitlines() if line.startswith("PPid:")):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _tensors(run: RunDir) -> dict:
    """Every tensor a checkpoint holds but its timings: the weights, the EMA and the optimiser's moments."""
    folder = run.latest()
    found = {f"{name}.{key}": value for name in ("model", "ema")
             for key, value in load_file(folder / f"{name}.safetensors").items()}
    for index, moments in load_state(folder)["optimizer"]["state"].items():
        found.update({f"adam.{index}.{key}": value for key, value in moments.items() if torch.is_tensor(value)})
    return found


def test_two_nodes_equal_one_node_with_two_processes_bit_for_bit(tmp_path):
    steps = ["--max-steps", "3", "--set", "train.checkpoint_every=3"]
    single = tmp_path / "one-node"
    result = subprocess.run([*TORCHRUN, *TRAIN, *steps, "--out", str(single)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    shared = tmp_path / "shared" / "run"  # the file system both nodes see
    port = _free_port()
    nodes = [_agent(tmp_path, name, port, "2", [*TRAIN, *steps, "--out", str(shared)]) for name in ("a", "b")]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-3000:] for _, err in outputs]
    assert sum(out.count("run written to") for out, _ in outputs) == 1  # global rank 0 alone writes and reports
    a, b = _tensors(RunDir(single)), _tensors(RunDir(shared))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("a", "b"):  # ddpm wrote nothing into a node's own temporary folder (torchrun keeps its logs there)
        assert not [p for p in (tmp_path / name / "tmp").rglob("*") if p.is_file() and "torchelastic" not in str(p)]


def test_a_lost_node_the_other_goes_on_with_the_global_batch_and_a_second_job_is_refused(tmp_path, capsys,
                                                                                        monkeypatch):
    shared = tmp_path / "shared" / "run"
    argv = [*TRAIN, "--max-steps", "300", "--set", "train.checkpoint_every=5", "--out", str(shared), "--resume-if-exists"]
    port = _free_port()
    elastic = {"torchrun": ["--max-restarts", "1"]}
    a = _agent(tmp_path, "a", port, "1:2", argv, **dict(elastic))
    time.sleep(1)  # a hosts the rendezvous store; b joins it
    b = _agent(tmp_path, "b", port, "1:2", argv, **dict(elastic))
    log = shared / "log.csv"
    try:
        start = time.monotonic()
        latest = shared / "checkpoints" / "latest"  # the node is lost after a checkpoint, so there is one to resume
        while not log.is_file() or len(log.read_text().splitlines()) <= 8 or not latest.exists():
            assert a.poll() is None and b.poll() is None, (a.communicate(), b.communicate())
            assert time.monotonic() - start < 240, "training did not start"
            time.sleep(0.1)
        # From the other node, a second job on the same run: refused by the lock, naming the holder's host. It
        # runs in this process, whose torch is loaded: a new interpreter's start took long enough under load
        # for the 300 steps to end before node b was lost.
        home = tmp_path / "c"
        home.mkdir()
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.setenv("TMPDIR", str(home))
        capsys.readouterr()
        assert main(argv) == 2
        refused = capsys.readouterr().err
        assert f"on {socket.gethostname()}" in refused and refused.strip().count("\n") == 0, refused
        assert a.poll() is None, "the run ended before its node was lost"
        for pid in [b.pid, *_children(b.pid)]:  # node b is lost: its agent and its worker (in a session of its own)
            os.kill(pid, signal.SIGKILL)
        out, err = a.communicate(timeout=300)
    finally:
        for node in (a, b):
            if node.poll() is None:
                for pid in [node.pid, *_children(node.pid)]:
                    os.kill(pid, signal.SIGKILL)
    assert a.returncode == 0, err[-3000:]
    assert "trained on 2 processes x 1 micro-batches of 4 images; it goes on with 1 x 2 of 4" in out + err
    rows = [int(row.split(",")[0]) for row in log.read_text().splitlines()[1:]]
    assert rows == list(range(1, 301)) and RunDir(shared).latest().name == "step_000300"


def test_a_changed_world_keeps_the_global_batch_within_each_processs_micro_batch(capsys):
    def keep(batch, world, before, accum_before, configured=1):
        return _keep_global_batch(batch, Distributed(0, world), {"world_size": before, "grad_accum": accum_before},
                                  configured)

    assert _keep_global_batch(64, Distributed(0, 4), None, 2) == 2  # a new run: train.grad_accum
    assert keep(64, 2, 2, 1) == 1  # the same world: as it was
    assert keep(64, 1, 2, 1) == 2  # a node lost: 2 micro-batches of 32, as each process had
    assert keep(64, 4, 2, 2) == 1  # nodes gained: 16 per process, under the 16 it had
    assert keep(64, 8, 1, 1) == 1
    assert keep(48, 3, 2, 2) == 2  # micro-batches of 12, within 12; not 16
    assert "it goes on with 3 x 2 of 8" in capsys.readouterr().out
    with pytest.raises(InputError, match=r"train.batch_size \(64\) cannot be kept on 3 processes"):
        keep(64, 3, 2, 1)
