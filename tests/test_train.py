import csv

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_config
from ddpm import InputError, load_run, train


def _losses(run):
    with open(run.log_path, newline="") as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


def test_short_training_on_mnist5k_lowers_the_loss(tmp_path):
    config = tiny_config(**{"train.max_steps": 60, "train.batch_size": 32, "train.lr": 3e-3, "train.warmup_steps": 5})
    run = train(config, tmp_path / "run", progress=False)
    losses = _losses(run)
    assert len(losses) == 60
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.6 * first, (first, last)
    # The run directory holds everything: config, checkpoint, grid, loss curve.
    assert (run.path / "config.yaml").is_file() and run.loss_plot_path.is_file()
    assert run.sample_grid_path(60).is_file()
    assert run.latest().name == "step_000060"
    model = load_run(run.path, device="cpu")
    assert model.step == 60 and model.config.data.image_size == 28 and model.config.data.channels == 1


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    """N steps straight equal N/2 steps, a stop, and N/2 more: every loss and every weight."""
    straight = train(tiny_config(**{"train.max_steps": 8}), tmp_path / "straight", progress=False)
    half = train(tiny_config(**{"train.max_steps": 4}), tmp_path / "resumed", progress=False)
    resumed = train(tiny_config(**{"train.max_steps": 8}), half.path, resume=True, progress=False)
    assert _losses(straight) == _losses(resumed)
    for key in ("model", "ema"):
        a = load_file(straight.latest() / f"{key}.safetensors")
        b = load_file(resumed.latest() / f"{key}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_new_run_never_overwrites_an_existing_one(tmp_path):
    run = train(tiny_config(), tmp_path / "run", progress=False)
    before = {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()}
    with pytest.raises(InputError, match="already holds a run"):
        train(tiny_config(), run.path, progress=False)
    after = {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()}
    assert before == after


def test_the_last_checkpoints_are_kept(tmp_path):
    config = tiny_config(**{"train.max_steps": 10, "train.checkpoint_every": 2, "train.keep_checkpoints": 2})
    run = train(config, tmp_path / "run", progress=False)
    assert [p.name for p in run.all_checkpoints()] == ["step_000008", "step_000010"]


@pytest.mark.parametrize("objective", ["x0", "v"])
def test_every_objective_trains(tmp_path, objective):
    config = tiny_config(**{"diffusion.objective": objective, "diffusion.loss": "l1", "train.max_steps": 3})
    run = train(config, tmp_path / objective, progress=False)
    assert all(loss == loss for loss in _losses(run))  # finite, not NaN
