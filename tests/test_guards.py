"""The NaN guard on real training: a diverging run stops at the step its gradients went non-finite, or skips it."""

import json
import re
from pathlib import Path

import lightning as L
import pytest
import torch

from archlab import cli
from archlab.data import Digits
from archlab.errors import DivergedError
from archlab.guards import NonFiniteGuard
from archlab.models import CNN, DCGAN
from archlab.tasks import Adversarial, Classification

ROOT = Path(__file__).resolve().parents[1]


class PoisonAt(L.Callback):
    """Make one training batch's inputs infinite, so its loss and gradients are non-finite at a known step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            batch[0].fill_(float("inf"))


def trainer(*callbacks: L.Callback, steps: int = 6) -> L.Trainer:
    return L.Trainer(
        max_steps=steps, callbacks=list(callbacks), logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip


def classification() -> tuple[Classification, Digits]:
    data = Digits(batch_size=32, augment=False)
    torch.manual_seed(0)
    task = Classification(CNN(in_channels=1, num_classes=10, channels=[8], hidden_dim=16), schedule="constant")
    return task, data


def test_stop_names_the_step_and_leaves_the_weights_finite() -> None:
    task, data = classification()
    with pytest.raises(DivergedError, match=r"diverged at step 3 \(epoch 0\).*NaN or infinite.*--nonfinite skip"):
        trainer(NonFiniteGuard("stop"), PoisonAt(3)).fit(task, datamodule=data)
    assert all(torch.isfinite(p).all() for p in task.parameters())


def test_skip_leaves_the_weights_and_optimizer_state_of_that_step_alone() -> None:
    task, data = classification()
    guard = NonFiniteGuard("skip")
    fit = trainer(guard, PoisonAt(2), steps=5)
    fit.fit(task, datamodule=data)
    assert guard.skipped == 1
    assert all(torch.isfinite(p).all() for p in task.parameters())
    # AdamW counts the steps it took per parameter: the skipped one is missing.
    (optimizer,) = fit.optimizers
    steps = {float(s["step"]) for s in optimizer.state.values()}
    assert steps == {4.0}


def test_without_the_guard_the_same_run_trains_on_with_nan_weights() -> None:
    task, data = classification()
    trainer(PoisonAt(2), steps=4).fit(task, datamodule=data)
    assert not all(torch.isfinite(p).all() for p in task.parameters())  # what the guard prevents


def test_the_gans_manual_optimization_is_guarded_too() -> None:
    data = Digits(batch_size=32, normalize=False)
    torch.manual_seed(0)
    task = Adversarial(DCGAN(in_channels=1, image_size=8, latent_dim=8, width=8), fid_samples=2)
    with pytest.raises(DivergedError, match=r"diverged at step"):
        trainer(NonFiniteGuard("stop"), PoisonAt(2)).fit(task, datamodule=data)
    assert all(torch.isfinite(p).all() for p in task.parameters())


# `archlab fit` of a one-layer CNN on digits, in this process.
TINY_FIT = [
    *("fit", "-c", str(ROOT / "configs/cnn_digits.yaml"), "--tracker", "csv"),
    *("--trainer.enable_progress_bar", "false", "--model.net.channels", "[8]"),
]


def test_archlab_fit_stops_a_diverging_run_with_exit_5_and_no_checkpoint(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # The probe: `--model.lr 1.0e+6` used to exit 0 with every weight of best.ckpt NaN and marked best.
    monkeypatch.chdir(tmp_path)
    assert cli.main([*TINY_FIT, "--model.lr", "1.0e+6", "--trainer.max_epochs", "2"]) == 5
    err = capsys.readouterr().err
    assert re.search(r"archlab: error: training diverged at step \d+ \(epoch 0\)", err), err[-2000:]
    (run,) = (tmp_path / "runs/cnn_digits").iterdir()
    assert not list(run.rglob("*.ckpt"))
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and status["exit_code"] == 5


def test_archlab_fit_with_nonfinite_skip_trains_past_a_poisoned_batch(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # One batch of infinite inputs at step 3: its step is skipped, and the BatchNorm statistics its forward pass
    # moved are put back, so every tensor of every checkpoint (buffers included) stays finite.
    monkeypatch.chdir(tmp_path)
    args = [*TINY_FIT, "--nonfinite", "skip", "--trainer.max_epochs", "1", "--test_after_fit", "false"]
    assert cli.main(args, callbacks=[PoisonAt(3)]) == 0
    assert "nonfinite: skipped 1 step(s)" in capsys.readouterr().out
    (run,) = (tmp_path / "runs/cnn_digits").iterdir()
    checkpoints = sorted(run.rglob("*.ckpt"))
    assert [path.name for path in checkpoints] == ["best.ckpt", "last.ckpt"]
    for path in checkpoints:
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path


def test_archlab_fit_with_nonfinite_off_adds_no_guard(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    seen = []

    class Callbacks(L.Callback):
        def on_fit_start(self, trainer, pl_module) -> None:
            seen.extend(type(c).__name__ for c in trainer.callbacks)

    # `--tracker none` too: no logger, so no LearningRateMonitor (which would stop the run without one).
    for policy, tracker in (("off", "none"), ("stop", "csv")):
        args = [*TINY_FIT, "--nonfinite", policy, "--tracker", tracker, "--trainer.max_epochs", "1"]
        assert cli.main([*args, "--test_after_fit", "false"], callbacks=[Callbacks()]) == 0
        assert ("NonFiniteGuard" in seen) == (policy == "stop"), seen
        assert ("LearningRateMonitor" in seen) == (tracker != "none"), seen
        seen.clear()
