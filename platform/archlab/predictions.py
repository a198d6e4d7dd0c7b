"""What `archlab predict` writes: a task turns its `predict_step` outputs into one of three kinds of result, and
Lightning's `BasePredictionWriter` writes it where the run directory says (archlab.rundir).

    Table     one row per sample            -> predictions.csv
    Images    one grid of generated images  -> samples.png
    Texts     generated text samples        -> samples.txt
"""

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torchvision
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor

from archlab.rundir import RunDir


@dataclass
class Table:
    """Columns of equal length; `index` adds a leading 0..N-1 column."""

    columns: dict[str, list[Any]]
    index: bool = True
    kind = "table"

    def write(self, path: Path) -> None:
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow([*(["index"] if self.index else []), *self.columns])
            for i, row in enumerate(zip(*self.columns.values(), strict=True)):
                writer.writerow([*([i] if self.index else []), *row])


@dataclass
class Images:
    """One grid (3, H, W) in [0, 1]."""

    grid: Tensor
    kind = "images"

    def write(self, path: Path) -> None:
        torchvision.utils.save_image(self.grid, path)


@dataclass
class Texts:
    samples: list[str]
    kind = "texts"

    def write(self, path: Path) -> None:
        path.write_text("".join(f"=== sample {i} ===\n{text}\n\n" for i, text in enumerate(self.samples)))


class PredictionWriter(BasePredictionWriter):
    """Writes the task's `predictions(outputs)` once per predict epoch into the run directory."""

    def __init__(self, run_dir: RunDir) -> None:
        super().__init__(write_interval="epoch")
        self.run_dir = run_dir
        self.path: Path | None = None

    def write_on_epoch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: list[Any], batch_indices: list[Any]
    ) -> None:
        if not trainer.is_global_zero or not predictions:
            return
        # One predict dataloader: a list of per-batch outputs (several loaders would give a list of such lists).
        outputs = predictions[0] if isinstance(predictions[0], list) else predictions
        result = pl_module.predictions(outputs)
        path = self.run_dir.predictions(result.kind)
        path.parent.mkdir(parents=True, exist_ok=True)
        result.write(path)
        self.path = path
