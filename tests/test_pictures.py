"""Pictures of every stage (`ddpm show`) and TensorBoard logging, from a tiny run."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import tiny_config
from ddpm import Pipeline, load_data, make_schedule, train
from ddpm.cli import main
from ddpm.data import to_model_range, to_uint8
from ddpm.pictures.stages import CELL, PADDING, noised

CELL_PX = (CELL // 28) * 28 + PADDING  # a 28 px image enlarged, plus the gap after it


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """Three checkpoints (steps 4, 8, 12), a sample grid at each, and TensorBoard logs."""
    config = tiny_config(**{"train.max_steps": 12, "train.checkpoint_every": 4, "train.sample_every": 4,
                            "train.log_every": 2, "train.keep_checkpoints": 5})
    return train(config, tmp_path_factory.mktemp("pictures") / "run", progress=False).path


def test_noised_rows_follow_the_forward_process():
    """At t = 0 the row is the image itself; at t = T - 1 the cosine schedule leaves no trace of it; in
    between the pixels are sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps with the same eps in every cell."""
    x0 = to_model_range(load_data("mnist5k").subset(torch.tensor([0])).images)
    schedule = make_schedule("cosine", 1000)
    rows = noised(x0, schedule, [0, 500, 999], seed=3)
    assert (to_uint8(rows[0]).int() - to_uint8(x0[0]).int()).abs().max() <= 3
    correlation = torch.corrcoef(torch.stack([rows[2].flatten(), x0.flatten()]))[0, 1]
    assert abs(correlation) < 0.15
    a, s = schedule.sqrt_alpha_bar[500], schedule.sqrt_one_minus_alpha_bar[500]
    eps = (rows[1] - a * x0[0]) / s
    assert torch.allclose((rows[2] - schedule.sqrt_alpha_bar[999] * x0[0]) / schedule.sqrt_one_minus_alpha_bar[999], eps,
                          atol=1e-4)
    assert eps.std().item() == pytest.approx(1.0, abs=0.1)


def test_show_forward_writes_strips_above_the_schedule_plot(tmp_path):
    sizes = {}
    for t in ("0,500,999", "0,250,500,750,999"):
        out = tmp_path / f"forward-{t.count(',')}.png"
        assert main(["show", "forward", "--t", t, "--out", str(out)]) == 0
        with Image.open(out) as image:
            image.verify()
        sizes[t.count(",") + 1] = Image.open(out).size
    # three schedule rows (under a line of "t=..." labels) above the 800 x 300 px plot, which is
    # wider than five columns of 28 px digits
    assert sizes[3] == sizes[5]
    width, height = sizes[3]
    assert width == 800 and 3 * CELL_PX + PADDING + 300 < height < 3 * CELL_PX + PADDING + 300 + 30


def test_show_trajectory_grid_and_gif_have_the_asked_sizes(run_dir, tmp_path):
    sizes = {}
    for n, frames in ((1, 3), (2, 3), (2, 5)):
        out = tmp_path / f"trajectory-{n}-{frames}.png"
        assert main(["show", "trajectory", "--run", str(run_dir), "--n", str(n), "--frames", str(frames), "--steps", "10",
                     "--out", str(out), "--device", "cpu"]) == 0
        sizes[n, frames] = Image.open(out).size
        with Image.open(out.with_suffix(".gif")) as gif:
            assert gif.n_frames == frames
    # one more sample adds two rows (x_t and x0); two more frames add two columns
    assert sizes[2, 3][1] - sizes[1, 3][1] == 2 * CELL_PX
    assert sizes[2, 5][0] - sizes[2, 3][0] == 2 * CELL_PX
    # the default output lands in the run, where `ddpm report` finds it
    assert main(["show", "trajectory", "--run", str(run_dir), "--frames", "4", "--device", "cpu"]) == 0
    assert (run_dir / "trajectory.png").is_file() and Image.open(run_dir / "trajectory.gif").n_frames == 4


def test_show_trajectory_ends_at_the_sample(run_dir):
    """The last column's x0 is the prediction at t = 0, which for DDIM is the sample itself: what
    the pipeline returns from the same noise."""
    from ddpm.pictures.stages import trajectory

    pipe = Pipeline.from_run(run_dir, device="cpu")
    picture, _ = trajectory(pipe, 2, 3, seed=4, sampler="ddim", steps=5)
    reference = pipe(2, "ddim", 5, seed=4, progress=False)  # the same noise
    pixels = torch.from_numpy(np.array(picture.convert("L")))
    scale, (height, width) = CELL // 28, pixels.shape
    left = width - CELL_PX  # the last column
    for k in range(2):
        top = height - (4 - (2 * k + 1)) * CELL_PX  # rows x_t #1, x0 #1, x_t #2, x0 #2
        cell = pixels[top : top + 28 * scale : scale, left : left + 28 * scale : scale]
        assert torch.equal(cell, reference[k, 0])


def test_show_progression_has_one_row_per_checkpoint(run_dir, tmp_path):
    out = tmp_path / "progression.png"
    assert main(["show", "progression", "--run", str(run_dir), "--n", "3", "--out", str(out), "--device", "cpu"]) == 0
    width, height = Image.open(out).size
    assert height == 3 * CELL_PX + PADDING  # steps 4, 8 and 12
    assert 3 * CELL_PX + PADDING < width < 3 * CELL_PX + 100  # three samples after the "step N" labels


@pytest.mark.parametrize("arguments, message", [
    (["show", "forward", "--t", "0,1000"], "--t must be timesteps in 0..999"),
    (["show", "forward", "--t", "zero"], "--t must be comma-separated integers"),
    (["show", "forward", "--index", "5000"], "--index must be in 0..4999"),
    (["show", "forward", "--out", "x.jpg"], "--out must name a .png file"),
    (["show", "trajectory"], "needs --run RUN"),
    (["show", "trajectory", "--run", "RUN", "--frames", "1"], "--frames must be between 2 and the number of steps"),
    (["show", "progression", "--run", "RUN", "--n", "0"], "--n must be >= 1"),
    (["show", "trajectory", "--run", "RUN", "--steps", "0"], "--steps must be between 1 and the model's T"),
    (["show", "progression", "--run", "RUN", "--sampler", "euler"], "unknown sampler 'euler'"),
])
def test_show_refuses_bad_input(run_dir, arguments, message, capsys):
    arguments = [str(run_dir) if a == "RUN" else a for a in arguments]
    assert main(arguments) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_tensorboard_holds_the_logged_scalars_and_the_grids(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/lr", "train/grad_norm", "train/images_per_s"} <= set(tags["scalars"])
    with open(run_dir / "log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    logged = {e.step: e.value for e in events.Scalars("train/loss")}
    assert sorted(logged) == [int(r["step"]) for r in rows] == [2, 4, 6, 8, 10, 12]
    for row in rows:  # the same numbers as the CSV (TensorBoard stores float32)
        assert logged[int(row["step"])] == pytest.approx(float(row["loss"]), rel=1e-6)
    assert [e.step for e in events.Images("samples")] == [4, 8, 12]
