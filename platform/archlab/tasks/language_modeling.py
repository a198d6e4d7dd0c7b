"""LanguageModeling: next-token cross-entropy for recurrent nets and GPT-style decoders; text sampling in predict.

Logged per stage: `loss` (nats per token), `ppl` = exp(loss), `bpc` = loss / ln 2 / chars_per_symbol (bits per
character; with a subword vocabulary chars_per_symbol is the training split's average).
With `carry_state` a recurrent net's hidden state is carried from one batch to the next, detached (truncated BPTT
over windows of the DataModule's seq_len; Williams & Peng 1990, Zaremba et al. 2014 https://arxiv.org/abs/1409.2329);
use it with `TextCorpus(stream=True)`, whose consecutive batches continue each other.
"""

import math
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics import MeanMetric

from archlab.errors import ConfigError
from archlab.predictions import Texts
from archlab.tasks.base import Stage, Task


def detach(state):
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


class LanguageModeling(Task):
    """ids -> net -> (B, T, vocab_size) logits -> cross-entropy against the next tokens."""

    monitor: ClassVar[str] = "val/bpc"
    mode: ClassVar[Literal["min", "max"]] = "min"

    def __init__(
        self,
        net: nn.Module,
        *,
        carry_state: bool = False,
        chars_per_symbol: float = 1.0,
        temperature: float = 0.8,
        top_k: int | None = None,
        sample_len: int = 300,
        **kwargs: Any,
    ) -> None:
        """`temperature`, `top_k` (None: the whole vocabulary) and `sample_len` shape the samples of predict."""
        super().__init__(net, **kwargs)
        if carry_state and not hasattr(net, "recur"):
            raise ConfigError(f"model.carry_state needs a recurrent net (one with recur()); got {type(net).__name__}.")
        if getattr(net, "bidirectional", False):
            raise ConfigError("model.net.bidirectional: a language model must not see the future; set it to false.")
        if temperature <= 0 or (top_k is not None and top_k < 1) or sample_len < 1:
            raise ConfigError(
                f"model.temperature must be > 0, model.top_k >= 1 or null, model.sample_len >= 1; got "
                f"{temperature}, {top_k}, {sample_len}."
            )
        self.carry_state = carry_state
        self.chars_per_symbol = chars_per_symbol
        self.temperature = temperature
        self.top_k = top_k
        self.sample_len = sample_len
        self.train_nll = MeanMetric()
        self.val_nll = MeanMetric()
        self.test_nll = MeanMetric()
        self.states: dict[str, object] = {}

    def compiled_modules(self) -> list[nn.Module]:
        # With carry_state the step calls net.recur(), not net(...): its parts are compiled instead.
        return list(self.net.children()) if self.carry_state else [self.net]

    def step(self, batch: tuple[Tensor, Tensor], stage: Stage) -> Tensor:
        x, y = batch  # (B, T) each
        if self.carry_state:
            state = self.states.get(stage)
            if state is not None and (state[0] if isinstance(state, tuple) else state).shape[1] != len(x):
                state = None
            logits, state = self.net.recur(x, state)
            self.states[stage] = detach(state)
        else:
            logits = self.net(x)  # (B, T, vocab_size)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        getattr(self, f"{stage}_nll").update(loss.detach(), weight=y.numel())
        self.log_loss(stage, loss, batch_size=len(y))
        return loss

    def log_epoch(self, stage: Stage) -> None:
        nll = getattr(self, f"{stage}_nll")
        loss = nll.compute()
        self.log(f"{stage}/ppl", loss.exp())
        self.log(f"{stage}/bpc", loss / math.log(2) / self.chars_per_symbol, prog_bar=stage == "val")
        nll.reset()
        self.states.pop(stage, None)

    def on_train_epoch_end(self) -> None:
        self.log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self.log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self.log_epoch("test")

    @torch.no_grad()
    def generate(self, prompt: Tensor) -> Tensor:
        """(B, P) prompt ids -> (B, P + sample_len): sampled with temperature and top-k, one token at a time."""
        out = prompt
        if hasattr(self.net, "recur"):
            logits, state = self.net.recur(prompt)
        else:
            logits = self.net(prompt[:, -self.net.max_len :])
        for _ in range(self.sample_len):
            last = logits[:, -1] / self.temperature  # (B, vocab_size)
            if self.top_k is not None:
                kth = last.topk(min(self.top_k, last.shape[-1]), dim=-1).values[:, -1:]
                last = last.masked_fill(last < kth, float("-inf"))
            token = torch.multinomial(last.softmax(-1), 1)  # (B, 1)
            out = torch.cat([out, token], dim=1)
            if hasattr(self.net, "recur"):
                logits, state = self.net.recur(token, state)
            else:
                logits = self.net(out[:, -self.net.max_len :])
        return out

    def predict_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> dict[str, Tensor]:
        return {"tokens": self.generate(batch[0])}

    def predictions(self, outputs: list[dict[str, Tensor]]) -> Texts:
        """The samples decoded with the DataModule's vocabulary."""
        decode = self.trainer.datamodule.decode
        return Texts([decode(row) for batch in outputs for row in batch["tokens"].tolist()])
