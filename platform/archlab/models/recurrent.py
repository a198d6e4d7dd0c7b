"""Recurrent networks, one family: Elman RNN, LSTM and GRU cells, stacked, optionally bidirectional.

Elman. "Finding Structure in Time", Cognitive Science 1990 (cell="rnn", tanh).
Hochreiter, Schmidhuber. "Long Short-Term Memory", Neural Computation 1997 (cell="lstm"; the adding problem, sec. 5.4).
Cho et al. "Learning Phrase Representations using RNN Encoder-Decoder", EMNLP 2014 (cell="gru").
Jozefowicz et al. "An Empirical Exploration of Recurrent Network Architectures", ICML 2015: LSTM forget-gate bias 1.

Inputs are token ids (`vocab_size` set: an embedding of width `dim` comes first) or feature vectors
(`in_features` set). `output="sequence"` gives a prediction at every step (language models, copy memory);
`output="last"` gives one per sequence from the final hidden state (the adding problem, text classification), and
with `pad_id` the padded tail of a token sequence is skipped (packed sequences). `recur(x, state)` also returns
the hidden state, so a task can carry it across batches (truncated BPTT).
"""

from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from archlab.errors import ConfigError

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
State = Tensor | tuple[Tensor, Tensor]


class RecurrentNet(nn.Module):
    """ids -> embedding (or features) -> dropout -> stacked RNN/LSTM/GRU -> dropout -> linear, per step or last."""

    def __init__(
        self,
        *,
        cell: Literal["rnn", "lstm", "gru"] = "lstm",
        vocab_size: int | None = None,
        in_features: int | None = None,
        num_classes: int | None = None,
        pad_id: int | None = None,
        dim: int = 128,
        hidden_dim: int = 256,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        output: Literal["sequence", "last"] = "sequence",
    ) -> None:
        """`num_classes` is the width of the output layer: classes, or 1 for a scalar regression target; None
        means `vocab_size` (next-token logits of a language model)."""
        super().__init__()
        if cell not in CELLS:
            raise ConfigError(f"RecurrentNet: cell must be one of {list(CELLS)}; got {cell!r}.")
        if (vocab_size is None) == (in_features is None):
            raise ConfigError(
                "RecurrentNet: set exactly one of vocab_size (token inputs) and in_features (vector inputs); got "
                f"vocab_size={vocab_size}, in_features={in_features}."
            )
        if output not in ("sequence", "last"):
            raise ConfigError(f"RecurrentNet: output must be 'sequence' or 'last'; got {output!r}.")
        num_classes = vocab_size if num_classes is None else num_classes
        if num_classes is None or min(num_classes, dim, hidden_dim, num_layers, vocab_size or in_features) < 1:
            raise ConfigError(
                "RecurrentNet: num_classes (or vocab_size), dim, hidden_dim, num_layers and the input width must be "
                f">= 1; got num_classes={num_classes}, dim={dim}, hidden_dim={hidden_dim}, num_layers={num_layers}."
            )
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"RecurrentNet: dropout must be a probability in [0, 1); got {dropout}.")
        self.cell = cell
        self.vocab_size = vocab_size
        self.num_classes = num_classes
        self.pad_id = pad_id
        self.bidirectional = bidirectional
        self.output = output
        self.embedding = nn.Embedding(vocab_size, dim) if vocab_size is not None else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.rnn = CELLS[cell](
            dim if vocab_size is not None else in_features,
            hidden_dim,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.head = nn.Linear(hidden_dim * (2 if bidirectional else 1), num_classes)
        if cell == "lstm":
            for name, p in self.rnn.named_parameters():
                if name.startswith("bias_ih"):
                    p.data[hidden_dim : 2 * hidden_dim] = 1.0  # gates are (input, forget, cell, output)
                elif name.startswith("bias_hh"):
                    p.data[hidden_dim : 2 * hidden_dim] = 0.0

    def forward(self, x: Tensor) -> Tensor:
        return self.recur(x)[0]

    def recur(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """(B, T) ids or (B, T, in_features) -> (B, T, num_classes) or, with output="last", (B, num_classes);
        and the final hidden state (num_layers * directions, B, hidden_dim) (a pair (h, c) for an LSTM)."""
        h = self.drop(self.embedding(x))  # (B, T, dim)
        if self.output == "sequence":
            out, state = self.rnn(h, state)  # (B, T, directions * hidden_dim)
            return self.head(self.drop(out)), state
        if self.pad_id is not None and not x.is_floating_point():
            lengths = (x != self.pad_id).sum(1).clamp_min(1).cpu()
            h = pack_padded_sequence(h, lengths, batch_first=True, enforce_sorted=False)
        _, state = self.rnn(h, state)
        final = state[0] if isinstance(state, tuple) else state  # (layers * directions, B, hidden_dim)
        directions = 2 if self.bidirectional else 1
        last = torch.cat(list(final[-directions:]), dim=-1)  # (B, directions * hidden_dim), top layer
        return self.head(self.drop(last)), state
