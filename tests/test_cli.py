"""The command line, end to end: the files it writes and the errors it gives."""

import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import trained
from ddpm.cli import main



@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return trained(tmp_path_factory, "cli", "--max-steps", "4")


def test_sample_writes_a_valid_npz_and_grid(run_dir, tmp_path):
    npz, grid = tmp_path / "s.npz", tmp_path / "g.png"
    assert main(["sample", "--run", str(run_dir), "--n", "10", "--steps", "5", "--sampler", "ddpm",
                 "--out", str(npz), "--grid", str(grid), "--device", "cpu"]) == 0
    with np.load(npz) as archive:
        images = archive["arr_0"]
    assert images.shape == (10, 28, 28, 1) and images.dtype == np.uint8
    # 10 images in a 4-wide grid: 4 x 3 tiles of 28 pixels with 2 pixels of padding around each.
    assert Image.open(grid).size == (4 * 30 + 2, 3 * 30 + 2)


def test_the_large_ddpm_variance_draws_other_images_from_the_same_seed(run_dir, tmp_path):
    """--variance large (sigma_t^2 = beta_t) changes only the noise's scale, so the same seed gives
    different images; the run's own variance (small) is the default."""
    images = {}
    for name, flags in (("default", []), ("small", ["--variance", "small"]), ("large", ["--variance", "large"])):
        main(["sample", "--run", str(run_dir), "--n", "3", "--steps", "4", "--sampler", "ddpm", *flags,
              "--out", str(tmp_path / f"{name}.npz"), "--grid", str(tmp_path / f"{name}.png"), "--device", "cpu"])
        images[name] = np.load(tmp_path / f"{name}.npz")["arr_0"]
    assert np.array_equal(images["default"], images["small"])
    assert not np.array_equal(images["small"], images["large"])


def test_sampling_is_reproducible_from_the_seed(run_dir, tmp_path):
    for name in ("a", "b"):
        main(["sample", "--run", str(run_dir), "--n", "3", "--steps", "4", "--seed", "7",
              "--out", str(tmp_path / f"{name}.npz"), "--grid", str(tmp_path / f"{name}.png"), "--device", "cpu"])
    assert np.array_equal(np.load(tmp_path / "a.npz")["arr_0"], np.load(tmp_path / "b.npz")["arr_0"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sample", "--run", "/nonexistent/run"], "does not exist"),
        (["sample", "--run", "{run}", "--sampler", "euler"], "unknown sampler 'euler'"),
        (["sample", "--run", "{run}", "--steps", "0"], "--steps must be between 1"),
        (["train", "--image-size", "30", "--out", "{tmp}/x"], "image size 30 is not divisible by 4"),
        (["train", "--lr", "-1", "--out", "{tmp}/x"], "train.lr must be > 0"),
        (["train", "--data", "imagenet", "--out", "{tmp}/x", "--device", "cpu"], "unknown data set 'imagenet'"),
        (["train", "--preset", "nope"], "unknown preset 'nope'"),
        (["train", "--resume", "{run}", "--lr", "0.1"], "cannot change train.lr"),
        (["train", "--config", "{tmp}/missing.yaml"], "does not exist"),
        (["train", "--set", "train.lr"], "must look like section.key=value"),
        (["train", "--batch-size", "0", "--out", "{tmp}/x"], "train.batch_size must be >= 1 (got 0)"),
        (["train", "--timesteps", "0", "--out", "{tmp}/x"], "diffusion.timesteps must be >= 1 (got 0)"),
        (["train", "--set", "diffusion.beta_end=1.5", "--out", "{tmp}/x"], "diffusion.beta_end must be in (0, 1) (got 1.5)"),
        (["train", "--set", "model.attention=[true]", "--out", "{tmp}/x"], "model.attention has 1 entries but model.channels has 3"),
        (["train", "--schedule", "quadratic", "--out", "{tmp}/x"], "invalid choice: 'quadratic'"),
        (["train", "--set", "diffusion.schedule=quadratic", "--out", "{tmp}/x"], "unknown diffusion.schedule 'quadratic'"),
        (["train", "--resume", "/nonexistent/run"], "run directory /nonexistent/run does not exist"),
        (["eval", "--run", "{run}", "--sampler", "euler"], "unknown sampler 'euler'"),
        (["sample", "--run", "{run}", "--sampler", "ddim", "--variance", "large"], "the variance applies to the ddpm sampler only"),
        (["sample", "--run", "{run}", "--variance", "medium"], "invalid choice: 'medium'"),
        (["sweep", "--run", "{run}", "--steps", "5,ten"], "--steps must be comma-separated integers"),
        (["train", "--set", "diffusion.timestep_sampling=beta", "--out", "{tmp}/x"], "unknown diffusion.timestep_sampling 'beta'"),
        (["train", "--set", "diffusion.min_snr_gamma=0", "--out", "{tmp}/x"], "diffusion.min_snr_gamma must be > 0"),
        (["report", "--run", "{run}", "--out", "{tmp}"], "is a folder"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(argv, message, run_dir, tmp_path, capsys):
    argv = [a.format(run=run_dir, tmp=tmp_path) for a in argv]
    before = sorted((p, p.stat().st_mtime_ns) for p in run_dir.rglob("*"))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err
    assert sorted((p, p.stat().st_mtime_ns) for p in run_dir.rglob("*")) == before
    assert not (tmp_path / "x").exists()  # no half-made run directory


def test_a_checkpoint_that_does_not_match_its_config_is_refused(run_dir, tmp_path, capsys):
    edited = tmp_path / "edited"
    shutil.copytree(run_dir, edited)
    config = edited / "config.yaml"
    config.write_text(config.read_text().replace("- 16\n", "- 24\n", 1))
    before = {p: p.read_bytes() for p in edited.rglob("*") if p.is_file()}
    for argv in (["sample", "--run", str(edited), "--n", "2", "--device", "cpu"],
                 ["train", "--resume", str(edited), "--max-steps", "8", "--no-progress"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "does not match the model in" in err and "reshaped" in err, err
    assert {p: p.read_bytes() for p in edited.rglob("*") if p.is_file()} == before


def test_python_dash_m_and_presets():
    result = subprocess.run([sys.executable, "-m", "ddpm", "presets"], capture_output=True, text=True, check=True)
    assert "mnist5k" in result.stdout
