import csv
import importlib
import shutil

import pytest
import torch
from safetensors.torch import load_file

from helpers import tiny_config
from ddpm import InputError, Pipeline, train
from ddpm.data import iterate_batches


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
    model = Pipeline.from_run(run.path, device="cpu")
    assert model.step == 60 and model.config.data.image_size == 28 and model.config.data.channels == 1


def test_resume_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
    """N steps straight equal a crash after step N/2's checkpoint and a resume: every loss and every weight."""
    config = tiny_config(**{"train.max_steps": 8, "train.checkpoint_every": 4})
    straight = train(config, tmp_path / "straight", progress=False)
    crashed = train(config, tmp_path / "resumed", progress=False)
    shutil.rmtree(crashed.checkpoints / "step_000008")  # as if the process died after step 4's checkpoint
    (crashed.checkpoints / "latest").write_text("step_000004")
    starts = []  # the step the data order resumes from: 4, not a fresh start that would also match
    train_module = importlib.import_module("ddpm.training.loop")  # the training module
    monkeypatch.setattr(train_module, "iterate_batches", lambda *a: starts.append(a[3]) or iterate_batches(*a))
    resumed = train(config, crashed.path, resume=True, progress=False)
    assert starts == [4]
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


def test_cosine_learning_rate_ends_at_zero_with_the_first_budget():
    """Cosine decays with whichever budget runs out first: steps, or minutes of training."""
    from ddpm.training.optim import lr_factor

    tc = tiny_config(**{"train.lr_schedule": "cosine", "train.warmup_steps": 0, "train.max_steps": 1000}).train
    assert lr_factor(0, tc) == 1.0 and lr_factor(1000, tc) == 0.0
    assert lr_factor(500, tc) == pytest.approx(0.5) and lr_factor(100, tc, time_fraction=0.5) == pytest.approx(0.5)
    assert lr_factor(500, tc, time_fraction=0.1) == pytest.approx(0.5)  # the steps are further along
    assert lr_factor(10, tc, time_fraction=1.0) == 0.0
    constant = tiny_config(**{"train.lr_schedule": "constant", "train.warmup_steps": 0}).train
    assert lr_factor(10, constant, time_fraction=0.9) == 1.0
    rsqrt = tiny_config(**{"train.lr_schedule": "rsqrt", "train.lr_step_size": 100, "train.warmup_steps": 0}).train
    assert [lr_factor(step, rsqrt, time_fraction=0.9) for step in (0, 100, 400, 2500)] == [1.0, 1.0, 0.5, 0.2]


def test_adamw_steps_are_the_closed_form_and_fused_on_cpu():
    """AdamW (Loshchilov & Hutter 2019, Algorithm 2): theta <- theta (1 - lr wd) - lr m^ / (sqrt(v^) + eps)
    with the bias-corrected moments m^ = m / (1 - b1^k), v^ = v / (1 - b2^k). The first step is
    lr * g / (|g| + eps) whatever the betas; the second depends on them. So the config's lr, betas
    and weight decay all reach the update, and on a CPU torch's fused kernel computes it."""
    from ddpm.factory import build_optimizer

    lr, wd, (b1, b2), eps = 0.01, 0.1, (0.8, 0.95), 1e-8
    tc = tiny_config(**{"train.lr": lr, "train.weight_decay": wd, "train.betas": [b1, b2]}).train
    layer = torch.nn.Linear(4, 3)
    optimizer = build_optimizer(layer, tc)
    assert optimizer.defaults["fused"]
    theta = [p.detach().clone() for p in layer.parameters()]
    m = [torch.zeros_like(p) for p in theta]
    v = [torch.zeros_like(p) for p in theta]
    for k in (1, 2):
        grads = [torch.randn_like(p) for p in theta]
        for p, g in zip(layer.parameters(), grads):
            p.grad = g.clone()
        optimizer.step()
        for i, g in enumerate(grads):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g**2
            step = (m[i] / (1 - b1**k)) / ((v[i] / (1 - b2**k)).sqrt() + eps)
            theta[i] = theta[i] * (1 - lr * wd) - lr * step
        for p, expected in zip(layer.parameters(), theta):
            torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-6)


def _lrs(run):
    with open(run.log_path, newline="") as handle:
        return [float(row["lr"]) for row in csv.DictReader(handle)]


def test_a_time_budget_is_for_the_whole_run_and_the_learning_rate_follows_it(tmp_path):
    """--max-minutes counts training time over resumes, and cosine reaches zero when it is spent."""
    from ddpm.storage.checkpoint import load_meta

    budget = {"train.max_steps": 100_000, "train.max_minutes": 0.04, "train.warmup_steps": 0, "train.lr": 1e-3,
              "train.lr_schedule": "cosine", "train.tensorboard": False}
    run = train(tiny_config(**budget), tmp_path / "run", progress=False)
    lrs = _lrs(run)
    # Under load a step can take most of the 2.4 s; two logged steps still show the decay.
    assert len(lrs) >= 2 and all(b <= a for a, b in zip(lrs, lrs[1:])), lrs
    assert lrs[-1] < 0.05 * 1e-3 < lrs[0]
    meta = load_meta(run.latest())
    assert 0.04 * 60 <= meta["train_seconds"] < 0.04 * 60 + 2

    # Resumed with the same budget, the run has nothing left to do ...
    train(tiny_config(**budget), run.path, resume=True, progress=False)
    assert load_meta(run.latest())["step"] == meta["step"]
    # ... and with a larger one it goes on where the clock stopped, its learning rate raised again.
    more = train(tiny_config(**{**budget, "train.max_minutes": 0.08}), run.path, resume=True, progress=False)
    assert load_meta(more.latest())["step"] > meta["step"]
    assert 0.08 * 60 <= load_meta(more.latest())["train_seconds"] < 0.08 * 60 + 2
    assert _lrs(more)[len(lrs)] > lrs[-1]
