"""The data layer's shared parts: in-memory batches, the one seeded split, the DataModule base with its loaders and
shapes contract, and image batches converted, augmented and normalised on the device with statistics that are part of
the DataModule's state (so they travel in checkpoints).

The stratified split is scikit-learn's `train_test_split(stratify=...)` (Pedregosa et al. 2011, "Scikit-learn: Machine
Learning in Python", JMLR 12).

The training loader is resumable: its order in epoch e depends only on (training seed, e), and its position inside
the epoch is part of Lightning's checkpoint (the stateful-dataloader protocol), so a run killed mid-epoch resumes
with exactly the batches it had not yet seen.
"""

import os
import warnings
from collections.abc import Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch import distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from archlab.errors import ConfigError


class TensorBatchDataset(Dataset):
    """Inputs and targets held in memory, served a whole batch per `__getitems__` slice."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        if len(x) != len(y):
            raise ValueError(f"TensorBatchDataset: {len(x)} inputs but {len(y)} targets")
        self.x = x  # (N, ...), uint8 where an image source is uint8
        self.y = y  # (N, ...)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.x[index], self.y[index]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        # The DataLoader's fetcher passes the whole batch of indices here when this method exists: one slice per
        # batch instead of B calls to __getitem__ and a stack in collate.
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.x[index], self.y[index]


def whole_batch(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Collate for `TensorBatchDataset`: `__getitems__` already returns the batch."""
    return batch


def check_fraction(name: str, key: str, value: float, *, positive: bool = False) -> None:
    """Stop before any data loads when data.`key` is not a fraction in [0, 1), or (0, 1) when `positive`."""
    if not (0 < value < 1 if positive else 0 <= value < 1):
        interval = "(0, 1)" if positive else "[0, 1)"
        raise ConfigError(f"{name}: data.{key} must be a fraction in {interval}, got {value}")


def split_indices(
    n: int,
    *,
    labels: Tensor | None = None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    name: str,
    unit: str = "samples",
) -> tuple[Tensor, Tensor, Tensor]:
    """Indices 0..n-1 into sorted (train, val, test), stratified by `labels` when given, chosen by `seed` alone.

    Val and test get round(n * fraction) each (at least one when the fraction is positive). Test is held out first,
    so it does not move with `val_fraction`. A split too small to hold every class (or a class of one sample) is
    drawn unstratified, with a warning that says so.
    """
    from sklearn.model_selection import train_test_split  # here: importing scikit-learn costs a second

    fractions = {"test": test_fraction, "val": val_fraction}
    sizes = {split: max(round(n * f), 1) if f > 0 else 0 for split, f in fractions.items()}
    if sum(sizes.values()) >= n:
        raise ConfigError(
            f"{name}: data.val_fraction={val_fraction} and data.test_fraction={test_fraction} of {n} {unit} leave "
            "none for training; lower the fractions or give more data"
        )
    y = None if labels is None else np.asarray(labels)
    rest, held_out = np.arange(n), {}
    for split, size in sizes.items():
        if size == 0:
            held_out[split] = rest[:0]
            continue
        stratify = None if y is None else y[rest]
        try:
            # random_state: the split depends on `seed` only, never on the global (training) seed.
            rest, held_out[split] = train_test_split(rest, test_size=size, random_state=seed, stratify=stratify)
        except ValueError as error:  # a split smaller than the number of classes, or a class of one sample
            warnings.warn(
                f"{name}: the {size} {split} {unit} (data.{split}_fraction={fractions[split]} of {len(rest)}) cannot "
                f"be stratified by class ({error}); they are drawn at random instead. Raise data.{split}_fraction or "
                f"give more {unit} per class for a stratified split.",
                stacklevel=2,
            )
            rest, held_out[split] = train_test_split(rest, test_size=size, random_state=seed)
    return tuple(torch.from_numpy(np.sort(part)).long() for part in (rest, held_out["val"], held_out["test"]))


def channel_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of images (N, C, H, W) scaled to [0, 1] (uint8 is divided by 255)."""
    scale = 255.0 if x.dtype == torch.uint8 else 1.0
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    total_sq = torch.zeros(x.shape[1], dtype=torch.float64)
    # Chunks: CIFAR's training split as float64 at once would take over 1 GB.
    for chunk in x.split(1024):
        chunk = chunk.double() / scale
        total += chunk.sum((0, 2, 3))
        total_sq += chunk.square().sum((0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    # A constant channel has std 0; the floor keeps normalisation finite (it maps the channel to 0).
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt().clamp_min(1e-6)
    return mean.float(), std.float()


class EpochSampler(DistributedSampler):
    """This process's share of a permutation of the dataset that depends on (seed, epoch) only; can start mid-epoch.

    A DistributedSampler (of one replica outside a distributed run), so Lightning keeps it rather than putting its
    own in its place under DDP.
    """

    def __init__(self, dataset: Dataset, *, shuffle: bool, seed: int) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        super().__init__(
            dataset,
            num_replicas=dist.get_world_size() if distributed else 1,
            rank=dist.get_rank() if distributed else 0,
            shuffle=shuffle,
            seed=seed,
        )
        self.start = 0  # samples of this epoch already served; the next epoch starts at 0 again

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        start, self.start = self.start, 0
        return iter(indices[start:])


class ResumableLoader(DataLoader):
    """A DataLoader over an EpochSampler whose position in the epoch is its state (`state_dict` / `load_state_dict`,
    which Lightning's fit loop saves in checkpoints and restores); worker seeds come from (seed, epoch), so drawing
    an epoch's batches never touches the global random stream."""

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int | None,
        shuffle: bool = False,
        seed: int = 0,
        sampler: Any = None,
        **kwargs: Any,
    ) -> None:
        # `sampler`: the one Lightning passes when it rebuilds the loader (overfit_batches); that one starts each epoch
        # at its beginning.
        sampler = EpochSampler(dataset, shuffle=shuffle, seed=seed) if sampler is None else sampler
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        self.seed = seed
        self.served = 0  # batches of the current epoch handed out
        self.resume_at: tuple[int, int] | None = None  # (epoch, batches) restored from a checkpoint

    def __iter__(self) -> Iterator[Any]:
        # A generator: the body runs at the first batch, after Lightning has set the sampler's epoch.
        epoch = getattr(self.sampler, "epoch", 0)
        resumable = isinstance(self.sampler, EpochSampler)
        self.served = self.resume_at[1] if resumable and self.resume_at and self.resume_at[0] == epoch else 0
        self.resume_at = None
        if resumable:  # batch_size None: each item is a whole batch already
            self.sampler.start = self.served * (self.batch_size or 1)
        self.generator = torch.Generator().manual_seed(self.seed + epoch)
        for batch in super().__iter__():
            self.served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": getattr(self.sampler, "epoch", 0), "batches": self.served}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.resume_at = (int(state_dict["epoch"]), int(state_dict["batches"]))


class DataModule(L.LightningDataModule):
    """Datasets per split, built once in setup -> train / val / test / predict loaders; `shapes` for the model."""

    name: str = "data"

    def __init__(self, *, batch_size: int, seed: int = 0, num_workers: int = 0) -> None:
        """`seed` fixes the data (split, generated samples), never the training."""
        super().__init__()
        # logger=False: the CLI logs the whole config once; this copy travels in checkpoints only.
        self.save_hyperparameters(logger=False)
        if batch_size < 1:
            raise ConfigError(f"{self.name}: data.batch_size must be a positive integer, got {batch_size}")
        if num_workers < 0:
            raise ConfigError(f"{self.name}: data.num_workers must be 0 (main process) or more, got {num_workers}")
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.datasets: dict[str, Dataset] | None = None

    @property
    def shapes(self) -> dict[str, Any]:
        """What model and task constructors need, by parameter name; the CLI copies each into any that takes it."""
        raise NotImplementedError

    def make_datasets(self) -> dict[str, Dataset]:
        """{"train", "val", "test"} -> datasets; called once, by the first setup."""
        raise NotImplementedError

    def check_download(self) -> None:
        """With `download` asked for and the files absent: raise DatasetNotFoundError unless the server can be reached.
        The command calls it once the DataModule is built, before a run directory exists (the constructor stays free
        of network access). No-op for data that is never downloaded."""

    def setup(self, stage: str | None = None) -> None:
        if self.datasets is None:
            self.datasets = self.make_datasets()

    def dataset(self, split: str) -> Dataset:
        if self.datasets is None:
            raise RuntimeError(f"{self.name}: call setup() before asking for the {split} data")
        return self.datasets[split]

    def loader(self, split: str, *, shuffle: bool = False) -> DataLoader:
        """The split's loader; the training split's is a ResumableLoader (shuffled by the training seed, not the
        data's `seed`, which fixes only the data)."""
        dataset = self.dataset(split)
        kwargs = {
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "collate_fn": whole_batch if isinstance(dataset, TensorBatchDataset) else None,
            "persistent_workers": self.num_workers > 0,
        }
        if split == "train":
            # The seed that seed_everything set (--seed_everything), as Lightning's own samplers read it.
            return ResumableLoader(dataset, shuffle=shuffle, seed=int(os.environ.get("PL_GLOBAL_SEED", 0)), **kwargs)
        return DataLoader(dataset, shuffle=shuffle, **kwargs)

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")

    def predict_dataloader(self) -> DataLoader:
        """The test split as (x, y) batches, like every other loader, so predictions can be scored."""
        return self.loader("test")


class ImageDataModule(DataModule):
    """(image, target) batches -> float in [0, 1] -> augmented (training only) -> normalised, batched on the device.

    Targets are class indices in 0..num_classes-1: a label (B,) or a mask (B, H, W). The normalisation statistics are
    the training split's, computed in setup and kept in `state_dict`, so a checkpoint restores them.
    """

    in_channels: int
    num_classes: int
    image_size: int
    class_names: list[str]
    # Training images read to estimate the statistics of a split that is not held in memory.
    stats_samples: int = 1000

    def __init__(
        self, *, batch_size: int, seed: int = 0, augment: bool = False, normalize: bool = True, num_workers: int = 0
    ) -> None:
        """`augment`: the source's augmentation on training batches. `normalize`: standardise each channel with the
        training split's mean and std; False leaves pixels in [0, 1]."""
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers)
        self.augment = augment
        self.normalize = normalize
        self.mean: Tensor | None = None  # (C,)
        self.std: Tensor | None = None  # (C,)

    @property
    def shapes(self) -> dict[str, int]:
        return {"in_channels": self.in_channels, "num_classes": self.num_classes, "image_size": self.image_size}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets is not None:
            return
        super().setup(stage)
        for split, dataset in self.datasets.items():
            # Held in memory: check every label once here. File-backed splits check each file as it is read.
            if isinstance(dataset, TensorBatchDataset) and len(dataset):
                low, high = int(dataset.y.min()), int(dataset.y.max())
                if low < 0 or high >= self.num_classes:
                    raise ConfigError(
                        f"{self.name}: the {split} labels span {low}..{high}, outside 0..{self.num_classes - 1} "
                        f"for {self.num_classes} classes"
                    )
        # Statistics loaded from a checkpoint (load_state_dict before setup) are kept.
        if self.normalize and self.mean is None:
            self.mean, self.std = self.fit_stats()

    def fit_stats(self) -> tuple[Tensor, Tensor]:
        """Per-channel mean and std of the training split, or of a seeded sample of it when it is read from files."""
        train = self.dataset("train")
        if isinstance(train, TensorBatchDataset):
            return channel_stats(train.x)
        generator = torch.Generator().manual_seed(self.seed)
        sample = torch.randperm(len(train), generator=generator)[: self.stats_samples].tolist()
        loader = DataLoader(Subset(train, sample), batch_size=self.batch_size, num_workers=self.num_workers)
        return channel_stats(torch.cat([x for x, _y in loader]))

    def state_dict(self) -> dict[str, Any]:
        return {} if self.mean is None else {"mean": self.mean, "std": self.std}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "mean" not in state_dict:
            return
        mean, std = state_dict["mean"], state_dict["std"]
        if len(mean) != self.in_channels:
            raise ConfigError(
                f"{self.name}: the checkpoint's normalisation is for {len(mean)} channels but this data has "
                f"{self.in_channels}; test or predict with the data the checkpoint was trained on"
            )
        self.mean, self.std = mean.float().cpu(), std.float().cpu()

    def on_after_batch_transfer(self, batch: tuple[Tensor, Tensor], dataloader_idx: int) -> tuple[Tensor, Tensor]:
        x, y = batch
        return self.transform(x, y, train=self.trainer is not None and self.trainer.training)

    def transform(self, x: Tensor, y: Tensor, *, train: bool) -> tuple[Tensor, Tensor]:
        """Images (B, C, H, W), uint8 or float in [0, 1], to float: augmented with their targets if `train` and
        `augment`, then normalised."""
        x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
        if train and self.augment:
            x, y = self.augment_batch(x, y)
        return self.normalise(x), y

    def augment_batch(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Random transforms of a float batch and its targets, a different draw per sample."""
        raise NotImplementedError

    def normalise(self, x: Tensor) -> Tensor:
        """Standardise each channel of float images (B, C, H, W) with the training split's mean and std."""
        if not self.normalize:
            return x
        if self.mean is None or self.std is None:
            raise RuntimeError(f"{self.name}: call setup() first; normalisation uses the training split's stats")
        return (x - self.mean.to(x.device).view(1, -1, 1, 1)) / self.std.to(x.device).view(1, -1, 1, 1)
