"""Image-classification DataModules: scikit-learn digits, MNIST, Fashion-MNIST, CIFAR-10/100 and a user's image folder.

`VisionDataModule` adds to the image base (`archlab.data.base`) what classification sources share: the stratified
split of a pool, checks that the files are there, and the per-sample random crop and flip; each source adds only where
its files are and how to read them. Datasets that fit in memory are held as uint8 tensors.

References: LeCun et al. 1998, "Gradient-based learning applied to document recognition" (MNIST); Xiao et al. 2017,
"Fashion-MNIST" (arXiv:1708.07747); Krizhevsky 2009, "Learning Multiple Layers of Features from Tiny Images"
(CIFAR, https://www.cs.toronto.edu/~kriz/cifar.html).
"""

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset
from torchvision.transforms.v2 import functional as TF

from archlab.data.base import ImageDataModule, TensorBatchDataset, check_fraction, split_indices
from archlab.data.download import check_reachable, download_errors
from archlab.data.image_files import check_images, read_image
from archlab.errors import ConfigError, CorruptFileError, DatasetNotFoundError
from archlab.tracking import mask_url

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_CLASSES = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl", "boy",
    "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
    "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish",
    "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange",
    "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine",
    "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk",
    "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm",
]  # fmt: skip
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
DIGIT_CLASSES = [str(d) for d in range(10)]

# The share of the data held out for testing when a source has no test split of its own.
DEFAULT_TEST_FRACTION = 0.2


class ImageFiles(Dataset):
    """Image files read per sample, resized (shorter side) and centre-cropped to a square uint8 tensor."""

    def __init__(self, samples: list[tuple[str, int]], *, image_size: int, in_channels: int) -> None:
        self.samples = samples
        self.image_size = image_size
        self.mode = "L" if in_channels == 1 else "RGB"

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        image = read_image(path, self.mode, name="ImageFolder")
        image = TF.center_crop(TF.resize(image, [self.image_size]), [self.image_size, self.image_size])
        return TF.pil_to_tensor(image), label  # (C, S, S) uint8


def random_crop_flip(x: Tensor, *, padding: int, hflip: bool) -> Tensor:
    """Per sample: a random crop of x (B, C, H, W) zero-padded by `padding`, then a horizontal flip with p = 0.5.

    Hand-written rather than kornia's RandomCrop + RandomHorizontalFlip, which measured slower per batch on a 2-core
    CPU (best of 15 rounds, issue 8): 0.94 vs 0.05 ms at (64, 1, 8, 8), the digits configs' batch, and 1.55 vs 0.94 ms
    at (128, 3, 32, 32); torchvision.transforms.v2 draws one crop and one flip for a whole batch tensor. Here each
    sample gets its own, in one gather over the batch.
    """
    b, c, h, w = x.shape
    p = padding
    device = x.device
    padded = F.pad(x, (p, p, p, p))  # (B, C, H + 2p, W + 2p), zeros
    rows = torch.randint(0, 2 * p + 1, (b, 1), device=device) + torch.arange(h, device=device)  # (B, H)
    cols = torch.randint(0, 2 * p + 1, (b, 1), device=device) + torch.arange(w, device=device)  # (B, W)
    if hflip:
        flip = torch.rand(b, 1, device=device) < 0.5  # (B, 1)
        cols = torch.where(flip, cols.flip(1), cols)
    batch = torch.arange(b, device=device).view(b, 1, 1, 1)
    channel = torch.arange(c, device=device).view(1, c, 1, 1)
    return padded[batch, channel, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]  # (B, C, H, W)


class VisionDataModule(ImageDataModule):
    """Image classification: a seeded stratified split of the source's pool (test too where it has no official one),
    then the base's loaders and on-device float/augment/normalise."""

    name: str
    # Whether the source ships an official test split; without one, test is carved from the pool with test_fraction.
    has_test_split: bool = True

    def __init__(
        self,
        *,
        root: str = "data",
        batch_size: int = 128,
        val_fraction: float = 0.1,
        test_fraction: float | None = None,
        seed: int = 0,
        augment: bool = False,
        crop_padding: int | None = None,
        hflip: bool = True,
        normalize: bool = True,
        num_workers: int = 0,
        download: bool = False,
    ) -> None:
        """Data in `root`; `seed` fixes the split only; `test_fraction` (default 0.2) applies only to sources without
        an official test split, and setting it for one that has one is an error.

        `augment`: random crop after zero padding by `crop_padding` (default image_size // 8, at least 1) and, if
        `hflip`, a random horizontal flip, per sample, on training batches only. `normalize`: standardise each channel
        with the training split's mean and std; False leaves pixels in [0, 1].
        """
        super().__init__(
            batch_size=batch_size, seed=seed, augment=augment, normalize=normalize, num_workers=num_workers
        )
        self.test_fraction_given = test_fraction is not None
        test_fraction = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
        check_fraction(self.name, "val_fraction", val_fraction)
        check_fraction(self.name, "test_fraction", test_fraction)
        if crop_padding is not None and crop_padding < 0:
            raise ConfigError(
                f"{self.name}: data.crop_padding must be a non-negative integer or null (image_size // 8), "
                f"got {crop_padding}"
            )
        self.root = root
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.crop_padding = crop_padding
        self.hflip = hflip
        self.download = download
        self._check_source()

    @property
    def padding(self) -> int:
        """The crop padding in use: `crop_padding`, or image_size // 8 (at least 1) when that is None."""
        return self.crop_padding if self.crop_padding is not None else max(self.image_size // 8, 1)

    def _check_fractions(self, *, carve_val: bool, carve_test: bool) -> None:
        if self.test_fraction_given and not carve_test:
            raise ConfigError(
                f"{self.name}: data.test_fraction={self.test_fraction} has no effect because the test split is "
                "given (the official test set, or a test/ folder); remove data.test_fraction"
            )
        if carve_val and carve_test and self.val_fraction + self.test_fraction >= 1:
            raise ConfigError(
                f"{self.name}: data.val_fraction ({self.val_fraction}) + data.test_fraction ({self.test_fraction}) "
                "must sum to less than 1 so that training samples remain"
            )

    def _check_source(self) -> None:
        """Stop before any data loads when the files are absent and may not be downloaded."""
        self._check_fractions(carve_val=True, carve_test=not self.has_test_split)
        if not self.download:
            self._check_files()

    def check_download(self) -> None:
        if self.download and not all(path.is_file() for path in self._required_files()) and hasattr(self, "source"):
            urls = getattr(self.source, "mirrors", None) or [self.source.url]  # the torchvision dataset's servers
            check_reachable(self.name, urls, self.root)

    def _required_files(self) -> list[Path]:
        return []

    def _check_files(self) -> None:
        if "://" in self.root and self._required_files():
            raise DatasetNotFoundError(
                f"{self.name}: data.root must be a local directory, got the URL {mask_url(self.root)}; download the "
                "files there with --data.download true, or pass the directory that holds them"
            )
        missing = [path for path in self._required_files() if not path.is_file()]
        if missing:
            directory = missing[0].parent.resolve()
            folder = missing[0].parent.relative_to(self.root)
            raise DatasetNotFoundError(
                f"{self.name} was not found: {directory} lacks {', '.join(path.name for path in missing)}. "
                f"Pass --data.download true on a machine with internet to download it there, or --data.root DIR "
                f"where DIR/{folder} holds the files from an earlier download"
            )

    def prepare_data(self) -> None:
        if self.download and not all(path.is_file() for path in self._required_files()):
            with download_errors(self.name, self.root):
                self._download()

    def _download(self) -> None:
        raise NotImplementedError

    def _load(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor] | None]:
        """Read ((x, y) of the pool, (x, y) of the official test split or None); x is (N, C, H, W)."""
        raise NotImplementedError

    def make_datasets(self) -> dict[str, Dataset]:
        self._check_files()
        (x, y), test = self._load()
        train, val, carved_test = split_indices(
            len(y),
            labels=y,
            val_fraction=self.val_fraction,
            test_fraction=0.0 if test else self.test_fraction,
            seed=self.seed,
            name=self.name,
            unit="images",
        )
        if test is None:
            test = x[carved_test], y[carved_test]
        return {
            "train": TensorBatchDataset(x[train], y[train]),
            "val": TensorBatchDataset(x[val], y[val]),
            "test": TensorBatchDataset(*test),
        }

    def augment_batch(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return random_crop_flip(x, padding=self.padding, hflip=self.hflip), y


class Digits(VisionDataModule):
    """scikit-learn's bundled 8x8 handwritten digits (1797 images); needs no download, `root` and `download` unused."""

    name = "Digits"
    in_channels = 1
    num_classes = 10
    image_size = 8
    class_names = DIGIT_CLASSES
    has_test_split = False

    def _load(self) -> tuple[tuple[Tensor, Tensor], None]:
        from sklearn.datasets import load_digits  # here: importing scikit-learn costs every other source a second

        digits = load_digits()
        x = torch.from_numpy(digits.images).float().div(16).unsqueeze(1)  # (1797, 1, 8, 8), pixels 0..16 -> [0, 1]
        return (x, torch.from_numpy(digits.target).long()), None


class MNIST(VisionDataModule):
    """MNIST handwritten digits, 28x28 grey, read by torchvision from its IDX files in `root`/MNIST/raw."""

    name = "MNIST"
    in_channels = 1
    num_classes = 10
    image_size = 28
    class_names = DIGIT_CLASSES
    source = torchvision.datasets.MNIST

    def _required_files(self) -> list[Path]:
        raw = Path(self.root) / self.source.__name__ / "raw"
        return [raw / f"{split}-{kind}-ubyte" for split in ("train", "t10k") for kind in ("images-idx3", "labels-idx1")]

    def _download(self) -> None:
        self.source(self.root, train=False, download=True)

    def _load(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        train = self.source(self.root, train=True)
        test = self.source(self.root, train=False)
        # .data is uint8 (N, 28, 28); the per-sample __getitem__ would build a PIL image per digit.
        return (train.data.unsqueeze(1), train.targets.long()), (test.data.unsqueeze(1), test.targets.long())


class FashionMNIST(MNIST):
    """Fashion-MNIST clothing images, 28x28 grey, read by torchvision from its IDX files in `root`/FashionMNIST/raw."""

    name = "FashionMNIST"
    class_names = FASHION_MNIST_CLASSES
    source = torchvision.datasets.FashionMNIST


# Everything a CIFAR python batch asks the unpickler for: numpy arrays (their class, dtype and reconstruction) and
# the codec that Python 3 pickles of bytes name. Python 2's cPickle wrote numpy.core; numpy 2 writes numpy._core.
CIFAR_PICKLE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a class or function outside the allowed ones; the message is its `module.name`."""


class CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays, lists, dicts and plain values, and refuses any other class or function.

    A CIFAR batch is a pickle, and `pickle.load` runs whatever the file asks for, so a file planted under
    `--data.root` would run code. torchvision guards its own reader with the md5 of each official batch; archlab
    reads the batches itself (whole arrays, no per-sample PIL images) and guards them here instead, which also
    accepts batches written by other tools (a subset, a re-export) whose md5 differs: nothing outside
    CIFAR_PICKLE_GLOBALS can be built, so nothing can run.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in CIFAR_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise RefusedGlobal(f"{module}.{name}")


def read_cifar_batches(paths: list[Path], label_key: bytes) -> tuple[Tensor, Tensor]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 from CIFAR python pickle batches."""
    images, labels = [], []
    for path in paths:
        with path.open("rb") as file:
            try:
                # encoding="bytes" as on the CIFAR page: the batches are Python 2 pickles, so keys come back as bytes.
                batch = CifarUnpickler(file, encoding="bytes").load()
                data = np.asarray(batch[b"data"], dtype=np.uint8)  # (n, 3072), channel-major rows
                batch_labels = [int(label) for label in batch[label_key]]
            except RefusedGlobal as error:
                raise CorruptFileError(
                    f"CIFAR batch {path.resolve()} asks the unpickler for {error}, which no CIFAR batch holds: "
                    "refused without running it (archlab builds only numpy arrays and plain values from dataset "
                    "pickles). Delete the folder and download the dataset again with --data.download true."
                ) from None
            except Exception as error:  # truncated, random bytes, another format, missing keys
                raise _corrupt_cifar(path, error) from None
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(batch_labels):
            raise CorruptFileError(
                f"CIFAR batch {path.resolve()} holds data of shape {data.shape} and {len(batch_labels)} labels; a "
                "batch holds (n, 3072) uint8 rows and n labels. Delete the folder and download it again with "
                "--data.download true."
            )
        images.append(data)
        labels.extend(batch_labels)
    x = torch.from_numpy(np.concatenate(images)).view(-1, 3, 32, 32)
    return x, torch.tensor(labels, dtype=torch.long)


def _corrupt_cifar(path: Path, error: Exception) -> CorruptFileError:
    reason = f"{type(error).__name__}: {str(error).strip()[:200]}" if str(error).strip() else type(error).__name__
    return CorruptFileError(
        f"CIFAR batch {path.resolve()} cannot be read as a CIFAR python batch ({reason}); it is truncated, corrupt "
        "or not from the CIFAR python version. Delete the folder and download the dataset again with "
        "--data.download true."
    )


class CIFAR10(VisionDataModule):
    """CIFAR-10, 32x32 colour, 10 classes, from torchvision's python pickle batches in `root`/cifar-10-batches-py."""

    name = "CIFAR10"
    in_channels = 3
    num_classes = 10
    image_size = 32
    class_names = CIFAR10_CLASSES
    # Download through torchvision, but read the batches ourselves: torchvision's CIFAR class checks the md5 of every
    # batch each time it is constructed and serves per-sample PIL images.
    source = torchvision.datasets.CIFAR10
    label_key = b"labels"

    def _files(self, entries: list[list[str]]) -> list[Path]:
        return [Path(self.root) / self.source.base_folder / filename for filename, _md5 in entries]

    def _required_files(self) -> list[Path]:
        return self._files(self.source.train_list + self.source.test_list)

    def _download(self) -> None:
        self.source(self.root, train=False, download=True)

    def _load(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        train = read_cifar_batches(self._files(self.source.train_list), self.label_key)
        test = read_cifar_batches(self._files(self.source.test_list), self.label_key)
        return train, test


class CIFAR100(CIFAR10):
    """CIFAR-100, 32x32 colour, 100 fine classes, from torchvision's python pickle files in `root`/cifar-100-python."""

    name = "CIFAR100"
    num_classes = 100
    class_names = CIFAR100_CLASSES
    source = torchvision.datasets.CIFAR100
    label_key = b"fine_labels"


def _has_image(directory: Path) -> bool:
    for _dirpath, _dirnames, filenames in os.walk(directory, followlinks=True):
        if any(filename.lower().endswith(IMG_EXTENSIONS) for filename in filenames):
            return True
    return False


class ImageFolder(VisionDataModule):
    """A user's images in `path`/<class_name>/*, or in `path`/train|val|test/<class_name>/*; `root` is unused."""

    name = "ImageFolder"
    has_test_split = False

    def __init__(self, path: str, *, image_size: int = 64, in_channels: int = 3, **kwargs: Any) -> None:
        """Images are resized (shorter side) and centre-cropped to `image_size`; `in_channels` 1 reads them as grey.

        With `path`/train present, `path`/val and `path`/test are the other splits, and a missing one is carved from
        train with `val_fraction` / `test_fraction`; without it, all three are carved from `path`.
        """
        # Set before the base __init__, whose _check_source scans the folder.
        self.path = path
        self.image_size = image_size
        self.in_channels = in_channels
        super().__init__(**kwargs)

    def _check_source(self) -> None:
        if self.image_size < 1:
            raise ConfigError(f"ImageFolder: data.image_size must be a positive integer, got {self.image_size}")
        if self.in_channels not in (1, 3):
            raise ConfigError(f"ImageFolder: data.in_channels must be 1 (greyscale) or 3 (RGB), got {self.in_channels}")
        folder = Path(self.path)
        if not folder.is_dir():
            raise DatasetNotFoundError(
                f"ImageFolder: data.path {folder.resolve()} is not a directory; point --data.path to a folder laid out "
                "as <path>/<class_name>/<images> or <path>/train/<class_name>/<images> (also val/, test/)"
            )
        self._split_dirs = {split: folder / split for split in ("train", "val", "test") if (folder / split).is_dir()}
        if self._split_dirs and "train" not in self._split_dirs:
            raise ConfigError(
                f"ImageFolder: {folder.resolve()} has {', '.join(self._split_dirs)}/ but no train/; add train/ or lay "
                "the images out as <path>/<class_name>/<images>"
            )
        train_dir = self._split_dirs.get("train", folder)
        self.class_names = self._class_dirs(train_dir)
        if not self.class_names:
            raise ConfigError(
                f"ImageFolder: {train_dir.resolve()} holds no class folders; expected <class_name>/ subfolders of "
                f"images ({', '.join(IMG_EXTENSIONS)})"
            )
        for class_name in self.class_names:
            if not _has_image(train_dir / class_name):
                raise ConfigError(
                    f"ImageFolder: class folder {(train_dir / class_name).resolve()} holds no images; accepted "
                    f"extensions: {', '.join(IMG_EXTENSIONS)}"
                )
        for split in ("val", "test"):
            if split in self._split_dirs:
                unknown = sorted(set(self._class_dirs(self._split_dirs[split])) - set(self.class_names))
                if unknown:
                    raise ConfigError(
                        f"ImageFolder: {self._split_dirs[split].resolve()} has class folders {unknown} that "
                        f"{train_dir.resolve()} lacks; the classes are train's: {self.class_names}"
                    )
        self.num_classes = len(self.class_names)
        self._check_fractions(carve_val="val" not in self._split_dirs, carve_test="test" not in self._split_dirs)

    @staticmethod
    def _class_dirs(directory: Path) -> list[str]:
        # Hidden folders (.ipynb_checkpoints, .git) are not classes.
        return sorted(
            entry.name for entry in os.scandir(directory) if entry.is_dir() and not entry.name.startswith(".")
        )

    def make_datasets(self) -> dict[str, Dataset]:
        class_to_idx = {name: index for index, name in enumerate(self.class_names)}
        train_dir = self._split_dirs.get("train", Path(self.path))
        pool = make_dataset(train_dir, class_to_idx, extensions=IMG_EXTENSIONS)
        train, val, test = split_indices(
            len(pool),
            labels=torch.tensor([label for _path, label in pool]),
            val_fraction=0.0 if "val" in self._split_dirs else self.val_fraction,
            test_fraction=0.0 if "test" in self._split_dirs else self.test_fraction,
            seed=self.seed,
            name=self.name,
            unit="images",
        )
        indices = {"train": train, "val": val, "test": test}
        samples = {split: [pool[i] for i in index.tolist()] for split, index in indices.items()}
        for split in ("val", "test"):
            if split in self._split_dirs:
                samples[split] = make_dataset(self._split_dirs[split], class_to_idx, IMG_EXTENSIONS, allow_empty=True)
        check_images((path for split_samples in samples.values() for path, _label in split_samples), name=self.name)
        return {
            split: ImageFiles(split_samples, image_size=self.image_size, in_channels=self.in_channels)
            for split, split_samples in samples.items()
        }
