"""The NaN guard: a loss or gradient that becomes NaN or infinite stops the run at that step, or skips the step.

Lightning has no such switch any more (`Trainer(terminate_on_nan=...)` was removed in 1.7, and `detect_anomaly`
slows every backward pass several times), so archlab checks once per optimizer step, just before the step: the total
gradient norm (`torch.nn.utils.get_total_norm`) is finite exactly when every gradient is (up to overflow of the sum
of squares), and a non-finite loss gives non-finite gradients. The check costs one device-to-host read per step.

    stop   raise DivergedError naming the step: exit status 5; a sweep fails the trial with that reason
    off    no check (archlab adds no guard): saves the gradient norm and, on a GPU, the one host sync per step
    skip   drop this step's gradients (the optimizer then leaves every weight and its state alone), put back the
           buffers its forward pass moved (BatchNorm's running statistics would otherwise keep the NaN), and count
           it: `train/skipped_steps`, and a summary line at the end of fit
"""

from typing import Literal

import lightning as L
import torch
from torch import Tensor

from archlab.errors import DivergedError

Policy = Literal["stop", "skip", "off"]


class NonFiniteGuard(L.Callback):
    """Before each optimizer step: all gradients finite, or stop / skip."""

    def __init__(self, policy: Literal["stop", "skip"] = "stop") -> None:
        if policy not in ("stop", "skip"):
            raise ValueError(f"the guard's policy must be 'stop' or 'skip' ('off' adds no guard), got {policy!r}")
        self.policy = policy
        self.skipped = 0
        self.loss: Tensor | None = None
        self.buffers: dict[str, Tensor] = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self.policy == "skip":  # a copy of the (small) floating-point buffers, to undo a skipped step's forward
            self.buffers = {n: b.detach().clone() for n, b in pl_module.named_buffers() if b.is_floating_point()}

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        self.loss = loss.detach()

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], error_if_nonfinite=False)
        if bool(torch.isfinite(norm)):
            return
        if self.policy == "skip":
            for p in params:
                # torch optimizers leave a parameter without a gradient untouched: no update, no decay, no moments.
                p.grad = None
            with torch.no_grad():
                for name, buffer in pl_module.named_buffers():
                    if name in self.buffers:
                        buffer.copy_(self.buffers[name])
            self.skipped += 1
            pl_module.log("train/skipped_steps", float(self.skipped), on_step=True, on_epoch=False, reduce_fx="max")
            return
        bad = [name for name, p in pl_module.named_parameters() if p.grad is not None and not p.grad.isfinite().all()]
        loss = "" if self.loss is None else f" (loss {float(self.loss):.4g})"
        raise DivergedError(
            f"training diverged at step {trainer.global_step} (epoch {trainer.current_epoch}): the gradients of "
            f"{len(bad)} parameter tensor(s) are NaN or infinite{loss}, first {', '.join(bad[:3])}. No checkpoint "
            "of this step was written. Lower the learning rate (model.lr), clip gradients "
            "(--trainer.gradient_clip_val 1.0), or skip such steps with --nonfinite skip."
        )

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.skipped and trainer.is_global_zero:
            print(f"nonfinite: skipped {self.skipped} step(s) whose gradients were NaN or infinite")
