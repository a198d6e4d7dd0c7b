"""The Transformer: one attention block shared by the encoder-decoder, the GPT-style decoder and BERT (bert.py).

Vaswani et al. "Attention Is All You Need", NeurIPS 2017. https://arxiv.org/abs/1706.03762
Radford et al. "Language Models are Unsupervised Multitask Learners" (GPT-2), 2019: pre-LayerNorm decoder-only
causal language model with learned positions and tied input/output embeddings.
Xiong et al. "On Layer Normalization in the Transformer Architecture", ICML 2020. https://arxiv.org/abs/2002.04745
(pre-LN, `norm_first=True`, trains without warm-up tricks; the paper's original is post-LN).

Attention runs through `torch.nn.functional.scaled_dot_product_attention` (fused kernels where available).
Masks are boolean, True where a query may attend: padding masks come from `pad_id`, causality from `is_causal`.
"""

import math
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from archlab.errors import ConfigError

Positions = Literal["sinusoidal", "learned"]
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


def check_shape(name: str, *, dim: int, num_heads: int, num_layers: int, hidden_dim: int, dropout: float) -> None:
    if min(dim, num_heads, num_layers, hidden_dim) < 1:
        raise ConfigError(
            f"{name}: dim, num_heads, num_layers and hidden_dim must be >= 1; got dim={dim}, num_heads={num_heads}, "
            f"num_layers={num_layers}, hidden_dim={hidden_dim}."
        )
    if dim % num_heads:
        raise ConfigError(f"{name}: dim ({dim}) must be divisible by num_heads ({num_heads}).")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"{name}: dropout must be a probability in [0, 1); got {dropout}.")


def padding_mask(ids: Tensor, pad_id: int | None) -> Tensor | None:
    """(B, T) token ids -> (B, 1, 1, T) boolean key mask, True at real tokens; None without a pad id."""
    if pad_id is None:
        return None
    return (ids != pad_id)[:, None, None, :]


class MultiHeadAttention(nn.Module):
    """x, context -> q, k, v projections -> softmax(q k^T / sqrt(d)) v per head -> output projection."""

    def __init__(self, dim: int, num_heads: int, *, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(
        self, x: Tensor, context: Tensor | None = None, *, mask: Tensor | None = None, is_causal: bool = False
    ) -> Tensor:
        context = x if context is None else context
        b, t, d = x.shape
        s = context.shape[1]
        h = self.num_heads
        q = self.q_proj(x).view(b, t, h, d // h).transpose(1, 2)  # (B, heads, T, head_dim)
        k = self.k_proj(context).view(b, s, h, d // h).transpose(1, 2)  # (B, heads, S, head_dim)
        v = self.v_proj(context).view(b, s, h, d // h).transpose(1, 2)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=is_causal
        )  # (B, heads, T, head_dim)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    """x -> fc1 (dim -> hidden_dim) -> activation -> fc2 (hidden_dim -> dim)."""

    def __init__(self, dim: int, hidden_dim: int, *, activation: str = "gelu") -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = ACTIVATIONS[activation]()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    """x -> self-attention [-> cross-attention over memory] -> feed-forward, each a residual with LayerNorm
    before (pre-LN, `norm_first`) or after (post-LN, the paper's and BERT's) its sub-layer."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        hidden_dim: int,
        *,
        dropout: float = 0.0,
        norm_first: bool = True,
        cross_attention: bool = False,
        activation: str = "gelu",
        norm_eps: float = 1.0e-5,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {sorted(ACTIVATIONS)}; got {activation!r}.")
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(dim, num_heads, dropout=dropout)
        self.self_attn_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.cross_attn = MultiHeadAttention(dim, num_heads, dropout=dropout) if cross_attention else None
        self.cross_attn_norm = nn.LayerNorm(dim, eps=norm_eps) if cross_attention else None
        self.ffn = FeedForward(dim, hidden_dim, activation=activation)
        self.ffn_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        is_causal: bool = False,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
    ) -> Tensor:
        x = self.residual(x, self.self_attn_norm, lambda h: self.self_attn(h, mask=mask, is_causal=is_causal))
        if self.cross_attn is not None:
            x = self.residual(x, self.cross_attn_norm, lambda h: self.cross_attn(h, memory, mask=memory_mask))
        return self.residual(x, self.ffn_norm, self.ffn)

    def residual(self, x: Tensor, norm: nn.LayerNorm, sublayer) -> Tensor:
        if self.norm_first:
            return x + self.drop(sublayer(norm(x)))
        return norm(x + self.drop(sublayer(x)))


class SinusoidalPositions(nn.Module):
    """Position t -> [sin(t / 10000^(2i/d)), cos(t / 10000^(2i/d))] (Vaswani et al. sec. 3.5), added to x."""

    def __init__(self, dim: int, max_len: int) -> None:
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)  # (max_len, 1)
        freq = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))  # (ceil(dim / 2),)
        table = torch.zeros(max_len, dim)
        table[:, 0::2] = torch.sin(position * freq)
        table[:, 1::2] = torch.cos(position * freq[: dim // 2])
        self.register_buffer("table", table, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.table[: x.shape[1]]


class LearnedPositions(nn.Module):
    """Position t -> a learned vector, added to x."""

    def __init__(self, dim: int, max_len: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(max_len, dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.embedding(torch.arange(x.shape[1], device=x.device))


def make_positions(kind: str, dim: int, max_len: int) -> nn.Module:
    if kind == "sinusoidal":
        return SinusoidalPositions(dim, max_len)
    if kind == "learned":
        return LearnedPositions(dim, max_len)
    raise ConfigError(f"positions must be 'sinusoidal' or 'learned'; got {kind!r}.")


def check_length(name: str, length: int, max_len: int) -> None:
    if length > max_len:
        raise ValueError(f"{name}: sequence of {length} tokens is longer than max_len={max_len}.")


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """Normal(0, std) linear and embedding weights, zero biases, unit LayerNorms (GPT-2 and BERT's init)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class Transformer(nn.Module):
    """src -> embed + positions -> N encoder blocks -> memory; tgt -> embed + positions -> N causal decoder blocks
    (self-attention, cross-attention over memory) -> LayerNorm -> tied linear -> next-token logits."""

    def __init__(
        self,
        *,
        vocab_size: int | None = None,
        max_len: int = 512,
        pad_id: int | None = None,
        dim: int = 128,
        num_heads: int = 4,
        num_layers: int = 3,
        num_decoder_layers: int | None = None,
        hidden_dim: int | None = None,
        dropout: float = 0.1,
        positions: Positions = "sinusoidal",
        norm_first: bool = True,
        activation: str = "relu",
    ) -> None:
        """Source and target share one vocabulary and one embedding (tied with the output layer, as in the paper
        sec. 3.4); `num_decoder_layers` defaults to `num_layers`, `hidden_dim` to 4 * dim."""
        super().__init__()
        hidden_dim = hidden_dim or 4 * dim
        num_decoder_layers = num_layers if num_decoder_layers is None else num_decoder_layers
        check_shape(
            "Transformer",
            dim=dim,
            num_heads=num_heads,
            num_layers=min(num_layers, num_decoder_layers),
            hidden_dim=hidden_dim,
            dropout=dropout,
        )
        if vocab_size is None or vocab_size < 2 or max_len < 1:
            raise ConfigError(f"Transformer: vocab_size must be >= 2 and max_len >= 1; got {vocab_size}, {max_len}.")
        self.vocab_size = vocab_size
        self.max_len = max_len
        self.pad_id = pad_id
        self.scale = math.sqrt(dim)
        block = dict(dropout=dropout, norm_first=norm_first, activation=activation)
        self.embedding = nn.Embedding(vocab_size, dim)
        self.positions = make_positions(positions, dim, max_len)
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.ModuleList(TransformerBlock(dim, num_heads, hidden_dim, **block) for _ in range(num_layers))
        self.encoder_norm = nn.LayerNorm(dim) if norm_first else nn.Identity()
        self.decoder = nn.ModuleList(
            TransformerBlock(dim, num_heads, hidden_dim, cross_attention=True, **block)
            for _ in range(num_decoder_layers)
        )
        self.decoder_norm = nn.LayerNorm(dim) if norm_first else nn.Identity()
        self.head = nn.Linear(dim, vocab_size, bias=False)
        init_weights(self)
        self.head.weight = self.embedding.weight

    def embed(self, ids: Tensor) -> Tensor:
        check_length("Transformer", ids.shape[1], self.max_len)
        return self.drop(self.positions(self.embedding(ids) * self.scale))  # (B, T, dim)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor | None]:
        """(B, S) source ids -> memory (B, S, dim) and its padding mask (B, 1, 1, S) or None."""
        mask = padding_mask(src, self.pad_id)
        x = self.embed(src)
        for block in self.encoder:
            x = block(x, mask=mask)
        return self.encoder_norm(x), mask

    def decode(self, tgt: Tensor, memory: Tensor, memory_mask: Tensor | None = None) -> Tensor:
        """(B, T) target ids so far -> (B, T, vocab_size) next-token logits; position t sees tgt[:, :t + 1]."""
        x = self.embed(tgt)
        for block in self.decoder:
            x = block(x, is_causal=True, memory=memory, memory_mask=memory_mask)
        return self.head(self.decoder_norm(x))

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        memory, memory_mask = self.encode(src)
        return self.decode(tgt, memory, memory_mask)  # (B, T, vocab_size)


class GPT(nn.Module):
    """ids -> token + learned position embeddings -> N pre-LN causal blocks -> LayerNorm -> tied linear -> logits."""

    def __init__(
        self,
        *,
        vocab_size: int | None = None,
        max_len: int = 256,
        dim: int = 128,
        num_heads: int = 4,
        num_layers: int = 4,
        hidden_dim: int | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        hidden_dim = hidden_dim or 4 * dim
        check_shape("GPT", dim=dim, num_heads=num_heads, num_layers=num_layers, hidden_dim=hidden_dim, dropout=dropout)
        if vocab_size is None or vocab_size < 2 or max_len < 1:
            raise ConfigError(f"GPT: vocab_size must be >= 2 and max_len >= 1; got {vocab_size}, {max_len}.")
        self.vocab_size = vocab_size
        self.max_len = max_len
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.positions = LearnedPositions(dim, max_len)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, num_heads, hidden_dim, dropout=dropout, norm_first=True) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        init_weights(self)
        # GPT-2: residual projections scaled by 1/sqrt(2 * num_layers), two residual adds per block.
        for block in self.blocks:
            for proj in (block.self_attn.out_proj, block.ffn.fc2):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * num_layers))
        self.head.weight = self.token_embedding.weight

    def forward(self, ids: Tensor) -> Tensor:
        check_length("GPT", ids.shape[1], self.max_len)
        x = self.drop(self.positions(self.token_embedding(ids)))  # (B, T, dim)
        for block in self.blocks:
            x = block(x, is_causal=True)
        return self.head(self.norm(x))  # (B, T, vocab_size)
