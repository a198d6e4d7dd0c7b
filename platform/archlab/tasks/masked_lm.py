"""MaskedLanguageModeling: BERT pre-training's masked-token objective.

Devlin et al. "BERT", NAACL 2019, sec. 3.1 and appendix A.1: 15% of the (non-special) tokens are selected; of those
80% become [MASK], 10% a random token, 10% stay; the loss is cross-entropy on the selected positions only.
"""

from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from archlab.errors import ConfigError
from archlab.tasks.base import Stage, Task

IGNORE = -100


def mask_tokens(
    ids: Tensor, *, mask_id: int, vocab_size: int, num_specials: int, mask_prob: float, generator=None
) -> tuple[Tensor, Tensor]:
    """(B, T) ids -> (inputs, labels): inputs with the 80/10/10 corruption, labels = ids at selected positions and
    -100 elsewhere. Ids below `num_specials` ([PAD], [CLS], ...) are never selected."""
    selected = (torch.rand(ids.shape, device=ids.device, generator=generator) < mask_prob) & (ids >= num_specials)
    labels = ids.masked_fill(~selected, IGNORE)
    action = torch.rand(ids.shape, device=ids.device, generator=generator)
    to_mask = selected & (action < 0.8)
    to_random = selected & (action >= 0.8) & (action < 0.9)
    random_ids = torch.randint(num_specials, vocab_size, ids.shape, device=ids.device, generator=generator)
    inputs = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
    inputs = torch.where(to_random, random_ids, inputs)
    return inputs, labels


class MaskedLanguageModeling(Task):
    """ids -> 80/10/10 corruption of 15% -> net -> (B, T, vocab_size) logits -> cross-entropy on the selected."""

    monitor: ClassVar[str] = "val/loss"
    mode: ClassVar[Literal["min", "max"]] = "min"

    def __init__(
        self,
        net: nn.Module,
        *,
        vocab_size: int | None = None,
        mask_id: int | None = None,
        num_specials: int | None = None,
        mask_prob: float = 0.15,
        **kwargs: Any,
    ) -> None:
        """`vocab_size`, `mask_id` and `num_specials` (ids below it are special tokens) are set by the DataModule."""
        super().__init__(net, **kwargs)
        for key, value in (("vocab_size", vocab_size), ("mask_id", mask_id), ("num_specials", num_specials)):
            if value is None:
                raise ConfigError(f"model.{key} is not set and the data does not provide it; set model.{key}.")
        if not 0 < mask_prob < 1:
            raise ConfigError(f"model.mask_prob must be in (0, 1); got {mask_prob}.")
        if not 0 <= mask_id < num_specials < vocab_size:
            raise ConfigError(
                f"model.mask_id ({mask_id}) must be a special token below num_specials ({num_specials}),"
                f" itself below vocab_size ({vocab_size})."
            )
        self.vocab_size = vocab_size
        self.mask_id = mask_id
        self.num_specials = num_specials
        self.mask_prob = mask_prob
        self.set_metrics({"acc": MulticlassAccuracy(vocab_size, average="micro", ignore_index=IGNORE)})
        self.val_nll = MeanMetric()
        self.test_nll = MeanMetric()
        # Seeded at the start of every validation and test epoch: unshuffled loaders then see the same positions
        # corrupted every epoch, so their losses compare across epochs. Training draws fresh positions every step.
        self.eval_generator: torch.Generator | None = None

    def step(self, batch: tuple[Tensor, ...], stage: Stage) -> Tensor:
        ids = batch[0]  # (B, T)
        inputs, labels = mask_tokens(
            ids,
            mask_id=self.mask_id,
            vocab_size=self.vocab_size,
            num_specials=self.num_specials,
            mask_prob=self.mask_prob,
            generator=None if stage == "train" else self.eval_generator,
        )
        logits = self.net(inputs)  # (B, T, vocab_size)
        count = (labels != IGNORE).sum()
        # The mean over the selected positions, and 0 (not NaN) for a batch where none was selected.
        nll = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum")
        loss = nll / count.clamp_min(1)
        self.log_loss(stage, loss, batch_size=len(ids))
        if stage != "train":
            getattr(self, f"{stage}_nll").update(loss.detach(), weight=count)
            metrics = getattr(self, f"{stage}_metrics")
            metrics.update(logits.detach().argmax(-1), labels)  # (B, T) each; accuracy over the selected positions
            self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def seed_masking(self) -> None:
        self.eval_generator = torch.Generator(self.device).manual_seed(0)

    def on_validation_epoch_start(self) -> None:
        self.seed_masking()

    def on_test_epoch_start(self) -> None:
        self.seed_masking()

    def log_ppl(self, stage: Stage) -> None:
        nll = getattr(self, f"{stage}_nll")
        if nll.update_count:
            self.log(f"{stage}/ppl", nll.compute().exp())
        nll.reset()

    def on_validation_epoch_end(self) -> None:
        self.log_ppl("val")

    def on_test_epoch_end(self) -> None:
        self.log_ppl("test")
