"""Classifier-free guidance: the mix is right for every prediction target, the labels reach the
network, and the command line writes labelled samples and per-class grids."""

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import GaussianDenoiser, TINY, trained
from ddpm import Config, Denoiser, Diffusion, Pipeline, UNet, make_schedule
from ddpm.cli import main
from ddpm.diffusion.guidance import drop_labels



@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_guidance_mixes_the_conditional_and_unconditional_predictions(objective):
    schedule = make_schedule("cosine", 100)
    network = UNet(1, [8, 16], [False, True], time_emb_dim=16, num_classes=3).eval()
    with torch.no_grad():  # random weights everywhere (some start at zero), so that classes differ
        for parameter in network.parameters():
            parameter.normal_(0, 0.2)
    x, t, labels = torch.randn(4, 1, 8, 8), torch.tensor([5, 30, 60, 95]), torch.tensor([0, 1, 2, 1])
    plain = Denoiser(network, schedule, objective, clip_denoised=False)
    with torch.no_grad():
        conditional = plain.conditioned(labels, guidance=1.0)(x, t)
        unconditional = plain.conditioned(labels, guidance=0.0)(x, t)
        guided = plain.conditioned(labels, guidance=3.0)(x, t)
        by_hand_conditional = network(x, t, labels)
        by_hand_unconditional = network(x, t)  # y=None is the null class
    expected = {"eps": 0, "x0": 1, "v": None}
    if expected[objective] is not None:
        assert torch.allclose(conditional[expected[objective]], by_hand_conditional, atol=1e-5)
        assert torch.allclose(unconditional[expected[objective]], by_hand_unconditional, atol=1e-5)
    assert not torch.allclose(conditional.eps, unconditional.eps, atol=1e-3)
    # Whatever the network predicts, guidance is eps_u + w (eps_c - eps_u) in eps (and x0) space.
    for field in ("eps", "x0"):
        u, c = getattr(unconditional, field), getattr(conditional, field)
        assert torch.allclose(getattr(guided, field), u + 3.0 * (c - u), atol=1e-4)


def test_guidance_is_one_batched_network_call():
    schedule = make_schedule("cosine", 100)
    network = UNet(1, [8, 16], [False, True], time_emb_dim=16, num_classes=3).eval()
    batches = []
    network.register_forward_hook(lambda module, args, output: batches.append(args[0].shape[0]))
    with torch.no_grad():
        Denoiser(network, schedule, "v").conditioned(torch.tensor([0, 1, 2]), guidance=2.5)(torch.randn(3, 1, 8, 8),
                                                                                           torch.tensor([1, 2, 3]))
    assert batches == [6]


def test_label_dropout_rate():
    labels = torch.zeros(100_000, dtype=torch.long)
    dropped = drop_labels(labels, 0.1, null_class=10, generator=torch.Generator().manual_seed(0))
    assert set(dropped.unique().tolist()) == {0, 10}
    assert abs((dropped == 10).float().mean().item() - 0.1) < 0.005


class _GaussianClasses(torch.nn.Module):
    """An eps-network that is optimal for class y ~ N(mu_y, sigma^2): checks that each sample's own
    label reaches the network, across batches."""

    def __init__(self, schedule, mus, sigma):
        super().__init__()
        self.num_classes, self.anchor = len(mus), torch.nn.Parameter(torch.zeros(()))
        self.experts = [GaussianDenoiser(schedule, torch.tensor(mu), torch.tensor(sigma)) for mu in mus]

    def forward(self, x, t, y=None):
        assert y is not None and (y < self.num_classes).all(), "guidance 1 must not ask for the null class"
        eps = torch.stack([expert(x, t).eps for expert in self.experts])  # [classes, B, ...]
        return eps[y, torch.arange(len(y))]


def test_conditional_sampling_draws_each_label_from_its_class():
    schedule = make_schedule("cosine", 1000)
    mus, sigma = [-0.4, 0.1, 0.4], 0.15  # within [-1, 1] by 4 sigma: to_uint8 clips
    config = Config().override({"data.image_size": 1, "data.channels": 1, "model.num_classes": 3,
                                "sample.clip_denoised": False, "sample.guidance": 1.0})
    pipe = Pipeline(_GaussianClasses(schedule, mus, sigma), Diffusion(schedule, "eps"), config)
    labels = pipe.plan(3000).labels  # 0, 1, 2, 0, 1, 2, ...
    images = pipe(3000, "ddpm", 1000, seed=1, progress=False, batch_size=700)
    x = images.float().flatten() / 127.5 - 1  # uint8 rounding adds noise of 1/127.5: far below the tolerance
    for c, mu in enumerate(mus):
        assert abs(x[labels == c].mean().item() - mu) < 0.02
        assert abs(x[labels == c].std().item() - sigma) / sigma < 0.08  # 1,000 samples: ~2 % standard error


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    return trained(tmp_path_factory, "cond", "--max-steps", "2", "--classes", "10")


def test_sample_class_all_writes_labels_and_a_row_per_class(conditional_run, tmp_path):
    npz, grid = tmp_path / "s.npz", tmp_path / "g.png"
    assert main(["sample", "--run", str(conditional_run), "--n", "30", "--steps", "3", "--class", "all",
                 "--guidance", "3", "--out", str(npz), "--grid", str(grid), "--device", "cpu"]) == 0
    with np.load(npz) as archive:
        assert archive["arr_0"].shape == (30, 28, 28, 1)
        assert archive["arr_1"].tolist() == [i % 10 for i in range(30)]
    assert Image.open(grid).size == (3 * 30 + 2, 10 * 30 + 2)  # 10 rows (classes) of 3


def test_sample_a_list_of_classes(conditional_run, tmp_path):
    npz = tmp_path / "s.npz"
    assert main(["sample", "--run", str(conditional_run), "--n", "4", "--steps", "2", "--class", "3,7",
                 "--out", str(npz), "--grid", str(tmp_path / "g.png"), "--device", "cpu"]) == 0
    assert np.load(npz)["arr_1"].tolist() == [3, 7, 3, 7]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sample", "--run", "{cond}", "--class", "10"], "--class must be 'all' or class numbers in 0..9"),
        (["sample", "--run", "{cond}", "--guidance", "-1"], "--guidance needs a class-conditional run and a weight >= 0"),
        (["train", "--classes", "5", "--out", "{tmp}/x", "--max-steps", "1", "--device", "cpu"], "use --classes 10"),
    ],
)
def test_bad_class_input(argv, message, conditional_run, tmp_path, capsys):
    assert main([a.format(cond=conditional_run, tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err


def test_class_on_an_unconditional_run_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--max-steps", "1", *TINY]) == 0
    assert main(["sample", "--run", str(out), "--class", "3"]) == 2
    assert "trained without classes" in capsys.readouterr().err
