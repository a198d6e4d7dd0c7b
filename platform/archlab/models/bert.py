"""BERT: a post-LN Transformer encoder over token, position and segment embeddings, with a tied masked-LM head
or a pooled [CLS] classification head. The blocks are transformer.py's `TransformerBlock`, not a copy.

Devlin et al. "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding", NAACL 2019.
https://arxiv.org/abs/1810.04805

At the BERT-base shape (`bert_base`: 12 layers, 768 dim, 12 heads, 3072 hidden, 30522 vocab, 512 positions) the
encoder and pooler hold 109,482,240 parameters, the paper's "110M"; `hf_to_archlab` maps a Hugging Face
`BertModel` state dict onto ours, and the two give identical hidden states (tests/models/test_sequence_models.py).

Fine-tuning starts from a pre-training run's weights with `archlab fit --init_from RUN/checkpoints/best.ckpt`: the
encoder's weights load, the head the checkpoint lacks starts fresh. This module never reads a file.
"""

from functools import partial

import torch
from torch import Tensor, nn

from archlab.errors import ConfigError
from archlab.models.transformer import TransformerBlock, check_length, check_shape, init_weights, padding_mask

# BERT's LayerNorm epsilon (the reference TensorFlow code's 1e-12).
NORM_EPS = 1.0e-12
# The encoder: what BERT's size counts and what pre-training passes on; the heads are task-specific.
ENCODER_PREFIXES = ("token_embedding.", "position_embedding.", "segment_embedding.", "embedding_norm.", "blocks.")


class BERT(nn.Module):
    """ids, segments -> token + position + segment embeddings -> LayerNorm -> N post-LN blocks -> hidden states
    -> MLM head (dense-GELU-LayerNorm -> tied linear) or pooler (dense-tanh on [CLS]) -> dropout -> linear."""

    def __init__(
        self,
        *,
        vocab_size: int | None = None,
        max_len: int = 512,
        pad_id: int | None = 0,
        num_classes: int | None = None,
        dim: int = 256,
        num_heads: int = 4,
        num_layers: int = 4,
        hidden_dim: int | None = None,
        num_segments: int = 2,
        dropout: float = 0.1,
    ) -> None:
        """`num_classes` None: a masked-LM net, forward gives (B, T, vocab_size) logits; an integer: a classifier
        over the [CLS] token, forward gives (B, num_classes). `hidden_dim` defaults to 4 * dim."""
        super().__init__()
        hidden_dim = hidden_dim or 4 * dim
        check_shape("BERT", dim=dim, num_heads=num_heads, num_layers=num_layers, hidden_dim=hidden_dim, dropout=dropout)
        if vocab_size is None or vocab_size < 2 or max_len < 1 or num_segments < 1:
            raise ConfigError(
                f"BERT: vocab_size must be >= 2, max_len and num_segments >= 1; got vocab_size={vocab_size}, "
                f"max_len={max_len}, num_segments={num_segments}."
            )
        if num_classes is not None and num_classes < 2:
            raise ConfigError(f"BERT: num_classes must be >= 2, or null for a masked-LM head; got {num_classes}.")
        self.vocab_size = vocab_size
        self.max_len = max_len
        self.pad_id = pad_id
        self.num_classes = num_classes
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.position_embedding = nn.Embedding(max_len, dim)
        self.segment_embedding = nn.Embedding(num_segments, dim)
        self.embedding_norm = nn.LayerNorm(dim, eps=NORM_EPS)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, num_heads, hidden_dim, dropout=dropout, norm_first=False, norm_eps=NORM_EPS)
            for _ in range(num_layers)
        )
        if num_classes is None:
            self.mlm_transform = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim, eps=NORM_EPS))
            self.mlm_decoder = nn.Linear(dim, vocab_size)
        else:
            self.pooler = nn.Sequential(nn.Linear(dim, dim), nn.Tanh())
            self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, num_classes))
        init_weights(self)
        if num_classes is None:
            self.mlm_decoder.weight = self.token_embedding.weight

    def encode(self, ids: Tensor, segments: Tensor | None = None) -> Tensor:
        """(B, T) token ids [, (B, T) segment ids] -> (B, T, dim) hidden states; pad tokens are never attended."""
        check_length("BERT", ids.shape[1], self.max_len)
        segments = torch.zeros_like(ids) if segments is None else segments
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.token_embedding(ids) + self.position_embedding(positions) + self.segment_embedding(segments)
        x = self.drop(self.embedding_norm(x))
        mask = padding_mask(ids, self.pad_id)
        for block in self.blocks:
            x = block(x, mask=mask)
        return x

    def pool(self, hidden: Tensor) -> Tensor:
        return self.pooler(hidden[:, 0])  # (B, dim), from the [CLS] position

    def forward(self, ids: Tensor, segments: Tensor | None = None) -> Tensor:
        hidden = self.encode(ids, segments)
        if self.num_classes is None:
            return self.mlm_decoder(self.mlm_transform(hidden))  # (B, T, vocab_size)
        return self.classifier(self.pool(hidden))  # (B, num_classes)


bert_base = partial(BERT, vocab_size=30522, max_len=512, dim=768, num_heads=12, num_layers=12, hidden_dim=3072)


def hf_to_archlab(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A Hugging Face `BertModel` state dict (embeddings, encoder, pooler) -> this module's keys."""
    renames = {
        "embeddings.word_embeddings.": "token_embedding.",
        "embeddings.position_embeddings.": "position_embedding.",
        "embeddings.token_type_embeddings.": "segment_embedding.",
        "embeddings.LayerNorm.": "embedding_norm.",
        "pooler.dense.": "pooler.0.",
    }
    layer = {
        "attention.self.query.": "self_attn.q_proj.",
        "attention.self.key.": "self_attn.k_proj.",
        "attention.self.value.": "self_attn.v_proj.",
        "attention.output.dense.": "self_attn.out_proj.",
        "attention.output.LayerNorm.": "self_attn_norm.",
        "intermediate.dense.": "ffn.fc1.",
        "output.dense.": "ffn.fc2.",
        "output.LayerNorm.": "ffn_norm.",
    }
    out = {}
    for key, value in state.items():
        key = key.removeprefix("bert.")
        if key.startswith("encoder.layer."):
            index, rest = key.removeprefix("encoder.layer.").split(".", 1)
            for old, new in layer.items():
                if rest.startswith(old):
                    out[f"blocks.{index}.{new}{rest.removeprefix(old)}"] = value
                    break
            continue
        for old, new in renames.items():
            if key.startswith(old):
                out[new + key.removeprefix(old)] = value
                break
    return out


def encoder_params(model: BERT) -> int:
    """Parameters of the embeddings, blocks and pooler: what the paper counts as BERT's size."""
    return sum(p.numel() for name, p in model.named_parameters() if name.startswith((*ENCODER_PREFIXES, "pooler.")))
