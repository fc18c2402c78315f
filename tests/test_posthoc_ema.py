"""Post-hoc EMA (Karras et al. 2024): power EMAs, their snapshots, and the EMA of any length rebuilt.

Closed forms: the power EMA's update weighs the history as EDM2 eq. 3 says; the rebuilt EMA of a
tracked length at the final snapshot is that snapshot; weights that stood still rebuild to themselves.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from helpers import TINY, refused_cleanly
from ddpm import Pipeline
from ddpm.cli import main
from ddpm.storage.checkpoint import RunDir, save_snapshot
from ddpm.training.ema import (PowerEMA, gamma_to_sigma_rel, posthoc_coefficients, reconstruct, sigma_rel_to_gamma,
                               sweep)


def test_the_lengths_are_edm2s():
    """EDM2 §3.1: sigma_rel 0.05 and 0.10 are gamma 16.97 and 6.94."""
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.005)
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.005)
    for sigma_rel in (0.01, 0.03, 0.2, 0.28):
        assert gamma_to_sigma_rel(sigma_rel_to_gamma(sigma_rel)) == pytest.approx(sigma_rel, rel=1e-9)


class Vector(nn.Module):
    def __init__(self, size: int = 5):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(size, dtype=torch.float64))


def _history(steps: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(steps, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)).cumsum(0)


def test_the_power_ema_is_the_history_weighted_by_tau_to_the_gamma():
    """After T updates each theta_tau weighs (tau/T)^(g+1) - ((tau-1)/T)^(g+1): eq. 3's tau^g, integrated
    over the step."""
    model, history = Vector(), _history(200)
    averages = PowerEMA(model, [0.05, 0.15])
    for t, theta in enumerate(history, start=1):
        model.theta.data.copy_(theta)
        averages.update(model, t)
    tau = torch.arange(1, 201, dtype=torch.float64)
    for gamma, average in zip(averages.gammas, averages.models):
        weights = (tau / 200) ** (gamma + 1) - ((tau - 1) / 200) ** (gamma + 1)
        torch.testing.assert_close(average.theta, weights @ history, rtol=1e-12, atol=1e-12)


def _snapshotted(tmp_path, history: torch.Tensor, every: int, keep: int = 100) -> RunDir:
    """A run directory holding only the snapshots of PowerEMA(0.05, 0.10) over `history`."""
    run, model = RunDir(tmp_path / "run"), Vector()
    averages = PowerEMA(model, [0.05, 0.10])
    for t, theta in enumerate(history, start=1):
        model.theta.data.copy_(theta)
        averages.update(model, t)
        if t % every == 0:
            save_snapshot(run, t, averages.tensors(), {"sigma_rels": averages.sigma_rels, "gammas": averages.gammas},
                          keep)
    return run


def test_a_tracked_length_rebuilds_to_its_own_final_snapshot_and_a_still_run_to_itself(tmp_path):
    history = _history(120)
    run = _snapshotted(tmp_path, history, every=10)
    last = run.all_snapshots()[-1]
    [folder] = reconstruct(run.path, [0.10])
    rebuilt = load_file(folder / "ema.safetensors")["theta"]
    torch.testing.assert_close(rebuilt, load_file(last / "power_1.safetensors")["theta"], rtol=0, atol=1e-10)
    still = _snapshotted(tmp_path / "still", torch.full((120, 5), 0.3, dtype=torch.float64), every=10)
    for folder in reconstruct(still.path, [0.04, 0.07, 0.15]):
        torch.testing.assert_close(load_file(folder / "ema.safetensors")["theta"],
                                   torch.full((5,), 0.3, dtype=torch.float64), rtol=0, atol=1e-12)


def test_an_untracked_length_rebuilds_near_the_one_tracked_directly(tmp_path):
    """The EMA of length 0.07 rebuilt from 0.05's and 0.10's snapshots, against a power EMA of 0.07
    kept along: the profiles agree to the residual the solve reports (under 1 %)."""
    history = _history(400, seed=1)
    run = _snapshotted(tmp_path, history, every=25)
    model, direct = Vector(), PowerEMA(Vector(), [0.07])
    for t, theta in enumerate(history, start=1):
        model.theta.data.copy_(theta)
        direct.update(model, t)
    [folder] = reconstruct(run.path, [0.07])
    rebuilt, wanted = load_file(folder / "ema.safetensors")["theta"], direct.models[0].theta.detach()
    spread = (history - wanted).norm(dim=1).mean()  # how far the weights wander around the average
    assert (rebuilt - wanted).norm() < 0.02 * spread, ((rebuilt - wanted).norm(), spread)
    times = [t for t in range(25, 401, 25) for _ in (0, 1)]
    x, residual = posthoc_coefficients(times, [sigma_rel_to_gamma(s) for _ in range(16) for s in (0.05, 0.1)], 400,
                                       sigma_rel_to_gamma(0.07))
    assert residual < 0.01 and x.sum() == pytest.approx(1.0, abs=1e-12)


def test_snapshots_thin_out_past_their_bound_keeping_the_newest(tmp_path):
    """keep 4: at 5 snapshots 2 and 4 go ([1, 3, 5]); at 7, 3 and 6; at 9, 5 and 8; then 10 is written."""
    run = _snapshotted(tmp_path, _history(10), every=1, keep=4)
    assert [int(f.name.split("_")[1]) for f in run.all_snapshots()] == [1, 7, 9, 10]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("posthoc")
    argv = ["train", *TINY, "--set", "train.posthoc_ema=[0.05,0.1]", "--set", "train.snapshot_every=2",
            "--set", "train.checkpoint_every=4", "--set", "data.augment_xflip=0.5", "--set",
            "data.augment_translate=0.5", "--set", "data.augment_rotate90=0.5"]  # augmented too: resumed alike
    assert main([*argv, "--out", str(root / "straight"), "--max-steps", "6"]) == 0
    return root, argv


def test_a_run_keeps_snapshots_that_resume_bit_exactly_and_every_command_takes_the_rebuilt_ema(trained, tmp_path,
                                                                                                    capsys):
    root, argv = trained
    straight = RunDir(root / "straight")
    assert [f.name for f in straight.all_snapshots()] == ["step_000002", "step_000004", "step_000006"]
    broken = RunDir(tmp_path / "broken")
    assert main([*argv, "--out", str(broken.path), "--max-steps", "6"]) == 0
    shutil.rmtree(broken.checkpoints / "step_000006")  # killed after step 4's checkpoint and step 6's snapshot
    shutil.rmtree(broken.snapshots / "step_000006")
    (broken.checkpoints / "latest").write_text("step_000004")
    assert main(["train", "--resume", str(broken.path), "--no-progress", "--device", "cpu"]) == 0
    a, b = (load_file(run.latest() / "model.safetensors") for run in (straight, broken))
    assert all(torch.equal(a[k], b[k]) for k in a)
    for name in ("step_000002", "step_000004", "step_000006"):
        for key in ("power_0", "power_1"):
            a, b = (load_file(run.snapshots / name / f"{key}.safetensors") for run in (straight, broken))
            assert all(torch.equal(a[k], b[k]) for k in a), (name, key)
    run = str(straight.path)
    assert main(["ema", "--run", run, "--sigma-rel", "0.07", "0.1"]) == 0
    sample = ["sample", "--run", run, "--n", "2", "--steps", "3", "--device", "cpu"]
    assert main([*sample, "--ema", "0.07", "--out", str(tmp_path / "a.npz"), "--grid", str(tmp_path / "a.png")]) == 0
    pipe = Pipeline.from_run(run, checkpoint=straight.reconstructed(0.1), device="cpu")
    power = load_file(straight.snapshots / "step_000006" / "power_1.safetensors")
    assert all(torch.allclose(pipe.network.state_dict()[k].float(), v.float(), atol=1e-6) for k, v in power.items())
    assert main(["export", "--run", run, "--ema", "0.07", "--out", str(tmp_path / "exported")]) == 0
    capsys.readouterr()
    assert main([*sample, "--ema", "0.12", "--out", str(tmp_path / "b.npz")]) == 2
    assert "has no EMA of length 0.12; rebuild it with 'ddpm ema" in capsys.readouterr().err


def test_a_length_the_snapshots_cannot_rebuild_is_refused_in_one_line(trained, capsys):
    root, _ = trained
    run = root / "straight"
    kept = run / "ema"
    refused_cleanly(["ema", "--run", str(run), "--sigma-rel", "0.01"], "the EMA of length 0.01 is beyond what 3 "
                    "snapshots of lengths 0.05, 0.1 can rebuild", capsys, kept, RunDir(run).reconstructed(0.01))
    refused_cleanly(["ema", "--run", str(run), "--sigma-rel", "0.3"], "sigma_rel must be between 0 and 0.2887",
                    capsys, kept, RunDir(run).reconstructed(0.3))


def test_a_damaged_snapshot_is_left_out_and_said_so(tmp_path):
    run = _snapshotted(tmp_path, _history(60), every=10)
    damaged = run.snapshots / "step_000030" / "power_0.safetensors"
    data = bytearray(damaged.read_bytes())
    data[-3] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="step_000030: power_0.safetensors is damaged.*left out of the reconstruction"):
        [folder] = reconstruct(run.path, [0.08])
    assert np.isfinite(load_file(folder / "ema.safetensors")["theta"].numpy()).all()


def test_a_sweep_scores_each_length_and_its_best_becomes_the_runs_default(trained, tmp_path, capsys):
    root, argv = trained
    run = tmp_path / "run"
    shutil.copytree(root / "straight", run)
    scores = iter([50.0, 45.0, 30.0, 40.0])  # classic, then 0.05, 0.07, 0.1: FIDs as an evaluator would give them

    def evaluator(images):
        assert images.shape == (4, 1, 28, 28) and images.dtype == torch.uint8
        return {"fid": next(scores), "kid": 0.0}

    rows, chosen = sweep(run, [0.05, 0.07, 0.1, 0.02], 4, evaluator, "cpu")
    assert "length 0.02 left out" in capsys.readouterr().out  # beyond what 0.05 and 0.1 rebuild: not scored
    assert [(r["weights"], r["sigma_rel"]) for r in rows] == [("classic", None), ("post-hoc", 0.05),
                                                              ("post-hoc", 0.07), ("post-hoc", 0.1)]
    assert chosen == {"sigma_rel": 0.07, "step": 6, "fid": 30.0, "classic_fid": 50.0, "samples": 4}
    assert (run / "ema" / "sweep.png").is_file() and (run / "ema" / "sweep.csv").read_text().count("\n") == 5
    # Every command now loads the chosen EMA by default, and says so; --ema classic the newest checkpoint's.
    assert RunDir(run).weights() == RunDir(run).reconstructed(0.07)
    assert RunDir(run).weights(ema="classic") is None
    sample = ["sample", "--run", str(run), "--n", "2", "--steps", "3", "--device", "cpu", "--out", str(tmp_path / "s.npz"),
              "--grid", str(tmp_path / "s.png")]
    assert main(sample) == 0
    assert "the post-hoc EMA of length 0.07 that 'ddpm ema --sweep' chose" in capsys.readouterr().err
    assert main([*sample, "--ema", "classic"]) == 0
    assert "chose" not in capsys.readouterr().err
    # Trained on, the run's newest step is past the choice: the classic EMA again.
    assert main(["train", "--resume", str(run), "--max-steps", "8", "--no-progress", "--device", "cpu"]) == 0
    assert RunDir(run).weights() is None


def test_ema_sweep_from_the_command_line_writes_the_report_section(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    root, _ = trained
    run = tmp_path / "run"
    shutil.copytree(root / "straight", run)
    assert main(["ema", "--run", str(run), "--sweep", "--sigma-rel", "0.06", "0.1", "--n", "4", "--ref-n", "8",
                 "--device", "cpu"]) == 0
    assert "is now the run's default weights" in capsys.readouterr().out
    assert main(["report", "--run", str(run)]) == 0
    assert '<section id="ema">' in (run / "report.html").read_text()
    refused_cleanly(["ema", "--run", str(run)], "give the lengths to rebuild (--sigma-rel X [X ...]) or --sweep",
                    capsys, run / "ema", run / "ema" / "sigma_0.0500")


def test_serve_takes_the_rebuilt_ema(trained, tmp_path, capsys):
    from ddpm.serve.server import load_models

    root, _ = trained
    run = tmp_path / "run"
    shutil.copytree(root / "straight", run)
    assert main(["ema", "--run", str(run), "--sigma-rel", "0.08"]) == 0
    [model] = load_models([str(run)], "cpu", [RunDir(run).reconstructed(0.08)])
    rebuilt = load_file(RunDir(run).reconstructed(0.08) / "ema.safetensors")
    assert all(torch.equal(model.pipe.network.state_dict()[k], v) for k, v in rebuilt.items())
    refused_cleanly(["serve", "--run", str(run), "--ema", "0.12", "--port", "0"], "has no EMA of length 0.12", capsys,
                    run, RunDir(run).reconstructed(0.12))
