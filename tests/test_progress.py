"""Progress without a terminal: plain lines per epoch (and inside long epochs), and a quiet start."""

import io
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch

from archlab.data import Digits
from archlab.models import CNN
from archlab.progress import LineProgress
from archlab.tasks import Classification

ROOT = Path(__file__).resolve().parents[1]


def test_a_line_per_epoch_and_lines_inside_epochs_name_the_step_and_the_metrics() -> None:
    stream = io.StringIO()
    torch.manual_seed(0)
    task = Classification(CNN(in_channels=1, num_classes=10, channels=[8], hidden_dim=16), schedule="constant")
    trainer = L.Trainer(
        max_epochs=2, limit_train_batches=3, limit_val_batches=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[LineProgress(every_seconds=0.0, stream=stream)],
    )  # fmt: skip
    trainer.fit(task, datamodule=Digits(batch_size=32, augment=False))
    lines = stream.getvalue().splitlines()
    epochs = [line for line in lines if line.startswith("epoch") and "batches/s" in line]
    assert [line.split()[1] for line in epochs] == ["1/2", "2/2"]
    assert all(" val/acc " in line and " train/loss " in line and "3 batches in" in line for line in epochs)
    inside = [line for line in lines if " batch " in line]
    assert inside[0].startswith("epoch 1  batch 1/3  step 1  train/") and len(inside) == 6


def test_archlab_fit_into_a_pipe_prints_progress_lines_and_a_quiet_start(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "archlab", "fit", "-c", str(ROOT / "configs/cnn_digits.yaml"), "--tracker", "wandb",
         "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "3", "--model.net.channels", "[8]"],
        cwd=tmp_path, env={"WANDB_MODE": "offline", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert [line.split()[1] for line in result.stdout.splitlines() if line.startswith("epoch ")] == ["1/2", "2/2"]
    for noise in ("litlogger", "LeafSpec", "stepping batches", "Run history", "Tracking run with wandb"):
        assert noise not in result.stdout + result.stderr, noise
