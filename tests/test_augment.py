"""Non-leaking augmentation (data/augment.py): each transform a bijection on the pixels, nothing done at
p = 0, and a zero label leaving the network as it is without augmentation."""

from __future__ import annotations

import pytest
import torch

from helpers import TINY
from ddpm import Config, Pipeline
from ddpm.cli import main
from ddpm.data.augment import AUGMENT_DIM, augment_images, augment_labels, draw_augmentations
from ddpm.factory import build_network

KINDS = {"xflip": (1, 0, 0), "translate": (0, 1, 0), "rotate90": (0, 0, 1)}


def _draw(n: int, probabilities, seed: int = 0) -> torch.Tensor:
    return draw_augmentations(n, 8, *probabilities, torch.Generator().manual_seed(seed), "cpu")


def test_at_p_zero_nothing_is_done_and_the_label_is_zero():
    x = torch.randn(16, 3, 8, 8)
    done = _draw(16, (0.0, 0.0, 0.0))
    assert not done.any()
    assert torch.equal(augment_images(x, done), x) and not augment_labels(done, 8).any()


@pytest.mark.parametrize("kind", KINDS)
def test_each_transform_moves_pixels_and_loses_none(kind):
    """On images whose every pixel is distinct, each transform (alone, p = 1) is a permutation of each
    image's pixels, one that is not the identity, and its label says it was done."""
    x = torch.arange(32 * 2 * 8 * 8, dtype=torch.float32).reshape(32, 2, 8, 8)
    done = _draw(32, KINDS[kind], seed=1)
    out = augment_images(x, done)
    for before, after in zip(x, out):
        assert torch.equal(after.flatten().sort().values, before.flatten().sort().values)
    moved = (out != x).flatten(1).any(1)
    touched = done.any(1)
    assert torch.equal(moved, touched) and touched.float().mean() > 0.6  # a shift of (0, 0) is no move
    assert torch.equal(augment_labels(done, 8).abs().sum(1) > 0, touched)


def test_the_labels_shape_and_a_mirror_and_a_half_turn():
    done = torch.tensor([[1, 0, 0, 0], [0, 2, -1, 2], [0, 0, 0, 0]])
    labels = augment_labels(done, 8)
    assert labels.shape == (3, AUGMENT_DIM)
    torch.testing.assert_close(labels[0], torch.tensor([1.0, 0, 0, 0, 0]))
    torch.testing.assert_close(labels[1], torch.tensor([0.0, 0.25, -0.125, 2.0, 0.0]), atol=1e-7, rtol=0)
    x = torch.arange(64.0).reshape(1, 1, 8, 8)
    torch.testing.assert_close(augment_images(x.expand(3, 1, 8, 8), done)[1],
                               torch.rot90(x[0].roll((-1, 2), dims=(-2, -1)), 2, dims=(-2, -1)))


@pytest.mark.parametrize("network", ["unet", "mp-unet"])
def test_the_zero_label_is_the_network_without_augmentation(network):
    """Sampling passes no label: the network conditioned on augmentation answers as at label zero."""
    config = Config().override({"model.network": network, "model.channels": [8, 16], "model.attention": [False, True],
                                "data.augment_rotate90": 0.5, "data.image_size": 8})
    torch.manual_seed(0)
    model = build_network(config).eval()
    for parameter in model.parameters():  # the learned gains away from zero, so the embedding matters
        parameter.data.add_(0.1)
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([3, 40, 500, 900])
    zero = torch.zeros(4, AUGMENT_DIM)
    assert torch.equal(model(x, t), model(x, t, augment=zero))
    assert not torch.allclose(model(x, t), model(x, t, augment=zero + 1))


def test_a_run_trains_with_augmentation_and_samples_clean_images(tmp_path):
    run = tmp_path / "run"
    augment = ["--set", "data.augment_xflip=0.5", "--set", "data.augment_translate=0.5", "--set",
               "data.augment_rotate90=0.5"]
    assert main(["train", *TINY, *augment, "--out", str(run), "--max-steps", "2"]) == 0
    pipe = Pipeline.from_run(run, device="cpu")
    assert pipe.network.augment_embedding is not None and pipe(2, steps=3, progress=False).shape == (2, 1, 28, 28)
