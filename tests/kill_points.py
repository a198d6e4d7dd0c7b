"""`archlab` that kills itself at a chosen moment, for the resume tests: `python tests/kill_points.py fit ...`.

ARCHLAB_KILL picks the moment (test-only: the package itself has no such hook); N is the trainer's global step:

    train:N     SIGKILL at the start of the first training batch at step >= N (that batch never completes)
    val:N       SIGKILL after the first batch of the first validation at step >= N
    save:N      SIGKILL in the middle of writing the first checkpoint at step >= N (half its bytes on disk)
    sigterm:N   SIGTERM (a graceful stop) at the start of the first training batch at step >= N, in every process
    sigterm0:N  the same in the first process only (under DDP: as `kill` of the launching process)
    sigint:N    SIGINT (Ctrl-C) there instead; sigint2:N sends two (the second stops at once)
    slow:N      every checkpoint write from step N on takes N seconds longer (the process stays alive)
"""

import io
import os
import signal
import sys
import time
from pathlib import Path

import lightning as L
import torch

from archlab import cli

SIGNALS = {
    "train": [signal.SIGKILL],
    "sigterm": [signal.SIGTERM],
    "sigterm0": [signal.SIGTERM],
    "sigint": [signal.SIGINT],
    "sigint2": [signal.SIGINT, signal.SIGINT],
}


class Kill(L.Callback):
    def __init__(self, kind: str, step: int) -> None:
        self.kind = kind
        self.step = step
        self.fired = False

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self.kind == "sigterm0" and os.environ.get("LOCAL_RANK", "0") != "0":
            return
        if self.kind in SIGNALS and trainer.global_step >= self.step and not self.fired:
            self.fired = True
            for signum in SIGNALS[self.kind]:
                os.kill(os.getpid(), signum)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if self.kind == "val" and not trainer.sanity_checking and trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def training_state(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint that decides the rest of training: weights, buffers, optimizer moments, the step."""
    checkpoint = torch.load(path, weights_only=True)
    flat = {f"state_dict.{k}": v for k, v in checkpoint["state_dict"].items()}

    def walk(value, key):
        if torch.is_tensor(value):
            flat[key] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}")
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                walk(v, f"{key}[{i}]")

    walk(checkpoint["optimizer_states"], "optimizer_states")
    flat["global_step"] = torch.tensor(checkpoint["global_step"])
    return flat


def max_difference(a: Path, b: Path) -> float:
    """The largest elementwise difference between two checkpoints' training states: 0.0 when bitwise equal, inf when
    they do not hold the same tensors."""
    x, y = training_state(a), training_state(b)
    if x.keys() != y.keys():
        return float("inf")
    return max(
        0.0 if torch.equal(x[k], y[k]) else float((x[k].double() - y[k].double()).abs().max().nan_to_num(float("inf")))
        for k in x
    )


def patch_save(kind: str, step: int) -> None:
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("global_step", -1) >= step:
            if kind == "save":
                buffer = io.BytesIO()
                real_save(obj, buffer, *args, **kwargs)
                f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                f.flush()
                os.fsync(f.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(step)
        return real_save(obj, f, *args, **kwargs)

    torch.save = save


if __name__ == "__main__":
    kind, _, at = os.environ.get("ARCHLAB_KILL", "").partition(":")
    if kind in ("save", "slow"):
        patch_save(kind, int(at))
    sys.exit(cli.main(callbacks=[Kill(kind, int(at))] if kind else None))
