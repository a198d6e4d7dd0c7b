"""The generative tasks and the segmentation task: the GAN's two optimizers, the autoencoders' objectives, the
offline FID, sample grids and `predict` writing new samples."""

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image
from torch import nn

from archlab import fid
from archlab.data import Cells, Digits
from archlab.errors import ConfigError
from archlab.models import DCGAN, AEOutput, AutoEncoder, UNet, vae
from archlab.tasks import Adversarial, Reconstruction, Segmentation

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh FID cache, filled once with the network unreachable."""
    directory = tmp_path_factory.mktemp("cache")
    os.environ["ARCHLAB_CACHE"] = str(directory)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield directory
    torch.set_num_threads(threads)
    os.environ.pop("ARCHLAB_CACHE", None)


def test_fid_extractor_is_built_without_network(cache: Path, monkeypatch: pytest.MonkeyPatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the FID extractor tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    features = fid.digit_features()  # trains on scikit-learn's bundled digits, then caches
    (path,) = cache.glob("fid_digits_v*.pt")
    assert torch.load(path, weights_only=True)["accuracy"] > 0.9
    loaded = fid.digit_features()  # from the cache this time
    x = torch.rand(5, 1, 28, 28)
    assert features(x).shape == (5, fid.DigitFeatures.num_features)
    assert torch.allclose(features(x), loaded(x))
    # Real digits are far closer to each other than to noise.
    digits = Digits(normalize=False)
    digits.setup()
    real = digits.dataset("train").x
    metric = fid.make_fid()
    metric.update(real[:400], real=True)
    metric.update(real[400:800], real=False)
    close = metric.compute()
    metric.reset()
    metric.update(real[:400], real=True)
    metric.update(torch.rand(400, 1, 8, 8), real=False)
    assert metric.compute() > 10 * close


def digits(batch_size: int = 16) -> Digits:
    return Digits(normalize=False, batch_size=batch_size)


def fast_trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", logger=False, default_root_dir=tmp_path, enable_progress_bar=False,
        enable_model_summary=False, **kwargs,
    )  # fmt: skip


class StepRecorder(L.Callback):
    """Snapshots of G's and D's parameters around every optimizer step."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, dict, dict, dict, dict]] = []

    def on_train_start(self, trainer: L.Trainer, task: Adversarial) -> None:
        for name, optimizer in zip(("d", "g"), trainer.optimizers, strict=True):
            step = optimizer.step

            def recorded(*args, _step=step, _name=name, **kwargs):
                before = snapshot(task.net.generator), snapshot(task.net.discriminator)
                out = _step(*args, **kwargs)
                self.steps.append((_name, *before, snapshot(task.net.generator), snapshot(task.net.discriminator)))
                return out

            optimizer.step = recorded


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def changed(before: dict, after: dict) -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before)


def test_gan_step_updates_each_player_with_its_own_optimizer(cache: Path, tmp_path: Path):
    task = Adversarial(DCGAN(image_size=8, latent_dim=4, width=4), fid_samples=20, label_smoothing=0.1)
    recorder = StepRecorder()
    fast_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1, callbacks=[recorder]).fit(
        task, datamodule=digits()
    )
    assert [name for name, *_ in recorder.steps] == ["d", "g", "d", "g"]
    for name, g_before, d_before, g_after, d_after in recorder.steps:
        if name == "d":
            assert changed(d_before, d_after) and not changed(g_before, g_after)
        else:
            assert changed(g_before, g_after) and not changed(d_before, d_after)
    logged = task.trainer.logged_metrics
    assert {"train/d_loss_step", "train/g_loss_step", "train/d_real_step", "train/d_fake_step", "val/fid"} <= set(
        logged
    )


def test_gan_rejects_a_net_that_is_not_a_pair(cache: Path):
    with pytest.raises(ConfigError, match="generator, discriminator"):
        Adversarial(UNet())


def test_reconstruction_objectives(cache: Path):
    data = digits(batch_size=32)
    data.setup()
    x = data.dataset("train").x[:32]
    torch.manual_seed(0)
    net = vae(image_size=8, latent_dim=3, widths=(8,))
    elbo = Reconstruction(net, fid_samples=0)
    beta4 = Reconstruction(net, fid_samples=0, beta=4.0)
    # The same sample: beta scales only the KL term.
    torch.manual_seed(0)
    loss1 = elbo.step((x,), "train")
    torch.manual_seed(0)
    loss4 = beta4.step((x,), "train")
    torch.manual_seed(0)
    out = net(x)
    kl = -0.5 * torch.sum(1 + out.logvar - out.mean.square() - out.logvar.exp()) / len(x)
    assert torch.allclose(loss4 - loss1, 3 * kl, rtol=1e-4)

    with pytest.raises(ConfigError, match="code_activation sigmoid"):
        Reconstruction(AutoEncoder(image_size=8), sparsity="kl", fid_samples=0)
    with pytest.raises(ConfigError, match="deterministic"):
        Reconstruction(vae(image_size=8), sparsity="l1", fid_samples=0)


class FixedCode(nn.Module):
    """An autoencoder stand-in whose code is a given (B, latent_dim) tensor and whose reconstruction logits are 0."""

    code_activation = "sigmoid"

    def __init__(self, code: torch.Tensor) -> None:
        super().__init__()
        self.code = code
        self.latent_dim = code.shape[1]
        self.scale = nn.Parameter(torch.ones(()))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.code * self.scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(z), 1, 2, 2) * self.scale

    def forward(self, x: torch.Tensor) -> AEOutput:
        return AEOutput(self.decode(self.code), self.encode(x), None, None)


def kl_bernoulli(target: float, rho: float) -> float:
    return target * math.log(target / rho) + (1 - target) * math.log((1 - target) / (1 - rho))


@pytest.mark.parametrize(
    ("sparsity", "expected"),
    [
        ("l1", (0.2 + 0.5 + 0.6 + 0.5) / 2),  # the L1 norm of each code, averaged over the batch
        ("kl", kl_bernoulli(0.05, 0.4) + kl_bernoulli(0.05, 0.5)),  # per unit: the mean activations 0.4 and 0.5
    ],
)
def test_sparsity_penalty_equals_the_hand_computed_value(sparsity: str, expected: float):
    code = torch.tensor([[0.2, 0.5], [0.6, 0.5]])  # (B, latent_dim)
    x = torch.full((2, 1, 2, 2), 0.5)
    logged = {}
    sparse = Reconstruction(
        FixedCode(code), sparsity=sparsity, sparsity_weight=0.3, sparsity_target=0.05, fid_samples=0
    )
    sparse.log = lambda name, value, **kwargs: logged.__setitem__(name, value.item())
    plain = Reconstruction(FixedCode(code), fid_samples=0)
    plain.log = lambda *args, **kwargs: None
    difference = sparse.step((x,), "train") - plain.step((x,), "train")  # the same reconstruction loss in both
    assert difference.item() == pytest.approx(0.3 * expected)
    assert logged["train/sparsity"] == pytest.approx(expected)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Reconstruction(AutoEncoder(image_size=8), fid_samples=0),
        lambda: Adversarial(DCGAN(image_size=8, latent_dim=4, width=4), fid_samples=20),
    ],
    ids=["reconstruction", "adversarial"],
)
def test_generative_tasks_reject_standardised_data_before_the_run(cache: Path, make):
    task = make()
    with pytest.raises(ConfigError, match=r"data\.normalize false"):
        task.check_data(Digits(normalize=True))
    task.check_data(Digits(normalize=False))


def test_denoising_corrupts_the_input_and_targets_the_clean_image(cache: Path):
    x = torch.rand(4, 1, 8, 8)
    seen = []
    net = AutoEncoder(image_size=8, latent_dim=4, widths=(8,))
    net.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    net.register_forward_hook(lambda module, args, out: seen.append(out.logits))
    task = Reconstruction(net, noise="masking", noise_level=0.5, fid_samples=0)
    loss = task.step((x,), "train")
    noisy, logits = seen
    masked = (noisy == 0) & (x != 0)
    assert 0.3 < masked.float().mean() < 0.7
    target = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="sum") / len(x)
    assert torch.allclose(loss, target)  # the clean image, not the corrupted input


def archlab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "archlab", *args], cwd=cwd, capture_output=True, text=True, timeout=600,
        env={**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


@pytest.mark.slow
def test_vae_fit_logs_grids_and_predict_writes_new_samples(cache: Path, tmp_path: Path):
    fit = archlab(
        "fit", "-c", str(ROOT / "configs/vae_digits.yaml"), "--tracker", "csv", "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "3", "--model.fid_samples", "100", "--run_dir", str(tmp_path / "run"),
        cwd=tmp_path,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "test/fid" in fit.stdout
    run = tmp_path / "run"
    images = {p.name for p in (run / "images").iterdir()}
    assert {"val_samples_epoch000.png", "val_reconstructions_epoch000.png", "val_interpolation_epoch000.png"} <= images
    predicted = archlab(
        "predict", "-c", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints" / "best.ckpt"),
        "--tracker", "csv", "--model.num_samples", "16", "--run_dir", str(tmp_path / "predict"), cwd=tmp_path,
    )  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    with Image.open(tmp_path / "predict" / "samples.png") as image:
        assert image.size == (4 * 9 + 1, 4 * 9 + 1)  # a 4x4 grid of 8x8 samples with 1-px borders


def test_segmentation_task_learns_and_scores_dice(cache: Path, tmp_path: Path):
    torch.manual_seed(0)
    data = Cells(labels=8, val_size=4, test_size=4, image_size=32, batch_size=4)
    task = Segmentation(UNet(num_classes=2, depth=2, width=8), lr=1.0e-2, schedule="constant")
    trainer = fast_trainer(tmp_path, max_epochs=6, num_sanity_val_steps=0)
    trainer.fit(task, datamodule=data)
    (result,) = trainer.test(task, datamodule=data, verbose=False)
    assert {"test/dice", "test/iou", "test/dice_0", "test/dice_1", "test/iou_1"} <= set(result)
    assert result["test/dice"] == pytest.approx(result["test/dice_1"])  # mean over the foreground class
    assert result["test/dice"] > 0.6
    with pytest.raises(ConfigError, match="ce_weight"):
        Segmentation(UNet(), ce_weight=0.0, dice_weight=0.0)


def test_segmentation_checks_its_classes_against_the_data():
    data = Cells(labels=4, val_size=2, test_size=2, image_size=16)
    Segmentation(UNet(num_classes=2, depth=1, width=4)).check_data(data)
    with pytest.raises(ConfigError, match=r"model.num_classes is 3 but the data \(Cells\) has 2"):
        Segmentation(UNet(num_classes=3, depth=1, width=4)).check_data(data)
