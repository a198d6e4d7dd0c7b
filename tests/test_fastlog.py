"""Cheaper logging changes no logged value: archlab.fastlog's device-move shortcut, and training metrics logged once
per epoch instead of handed to self.log at every step."""

import csv
import dataclasses
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.trainer.connectors.logger_connector.result import _ResultMetric
from torchmetrics.classification import MulticlassAccuracy

from archlab import fastlog
from archlab.data import Digits
from archlab.models import CNN
from archlab.tasks import Classification, Task

CPU, META = torch.device("cpu"), torch.device("meta")


def test_installed_on_the_pinned_lightning():
    # Fails when a Lightning upgrade changes the method the shortcut was written against: re-check it then.
    Classification(CNN(in_channels=1, num_classes=10))
    assert fastlog.installed()


@dataclasses.dataclass
class Meta:
    name: str
    fn: object = None
    extra: object = None


def test_on_device_looks_wherever_the_move_would():
    assert fastlog.on_device({"a": torch.zeros(2), "b": [torch.ones(1), (3, "x")], "m": Meta("x")}, CPU)
    assert not fastlog.on_device({"a": torch.zeros(2), "b": [torch.empty(1, device=META)]}, CPU)
    assert not fastlog.on_device(Meta("x", extra=torch.empty(1, device=META)), CPU)
    assert fastlog.on_device(MulticlassAccuracy(3), CPU) and not fastlog.on_device(MulticlassAccuracy(3), META)
    assert not fastlog.on_device(torch.nn.Linear(2, 2), CPU)  # a plain module: left to Lightning's own move


def test_a_result_off_the_device_still_moves():
    fastlog.install()
    from lightning.pytorch.trainer.connectors.logger_connector.result import _Metadata

    result = _ResultMetric(_Metadata(fx="training_step", name="x"), is_tensor=True)
    meta = result.meta
    assert result.to(CPU) is result and result.meta is meta  # the shortcut (Lightning's move copies the metadata)
    result.value = torch.zeros((), device=META)  # one state elsewhere: Lightning's own move runs
    result.to(device="meta")
    assert result.cumulated_batch_size.device == META and result.meta is not meta


class OldLogging(Classification):
    """The training metrics handed to self.log at every step, as before."""

    def log_stage(self, stage, loss, batch_size):
        self.log_loss(stage, loss, batch_size)
        self.log_dict(getattr(self, f"{stage}_metrics"), on_step=False, on_epoch=True, prog_bar=stage != "train")

    def on_train_epoch_end(self) -> None:
        pass


def fit(tmp_path, task_class: type[Task], name: str) -> dict[str, list[float]]:
    L.seed_everything(0)
    data = Digits(batch_size=64, augment=False)
    task = task_class(CNN(in_channels=1, num_classes=10), lr=3.0e-3)
    trainer = L.Trainer(
        max_epochs=2, limit_train_batches=6, limit_val_batches=2, log_every_n_steps=2, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, logger=CSVLogger(tmp_path, name=name),
    )  # fmt: skip
    trainer.fit(task, datamodule=data)
    with open(Path(trainer.logger.log_dir) / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {key: [float(row[key]) for row in rows if row[key]] for key in rows[0]}


def test_logged_values_are_the_same_as_lightnings_per_step_logging(tmp_path, monkeypatch):
    new = fit(tmp_path, Classification, "new")
    monkeypatch.setattr(_ResultMetric, "to", _ResultMetric.to.__wrapped__)  # Lightning's own move
    monkeypatch.setattr(fastlog, "install", lambda: False)
    old = fit(tmp_path, OldLogging, "old")
    assert fastlog.installed() is False
    assert len(new["train/acc"]) == 2 and len(new["train/loss_step"]) == 6  # an epoch value per epoch; every 2 steps
    assert new.keys() == old.keys()
    for key in new:
        assert new[key] == pytest.approx(old[key], rel=1e-6, abs=1e-9), key
