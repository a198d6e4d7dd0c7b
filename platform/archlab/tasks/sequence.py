"""Sequence regression and per-step classification, for the synthetic long-range tasks (archlab.data.synthetic).

SequenceRegression: one real target per sequence (the adding problem), mean squared error.
SequenceTagging: a class per step (copy memory), cross-entropy over every step; accuracy over the last `answer_len`
steps, where the answer is (all steps when `answer_len` is None).
Recurrent nets on long sequences have exploding gradients (Pascanu et al. 2013, https://arxiv.org/abs/1211.5063):
their configs clip the gradient norm through the Trainer, `trainer.gradient_clip_val: 1.0`.
"""

from typing import Any, ClassVar, Literal

from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics import MeanSquaredError
from torchmetrics.classification import MulticlassAccuracy

from archlab.errors import ConfigError
from archlab.tasks.base import Stage, Task


class SequenceRegression(Task):
    """sequence -> net -> (B, 1) prediction -> MSE against the target."""

    monitor: ClassVar[str] = "val/mse"
    mode: ClassVar[Literal["min", "max"]] = "min"

    def __init__(
        self,
        net: nn.Module,
        *,
        weight_decay: float = 0.0,
        warmup: float = 0.05,
        **kwargs: Any,
    ) -> None:
        super().__init__(net, weight_decay=weight_decay, warmup=warmup, **kwargs)
        self.set_metrics({"mse": MeanSquaredError()})

    def step(self, batch: tuple[Tensor, Tensor], stage: Stage) -> Tensor:
        x, y = batch
        pred = self.net(x)  # (B, 1)
        loss = F.mse_loss(pred, y)
        getattr(self, f"{stage}_metrics").update(pred.detach(), y)
        self.log_stage(stage, loss, batch_size=len(y))
        return loss

    def predict_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> dict[str, Tensor]:
        out = {"prediction": self.net(batch[0]).squeeze(-1)}
        if len(batch) > 1:
            out["target"] = batch[1].squeeze(-1)
        return out


class SequenceTagging(Task):
    """sequence -> net -> (B, T, num_classes) logits -> cross-entropy at every step; accuracy on the answer."""

    monitor: ClassVar[str] = "val/acc"
    mode: ClassVar[Literal["min", "max"]] = "max"

    def __init__(
        self,
        net: nn.Module,
        *,
        num_classes: int | None = None,
        answer_len: int | None = None,
        weight_decay: float = 0.0,
        warmup: float = 0.05,
        **kwargs: Any,
    ) -> None:
        super().__init__(net, weight_decay=weight_decay, warmup=warmup, **kwargs)
        num_classes = num_classes or getattr(net, "num_classes", None)
        if not num_classes or num_classes < 2:
            raise ConfigError(f"model.num_classes must be >= 2; got {num_classes}.")
        if answer_len is not None and answer_len < 1:
            raise ConfigError(f"model.answer_len must be >= 1 or null (every step); got {answer_len}.")
        self.answer_len = answer_len
        self.set_metrics({"acc": MulticlassAccuracy(num_classes, average="micro")})

    def step(self, batch: tuple[Tensor, Tensor], stage: Stage) -> Tensor:
        x, y = batch
        logits = self.net(x)  # (B, T, num_classes)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        answer = slice(-self.answer_len, None) if self.answer_len else slice(None)
        getattr(self, f"{stage}_metrics").update(logits[:, answer].detach().flatten(0, 1), y[:, answer].flatten())
        self.log_stage(stage, loss, batch_size=len(y))
        return loss

    def predict_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> dict[str, Tensor]:
        answer = slice(-self.answer_len, None) if self.answer_len else slice(None)
        correct = self.net(batch[0])[:, answer].argmax(-1) == batch[1][:, answer]
        return {"answer_acc": correct.float().mean(-1)}
