"""Both ways with diffusers: UNet2DModels built with the exact configs of google/ddpm-cifar10-32 and
google/ddpm-celebahq-256 (random weights, saved here; nothing is downloaded) give ddpm's network
the same outputs and ddpm's samplers the same samples as DDPMPipeline and DDIMPipeline; a ddpm run
exports to a folder they load, and comes back bit for bit."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import needs_font, TINY
from ddpm import Pipeline
from ddpm.cli import main
from ddpm.pipeline import batch_seed
from ddpm.storage.checkpoint import RunDir, load_weights

diffusers = pytest.importorskip("diffusers")  # the test extra installs it; the package itself does not need it
pytest.importorskip("ddpm.models.for_diffusers")  # ddpm's own network classes, which ddpm.models serves

# The configs of the converted checkpoints of Ho et al. (2020), as published with their weights.
CIFAR10_32 = {"act_fn": "silu", "attention_head_dim": None, "block_out_channels": [128, 256, 256, 256],
              "center_input_sample": False, "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
              "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "layers_per_block": 2,
              "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3, "sample_size": 32,
              "time_embedding_type": "positional", "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]}
CELEBAHQ_256 = {**CIFAR10_32, "block_out_channels": [128, 128, 256, 256, 512, 512], "sample_size": 256,
                "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
                "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"]}
SCHEDULER = {"beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001, "clip_sample": True,
             "num_train_timesteps": 1000, "trained_betas": None, "variance_type": "fixed_large"}


def _save(config: dict, folder, seed: int = 0):
    """A UNet2DModel of `config` with random weights (none left at zero), saved as a DDPMPipeline folder."""
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(**config)
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(**SCHEDULER)).save_pretrained(folder)
    return unet.eval()


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddpm-cifar10-32")
    return folder, _save(CIFAR10_32, folder)


@pytest.mark.parametrize("size", [32])
def test_the_imported_network_gives_diffusers_outputs(cifar10, size):
    folder, unet = cifar10
    pipe = Pipeline.from_diffusers(folder, device="cpu")
    assert sum(p.numel() for p in pipe.network.parameters()) == sum(p.numel() for p in unet.parameters()) == 35_746_307
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for t in (0, 10, 500, 999):
            timesteps = torch.full((2,), t)
            ours, theirs = pipe.network(x, timesteps), unet(x, timesteps).sample
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_the_celebahq_256_network_too(tmp_path):
    unet = _save(CELEBAHQ_256, tmp_path, seed=1)
    pipe = Pipeline.from_diffusers(tmp_path, data="celeba", device="cpu")
    assert pipe.config.data.image_size == 256 and pipe.config.model.attention == [False, False, False, False, True, False]
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))  # the same network; a smaller input
    with torch.no_grad():
        for t in (3, 700):
            torch.testing.assert_close(pipe.network(x, torch.tensor([t])), unet(x, torch.tensor([t])).sample,
                                       rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind, steps", [("ddpm", 10), ("ddim", 10)])
def test_the_imported_run_samples_as_diffusers_pipelines_do(cifar10, tmp_path, kind, steps):
    """Same initial noise and per-step noise (one generator, drawn in the same order): the same images.
    On diffusers' default "leading" grid, which ends at t = 0: on a "trailing" one, which ends at t = 99,
    DDPMScheduler still adds noise at the last step (it asks t > 0), where Algorithm 2 adds none."""
    folder, unet = cifar10
    assert main(["import", "--from", str(folder), "--out", str(tmp_path / "run")]) == 0
    pipe = Pipeline.from_run(tmp_path / "run", device="cpu")
    scheduler = {"ddpm": diffusers.DDPMScheduler, "ddim": diffusers.DDIMScheduler}[kind].from_pretrained(
        folder / "scheduler", timestep_spacing="leading")
    pipeline = {"ddpm": diffusers.DDPMPipeline, "ddim": diffusers.DDIMPipeline}[kind](unet=unet, scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)
    options = {"eta": 0.0, "use_clipped_model_output": True} if kind == "ddim" else {}
    theirs = pipeline(batch_size=2, generator=torch.Generator().manual_seed(batch_seed(7, 0)), num_inference_steps=steps,
                      output_type="np", **options).images
    ours = pipe(2, kind, steps, seed=7, spacing="leading", output="float", progress=False).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def _ddim_alike(run, folder, latent: bool = False):
    """The exported folder's pipeline (DDIMPipeline, or LDMPipeline) with a DDIMScheduler and ddpm's
    DDIM, each from the same x_T: 3 images in 5 trailing steps, as HWC floats in [0, 1]. Trailing,
    because diffusers' DDIM steps from t to t - T/K on any grid, which only that grid's steps are.
    DDIMPipeline recomputes eps from the clipped x0, as ddpm does; a latent run clips nothing."""
    if latent:
        pipeline, clipped = diffusers.LDMPipeline.from_pretrained(folder), {}
    else:
        pipeline, clipped = diffusers.DDIMPipeline.from_pretrained(folder), {"use_clipped_model_output": True}
    pipeline.scheduler = diffusers.DDIMScheduler.from_config(pipeline.scheduler.config, timestep_spacing="trailing")
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(batch_seed(2, 0))
    theirs = pipeline(batch_size=3, generator=generator, num_inference_steps=5, eta=0.0, output_type="np",
                      **clipped).images
    ours = Pipeline.from_run(run, device="cpu")(3, "ddim", 5, seed=2, output="float", progress=False, spacing="trailing")
    return theirs, ours.permute(0, 2, 3, 1).numpy()


def test_export_then_import_is_bit_exact_and_diffusers_samples_ddpm_runs_ddim(tmp_path, capsys):
    """A run whose network maps (per-block skips, a time embedding as wide as its first level, one
    GroupNorm size, a two-block middle) exports; DDIMPipeline then draws ddpm's own DDIM samples."""
    run = tmp_path / "run"
    mappable = ["--set", "model.skips=block", "--set", "model.time_emb_dim=8", "--set", "model.neck_length=2",
                "--set", "model.neck_attention=true", "--set", "model.norm_groups=4", "--set", "model.attention_head_dim=8",
                "--set", "sample.spacing=trailing"]
    assert main(["train", "--out", str(run), "--max-steps", "3", *TINY, *mappable]) == 0
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "exported")]) == 0
    index = json.loads((tmp_path / "exported" / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DModel"] and index["scheduler"] == ["diffusers", "DDPMScheduler"]
    theirs, ours = _ddim_alike(run, tmp_path / "exported")
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
    assert diffusers.DDPMPipeline.from_pretrained(tmp_path / "exported").scheduler.config.prediction_type == "v_prediction"
    # ... and back: the same weights, bit for bit, and the same process
    assert main(["import", "--from", str(tmp_path / "exported"), "--out", str(tmp_path / "back"), "--data", "mnist5k"]) == 0
    back, original = RunDir(tmp_path / "back"), RunDir(run)
    a, b = load_weights(original.latest(), "ema"), load_weights(back.latest(), "ema")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c, d = original.load_config(), back.load_config()
    assert (c.model, c.diffusion, c.sample.spacing, c.sample.clip_denoised) == (d.model, d.diffusion, d.sample.spacing,
                                                                                 d.sample.clip_denoised)
    torch.testing.assert_close(Pipeline.from_run(tmp_path / "back", device="cpu")(2, "ddim", 4, output="float", progress=False),
                               Pipeline.from_run(run, device="cpu")(2, "ddim", 4, output="float", progress=False))
    # an imported run trains on, from a fresh optimiser
    assert main(["train", "--resume", str(tmp_path / "back"), "--max-steps", "2", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "fresh optimiser" in captured.out + captured.err


@pytest.mark.parametrize("flags, message", [
    ([], "model.skips level has no diffusers counterpart"),
    (["--set", "model.skips=block"], "model.time_emb_dim 16 has no diffusers counterpart"),
    (["--set", "model.skips=block", "--set", "model.time_emb_dim=8"], "model.neck_length 1 has no diffusers counterpart"),
    (["--set", "model.skips=block", "--set", "model.time_emb_dim=8", "--set", "model.neck_length=2", "--set",
      "model.attention_head_dim=8"], "GroupNorms of [2, 4, 8] groups in one network has no diffusers counterpart"),
])
def test_a_network_no_unet2dmodel_computes_exports_as_ddpms_own_and_says_why(flags, message, tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "exported"
    assert main(["train", "--out", str(run), "--max-steps", "1", *TINY, *flags]) == 0
    capsys.readouterr()
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "DdpmUNet" in said and message in said, said
    assert json.loads((out / "model_index.json").read_text())["unet"] == ["ddpm.models", "DdpmUNet"]
    unet, ours = diffusers.DDPMPipeline.from_pretrained(out).unet, Pipeline.from_run(run, device="cpu")
    channels, size = ours.config.model_input()
    x, t = torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(0)), torch.tensor(37)
    # the same network and weights: equal but for the rounding of another memory format (ddpm runs NHWC)
    torch.testing.assert_close(unet(x, t).sample, ours.network(x, t.expand(2)), rtol=0, atol=1e-6)


def _loads_in_a_fresh_process(folder, imports: str) -> str:
    """The class of the UNet that DDPMPipeline.from_pretrained(folder) loads in a new Python that ran
    only `imports` before it, as a diffusers user's script would."""
    code = f"{imports}\nfrom diffusers import DDPMPipeline\nprint(type(DDPMPipeline.from_pretrained({str(folder)!r}).unet).__name__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_an_exported_folder_loads_after_import_ddpm_alone_and_one_exported_before_the_move_still_loads(tmp_path):
    run, out = tmp_path / "run", tmp_path / "exported"
    assert main(["train", "--out", str(run), "--max-steps", "1", *TINY]) == 0
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    assert _loads_in_a_fresh_process(out, "import ddpm") == "DdpmUNet"
    index = json.loads((out / "model_index.json").read_text())
    index["unet"] = ["ddpm.storage.diffusers_models", "DdpmUNet"]  # as `ddpm export` wrote it until 2026-12-06
    (out / "model_index.json").write_text(json.dumps(index))
    assert _loads_in_a_fresh_process(out, "import ddpm.storage.diffusers_models") == "DdpmUNet"


@pytest.mark.parametrize("flags, message", [
    (["--objective", "edm"], "diffusion.objective edm has no diffusers counterpart"),
    (["--set", "model.skips=block", "--set", "model.time_emb_dim=8", "--set", "model.neck_length=2", "--set",
      "model.norm_groups=4", "--set", "model.attention_head_dim=8", "--set", "sample.spacing=quadratic"], "sample.spacing quadratic has no diffusers counterpart"),
    (["--set", "model.skips=block", "--set", "model.time_emb_dim=8", "--set", "model.neck_length=2", "--set",
      "model.norm_groups=4", "--set", "model.attention_head_dim=8", "--classes", "10"], "model.num_classes 10 has no diffusers counterpart"),
])
def test_what_diffusers_cannot_express_is_one_line_and_writes_nothing(flags, message, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--max-steps", "1", *TINY, *flags]) == 0
    capsys.readouterr()
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "exported")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err
    assert not (tmp_path / "exported").exists() and [p.name for p in tmp_path.iterdir()] == ["run"]


@pytest.mark.parametrize("change, message", [
    ({"unet": {"act_fn": "gelu"}}, "the UNet2DModel's act_fn 'gelu' has no counterpart"),
    ({"unet": {"class_embed_type": "timestep"}}, "class_embed_type 'timestep'"),
    ({"scheduler": {"prediction_type": "epsilon", "variance_type": "learned_range"}}, "variance_type 'learned_range'"),
    ({"scheduler": {"beta_schedule": "scaled_linear"}}, "beta_schedule 'scaled_linear'"),
    ({"scheduler": {"thresholding": True}}, "thresholding True"),
])
def test_what_ddpm_cannot_express_is_one_line_and_writes_nothing(cifar10, change, message, tmp_path, capsys):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(cifar10[0], folder)
    for part, values in change.items():
        path = folder / part / ("config.json" if part == "unet" else "scheduler_config.json")
        path.write_text(json.dumps({**json.loads(path.read_text()), **values}))
    assert main(["import", "--from", str(folder), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err
    assert not (tmp_path / "run").exists()


def test_a_unet_option_the_exporter_was_not_taught_exports_only_at_its_default(monkeypatch):
    """A new UNet option is a declaration in ModelConfig and its use in the UNet; until the exporter
    maps it, a run that changes it is refused rather than exported as a network it is not."""
    from dataclasses import dataclass, field

    from ddpm.config import Config, ModelConfig
    from ddpm.config.settings import setting
    from ddpm.errors import InputError
    from ddpm.storage import diffusers

    monkeypatch.setattr(diffusers, "_uniform_groups", lambda config: 4)  # it builds the UNet, which knows no gate

    @dataclass
    class Gated(ModelConfig):
        gate: bool = setting(False, "a new option")

    @dataclass
    class GatedRun(Config):
        model: Gated = field(default_factory=Gated)

    exportable = {"model.skips": "block", "model.time_emb_dim": 16, "model.neck_length": 2, "model.norm_groups": 4,
                  "model.attention_head_dim": 16, "data.image_size": 8, "data.channels": 1}
    assert diffusers.unet2d_config(GatedRun().override(exportable))["block_out_channels"] == [16, 32, 64]
    with pytest.raises(InputError, match="model.gate True has no diffusers counterpart; the exporter does not map it"):
        diffusers.unet2d_config(GatedRun().override({**exportable, "model.gate": True}))


# ---- every default run exports (issue #56) -------------------------------------------------------


@pytest.mark.parametrize("data", ["mnist5k", pytest.param("emoji", marks=needs_font)])
def test_a_default_run_exports_and_ddim_pipeline_draws_its_samples(data, tmp_path, capsys):
    """`ddpm train --max-minutes 0.2 && ddpm export` on the default gray and color runs: one skip per
    level, which no UNet2DModel computes, so the folder holds ddpm's network and says so."""
    run, out = tmp_path / "run", tmp_path / "exported"
    assert main(["train", "--out", str(run), "--data", data, "--max-minutes", "0.2", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    assert "with ddpm's own DdpmUNet" in capsys.readouterr().out
    theirs, ours = _ddim_alike(run, out)
    assert theirs.shape == ours.shape == (3, 32 if data == "emoji" else 28, 32 if data == "emoji" else 28,
                                         3 if data == "emoji" else 1)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("autoencoder", ["own", "diffusers"])
def test_a_latent_run_exports_as_an_ldm_pipeline_that_decodes_as_ddpm_does(autoencoder, tmp_path, monkeypatch, capsys):
    """The color default's kind of run (its own autoencoder, then the UNet on its latents), and a
    run on a diffusers AutoencoderKL: LDMPipeline divides by the vqvae's scaling_factor and decodes,
    as ddpm's codec does."""
    from helpers import tiny_config
    from helpers import own_config

    from ddpm.training.loop import train

    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    if autoencoder == "own":
        config = own_config()
    else:
        torch.manual_seed(0)
        diffusers.AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
                                up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=2,
                                norm_num_groups=4, layers_per_block=1, scaling_factor=0.5).save_pretrained(tmp_path / "vae")
        config = tiny_config(**{"data.name": "digits", "data.image_size": 16, "train.max_steps": 2,
                                "latent.autoencoder": f"diffusers:{tmp_path / 'vae'}"})
    run, out = train(config, tmp_path / "run", progress=False).path, tmp_path / "exported"
    capsys.readouterr()
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    vqvae = "DdpmAutoencoder" if autoencoder == "own" else "AutoencoderKL"
    assert ("DdpmUNet and DdpmAutoencoder" if autoencoder == "own" else "own DdpmUNet,") in capsys.readouterr().out
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "LDMPipeline" and index["vqvae"][1] == vqvae
    theirs, ours = _ddim_alike(run, out, latent=True)
    assert theirs.shape == ours.shape == (3, 16, 16, 1)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
