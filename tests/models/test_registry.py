"""Every model in archlab.models.MODELS at a tiny size: it runs forward, every parameter gets a finite gradient,
and nothing is NaN. A model registered without a tiny entry here fails."""

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
    # reduces the output to a scalar whose gradient must reach every parameter; default: mean square of all outputs
    loss: Callable[[object], Tensor] | None = None
    skip_params: set[str] = field(default_factory=set)  # parameters that legitimately get no gradient (say why)


def image(*shape: int) -> Callable[[], tuple[Tensor]]:
    return lambda: (torch.randn(shape),)


def tokens(batch: int, length: int, vocab: int) -> Callable[[], tuple[Tensor]]:
    return lambda: (torch.randint(vocab, (batch, length)),)


TINY: dict[str, Tiny] = {name: Tiny(kwargs, image(*shape)) for name, (kwargs, shape) in CLASSIFIERS.items()}
# Other families add their entries below, e.g. TINY["unet"] = Tiny({...}, image(2, 1, 17, 19)).
TINY["unet"] = Tiny({"in_channels": 1, "num_classes": 3, "depth": 2, "width": 4}, image(2, 1, 17, 19))
TINY["dcgan"] = Tiny({"in_channels": 1, "image_size": 8, "latent_dim": 4, "width": 4}, image(2, 4))
TINY["autoencoder"] = Tiny({"in_channels": 1, "image_size": 9, "latent_dim": 3, "widths": (4, 8)}, image(2, 1, 9, 9))
TINY["vae"] = Tiny({"image_size": 8, "latent_dim": 3, "encoder": "mlp", "widths": (8,)}, image(2, 1, 8, 8))
TINY["recurrent"] = Tiny(
    {"cell": "lstm", "vocab_size": 11, "dim": 8, "hidden_dim": 8, "num_layers": 2}, tokens(2, 7, 11)
)
TINY["transformer"] = Tiny(
    {"vocab_size": 11, "max_len": 8, "pad_id": 0, "dim": 16, "num_heads": 2, "num_layers": 1},
    lambda: (torch.randint(1, 11, (2, 7)), torch.randint(1, 11, (2, 5))),
)
TINY["gpt"] = Tiny({"vocab_size": 11, "max_len": 8, "dim": 16, "num_heads": 2, "num_layers": 2}, tokens(2, 7, 11))
TINY["bert"] = Tiny({"vocab_size": 11, "max_len": 8, "dim": 16, "num_heads": 2, "num_layers": 1}, tokens(2, 7, 11))
TINY["bert_base"] = Tiny(
    {"vocab_size": 11, "max_len": 8, "dim": 16, "num_heads": 2, "num_layers": 1, "hidden_dim": 32, "num_classes": 3},
    tokens(2, 7, 11),
)


def tensors(out: object) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, list | tuple):
        return [t for item in out for t in tensors(item)]
    return []


def test_every_registered_model_has_a_tiny_entry():
    assert set(TINY) == set(MODELS)


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_model_trains(name: str):
    torch.manual_seed(0)
    tiny = TINY[name]
    model = MODELS[name](**tiny.kwargs).train()
    out = model(*tiny.inputs())
    outputs = tensors(out)
    assert outputs, f"{name}: forward returned no floating-point tensor"
    assert all(torch.isfinite(t).all() for t in outputs), f"{name}: non-finite output"
    loss = tiny.loss(out) if tiny.loss else sum(t.square().mean() for t in outputs)
    loss.backward()
    for param_name, p in model.named_parameters():
        if not p.requires_grad or param_name in tiny.skip_params:
            continue
        assert p.grad is not None, f"{name}: {param_name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {param_name} has a non-finite gradient"
