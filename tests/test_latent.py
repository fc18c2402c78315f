"""Latent diffusion: the autoencoder, its latent scale, latent runs, and the diffusers bridge."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from helpers import own_config, tiny_autoencoder, tiny_config
from ddpm.cli import main
from ddpm.storage.atomic import file_sha256
from ddpm.config import AutoencoderRun
from ddpm.config.recipe import own_autoencoder
from ddpm.data.datasets import load_data
from ddpm.errors import InputError
from ddpm.evaluation.reconstruct import psnr
from ddpm.data.latents import encode_data
from ddpm.factory import load_codec
from ddpm.models.autoencoder import (
    Autoencoder,
    DiagonalGaussian,
    adaptive_weight,
    autoencoder_loss,
    hinge_discriminator_loss,
)
from ddpm.editor import Editor
from ddpm.pipeline import Pipeline
from ddpm.storage.checkpoint import RunDir, load_meta
from ddpm.training.loop import train




def latent_config(autoencoder, **overrides):
    """A tiny diffusion run of digits at 16 px in the 8x8 latents of `autoencoder`."""
    return tiny_config(**{"data.name": "digits", "data.image_size": 16, "latent.autoencoder": str(autoencoder),
                          **overrides})


# ---- the autoencoder ---------------------------------------------------------------------------


def test_the_kl_term_is_the_closed_form_of_a_diagonal_gaussian_against_the_standard_normal():
    mean, log_var = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, torch.exp(0.5 * log_var)), torch.distributions.Normal(0.0, 1.0))
    torch.testing.assert_close(DiagonalGaussian(mean, log_var).kl(), expected.flatten(1).sum(1))
    # one element by hand: KL(N(1, e^0) || N(0, 1)) = (1 + 1 - 1 - 0) / 2
    assert DiagonalGaussian(torch.ones(1, 1), torch.zeros(1, 1)).kl().item() == pytest.approx(0.5)


@pytest.mark.parametrize("channels, size", [([8, 8], 16), ([8, 8, 8], 32), ([8, 8, 8, 8], 64), ([8, 8, 8], 24)])
def test_encode_and_decode_shapes_follow_the_factor(channels, size):
    model = Autoencoder(3, channels, z_channels=4)
    f = 2 ** (len(channels) - 1)
    assert model.factor == f
    posterior = model.encode(torch.randn(2, 3, size, size))
    assert posterior.mean.shape == posterior.log_var.shape == (2, 4, size // f, size // f)
    assert model.decode(posterior.mean).shape == (2, 3, size, size)


def test_the_loss_is_the_per_pixel_error_plus_the_weighted_kl():
    model = Autoencoder(1, [8, 8], z_channels=2)
    x, noise = torch.rand(4, 1, 8, 8) * 2 - 1, torch.randn(4, 2, 4, 4)
    reconstructed, posterior = model(x, noise)
    for kind, error in (("l1", (reconstructed - x).abs()), ("mse", (reconstructed - x).square())):
        expected = (error.flatten(1).sum(1) + 0.25 * posterior.kl()).mean() / 64
        torch.testing.assert_close(autoencoder_loss(model, x, noise, 0.25, kind), expected)


# ---- the adversarial term ---------------------------------------------------------------------------


def test_the_hinge_loss_and_the_adaptive_weight_are_the_closed_forms():
    # real: max(0, 1 - 2) = 0 and max(0, 1 - 0.5) = 0.5; fake: max(0, 1 - 2) = 0 and max(0, 1 + 0.5) = 1.5
    assert hinge_discriminator_loss(torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])).item() == pytest.approx(0.5)
    w = torch.randn(5, requires_grad=True)
    rec, adversarial = (3 * w).sum(), (-0.5 * w).sum()  # gradients 3 and -0.5 in each of 5 elements
    root5 = 5**0.5
    assert adaptive_weight(rec, adversarial, w, 0.5).item() == pytest.approx(0.5 * 3 * root5 / (0.5 * root5 + 1e-4))


def test_the_decoder_and_the_discriminator_do_not_train_each_other():
    torch.manual_seed(0)
    model = Autoencoder(1, [8, 8], z_channels=2, discriminator_layers=2, discriminator_channels=8)
    x, noise = torch.rand(4, 1, 16, 16) * 2 - 1, torch.randn(4, 2, 8, 8)
    autoencoder_loss(model, x, noise, 1e-6, "l1", disc_weight=0.5).backward()
    got = {name: p.grad.clone() for name, p in model.named_parameters()}
    discriminator = model.discriminator

    # The discriminator's gradient: that of its hinge loss alone, on the reconstructions as fixed images.
    model.zero_grad()
    reconstructed, posterior = model(x, noise)
    hinge_discriminator_loss(discriminator(x), discriminator(reconstructed.detach())).backward()
    for name, p in discriminator.named_parameters():
        torch.testing.assert_close(got[f"discriminator.{name}"], p.grad)

    # The autoencoder's: the reconstruction, the KL and the balanced generator term, nothing of the hinge loss.
    model.zero_grad()
    reconstructed, posterior = model(x, noise)
    rec = (reconstructed - x).abs().flatten(1).sum(1).mean() / 256
    generator = -discriminator(reconstructed).mean()
    weight = adaptive_weight(rec, generator, model.decoder.head.weight, 0.5)
    assert weight.item() > 0
    (rec + 1e-6 * posterior.kl().mean() / 256 + weight * generator).backward()
    for name, p in model.named_parameters():
        if not name.startswith("discriminator."):
            torch.testing.assert_close(got[name], p.grad)


def test_the_discriminator_changes_nothing_before_it_starts_and_resumes_bit_exactly(tmp_path):
    adversarial = {"autoencoder.disc_weight": 0.5, "autoencoder.disc_layers": 2, "autoencoder.disc_channels": 8}
    plain = train(tiny_autoencoder(), tmp_path / "plain", progress=False)
    waiting = train(tiny_autoencoder(**adversarial, **{"autoencoder.disc_start": 6}), tmp_path / "waiting",
                    progress=False)
    started = train(tiny_autoencoder(**adversarial, **{"autoencoder.disc_start": 3}), tmp_path / "started",
                    progress=False)
    a, b, c = (load_file(run.latest() / "model.safetensors") for run in (plain, waiting, started))
    for key in a:  # 6 steps (0 to 5), the adversarial term from step 6 on: the autoencoder is the plain one
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a["decoder.head.weight"], c["decoder.head.weight"])  # from step 3 on, it is not
    discriminator = [key for key in b if key.startswith("discriminator.")]  # as initialised: it never trained
    assert discriminator and not all(torch.equal(b[key], c[key]) for key in discriminator)

    # Resume across the start of the adversarial term: bit-exact.
    config = tiny_autoencoder(**adversarial, **{"autoencoder.disc_start": 3, "train.checkpoint_every": 2})
    straight = train(config, tmp_path / "straight", progress=False)
    crashed = train(config, tmp_path / "resumed", progress=False)
    for step in ("step_000004", "step_000006"):
        shutil.rmtree(crashed.checkpoints / step)
    (crashed.checkpoints / "latest").write_text("step_000002")
    resumed = train(config.resumed({}, "run"), crashed.path, resume=True, progress=False)
    assert _losses(straight) == _losses(resumed)
    a, b = load_file(straight.latest() / "model.safetensors"), load_file(resumed.latest() / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_image_too_small_for_the_discriminator_is_refused_with_exit_2(tmp_path, capsys):
    assert main(["train-autoencoder", "--data", "digits", "--image-size", "16", "--out", str(tmp_path / "ae"),
                 "--disc-weight", "0.5", "--max-steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "too small for a discriminator of 3 layers (it needs 24)" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "ae").exists()


def test_psnr_is_the_closed_form():
    a = torch.full((2, 3, 4, 4), 100, dtype=torch.uint8)
    assert psnr(a, a + 1) == pytest.approx(10 * torch.log10(torch.tensor(255.0**2)).item())  # MSE 1: 48.13 dB
    assert psnr(a, a + 5) == pytest.approx(psnr(a, a + 1) - 20 * torch.log10(torch.tensor(5.0)).item())


def _losses(run) -> list[tuple[str, ...]]:
    """(step, loss, lr, grad norm) of every logged row: what must not depend on a resume."""
    return [tuple(line.split(",")[:4]) for line in (run.path / "log.csv").read_text().splitlines()[1:]]


# ---- training it, and its latent scale -----------------------------------------------------------


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory):
    """A trained (for 6 steps) autoencoder run."""
    return train(tiny_autoencoder(), tmp_path_factory.mktemp("ae") / "ae", progress=False).path


def test_an_autoencoder_run_resumes_bit_exactly(tmp_path):
    config = tiny_autoencoder(**{"train.max_steps": 8, "train.checkpoint_every": 4})
    straight = train(config, tmp_path / "straight", progress=False)
    crashed = train(config, tmp_path / "resumed", progress=False)
    shutil.rmtree(crashed.checkpoints / "step_000008")  # as if the process died after step 4's checkpoint
    (crashed.checkpoints / "latest").write_text("step_000004")
    resumed = train(config.resumed({}, "run"), crashed.path, resume=True, progress=False)
    assert _losses(straight) == _losses(resumed)
    for key in ("model", "ema"):
        a, b = load_file(straight.latest() / f"{key}.safetensors"), load_file(resumed.latest() / f"{key}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    grid = resumed.sample_grids()[-1]  # originals above reconstructions
    assert grid.is_file()


def test_the_latent_scale_gives_the_cached_latents_unit_std(autoencoder, tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path))
    codec = load_codec(str(autoencoder))
    data = load_data("digits", image_size=16)
    latents = encode_data(codec, data, flip=False, device=torch.device("cpu"), progress=False)
    assert latents.images.shape == (len(data), 1, 2, 8, 8)
    assert latents.images.std().item() == pytest.approx(1.0, abs=0.01)
    assert abs(codec.scale - 1.0) > 0.05  # the scale does work: the raw latents are not unit already
    # cached: a second call reads the file, and it holds the same numbers
    cached = encode_data(codec, data, flip=False, device=torch.device("cpu"), progress=False)
    assert torch.equal(cached.images, latents.images) and len(list((tmp_path / "latents").iterdir())) == 1


def test_flipped_latents_are_those_of_the_mirror_images(autoencoder, tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path))
    codec = load_codec(str(autoencoder))
    data = load_data("digits", image_size=16)
    latents = encode_data(codec, data, flip=True, device=torch.device("cpu"), progress=False)
    x = data.images[:5].float() / 127.5 - 1
    torch.testing.assert_close(latents.images[:5, 0], codec.encode(x))
    torch.testing.assert_close(latents.images[:5, 1], codec.encode(x.flip(-1)))


def test_a_latent_batch_takes_the_mirror_latent_exactly_where_a_pixel_batch_flips(autoencoder, tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path))
    from ddpm.training.tasks import DiffusionTask

    data = load_data("digits", image_size=16)
    task = DiffusionTask(latent_config(autoencoder, **{"data.flip": True}), data, torch.device("cpu"), False, False)
    batch = task.data.images[:64]
    chosen = task.batch(batch, torch.Generator().manual_seed(3))
    flipped = torch.rand(64, generator=torch.Generator().manual_seed(3)) < 0.5  # the draw the pixel path makes
    assert 0 < flipped.sum() < 64
    assert torch.equal(chosen[flipped], batch[flipped, 1]) and torch.equal(chosen[~flipped], batch[~flipped, 0])


def test_cached_moments_are_the_scaled_posterior_of_each_image_and_its_mirror(autoencoder, tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path))
    codec = load_codec(str(autoencoder))
    data = load_data("digits", image_size=16)
    moments = encode_data(codec, data, flip=True, device=torch.device("cpu"), progress=False, moments=True).images
    assert moments.shape == (len(data), 2, 2, 2, 8, 8)  # [N, view, (mean, std), C, h, w]
    x = data.images[:5].float() / 127.5 - 1
    for view, image in enumerate([x, x.flip(-1)]):
        q = codec.module.encode(image)
        torch.testing.assert_close(moments[:5, view, 0], q.mean * codec.scale)
        torch.testing.assert_close(moments[:5, view, 1], q.std * codec.scale)
    # the means are the latents a mean run caches; the two kinds are cached apart
    means = encode_data(codec, data, flip=True, device=torch.device("cpu"), progress=False).images
    torch.testing.assert_close(moments[:, :, 0], means)
    assert len(list((tmp_path / "latents").iterdir())) == 2


def test_a_sampled_latent_is_mean_plus_std_times_fresh_noise_of_the_chosen_view(autoencoder, tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path))
    from ddpm.training.tasks import DiffusionTask

    data = load_data("digits", image_size=16)
    config = latent_config(autoencoder, **{"data.flip": True, "latent.posterior": "sample"})
    task = DiffusionTask(config, data, torch.device("cpu"), False, False)
    batch = task.data.images[:64]
    z = task.batch(batch, torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)  # the draws batch() makes: flips first, then the noise
    flipped = torch.rand(64, generator=generator) < 0.5
    chosen = torch.where(flipped[:, None, None, None, None], batch[:, 1], batch[:, 0])
    torch.testing.assert_close(z, chosen[:, 0] + chosen[:, 1] * torch.randn(z.shape, generator=generator))
    assert z.shape == (64, 2, 8, 8) and not torch.equal(z, chosen[:, 0])
    again = task.batch(batch, torch.Generator().manual_seed(4))  # a new draw each time the image is seen
    assert not torch.allclose(again, z)


# ---- latent runs -----------------------------------------------------------------------------------


def test_a_latent_run_samples_images_of_the_data_size_and_records_its_autoencoder(autoencoder, tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    run = train(latent_config(autoencoder), tmp_path / "latent", progress=False)
    config = run.load_config()
    assert config.latent.sha256 == load_codec(str(autoencoder)).sha256 and config.latent.factor == 2
    assert config.model_input() == (2, 8)
    pipe = Pipeline.from_run(run.path, device="cpu")
    images = pipe(3, steps=3, progress=False)
    assert images.shape == (3, 1, 16, 16) and images.dtype == torch.uint8
    x_T = Editor(pipe).invert(images[:1], steps=3)
    assert x_T.shape == (1, 2, 8, 8)  # inversion lives in the latent space
    assert Editor(pipe).reconstruct(x_T, steps=3).shape == (1, 1, 16, 16)


def test_the_commands_downstream_decode_a_class_conditional_latent_run(autoencoder, tmp_path, monkeypatch):
    """sample with a class and guidance, sweep, show trajectory and progression, and report all take a
    latent run as they take a pixel one; the trajectory's last x0 is the decoded sample itself."""
    from PIL import Image

    from ddpm.pictures.stages import CELL, PADDING, trajectory

    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    config = latent_config(autoencoder, **{"model.num_classes": 10, "train.max_steps": 2, "train.checkpoint_every": 1})
    run = train(config, tmp_path / "latent", progress=False).path
    samples = tmp_path / "samples.npz"
    assert main(["sample", "--run", str(run), "--n", "3", "--steps", "2", "--class", "3", "--guidance", "2",
                 "--out", str(samples), "--device", "cpu"]) == 0
    with np.load(samples) as saved:
        assert saved["arr_0"].shape == (3, 16, 16, 1) and saved["arr_1"].tolist() == [3, 3, 3]
    assert main(["sweep", "--run", str(run), "--samplers", "ddim", "--steps", "2", "--n", "4", "--ref-n", "10",
                 "--out", str(tmp_path / "sweep")]) == 0
    assert main(["show", "trajectory", "--run", str(run), "--frames", "2", "--steps", "2", "--device", "cpu"]) == 0
    assert main(["show", "progression", "--run", str(run), "--n", "2", "--device", "cpu"]) == 0
    assert main(["report", "--run", str(run)]) == 0
    scale, cell = CELL // 16, CELL // 16 * 16 + PADDING  # a 16 px image enlarged, and the gap after it
    assert Image.open(run / "progression.png").height == 2 * cell + PADDING  # steps 1 and 2

    pipe = Pipeline.from_run(run, device="cpu")
    picture, _ = trajectory(pipe, 1, 3, seed=4, sampler="ddim", steps=5)
    reference = pipe(1, "ddim", 5, seed=4, progress=False)  # the same noise and class, decoded
    pixels = torch.from_numpy(np.array(picture.convert("L")))
    top, left = pixels.shape[0] - cell, pixels.shape[1] - cell  # the last column of the row x0 #1
    assert torch.equal(pixels[top:top + 16 * scale:scale, left:left + 16 * scale:scale], reference[0, 0])


def test_a_latent_run_refuses_a_swapped_autoencoder_with_exit_2(autoencoder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    ae = tmp_path / "ae"
    shutil.copytree(autoencoder, ae)
    run = train(latent_config(ae), tmp_path / "latent", progress=False)
    shutil.rmtree(ae)
    train(tiny_autoencoder(**{"train.seed": 1}), ae, progress=False)  # another autoencoder where it was
    with pytest.raises(InputError, match="no longer holds the weights"):
        Pipeline.from_run(run.path, device="cpu")
    capsys.readouterr()
    assert main(["sample", "--run", str(run.path), "--n", "2", "--steps", "2"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no longer holds the weights" in error
    assert not (run.path / "samples.npz").exists()


def test_an_autoencoder_run_does_not_sample_and_a_diffusion_run_is_not_an_autoencoder(autoencoder, tmp_path, capsys):
    assert main(["sample", "--run", str(autoencoder), "--n", "2"]) == 2
    assert "autoencoder run" in capsys.readouterr().err
    diffusion = train(tiny_config(), tmp_path / "pixels", progress=False)
    with pytest.raises(InputError, match="not an autoencoder run"):
        load_codec(str(diffusion.path))


def test_train_autoencoder_from_the_command_line_and_a_latent_run_on_it(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    ae, latent = tmp_path / "ae", tmp_path / "latent"
    assert main(["train-autoencoder", "--data", "digits", "--image-size", "16", "--widths", "[8,16]", "--z-channels",
                 "2", "--max-steps", "3", "--batch-size", "8", "--device", "cpu", "--out", str(ae),
                 "--no-progress"]) == 0
    assert main(["train", "--data", "digits", "--image-size", "16", "--autoencoder", str(ae), "--max-steps", "2",
                 "--batch-size", "8", "--set", "model.channels=[8,16]", "--set", "model.attention=[false,true]",
                 "--set", "sample.steps=2", "--device", "cpu", "--out", str(latent), "--no-progress"]) == 0
    assert main(["sample", "--run", str(latent), "--n", "2"]) == 0
    assert main(["train-autoencoder", "--resume", str(latent)]) == 2  # a diffusion run is not resumed as an autoencoder


# ---- diffusers' AutoencoderKL ----------------------------------------------------------------------------


def test_a_saved_diffusers_autoencoder_round_trips_as_diffusers_does(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                                  latent_channels=4, norm_num_groups=4, layers_per_block=1, scaling_factor=0.5)
    vae.save_pretrained(tmp_path / "vae")
    codec = load_codec(f"diffusers:{tmp_path / 'vae'}")
    assert (codec.channels, codec.factor, codec.scale) == (4, 2, 0.5)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        mean = vae.eval().encode(x).latent_dist.mean
        expected = vae.decode(mean).sample
    torch.testing.assert_close(codec.encode(x), mean * 0.5)
    torch.testing.assert_close(codec.decode(codec.encode(x)), expected)
    assert len(codec.sha256) == 64
    with pytest.raises(InputError, match="not the one this run was trained with"):
        load_codec(f"diffusers:{tmp_path / 'vae'}", sha256="0" * 64)


def test_a_missing_autoencoder_is_one_line(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="does not exist"):
        load_codec(str(tmp_path / "nowhere"))
    with pytest.raises(InputError, match="not a diffusers AutoencoderKL folder"):
        load_codec(f"diffusers:{tmp_path}")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InputError, match="holds no weights"):
        load_codec(f"diffusers:{tmp_path}")
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as on a machine without the optional extra
    with pytest.raises(InputError, match=r"pip install 'ddpm-textbook\[diffusers\]'"):
        load_codec(f"diffusers:{tmp_path}")


# ---- a run that trains its own autoencoder -------------------------------------------------------




def _weights(run: RunDir) -> dict:
    return {key: load_file(run.latest() / f"{key}.safetensors") for key in ("model", "ema")}


def _same(a: dict, b: dict) -> bool:
    return all(a[key].keys() == b[key].keys() and all(torch.equal(a[key][k], b[key][k]) for k in a[key]) for key in a)


def test_a_run_trains_its_own_autoencoder_first_and_its_directory_alone_samples(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    run = train(own_config(), tmp_path / "run", progress=False)
    autoencoder = RunDir(run.path / "autoencoder")
    assert load_meta(autoencoder.latest())["step"] == 4 and load_meta(run.latest())["step"] == 4
    saved = run.load_config()
    assert saved.latent.autoencoder == "own" and saved.latent.factor == 2 and saved.latent.channels == 4
    assert saved.latent.sha256 == file_sha256(autoencoder.latest() / "ema.safetensors")
    assert isinstance(autoencoder.load_config(), AutoencoderRun)
    assert autoencoder.load_config().autoencoder.channels == [8, 16]
    stage = json.loads((run.path / "autoencoder.json").read_text())
    assert stage["seconds"] >= stage["autoencoder_seconds"] > 0
    moved = shutil.move(run.path, tmp_path / "moved")  # the directory alone: it names no path outside itself
    images = Pipeline.from_run(moved, device="cpu")(3, progress=False)
    assert images.shape == (3, 1, 16, 16)


@pytest.mark.parametrize("crash", ["in the autoencoder", "between the stages", "in the diffusion model"])
def test_a_run_with_its_own_autoencoder_resumes_bit_exactly_from_either_stage(tmp_path, monkeypatch, crash):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    straight = train(own_config(), tmp_path / "straight", progress=False)
    crashed = train(own_config(), tmp_path / "crashed", progress=False)
    # roll the run back to what a kill -9 at that moment leaves (every checkpoint is written atomically)
    if crash == "in the diffusion model":
        shutil.rmtree(crashed.checkpoints / "step_000004")
        (crashed.checkpoints / "latest").write_text("step_000002")
    else:
        shutil.rmtree(crashed.checkpoints)
        (crashed.path / "log.csv").unlink()
    if crash == "in the autoencoder":
        (crashed.path / "autoencoder.json").unlink()
        autoencoder = RunDir(crashed.path / "autoencoder")
        shutil.rmtree(autoencoder.checkpoints / "step_000004")
        (autoencoder.checkpoints / "latest").write_text("step_000002")
    main(["train", "--resume", str(crashed.path), "--no-progress"])
    assert _losses(straight) == _losses(crashed)
    assert _same(_weights(straight), _weights(crashed))
    assert _same(_weights(RunDir(straight.path / "autoencoder")), _weights(RunDir(crashed.path / "autoencoder")))


def test_the_diffusion_model_trains_for_what_the_autoencoder_left_of_the_budget(tmp_path, monkeypatch):
    from ddpm.training.loop import Trainer
    from ddpm.training.tasks import DiffusionTask

    config = own_config(**{"train.max_minutes": 3, "latent.own_share": 0.25})
    assert own_autoencoder(config.override({"data.image_size": 16})).train.max_minutes == 0.75
    task = DiffusionTask(tiny_config(**{"data.name": "digits", "data.image_size": 16}),
                         load_data("digits", image_size=16), torch.device("cpu"), False, False, tmp_path)
    assert Trainer.build(task, config.train, torch.device("cpu"), spent=50.0).clock.limit == 180 - 50
    with pytest.raises(InputError, match="the autoencoder took 3.00 of the run's 3 minutes"):
        Trainer.build(task, config.train, torch.device("cpu"), spent=180.0)


def test_a_run_that_trains_its_own_autoencoder_without_a_budget_for_it_is_refused(tmp_path, capsys):
    code = main(["train", "--data", "digits", "--image-size", "32", "--autoencoder", "own", "--max-steps", "3",
                 "--out", str(tmp_path / "run")])
    assert code == 2 and "give --max-minutes, or --set latent.own_steps=N" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_signal_in_the_autoencoders_stage_stops_the_run_and_resume_goes_on(tmp_path, monkeypatch, capsys):
    import contextlib

    import ddpm.training.loop as loop

    class StopAfter:  # a stop request that arrives after `reads` looks: after two of the autoencoder's steps
        def __init__(self, reads):
            self.reads = reads

        @property
        def requested(self):
            self.reads -= 1
            return "SIGTERM" if self.reads < 0 else None

    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    straight = train(own_config(), tmp_path / "straight", progress=False)
    requests = iter([StopAfter(2)])
    monkeypatch.setattr(loop, "stop_on_signal", lambda: contextlib.nullcontext(next(requests, StopAfter(10**9))))
    stopped = train(own_config(), tmp_path / "stopped", progress=False)
    assert f"continue the run with: ddpm train --resume {stopped.path}" in capsys.readouterr().out
    assert RunDir(stopped.path / "autoencoder").latest().name == "step_000002"
    assert not (stopped.path / "autoencoder.json").exists() and stopped.latest() is None
    main(["train", "--resume", str(stopped.path), "--no-progress"])
    assert _same(_weights(straight), _weights(stopped)) and _losses(straight) == _losses(stopped)
