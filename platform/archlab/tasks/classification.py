"""Classification: cross-entropy over class logits, for any net that maps inputs to (B, num_classes)."""

from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics.classification import MulticlassAccuracy

from archlab.errors import ConfigError
from archlab.models import AuxLogits
from archlab.tasks.base import Stage, Task


class Classification(Task):
    """inputs -> net -> logits -> cross-entropy (+ aux_weight x auxiliary heads' losses while training)."""

    monitor: ClassVar[str] = "val/acc"
    mode: ClassVar[Literal["min", "max"]] = "max"

    def __init__(
        self,
        net: nn.Module,
        *,
        num_classes: int | None = None,
        label_smoothing: float = 0.0,
        aux_weight: float = 0.3,
        **kwargs: Any,
    ) -> None:
        """`kwargs`: the settings of `Task` (lr, weight_decay, warmup, schedule, compile, channels_last)."""
        super().__init__(net, **kwargs)
        num_classes = num_classes or getattr(net, "num_classes", None)
        if not num_classes or num_classes < 2:
            raise ConfigError(
                f"model.num_classes must be >= 2 (got {num_classes}); set it, or use a net that has num_classes."
            )
        if not 0 <= label_smoothing < 1:
            raise ConfigError(f"model.label_smoothing must be in [0, 1), got {label_smoothing}.")
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        # Szegedy et al. 2015, sec. 5: the auxiliary classifiers' losses are added with weight 0.3.
        self.aux_weight = aux_weight
        metrics = {"acc": MulticlassAccuracy(num_classes, average="micro")}
        if num_classes >= 5:
            metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
        self.set_metrics(metrics)

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        return out.logits if isinstance(out, AuxLogits) else out

    def step(self, batch: tuple[Tensor, Tensor], stage: Stage) -> Tensor:
        x, y = batch
        out = self.net(x)
        if isinstance(out, AuxLogits):
            logits = out.logits
            loss = self.cross_entropy(logits, y)
            loss = loss + self.aux_weight * sum(self.cross_entropy(aux, y) for aux in out.aux)
        else:
            logits = out
            loss = self.cross_entropy(logits, y)
        getattr(self, f"{stage}_metrics").update(logits.detach(), y)
        self.log_stage(stage, loss, batch_size=len(y))
        return loss

    def cross_entropy(self, logits: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)

    def predict_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> dict[str, Tensor]:
        probs = torch.softmax(self(batch[0]), dim=-1)  # (B, num_classes)
        confidence, label = probs.max(dim=-1)
        out = {"label": label, "confidence": confidence}
        if len(batch) > 1:
            out["target"] = batch[1]
        return out
