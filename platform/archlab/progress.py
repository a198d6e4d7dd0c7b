"""Progress for logs: a line per epoch, and one every `every_seconds` inside long epochs, when output is not a terminal.

Lightning's progress bars redraw one terminal line; written to a pipe, a file, CI or `docker run` without `-t` they
show nothing while a run trains. `archlab fit` swaps them for this callback when stdout is not a TTY (unless
`--trainer.enable_progress_bar` says otherwise):

    epoch 3/40  step 92  train/loss 0.231  val/acc 0.9722  val/loss 0.1032  (23 batches in 1.9 s, 12.1 batches/s)
"""

import sys
import time
from typing import Any, TextIO

import lightning as L


class LineProgress(L.Callback):
    """Prints where training stands as plain lines (rank zero only)."""

    def __init__(self, every_seconds: float = 30.0, stream: TextIO | None = None) -> None:
        self.every_seconds = every_seconds
        self.stream = stream
        self.started = self.last = 0.0
        self.batches = 0

    def say(self, trainer: L.Trainer, text: str) -> None:
        if trainer.is_global_zero:
            print(text, file=self.stream or sys.stdout, flush=True)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = self.last = time.monotonic()
        self.batches = 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.batches += 1
        now = time.monotonic()
        if now - self.last < self.every_seconds:
            return
        self.last = now
        total = trainer.num_training_batches
        of = f"/{total}" if isinstance(total, int) else ""
        metrics = values(trainer, lambda key: key.startswith("train/") and key.endswith("_step"))
        where = f"epoch {trainer.current_epoch + 1}  batch {batch_idx + 1}{of}  step {trainer.global_step}"
        self.say(trainer, where + metrics)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        metrics = values(trainer, shown_at_epoch_end)
        rate = f"({self.batches} batches in {elapsed:.1f} s, {self.batches / elapsed:.1f} batches/s)"
        self.say(trainer, f"epoch {trainer.current_epoch + 1}{epochs}  step {trainer.global_step}{metrics}  {rate}")


def shown_at_epoch_end(key: str) -> bool:
    """The epoch's values (`train/loss`, not its `_step` and `_epoch` twins) and one learning rate."""
    if key.startswith("lr-"):
        return "/pg" not in key or key.endswith("/pg1")
    return "/" in key and not key.endswith(("_step", "_epoch"))


def values(trainer: L.Trainer, keep) -> str:
    """`  key value` for the logged scalars that `keep` accepts, sorted by key."""
    shown = []
    for key, value in sorted(trainer.callback_metrics.items()):
        if keep(key) and getattr(value, "numel", lambda: 1)() == 1:
            shown.append(f"  {key.removesuffix('_step')} {float(value):.4g}")
    return "".join(shown)
