"""Seq2Seq: an encoder-decoder trained with teacher forcing, evaluated by greedy decoding and exact match.

Sutskever, Vinyals, Le. "Sequence to Sequence Learning with Neural Networks", NeurIPS 2014.
https://arxiv.org/abs/1409.3215. The net has `encode(src) -> (memory, mask)` and `decode(tgt, memory, mask) -> logits`
(archlab.models.Transformer); batches are (src, tgt) with tgt = [BOS] target [EOS] [PAD]...
"""

import csv
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics import MeanMetric

from archlab.errors import ConfigError
from archlab.tasks.base import Stage, Task
from archlab.tasks.sequence import clip_gradients


class Seq2Seq(Task):
    """src, tgt[:-1] -> net -> logits -> cross-entropy against tgt[1:] (teacher forcing); in val and test also
    greedy decoding from [BOS], scored by exact match of the whole output sequence."""

    monitor: ClassVar[str] = "val/exact_match"
    mode: ClassVar[Literal["min", "max"]] = "max"

    def __init__(
        self,
        net: nn.Module,
        *,
        pad_id: int = 0,
        bos_id: int = 1,
        eos_id: int = 2,
        label_smoothing: float = 0.0,
        grad_clip: float | None = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(net, **kwargs)
        if not (hasattr(net, "encode") and hasattr(net, "decode")):
            raise ConfigError(f"Seq2Seq needs an encoder-decoder net (encode, decode); got {type(net).__name__}.")
        self.pad_id = pad_id
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.label_smoothing = label_smoothing
        self.grad_clip = grad_clip
        self.val_exact = MeanMetric()
        self.test_exact = MeanMetric()

    def step(self, batch: tuple[Tensor, Tensor], stage: Stage) -> Tensor:
        src, tgt = batch  # (B, S), (B, L)
        logits = self.net(src, tgt[:, :-1])  # (B, L - 1, vocab_size)
        loss = F.cross_entropy(
            logits.flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=self.pad_id, label_smoothing=self.label_smoothing
        )
        self.log(f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=True, batch_size=len(src))
        if stage != "train":
            exact = getattr(self, f"{stage}_exact")
            exact.update(self.exact_match(self.greedy(src, tgt.shape[1] - 1), tgt[:, 1:]))
            self.log(f"{stage}/exact_match", exact, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def exact_match(self, pred: Tensor, target: Tensor) -> Tensor:
        """(B, L) each -> (B,) 1.0 where pred equals target at every non-pad target position (EOS included)."""
        real = target != self.pad_id
        return ((pred == target) | ~real).all(dim=1).float()

    @torch.no_grad()
    def greedy(self, src: Tensor, steps: int) -> Tensor:
        """(B, S) -> (B, steps) tokens after [BOS], the argmax at each step; [PAD] after a sequence's [EOS]."""
        memory, mask = self.net.encode(src)
        out = torch.full((len(src), 1), self.bos_id, dtype=torch.long, device=src.device)
        done = torch.zeros(len(src), dtype=torch.bool, device=src.device)
        for _ in range(steps):
            token = self.net.decode(out, memory, mask)[:, -1].argmax(-1)  # (B,)
            token = token.masked_fill(done, self.pad_id)
            done |= token == self.eos_id
            out = torch.cat([out, token[:, None]], dim=1)
        return out[:, 1:]

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        clip_gradients(self, optimizer, self.grad_clip, gradient_clip_val, gradient_clip_algorithm)

    def predict_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> dict[str, Tensor]:
        src, tgt = batch
        return {"source": src, "prediction": self.greedy(src, tgt.shape[1] - 1), "target": tgt[:, 1:]}

    def write_predictions(self, outputs: list[dict[str, Tensor]], run_dir: Path) -> Path:
        """run_dir/predictions.csv: source, prediction and target as text (the DataModule's `decode`)."""
        decode = self.trainer.datamodule.decode
        path = Path(run_dir) / "predictions.csv"
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["source", "prediction", "target", "exact"])
            for batch in outputs:
                exact = self.exact_match(batch["prediction"], batch["target"])
                for src, pred, tgt, ok in zip(
                    batch["source"], batch["prediction"], batch["target"], exact, strict=True
                ):
                    writer.writerow([decode(src.tolist()), decode(pred.tolist()), decode(tgt.tolist()), int(ok)])
        return path
