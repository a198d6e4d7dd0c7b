"""Tests of the vision DataModules on small files written in the real on-disk formats (IDX, CIFAR pickles, PNG)."""

import math
import struct
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from jsonargparse import ArgumentError, ArgumentParser
from PIL import Image

from archlab.data import CIFAR10, CIFAR100, MNIST, Digits, FashionMNIST, ImageFolder, VisionDataModule
from archlab.data.base import TensorBatchDataset
from archlab.data.vision import random_crop_flip
from archlab.errors import ConfigError, CorruptFileError, DatasetNotFoundError
from formats import (
    CIFAR10_LABEL_NAMES,
    CIFAR100_FINE_LABEL_NAMES,
    CIFAR100_SUPERCLASSES,
    read_pickle,
    write_cifar,
)

SMALL = {"batch_size": 16}


def write_idx(raw: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    n, h, w = images.shape
    (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, h, w) + images.tobytes())
    (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())


def make_mnist(root: Path, folder: str, n_train: int = 100, n_test: int = 20) -> dict[str, np.ndarray]:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(raw, prefix, images, labels)
        arrays[prefix] = images
    return arrays


def pixels(dm: VisionDataModule, x: torch.Tensor, *, train: bool) -> torch.Tensor:
    """The DataModule's on-device transform of images alone (labels pass through it unchanged)."""
    return dm.transform(x, torch.zeros(len(x), dtype=torch.long), train=train)[0]


def write_images(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(len(str(folder)))
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(folder / f"{i}.png")  # 12 wide


def make_folder(root: Path, *, splits: tuple[str, ...] = ()) -> Path:
    if splits:
        for split in splits:
            for name in ("cat", "dog"):
                write_images(root / split / name, {"train": 6, "val": 2, "test": 3}[split])
    else:
        for name in ("ant", "bee", "cow"):
            write_images(root / name, 10)
    return root


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, VisionDataModule]:
    make_mnist(tmp_path, "MNIST")
    make_mnist(tmp_path, "FashionMNIST")
    write_cifar(tmp_path, "cifar10", n_train=100, n_test=10)
    write_cifar(tmp_path, "cifar100", n_train=1000, n_test=30)
    root = str(tmp_path)
    return {
        "digits": Digits(**SMALL),
        "mnist": MNIST(root=root, **SMALL),
        "fashion": FashionMNIST(root=root, **SMALL),
        "cifar10": CIFAR10(root=root, **SMALL),
        "cifar100": CIFAR100(root=root, **SMALL),
        "folder": ImageFolder(str(make_folder(tmp_path / "folder")), image_size=8, **SMALL),
        "folder_splits": ImageFolder(
            str(make_folder(tmp_path / "split", splits=("train", "val", "test"))), image_size=8, **SMALL
        ),
        "folder_grey": ImageFolder(str(tmp_path / "folder"), image_size=6, in_channels=1, **SMALL),
    }


EXPECTED = {
    # name: (in_channels, num_classes, image_size, pixel dtype in memory, (train, val, test) sizes)
    "digits": (1, 10, 8, torch.float32, (1258, 180, 359)),
    "mnist": (1, 10, 28, torch.uint8, (90, 10, 20)),
    "fashion": (1, 10, 28, torch.uint8, (90, 10, 20)),
    "cifar10": (3, 10, 32, torch.uint8, (90, 10, 10)),
    "cifar100": (3, 100, 32, torch.uint8, (900, 100, 30)),
    "folder": (3, 3, 8, torch.uint8, (21, 3, 6)),
    "folder_splits": (3, 2, 8, torch.uint8, (12, 4, 6)),
    "folder_grey": (1, 3, 6, torch.uint8, (21, 3, 6)),
}


@pytest.mark.parametrize("name", EXPECTED)
def test_shapes_and_batches(sources: dict[str, VisionDataModule], name: str) -> None:
    dm = sources[name]
    channels, classes, size, dtype, sizes = EXPECTED[name]
    assert dm.shapes == {"in_channels": channels, "num_classes": classes, "image_size": size}
    assert len(dm.class_names) == classes
    dm.setup("fit")
    loaders = [dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()]
    assert tuple(len(loader.dataset) for loader in loaders) == sizes
    for loader in loaders:
        x, y = next(iter(loader))
        batch = min(16, len(loader.dataset))
        assert x.shape == (batch, channels, size, size) and x.dtype == dtype
        assert y.shape == (batch,) and y.dtype == torch.int64
        assert y.min() >= 0 and y.max() < classes
        out, labels = dm.transform(x, y, train=True)
        assert out.shape == x.shape and out.dtype == torch.float32 and out.isfinite().all()
        assert torch.equal(labels, y)


def test_shapes_known_before_any_file_exists(tmp_path: Path) -> None:
    for cls in (MNIST, FashionMNIST, CIFAR10, CIFAR100):
        dm = cls(root=str(tmp_path / "nothing"), download=True)
        assert dm.shapes["num_classes"] == len(dm.class_names)
        assert not (tmp_path / "nothing").exists()


def test_cifar_class_names_are_the_meta_files(tmp_path: Path) -> None:
    # The basis is the CIFAR page's tables in tests/formats.py (CIFAR-100 grouped by superclass, 20 x 5), not the
    # DataModule's own list; the meta files are written from them in the real format and read back here.
    assert len({name for names in CIFAR100_SUPERCLASSES.values() for name in names}) == 100
    write_cifar(tmp_path, "cifar10", n_train=10, n_test=10)
    write_cifar(tmp_path, "cifar100", n_train=100, n_test=10)
    meta10 = read_pickle(tmp_path / "cifar-10-batches-py" / "batches.meta")
    meta100 = read_pickle(tmp_path / "cifar-100-python" / "meta")
    assert CIFAR10.class_names == [name.decode() for name in meta10[b"label_names"]] == CIFAR10_LABEL_NAMES
    assert CIFAR100.class_names == [name.decode() for name in meta100[b"fine_label_names"]]
    assert CIFAR100.class_names == CIFAR100_FINE_LABEL_NAMES
    assert CIFAR100.class_names[0] == "apple" and CIFAR100.class_names[-1] == "worm"


def test_mnist_test_split_is_the_idx_file(tmp_path: Path) -> None:
    arrays = make_mnist(tmp_path, "MNIST")
    dm = MNIST(root=str(tmp_path), **SMALL)
    dm.setup("test")
    x = torch.cat([x for x, _y in dm.test_dataloader()])
    assert torch.equal(x, torch.from_numpy(arrays["t10k"]).unsqueeze(1))


@pytest.mark.parametrize(
    ("cls", "name", "file", "key"),
    [(CIFAR10, "cifar10", "test_batch", b"labels"), (CIFAR100, "cifar100", "test", b"fine_labels")],
)
def test_cifar_reader_keeps_pixel_layout(tmp_path: Path, cls: type[CIFAR10], name: str, file: str, key: bytes) -> None:
    folder = write_cifar(tmp_path, name, n_train=100 if name == "cifar10" else 1000, n_test=30)
    written = read_pickle(folder / file)
    dm = cls(root=str(tmp_path), **SMALL)
    dm.setup("test")
    x, y = (torch.cat(parts) for parts in zip(*dm.predict_dataloader(), strict=True))
    expected = torch.from_numpy(written[b"data"]).view(-1, 3, 32, 32)
    assert torch.equal(x, expected) and y.tolist() == written[key]
    # Rows are channel-major: the first 1024 bytes are the red plane of the first image.
    assert torch.equal(x[0, 0].flatten(), torch.from_numpy(written[b"data"][0, :1024]))


def test_digits_split_sizes_and_stratification() -> None:
    dm = Digits()
    dm.setup()
    pool = torch.cat([dm.dataset(split).y for split in ("train", "val", "test")])
    assert [len(dm.dataset(split)) for split in ("train", "val", "test")] == [1258, 180, 359]
    for split, fraction in (("val", 0.1), ("test", 0.2)):
        counts = torch.bincount(dm.dataset(split).y, minlength=10)
        assert (counts - torch.bincount(pool) * fraction).abs().max() <= 1


def test_split_ignores_the_global_seed() -> None:
    splits = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        dm = Digits(seed=3)
        dm.setup()
        splits.append(dm.dataset("val").x)
    assert torch.equal(*splits)
    dm = Digits(seed=4)
    dm.setup()
    assert not torch.equal(splits[0], dm.dataset("val").x)


def test_image_folder_split_is_seeded(tmp_path: Path) -> None:
    root = str(make_folder(tmp_path))
    samples = []
    for seed in (0, 0, 1):
        dm = ImageFolder(root, seed=seed)
        dm.setup()
        samples.append(dm.val_dataloader().dataset.samples)
    assert samples[0] == samples[1] != samples[2]
    assert sorted(label for _path, label in samples[0]) == [0, 1, 2]


@pytest.mark.parametrize("cls", [MNIST, FashionMNIST, CIFAR10, CIFAR100])
def test_missing_dataset_names_dataset_directory_and_fix(tmp_path: Path, cls: type[VisionDataModule]) -> None:
    with pytest.raises(DatasetNotFoundError) as error:
        cls(root=str(tmp_path))
    message = str(error.value)
    assert cls.name in message and str(tmp_path.resolve()) in message
    assert "--data.download true" in message and "--data.root" in message


def test_partly_missing_mnist_names_the_missing_files(tmp_path: Path) -> None:
    make_mnist(tmp_path, "MNIST")
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetNotFoundError, match="t10k-labels-idx1-ubyte"):
        MNIST(root=str(tmp_path))


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"val_fraction": 1.5}, "val_fraction"),
        ({"test_fraction": -0.1}, "test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction"),
        ({"batch_size": 0}, "batch_size"),
        ({"crop_padding": -1}, "crop_padding"),
        ({"num_workers": -1}, "num_workers"),
    ],
)
def test_bad_values_name_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"data.{key}"):
        Digits(**kwargs)


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="absent"):
        ImageFolder(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no class folders"):
        ImageFolder(str(tmp_path / "empty"))
    root = make_folder(tmp_path / "folder")
    (root / "empty_class").mkdir()
    with pytest.raises(ConfigError, match="empty_class"):
        ImageFolder(str(root))
    root = make_folder(tmp_path / "split", splits=("train", "val", "test"))
    write_images(root / "val" / "cow", 1)
    with pytest.raises(ConfigError, match="cow"):
        ImageFolder(str(root))
    for kwargs, key in (({"in_channels": 2}, "in_channels"), ({"image_size": 0}, "image_size")):
        with pytest.raises(ConfigError, match=f"data.{key}"):
            ImageFolder(str(tmp_path / "folder"), **kwargs)


def test_image_folder_carves_only_missing_splits(tmp_path: Path) -> None:
    root = make_folder(tmp_path, splits=("train", "val"))
    dm = ImageFolder(str(root), test_fraction=0.25)
    dm.setup()
    assert [len(dm.dataset(split)) for split in ("train", "val", "test")] == [9, 4, 3]


def test_one_getitems_call_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    getitems = TensorBatchDataset.__getitems__

    def counted(self: TensorBatchDataset, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(len(indices))
        return getitems(self, indices)

    def refuse(self: TensorBatchDataset, index: int) -> None:
        raise AssertionError("per-sample __getitem__ called")

    monkeypatch.setattr(TensorBatchDataset, "__getitems__", counted)
    monkeypatch.setattr(TensorBatchDataset, "__getitem__", refuse)
    dm = Digits(batch_size=128)
    dm.setup()
    batches = list(dm.train_dataloader())
    assert len(calls) == len(batches) == math.ceil(1258 / 128)
    assert sum(calls) == 1258 and all(len(x) == n for (x, _y), n in zip(batches, calls, strict=True))


def test_augmentation_only_in_training() -> None:
    plain = Digits()
    augmented = Digits(augment=True)
    for dm in (plain, augmented):
        dm.setup()
    x, _y = next(iter(plain.val_dataloader()))
    evaluated = pixels(augmented, x, train=False)
    assert torch.equal(evaluated, pixels(plain, x, train=False))
    assert torch.equal(evaluated, pixels(augmented, x, train=False))
    assert not torch.equal(pixels(augmented, x, train=True), evaluated)
    assert torch.equal(pixels(plain, x, train=True), evaluated)


def test_flip_mirrors_each_sample_or_leaves_it() -> None:
    x = torch.arange(64.0).div(64).view(1, 1, 8, 8).repeat(64, 1, 1, 1)  # asymmetric in every direction
    torch.manual_seed(0)
    out = random_crop_flip(x, padding=0, hflip=True)
    flipped = [bool(torch.equal(o, x[0].flip(-1))) for o in out]
    kept = [bool(torch.equal(o, x[0])) for o in out]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))
    assert 0 < sum(flipped) < 64
    assert torch.equal(random_crop_flip(x, padding=0, hflip=False), x)


def test_crop_shifts_each_sample_by_its_own_offset() -> None:
    torch.manual_seed(0)
    x = torch.rand(32, 1, 8, 8) * 0.9 + 0.1  # nonzero, so zero padding is visible
    out = random_crop_flip(x, padding=2, hflip=False)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    offsets = set()
    for i in range(len(x)):
        matches = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(out[i], padded[i, :, dy : dy + 8, dx : dx + 8])
        ]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 5


@pytest.mark.parametrize("name", ["digits", "cifar10", "folder"])
def test_normalisation_standardises_the_training_split(sources: dict[str, VisionDataModule], name: str) -> None:
    dm = sources[name]
    dm.setup()
    x = torch.cat([pixels(dm, x, train=False) for x, _y in dm.train_dataloader()])
    assert x.mean((0, 2, 3)).abs().max() < 1e-4
    assert (x.std((0, 2, 3), unbiased=False) - 1).abs().max() < 1e-3


def test_without_normalisation_pixels_stay_in_unit_range(sources: dict[str, VisionDataModule]) -> None:
    dm = sources["cifar10"]
    dm.normalize = False
    dm.setup()
    x = pixels(dm, next(iter(dm.train_dataloader()))[0], train=False)
    assert dm.mean is None and x.min() >= 0 and x.max() <= 1 and x.max() > 0.9


def test_needs_setup_first() -> None:
    dm = Digits()
    with pytest.raises(RuntimeError, match="setup"):
        dm.train_dataloader()
    with pytest.raises(RuntimeError, match="setup"):
        pixels(dm, torch.zeros(1, 1, 8, 8), train=False)


def test_subclass_cli_arguments_resolve_to_the_base() -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(VisionDataModule, "data")
    for argv in (["--data", "Digits"], ["--data", "ImageFolder", "--data.path", "images"]):
        config = parser.parse_args([*argv, "--data.batch_size", "64", "--data.augment", "true"])
        assert config.data.init_args.batch_size == 64 and config.data.init_args.augment is True
    with pytest.raises(ArgumentError, match="batch_sise"):
        parser.parse_args(["--data", "Digits", "--data.batch_sise", "64"])


class Probe(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(64, 10)
        self.seen: list[tuple[str, torch.Tensor]] = []

    def step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        self.seen.append((stage, x))
        return torch.nn.functional.cross_entropy(self.net(x.flatten(1)), y)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.step(batch, "val")

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return batch[1]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_augments_training_batches_only() -> None:
    L.seed_everything(0)
    dm = Digits(augment=True, batch_size=64)
    model = Probe()
    trainer = L.Trainer(
        fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(model, datamodule=dm)
    seen = dict(model.seen)
    assert set(seen) == {"train", "val"} and all(x.dtype == torch.float32 for x in seen.values())
    raw_val, _y = next(iter(dm.val_dataloader()))
    assert torch.equal(seen["val"], pixels(dm, raw_val, train=False))
    clean = pixels(dm, dm.dataset("train").x, train=False).flatten(1)
    unchanged = (seen["train"].flatten(1)[:, None] == clean[None]).all(-1).any(-1)  # (64,)
    assert unchanged.sum() < len(unchanged) / 2
    (labels,) = trainer.predict(model, datamodule=dm)  # fast_dev_run: one batch
    assert torch.equal(labels, dm.dataset("test").y[:64])


class Payload:
    """Unpickled in full, creates `marker`: what a planted dataset file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def test_a_planted_cifar_batch_is_refused_without_running(tmp_path: Path) -> None:
    import pickle

    folder = write_cifar(tmp_path, "cifar10", n_train=20, n_test=10)
    marker = tmp_path / "ran"
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": Payload(marker), b"labels": [0]}, protocol=2))
    dm = CIFAR10(root=str(tmp_path), batch_size=4)
    with pytest.raises(
        CorruptFileError, match=r"data_batch_3 asks the unpickler for (__builtin__|builtins)\.exec.*refused"
    ):
        dm.setup()
    assert not marker.exists()
    pickle.loads((folder / "data_batch_3").read_bytes())  # the payload is real: full unpickling runs it
    assert marker.exists()


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda data: data[: len(data) // 2], "truncated"),
        (lambda data: bytes(len(data)), "cannot be read"),
        (lambda data: __import__("pickle").dumps({b"data": [1, 2, 3], b"labels": [0]}, protocol=2), "shape"),
    ],
)
def test_a_damaged_cifar_batch_is_named(tmp_path: Path, damage, words: str) -> None:
    folder = write_cifar(tmp_path, "cifar10", n_train=20, n_test=10)
    batch = folder / "test_batch"
    batch.write_bytes(damage(batch.read_bytes()))
    with pytest.raises(CorruptFileError, match=words) as error:
        CIFAR10(root=str(tmp_path), batch_size=4).setup()
    assert str(batch.resolve()) in str(error.value)


def test_a_corrupt_image_is_named_at_setup_and_a_truncated_one_when_read(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "folder")
    (root / "bee" / "4.png").write_bytes(b"not an image")
    with pytest.raises(CorruptFileError, match=r"bee/4\.png cannot be read"):
        ImageFolder(str(root), batch_size=4).setup()
    (root / "bee" / "4.png").unlink()
    cut = root / "cow" / "2.png"
    cut.write_bytes(cut.read_bytes()[:70])  # the header survives, the pixels do not
    dm = ImageFolder(str(root), batch_size=4, normalize=False)
    dm.setup()
    with pytest.raises(CorruptFileError, match=r"cow/2\.png cannot be read"):
        for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
            for _batch in loader:
                pass
