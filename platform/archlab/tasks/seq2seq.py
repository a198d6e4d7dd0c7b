"""Seq2Seq: an encoder-decoder trained with teacher forcing, evaluated by greedy decoding and exact match.

Sutskever, Vinyals, Le. "Sequence to Sequence Learning with Neural Networks", NeurIPS 2014.
https://arxiv.org/abs/1409.3215. The net has `encode(src) -> (memory, mask)` and `decode(tgt, memory, mask) -> logits`
(archlab.models.Transformer); batches are (src, tgt) with tgt = [BOS] target [EOS] [PAD]...
"""

from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics.classification import MulticlassExactMatch
from torchmetrics.functional.classification import multiclass_exact_match

from archlab.errors import ConfigError
from archlab.predictions import Table
from archlab.tasks.base import Stage, Task


class Seq2Seq(Task):
    """src, tgt[:-1] -> net -> logits -> cross-entropy against tgt[1:] (teacher forcing); in val and test also
    greedy decoding from [BOS], scored by exact match of the whole output sequence."""

    monitor: ClassVar[str] = "val/exact_match"
    mode: ClassVar[Literal["min", "max"]] = "max"

    def __init__(
        self,
        net: nn.Module,
        *,
        pad_id: int | None = None,
        bos_id: int | None = None,
        eos_id: int | None = None,
        label_smoothing: float = 0.0,
        **kwargs: Any,
    ) -> None:
        """`pad_id`, `bos_id`, `eos_id`: the special tokens' ids, set by the DataModule (its `shapes`)."""
        super().__init__(net, **kwargs)
        if not (hasattr(net, "encode") and hasattr(net, "decode") and hasattr(net, "vocab_size")):
            raise ConfigError(
                f"Seq2Seq needs an encoder-decoder net (encode, decode, vocab_size); got {type(net).__name__}."
            )
        for key, value in (("pad_id", pad_id), ("bos_id", bos_id), ("eos_id", eos_id)):
            if value is None:
                raise ConfigError(f"model.{key} is not set and the data does not provide it; set model.{key}.")
        self.pad_id = pad_id
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.label_smoothing = label_smoothing
        # A sequence counts when it equals the target at every non-pad target position ([EOS] included).
        self.set_metrics({"exact_match": MulticlassExactMatch(net.vocab_size, ignore_index=pad_id)})

    def step(self, batch: tuple[Tensor, Tensor], stage: Stage) -> Tensor:
        src, tgt = batch  # (B, S), (B, L)
        logits = self.net(src, tgt[:, :-1])  # (B, L - 1, vocab_size)
        loss = F.cross_entropy(
            logits.flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=self.pad_id, label_smoothing=self.label_smoothing
        )
        self.log_loss(stage, loss, batch_size=len(src))
        if stage != "train":
            metrics = getattr(self, f"{stage}_metrics")
            metrics.update(self.greedy(src, tgt.shape[1] - 1), tgt[:, 1:])  # (B, L - 1) each
            self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=True)
        return loss

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

    def predict_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> dict[str, Tensor]:
        src, tgt = batch
        return {"source": src, "prediction": self.greedy(src, tgt.shape[1] - 1), "target": tgt[:, 1:]}

    def predictions(self, outputs: list[dict[str, Tensor]]) -> Table:
        """Source, prediction and target as text (the DataModule's `decode`), and whether they match exactly."""
        decode = self.trainer.datamodule.decode
        columns = {"source": [], "prediction": [], "target": [], "exact": []}
        for batch in outputs:
            exact = multiclass_exact_match(
                batch["prediction"],
                batch["target"],
                self.net.vocab_size,
                multidim_average="samplewise",
                ignore_index=self.pad_id,
            )  # (B,)
            for key in ("source", "prediction", "target"):
                columns[key] += [decode(row) for row in batch[key].tolist()]
            columns["exact"] += exact.int().tolist()
        return Table(columns, index=False)
