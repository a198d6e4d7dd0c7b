"""The data layer's base: the one split, channel statistics, normalisation state in checkpoints, label checks."""

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from archlab.data import Digits
from archlab.data.base import ImageDataModule, TensorBatchDataset, channel_stats, split_indices
from archlab.errors import ConfigError

# 1000 labels in four classes of very different sizes, in random order.
CLASS_SIZES = [500, 300, 150, 50]
LABELS = torch.repeat_interleave(torch.arange(4), torch.tensor(CLASS_SIZES))[torch.randperm(1000)]


def split(labels: torch.Tensor | None = LABELS, **kwargs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    kwargs = {"val_fraction": 0.1, "test_fraction": 0.2, "seed": 0, "name": "Test"} | kwargs
    return split_indices(1000, labels=labels, **kwargs)


@pytest.mark.parametrize("labels", [LABELS, None], ids=["stratified", "unstratified"])
def test_split_sizes_disjoint_complete_sorted(labels: torch.Tensor | None) -> None:
    train, val, test = split(labels)
    assert (len(train), len(val), len(test)) == (700, 100, 200)  # round(1000 * fraction)
    assert torch.equal(torch.cat([train, val, test]).sort().values, torch.arange(1000))
    assert all(torch.equal(part, part.sort().values) for part in (train, val, test))


def test_split_is_stratified() -> None:
    train, val, test = split()
    for part, fraction in ((train, 0.7), (val, 0.1), (test, 0.2)):
        counts = torch.bincount(LABELS[part], minlength=4)
        assert (counts - torch.tensor(CLASS_SIZES) * fraction).abs().max() <= 1, counts
    # Without labels the smallest class gets no such guarantee: over seeds its val share varies by more than one.
    shares = {int(torch.bincount(LABELS[split(None, seed=seed)[1]], minlength=4)[3]) for seed in range(20)}
    assert max(shares) - min(shares) > 2


def test_split_is_determined_by_seed_alone() -> None:
    first = split(seed=7)
    torch.manual_seed(123)
    np.random.seed(123)
    assert all(torch.equal(a, b) for a, b in zip(first, split(seed=7), strict=True))
    other = split(seed=8)
    assert not torch.equal(first[1], other[1]) and not torch.equal(first[2], other[2])


def test_test_split_does_not_move_with_val_fraction() -> None:
    assert torch.equal(split(val_fraction=0.1)[2], split(val_fraction=0.3)[2])


def test_zero_fraction_holds_out_nothing_and_a_small_one_at_least_one() -> None:
    train, val, test = split(None, val_fraction=0.0, test_fraction=0.0001)
    assert (len(train), len(val), len(test)) == (999, 0, 1)


def test_split_errors_name_the_keys() -> None:
    with pytest.raises(ConfigError, match=r"data\.val_fraction=0\.5 and data\.test_fraction=0\.5 of 1000 samples"):
        split(val_fraction=0.5, test_fraction=0.5)
    # Three held-out samples cannot hold one of each of four classes: drawn at random, and the user is told.
    with pytest.warns(UserWarning, match=r"3 val samples \(data\.val_fraction=0\.003 of .* drawn at random"):
        train, val, test = split(val_fraction=0.003)
    assert len(val) == 3 and len(train) + len(val) + len(test) == 1000


def test_channel_stats_match_numpy() -> None:
    x = torch.randint(0, 256, (2500, 3, 5, 7), dtype=torch.uint8)  # more than one 1024-image chunk
    mean, std = channel_stats(x)
    pixels = x.numpy().astype(np.float64) / 255
    np.testing.assert_allclose(mean.numpy(), pixels.mean((0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(std.numpy(), pixels.std((0, 2, 3)), rtol=1e-5)
    assert torch.equal(channel_stats(torch.full((4, 1, 2, 2), 0.5))[1], torch.tensor([1e-6]))  # constant channel


def test_normalisation_statistics_travel_in_the_state_dict(tmp_path: Path) -> None:
    trained = Digits(seed=0)
    trained.setup()
    torch.save(trained.state_dict(), tmp_path / "state.pt")
    restored = Digits(seed=1)  # another split, so statistics of its own would differ
    own = Digits(seed=1)
    own.setup()
    assert not torch.equal(own.mean, trained.mean)
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    restored.setup()  # keeps the loaded statistics
    assert torch.equal(restored.mean, trained.mean) and torch.equal(restored.std, trained.std)
    x, y = next(iter(restored.test_dataloader()))
    assert torch.equal(restored.transform(x, y, train=False)[0], trained.transform(x, y, train=False)[0])
    with pytest.raises(ConfigError, match="3 channels but this data has 1"):
        Digits().load_state_dict({"mean": torch.zeros(3), "std": torch.ones(3)})


class Probe(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(64, 10)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x.flatten(1)), y)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_checkpoint_restores_the_training_statistics(tmp_path: Path) -> None:
    options = {
        "accelerator": "cpu",
        "default_root_dir": tmp_path,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    trained = Digits(seed=0, batch_size=256)
    trainer = L.Trainer(max_steps=1, limit_val_batches=0, **options)
    trainer.fit(Probe(), datamodule=trained)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    fresh = Digits(seed=1, batch_size=256)
    L.Trainer(**options).test(Probe(), datamodule=fresh, ckpt_path=tmp_path / "last.ckpt", verbose=False)
    assert torch.equal(fresh.mean, trained.mean) and torch.equal(fresh.std, trained.std)


class Squares(ImageDataModule):
    """Four 2x2 images per split whose labels come from the test."""

    name = "Squares"
    in_channels = 1
    num_classes = 3
    image_size = 2

    def __init__(self, labels: list[int]) -> None:
        self.labels = labels
        super().__init__(batch_size=4)

    def make_datasets(self) -> dict[str, TensorBatchDataset]:
        x = torch.arange(16, dtype=torch.uint8).view(4, 1, 2, 2)
        return {split: TensorBatchDataset(x, torch.tensor(self.labels)) for split in ("train", "val", "test")}


def test_labels_are_checked_once_at_setup() -> None:
    Squares([0, 1, 2, 2]).setup()
    with pytest.raises(ConfigError, match=r"Squares: the train labels span 0\.\.3, outside 0\.\.2 for 3 classes"):
        Squares([0, 1, 2, 3]).setup()
    with pytest.raises(ConfigError, match=r"span -1\.\.2"):
        Squares([-1, 1, 2, 2]).setup()
