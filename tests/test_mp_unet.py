"""EDM2's magnitude-preserving UNet (models/mp_unet.py): each layer keeps the magnitude of what passes
through it, the network starts at unit magnitude across noise levels, and its weights stay on the
unit sphere through training; then it trains, samples and exports as any network does."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from helpers import TINY, refused_cleanly
from ddpm import Config, Pipeline
from ddpm.cli import main
from ddpm.models.mp_unet import MPConv, MPUNet, fourier_features, mp_cat, mp_silu, mp_sum, normalize
from ddpm.storage.checkpoint import RunDir

MP = ["--set", "model.network=mp-unet"]


def _rms(x: torch.Tensor) -> float:
    return x.pow(2).mean().sqrt().item()


def _unit(*shape, seed=0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_each_fixed_function_keeps_a_unit_input_at_unit_magnitude():
    x, y = _unit(400, 64, seed=1), _unit(400, 48, seed=2)
    assert _rms(mp_silu(x)) == pytest.approx(1.0, abs=0.01)
    for t in (0.3, 0.5, 0.9):
        assert _rms(mp_sum(x, _unit(400, 64, seed=3), t)) == pytest.approx(1.0, abs=0.01)
        assert _rms(mp_cat(x, y, t)) == pytest.approx(1.0, abs=0.01)
    assert torch.allclose(normalize(5 * x, dim=[1]).pow(2).mean(1), torch.ones(400), atol=1e-3)
    features = fourier_features(torch.tensor([0.0, -2.3, 7.5, 999.0]), 64)
    torch.testing.assert_close(features.pow(2).mean(1), torch.ones(4))  # cos^2 + sin^2, exactly


@pytest.mark.parametrize("kernel", [0, 1, 3])
def test_a_learned_layer_keeps_a_unit_input_at_unit_magnitude(kernel):
    layer = MPConv(96, 32, kernel)
    x = _unit(64, 96, seed=5) if kernel == 0 else _unit(4, 96, 32, 32, seed=5)  # not the weights' own draws
    out = layer(x)
    interior = out if kernel == 0 else out[..., 1:-1, 1:-1]  # a 3x3 border sees zero padding
    assert _rms(interior) == pytest.approx(1.0, abs=0.05)
    assert _rms(layer(x, gain=0.5)) == pytest.approx(0.5 * _rms(out), rel=1e-5)


def test_an_encoder_block_pixel_normalises_its_input_so_its_scale_does_not_matter():
    """Where the UNet has a GroupNorm, an encoder block scales each pixel's features to unit RMS: its
    output is the same for an input a thousand times larger."""
    from ddpm.models.mp_unet import MPBlock

    for cin in (16, 24):
        block = MPBlock(cin, 16, 32, flavor="enc", attention=True, head_dim=8).eval()
        x, emb = _unit(2, cin, 8, 8, seed=6), _unit(2, 32, seed=7)
        torch.testing.assert_close(block(1000 * x, emb), block(x, emb), rtol=1e-3, atol=1e-3)  # eps 1e-4 aside


def test_the_untrained_network_is_at_unit_magnitude_across_noise_levels():
    """With its output gain at one (it is learned from zero), a unit input gives an output of about unit
    RMS: 1.29 with the embedding's gains at zero, as they start, and 1.3 to 1.7 at every noise label,
    from EDM's ln(sigma)/4 to the VP timesteps, with them at one. (A sum that does not preserve
    magnitude makes it 0.73; mp_sum assumes uncorrelated inputs, which a residual branch is not.)"""
    torch.manual_seed(0)
    network = MPUNet(3, [32, 64, 64], [False, True, True], num_res=1, num_classes=4).eval()
    x, labels = _unit(8, 3, 16, 16, seed=4), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    assert _rms(network(x, torch.full((8,), 500.0))) == 0.0  # out_gain starts at zero
    network.out_gain.data.fill_(1.0)
    assert 0.8 < _rms(network(x, torch.full((8,), 500.0), labels)) < 1.4
    for module in network.modules():
        if hasattr(module, "emb_gain"):
            module.emb_gain.data.fill_(1.0)
    for t in (-1.5, 0.0, 1.2, 10.0, 500.0, 999.0):
        assert 0.8 < _rms(network(x, torch.full((8,), t), labels)) < 2.0, t


def test_every_weight_row_is_back_on_the_unit_sphere_after_each_step(tmp_path):
    run = tmp_path / "mp"
    assert main(["train", *TINY, *MP, "--out", str(run), "--max-steps", "3", "--lr", "0.05",
                 "--set", "train.warmup_steps=0"]) == 0  # Adam's first steps move each weight by about the lr
    weights = load_file(RunDir(run).latest() / "model.safetensors")
    rows = [w.flatten(1) for name, w in weights.items() if name.endswith(".weight") and w.ndim >= 2]
    assert rows and all(torch.allclose(r.pow(2).mean(1), torch.ones(len(r)), atol=1e-3) for r in rows)
    assert weights["out_gain"].abs().item() > 0  # learned from zero


@pytest.mark.parametrize("objective", ["eps", "v", "edm"])
def test_it_trains_and_samples_with_every_objective_and_with_classes(objective, tmp_path):
    run = tmp_path / objective
    classes = ["--classes", "10", "--data", "digits", "--image-size", "8"] if objective == "v" else []
    assert main(["train", *TINY, *MP, "--objective", objective, *classes, "--out", str(run), "--max-steps", "2"]) == 0
    pipe = Pipeline.from_run(run, device="cpu")
    images = pipe(2, steps=3, progress=False, **({"classes": [3, 7]} if classes else {}))
    assert images.dtype == torch.uint8 and images.shape[0] == 2


def test_it_exports_as_ddpms_own_network_and_loads_back(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    run, out = tmp_path / "mp", tmp_path / "exported"
    assert main(["train", *TINY, *MP, "--out", str(run), "--max-steps", "2"]) == 0
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    pipe = diffusers.DDIMPipeline.from_pretrained(out)
    ours = Pipeline.from_run(run, device="cpu")
    x, t = _unit(1, 1, 28, 28), torch.tensor([40])
    with torch.no_grad():
        torch.testing.assert_close(pipe.unet(x, t).sample, ours.network(x, t), atol=1e-5, rtol=1e-5)


def test_a_unet_option_it_has_no_counterpart_for_is_refused(tmp_path, capsys):
    refused_cleanly(["train", *TINY, *MP, "--set", "model.norm=batch", "--out", str(tmp_path / "x"), "--max-steps", "1"],
                    "model.norm is an option of the unet network; the mp-unet has no counterpart", capsys, tmp_path,
                    tmp_path / "x")
    assert Config().override({"model.network": "mp-unet"}).validate().model.network == "mp-unet"
