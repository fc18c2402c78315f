"""The Pipeline: one object from a run to images, every option left out taken from the run's config."""

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import GaussianDenoiser, trained
from ddpm import Config, Diffusion, InputError, Pipeline, make_schedule


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    out = trained(tmp_path_factory, "pipe", "--max-steps", "2")
    return Pipeline.from_run(out, device="cpu")


def test_the_readme_calls(pipe):
    images = pipe(4)
    assert images.shape == (4, 1, 28, 28) and images.dtype == torch.uint8 and pipe.step == 2
    pictures = pipe(4, sampler="dpm++2m", steps=20, seed=0, output="pil")
    assert len(pictures) == 4 and all(isinstance(p, Image.Image) and p.size == (28, 28) for p in pictures)
    same = pipe(4, sampler="dpm++2m", steps=20, seed=0, progress=False)
    assert all(np.array_equal(np.array(p), image[0].numpy()) for p, image in zip(pictures, same))


def test_float_output_is_the_uint8_output_before_rounding(pipe):
    floats = pipe(3, seed=1, output="float", progress=False)
    assert floats.dtype == torch.float32 and 0 <= floats.min() and floats.max() <= 1
    assert torch.equal((floats * 255).round().to(torch.uint8), pipe(3, seed=1, progress=False))


def test_unspecified_options_are_the_runs_own(pipe):
    s = pipe.config.sample  # TINY trains with sample.steps=5, the default ddpm sampler
    options = pipe.plan()
    assert (options.sampler, options.steps, options.spacing, options.options) == \
        (s.sampler, 5, s.spacing, s.options_for("ddpm"))
    assert pipe.plan(None, "ddim").options == s.options_for("ddim") and pipe.plan(None, "heun").options.values() == {}
    changed = Pipeline(pipe.network, pipe.diffusion, copy.deepcopy(pipe.config))
    changed.config.sample.sampler, changed.config.sample.options["eta"] = "ddim", 0.5
    assert changed.plan().sampler == "ddim" and changed.plan().options.eta == 0.5
    # the run's sampler decides the images: the default call equals the explicit one
    assert torch.equal(changed(2, progress=False), pipe(2, "ddim", eta=0.5, progress=False))
    assert not torch.equal(changed(2, progress=False), pipe(2, progress=False))


def test_the_seed_fixes_the_images(pipe):
    assert torch.equal(pipe(3, seed=5, progress=False), pipe(3, seed=5, progress=False))
    assert not torch.equal(pipe(3, seed=5, progress=False), pipe(3, seed=6, progress=False))


@pytest.mark.parametrize("kwargs, message", [
    ({"output": "numpy"}, "unknown output 'numpy'"),
    ({"sampler": "euler"}, "unknown sampler 'euler'"),
    ({"steps": 101}, "--steps must be between 1 and the model's T = 100"),
    ({"sampler": "heun", "eta": 0.5}, "eta applies to the ddim sampler only"),
    ({"guidance": 2.0}, "--guidance needs a class-conditional run"),
    ({"classes": 3}, "trained without classes"),
    ({"spacing": "cubic"}, "unknown timestep spacing"),
])
def test_bad_options_are_refused_before_any_work(pipe, kwargs, message):
    with pytest.raises(InputError, match=message):
        pipe(2, **kwargs)


def test_a_pipeline_of_the_exact_denoiser_samples_the_gaussian():
    """Pipeline(network, diffusion, config) wraps any network: here the optimal eps for N(mu, sigma^2)."""
    schedule = make_schedule("cosine", 1000)
    mu, sigma = torch.tensor(0.2), torch.tensor(0.3)

    class Exact(torch.nn.Module):
        def forward(self, x, t):
            return GaussianDenoiser(schedule, mu, sigma)(x, t).eps

    config = Config().override({"data.image_size": 4, "data.channels": 1, "sample.clip_denoised": False})
    images = Pipeline(Exact(), Diffusion(schedule, "eps"), config)(500, "ddim", 100, output="float", progress=False)
    x = images * 2 - 1
    assert abs(x.mean().item() - 0.2) < 0.01 and abs(x.std().item() / 0.3 - 1) < 0.03
