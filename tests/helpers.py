"""What the tests share: tiny configs and runs that train in seconds, the closed-form denoiser of
Gaussian data (ddpm.diffusion.gaussian), the check of a clean refusal, writers of small data files
in their real formats, and the serve tests' requests. Test modules import from here and take conftest.py's fixtures; none
imports another test module."""

from __future__ import annotations

import contextlib
import http.client
import json
import pickle
import shutil
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm import Config
from ddpm.config import AutoencoderRun
from ddpm.data.emoji import EMOJI_TEST, FONT
from ddpm.diffusion.gaussian import GaussianDenoiser  # noqa: F401  (the tests' closed-form denoiser)

RNG = np.random.default_rng(0)


def tiny_config(**overrides) -> Config:
    """A config whose model trains a step in milliseconds on MNIST-5k (28x28)."""
    config = Config()
    config.model.channels = [8, 16]
    config.model.attention = [False, True]
    config.model.time_emb_dim = 16
    config.train.batch_size = 8
    config.train.max_steps = 6
    config.train.warmup_steps = 2
    config.train.log_every = 1
    config.train.sample_every = 1000
    config.train.checkpoint_every = 1000
    config.train.grid_size = 4
    config.train.device = "cpu"
    config.sample.steps = 4
    config.diffusion.timesteps = 100
    return config.override(overrides)


def trained(tmp_path_factory, name: str, *flags: str) -> Path:
    """A tiny run for a module's tests, trained by the command line with TINY and `flags`
    (its budget, data, objective...)."""
    from ddpm.cli import main

    out = tmp_path_factory.mktemp(name) / "run"
    assert main(["train", "--out", str(out), *flags, *TINY]) == 0
    return out


def refused_cleanly(argv: list, message: str, capsys, kept: Path, absent: Path) -> None:
    """`ddpm argv` is bad input: exit status 2, one line on stderr holding `message`, no file under `kept`
    touched and nothing at `absent` written."""
    from ddpm.cli import main

    before = {p: p.stat().st_mtime_ns for p in kept.rglob("*")}
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err
    assert not absent.exists() and {p: p.stat().st_mtime_ns for p in kept.rglob("*")} == before


def distill_refused(method: list, argv: list, message: str, capsys, teacher: Path, tmp_path: Path, **names) -> None:
    """`ddpm distill` of `teacher` into tmp_path/student with `method`'s flags and `argv` ({ae}, {teacher}
    and the other `names` filled in; its own --run or --out take their places) is refused cleanly."""
    argv = [a.format(teacher=teacher, **names) for a in argv]
    places = {"--run": str(teacher), "--out": str(tmp_path / "student")}
    for flag in places:
        if flag in argv:
            i = argv.index(flag)
            places[flag], argv = argv[i + 1], argv[:i] + argv[i + 2:]
    command = ["distill", "--run", places["--run"], "--out", places["--out"], *method, "--device", "cpu",
               "--no-progress", *argv]
    refused_cleanly(command, message, capsys, teacher, tmp_path / "student")


# Debian's chromium, as the browser tests drive it (Playwright with executable_path), and its flags
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--no-first-run", "--disable-sync", "--disable-quic"]


TINY = ["--set", "model.channels=[8,16]", "--set", "model.attention=[false,true]", "--set", "model.time_emb_dim=16",
        "--batch-size", "8", "--timesteps", "100", "--set", "sample.steps=5", "--set", "train.grid_size=4",
        "--device", "cpu", "--no-progress"]


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ddpm", "--"]  # "--": torchrun would take --run for its --run-path


needs_font = pytest.mark.skipif(not (FONT.is_file() and EMOJI_TEST.is_file()),
                                reason="needs Debian's fonts-noto-color-emoji and unicode-data (make test installs them as root)")


def tiny_autoencoder(**overrides) -> AutoencoderRun:
    """An f = 2 autoencoder of digits at 16 px that trains a step in milliseconds."""
    config = AutoencoderRun()
    config.autoencoder.channels = [8, 16]
    config.autoencoder.z_channels = 2
    config.data.name, config.data.image_size, config.data.flip = "digits", 16, True
    t = config.train
    t.batch_size, t.max_steps, t.log_every, t.sample_every, t.checkpoint_every, t.device = 8, 6, 1, 1000, 1000, "cpu"
    t.grid_size = 4
    return config.override(overrides)


def own_config(**overrides):
    """A tiny run of digits at 16 px that trains its own f = 2 autoencoder for 4 steps first, then
    its UNet for 4 on the latents, each with a checkpoint at step 2."""
    return tiny_config(**{"data.name": "digits", "data.image_size": 16, "latent.autoencoder": "own",
                          "latent.own_widths": "[8,16]", "latent.own_steps": 4, "train.max_steps": 4,
                          "train.checkpoint_every": 2, **overrides})


def write_idx(folder, prefix, count):
    """MNIST's idx format: big-endian magic, sizes, then raw uint8 pixels / labels."""
    images = RNG.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    labels = RNG.integers(0, 10, count, dtype=np.uint8)
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, count, 28, 28) + images.tobytes())
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, count) + labels.tobytes())
    return images, labels


def write_cifar(root, per_batch=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rows = []
    for i in range(1, 6):
        data = RNG.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        rows.append(data)
        with open(folder / f"data_batch_{i}", "wb") as handle:
            pickle.dump({"data": data, "labels": [i] * per_batch, "batch_label": f"batch {i}"}, handle)
    return np.concatenate(rows).reshape(-1, 3, 32, 32)


def request(server, method: str, path: str, body=None, headers=None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    return response.status, response.read()


def events(data: bytes) -> list[tuple[str, dict]]:
    found = []
    for block in data.decode().split("\n\n"):
        if block.strip():
            name, value = block.split("\n", 1)
            found.append((name[len("event: "):], json.loads(value[len("data: "):])))
    return found


class Slow(torch.nn.Module):
    """The run's network, `seconds` slower per call: long enough draws to stop and to queue behind."""

    def __init__(self, network, seconds: float):
        super().__init__()
        self.network, self.seconds = network, seconds

    def forward(self, *args, **kwargs):
        time.sleep(self.seconds)
        return self.network(*args, **kwargs)


@contextlib.contextmanager
def slowed(server, seconds: float):
    """The served run's network `seconds` slower per call, for the block."""
    pipe = server.models[0].pipe
    pipe.network, inner = Slow(pipe.network, seconds), pipe.network
    try:
        yield pipe
    finally:
        pipe.network = inner
