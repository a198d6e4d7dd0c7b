"""Every model in archlab.models.MODELS at a tiny size: its forward returns the outputs of the expected shapes, every
parameter gets a finite gradient, and nothing is NaN. A model registered without a tiny entry here fails."""

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from test_models import CLASSIFIERS
from torch import Tensor

from archlab.models import MODELS


@dataclass
class Tiny:
    kwargs: dict
    inputs: Callable[[], tuple[Tensor, ...]]  # positional arguments of forward
    # The shape of every tensor forward returns (in training mode), by its path in the output: "" for a lone tensor,
    # a field name ("logits", "code") or an index ("0", "aux.1") inside a named tuple, tuple or list.
    shapes: dict[str, tuple[int, ...]]
    # reduces the output to a scalar whose gradient must reach every parameter; default: mean square of all outputs
    loss: Callable[[object], Tensor] | None = None
    skip_params: set[str] = field(default_factory=set)  # parameters that legitimately get no gradient (say why)


def image(*shape: int) -> Callable[[], tuple[Tensor]]:
    return lambda: (torch.randn(shape),)


def tokens(batch: int, length: int, vocab: int) -> Callable[[], tuple[Tensor]]:
    return lambda: (torch.randint(vocab, (batch, length)),)


def classifier(kwargs: dict, shape: tuple[int, ...]) -> Tiny:
    """(B, num_classes) logits, and as many auxiliary logits of that shape in training with `aux_logits`."""
    logits = (shape[0], kwargs.get("num_classes", 10))
    shapes = {"logits": logits, "aux.0": logits, "aux.1": logits} if kwargs.get("aux_logits") else {"": logits}
    return Tiny(kwargs, image(*shape), shapes)


TINY: dict[str, Tiny] = {name: classifier(kwargs, shape) for name, (kwargs, shape) in CLASSIFIERS.items()}
# Other families add their entries below, e.g. TINY["unet"] = Tiny({...}, image(2, 1, 17, 19), {"": (2, 3, 17, 19)}).
# A segmenter: (B, num_classes, H, W) at the input's own odd size.
TINY["unet"] = Tiny(
    {"in_channels": 1, "num_classes": 3, "depth": 2, "width": 4}, image(2, 1, 17, 19), {"": (2, 3, 17, 19)}
)
# A GAN from noise (B, latent_dim): images (B, C, image_size, image_size) and the discriminator's logit per image.
TINY["dcgan"] = Tiny(
    {"in_channels": 1, "image_size": 8, "latent_dim": 4, "width": 4}, image(2, 4), {"0": (2, 1, 8, 8), "1": (2,)}
)
# Autoencoders: a reconstruction of the input's shape and a (B, latent_dim) code (and the VAE's mean, log variance).
TINY["autoencoder"] = Tiny(
    {"in_channels": 1, "image_size": 9, "latent_dim": 3, "widths": (4, 8)},
    image(2, 1, 9, 9),
    {"logits": (2, 1, 9, 9), "code": (2, 3)},
)
TINY["vae"] = Tiny(
    {"image_size": 8, "latent_dim": 3, "encoder": "mlp", "widths": (8,)},
    image(2, 1, 8, 8),
    {"logits": (2, 1, 8, 8), "code": (2, 3), "mean": (2, 3), "logvar": (2, 3)},
)
# Language models: (B, T, vocab_size) next-token logits; the encoder-decoder at the target's length.
TINY["recurrent"] = Tiny(
    {"cell": "lstm", "vocab_size": 11, "dim": 8, "hidden_dim": 8, "num_layers": 2}, tokens(2, 7, 11), {"": (2, 7, 11)}
)
TINY["transformer"] = Tiny(
    {"vocab_size": 11, "max_len": 8, "pad_id": 0, "dim": 16, "num_heads": 2, "num_layers": 1},
    lambda: (torch.randint(1, 11, (2, 7)), torch.randint(1, 11, (2, 5))),
    {"": (2, 5, 11)},
)
TINY["gpt"] = Tiny(
    {"vocab_size": 11, "max_len": 8, "dim": 16, "num_heads": 2, "num_layers": 2}, tokens(2, 7, 11), {"": (2, 7, 11)}
)
# BERT: masked-token logits (B, T, vocab_size), or with num_classes a sequence classifier (B, num_classes).
TINY["bert"] = Tiny(
    {"vocab_size": 11, "max_len": 8, "dim": 16, "num_heads": 2, "num_layers": 1}, tokens(2, 7, 11), {"": (2, 7, 11)}
)
TINY["bert_base"] = Tiny(
    {"vocab_size": 11, "max_len": 8, "dim": 16, "num_heads": 2, "num_layers": 1, "hidden_dim": 32, "num_classes": 3},
    tokens(2, 7, 11),
    {"": (2, 3)},
)


def tensors(out: object, path: str = "") -> dict[str, Tensor]:
    """Every tensor in a model's output by its path: "" for a lone tensor, "logits", "aux.1", "0"... None is skipped."""
    if isinstance(out, Tensor):
        return {path: out}
    if isinstance(out, tuple) and hasattr(out, "_fields"):  # a NamedTuple: its field names
        items = zip(out._fields, out, strict=True)
    elif isinstance(out, list | tuple):
        items = ((str(i), item) for i, item in enumerate(out))
    elif isinstance(out, dict):
        items = ((str(key), item) for key, item in out.items())
    else:
        return {}
    found = {}
    for key, item in items:
        found.update(tensors(item, f"{path}.{key}" if path else key))
    return found


def test_every_registered_model_has_a_tiny_entry():
    assert set(TINY) == set(MODELS)


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_model_trains(name: str):
    torch.manual_seed(0)
    tiny = TINY[name]
    model = MODELS[name](**tiny.kwargs).train()
    out = model(*tiny.inputs())
    outputs = tensors(out)
    assert {path: tuple(t.shape) for path, t in outputs.items()} == tiny.shapes, f"{name}: output shapes"
    assert all(torch.isfinite(t).all() for t in outputs.values()), f"{name}: non-finite output"
    loss = tiny.loss(out) if tiny.loss else sum(t.float().square().mean() for t in outputs.values())
    loss.backward()
    for param_name, p in model.named_parameters():
        if not p.requires_grad or param_name in tiny.skip_params:
            continue
        assert p.grad is not None, f"{name}: {param_name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {param_name} has a non-finite gradient"
