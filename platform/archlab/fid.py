"""An offline Frechet distance for generated images: torchmetrics' FrechetInceptionDistance over the penultimate layer
of a small digits classifier that archlab trains itself, instead of an Inception network that must be downloaded.

Heusel et al. "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium", NeurIPS 2017
(https://arxiv.org/abs/1706.08500): the Frechet distance between Gaussians fitted to features of real and generated
images. The features here are those of an archlab CNN trained on scikit-learn's bundled 8x8 digits (trained in a few
seconds on first use, then cached), so the distance is comparable between generators of digit-like images (digits,
MNIST) and between runs of this code, never with published Inception FIDs, and is meaningless for natural images.
"""

import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics.image.fid import FrechetInceptionDistance

from archlab.errors import CorruptFileError
from archlab.loading import UnsafeFileError, load_checkpoint
from archlab.models.cnn import CNN

# Bump when the classifier or its training changes, so an old cache is never read as the new one.
VERSION = 1
CLASSIFIER = {"in_channels": 1, "num_classes": 10, "channels": (16, 32), "hidden_dim": 64}
TRAIN_EPOCHS = 10
HOLDOUT = 297  # digits held out to measure the classifier, from the 1797


def cache_dir() -> Path:
    """$ARCHLAB_CACHE, else $XDG_CACHE_HOME/archlab, else ~/.cache/archlab."""
    if os.environ.get("ARCHLAB_CACHE"):
        return Path(os.environ["ARCHLAB_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "archlab"


class DigitFeatures(nn.Module):
    """images in [0, 1] -> grey -> area-resized to 8x8 -> standardised -> CNN -> penultimate ReLU features (B, 64).

    Always in eval mode: a task's `.train()` reaches metrics' modules, and batch norm must not update here.
    """

    num_features = CLASSIFIER["hidden_dim"]

    def __init__(self) -> None:
        super().__init__()
        self.net = CNN(**CLASSIFIER)
        self.register_buffer("mean", torch.tensor(0.0))
        self.register_buffer("std", torch.tensor(1.0))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "DigitFeatures":
        return super().train(False)

    def prepare(self, x: Tensor) -> Tensor:
        x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
        x = x.mean(dim=1, keepdim=True)  # (B, 1, H, W)
        if x.shape[-2:] != (8, 8):
            x = F.adaptive_avg_pool2d(x, 8)  # (B, 1, 8, 8), like the digits' 4x4 block counts
        return (x - self.mean) / self.std

    def forward(self, x: Tensor) -> Tensor:
        h = self.net.features(self.prepare(x))  # (B, 32, 2, 2)
        h = torch.flatten(self.net.avgpool(h), 1)  # (B, 32)
        return self.net.classifier[:-1](h)  # (B, 64): fc - ReLU (- dropout, inactive)

    def logits(self, x: Tensor) -> Tensor:
        return self.net.classifier[-1](self(x))  # (B, 10)


def train_digit_features(*, seed: int = 0) -> tuple[DigitFeatures, float]:
    """Train the classifier on scikit-learn's digits (no download); return it and its held-out accuracy."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images).float().div(16).unsqueeze(1)  # (1797, 1, 8, 8) in [0, 1]
    y = torch.from_numpy(digits.target).long()
    threads = torch.get_num_threads()
    # One thread: these batches are tiny, and a second thread only spins (5-10x slower on a busy 2-core CPU).
    torch.set_num_threads(1)
    with torch.random.fork_rng():  # leave the caller's random state alone
        torch.manual_seed(seed)
        order = torch.randperm(len(y))
        test, train = order[:HOLDOUT], order[HOLDOUT:]
        model = DigitFeatures()
        model.mean.fill_(x[train].mean())
        model.std.fill_(x[train].std())
        net = model.net.requires_grad_(True)
        optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
        for _ in range(TRAIN_EPOCHS):
            net.train()
            for batch in train[torch.randperm(len(train))].split(64):
                loss = F.cross_entropy(net(model.prepare(x[batch])), y[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        model.requires_grad_(False).eval()
        with torch.no_grad():
            accuracy = (model.logits(x[test]).argmax(-1) == y[test]).float().mean().item()
    torch.set_num_threads(threads)
    return model, accuracy


def digit_features(directory: str | Path | None = None) -> DigitFeatures:
    """The cached feature extractor, trained (a few seconds) and cached under `directory` (default `cache_dir()`)
    when absent or unreadable. Never touches the network.

    A cache file that is truncated, corrupt or of another version is rebuilt with a warning; one holding a pickle that
    asks for Python objects is refused (CorruptFileError): it did not come from here, and the user should look at it.
    """
    path = Path(directory or cache_dir()) / f"fid_digits_v{VERSION}.pt"
    if path.is_file():
        try:
            state = load_checkpoint(path, what="the FID feature cache")
        except UnsafeFileError as error:
            raise CorruptFileError(f"{error} Delete {path} and the next run trains a fresh cache.") from None
        except CorruptFileError as error:
            warnings.warn(f"{error} Training a new FID feature cache over it (a few seconds).", stacklevel=2)
        else:
            model = DigitFeatures()
            try:
                if state.get("version") != VERSION:
                    raise ValueError(f"version {state.get('version')!r}, not {VERSION}")
                model.load_state_dict(state["state_dict"])
                return model
            except (KeyError, RuntimeError, TypeError, ValueError, AttributeError) as error:
                warnings.warn(
                    f"The FID feature cache {path} does not hold this version's classifier ({type(error).__name__}: "
                    f"{str(error).strip().splitlines()[0][:200]}); training a new one over it (a few seconds).",
                    stacklevel=2,
                )
    trained, accuracy = train_digit_features()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename: two runs that train at once each leave a whole file, never a torn one.
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
        torch.save({"state_dict": trained.state_dict(), "accuracy": accuracy, "version": VERSION}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)
    return trained


def make_fid() -> FrechetInceptionDistance:
    """FrechetInceptionDistance over `digit_features()`; images go in as floats in [0, 1]."""
    return FrechetInceptionDistance(feature=digit_features(), reset_real_features=True, normalize=True)


@torch.no_grad()
def add_samples(fid: FrechetInceptionDistance, sample: Callable[[int], Tensor], n: int, *, batch_size: int = 256):
    """Feed `n` generated images, made `batch_size` at a time by `sample(k) -> (k, C, H, W)`, as the fake side."""
    for start in range(0, n, batch_size):
        fid.update(sample(min(batch_size, n - start)).clamp(0, 1), real=False)
