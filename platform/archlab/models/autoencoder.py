"""Autoencoders: plain, denoising and sparse autoencoders and the variational autoencoder, with conv or MLP encoders.

Hinton, Salakhutdinov. "Reducing the Dimensionality of Data with Neural Networks", Science 2006 (autoencoder).
Vincent et al. "Extracting and Composing Robust Features with Denoising Autoencoders", ICML 2008.
Ng. "Sparse autoencoder", CS294A lecture notes, 2011 (the KL sparsity penalty on sigmoid codes).
Kingma, Welling. "Auto-Encoding Variational Bayes", ICLR 2014. https://arxiv.org/abs/1312.6114
Higgins et al. "beta-VAE", ICLR 2017.

The denoising and sparse variants differ from the plain autoencoder only in their training objective (input
corruption, a penalty on the code), which the Reconstruction task applies; the VAE differs in its bottleneck, which
outputs a mean and log-variance and samples the code by reparameterisation. The decoder returns logits: the
reconstruction in pixel space [0, 1] is their sigmoid.
"""

import itertools
import math
from collections.abc import Sequence
from functools import partial
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from archlab.errors import ConfigError

ENCODERS = ("conv", "mlp")
CODE_ACTIVATIONS = ("none", "sigmoid", "relu")


class AEOutput(NamedTuple):
    logits: Tensor  # (B, C, H, W): the reconstruction before its sigmoid
    code: Tensor  # (B, latent_dim): what the decoder read (for the VAE, a sample)
    mean: Tensor | None  # (B, latent_dim), VAE only
    logvar: Tensor | None  # (B, latent_dim), VAE only


def conv_sizes(image_size: int, stages: int) -> list[int]:
    """Map sizes through stride-2 3x3 convs with padding 1: s -> ceil(s / 2)."""
    return [math.ceil(image_size / 2**i) for i in range(stages + 1)]


class ConvEncoder(nn.Sequential):
    """image -> N x (conv3x3 stride 2 - BN - ReLU) -> flatten."""

    def __init__(self, in_channels: int, image_size: int, widths: Sequence[int]) -> None:
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise([in_channels, *widths]):
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]
        super().__init__(*layers, nn.Flatten())
        self.out_features = widths[-1] * conv_sizes(image_size, len(widths))[-1] ** 2


class ConvDecoder(nn.Module):
    """code -> fc -> (w, s, s) -> N x (up-conv3x3 stride 2 - BN - ReLU) -> conv3x3 -> logits at the input's size."""

    def __init__(self, latent_dim: int, in_channels: int, image_size: int, widths: Sequence[int]) -> None:
        super().__init__()
        sizes = conv_sizes(image_size, len(widths))  # e.g. 28 -> [28, 14, 7]
        self.start = (widths[-1], sizes[-1], sizes[-1])
        self.fc = nn.Sequential(nn.Linear(latent_dim, math.prod(self.start)), nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        up_widths = [*reversed(widths), widths[0]]
        for i, (a, b) in enumerate(itertools.pairwise(up_widths)):
            s, target = sizes[-1 - i], sizes[-2 - i]
            # A transposed stride-2 conv gives 2s - 1 + output_padding: pick the padding that hits the encoder's size.
            layers += [
                nn.ConvTranspose2d(a, b, 3, stride=2, padding=1, output_padding=target - 2 * s + 1, bias=False),
                nn.BatchNorm2d(b),
                nn.ReLU(inplace=True),
            ]
        self.up = nn.Sequential(*layers)
        self.to_image = nn.Conv2d(widths[0], in_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        x = self.fc(z).view(-1, *self.start)  # (B, widths[-1], s, s)
        return self.to_image(self.up(x))  # (B, C, H, W)


class MLPEncoder(nn.Sequential):
    """image -> flatten -> N x (fc - ReLU)."""

    def __init__(self, in_channels: int, image_size: int, widths: Sequence[int]) -> None:
        dims = [in_channels * image_size**2, *widths]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in itertools.pairwise(dims):
            layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        super().__init__(*layers)
        self.out_features = widths[-1]


class MLPDecoder(nn.Module):
    """code -> N x (fc - ReLU) -> fc -> logits (B, C, H, W)."""

    def __init__(self, latent_dim: int, in_channels: int, image_size: int, widths: Sequence[int]) -> None:
        super().__init__()
        self.shape = (in_channels, image_size, image_size)
        dims = [latent_dim, *reversed(widths)]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(dims):
            layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        self.hidden = nn.Sequential(*layers)
        self.to_image = nn.Linear(dims[-1], math.prod(self.shape))

    def forward(self, z: Tensor) -> Tensor:
        return self.to_image(self.hidden(z)).view(-1, *self.shape)  # (B, C, H, W)


class Code(nn.Module):
    """features -> fc -> activation: a deterministic code."""

    def __init__(self, in_features: int, latent_dim: int, activation: str) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, latent_dim)
        self.activation = {"none": nn.Identity(), "sigmoid": nn.Sigmoid(), "relu": nn.ReLU()}[activation]

    def forward(self, h: Tensor) -> tuple[Tensor, None, None]:
        return self.activation(self.fc(h)), None, None


class GaussianCode(nn.Module):
    """features -> fc -> (mean, log-variance) -> z = mean + exp(logvar / 2) * eps, eps ~ N(0, I)."""

    def __init__(self, in_features: int, latent_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, 2 * latent_dim)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mean, logvar = self.fc(h).chunk(2, dim=-1)  # (B, latent_dim) each
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)  # the reparameterisation trick (sec. 2.4)
        return z, mean, logvar


class AutoEncoder(nn.Module):
    """image -> encoder -> code (or mean, log-variance -> sampled code) -> decoder -> reconstruction logits."""

    def __init__(
        self,
        *,
        in_channels: int = 1,
        image_size: int = 28,
        latent_dim: int = 16,
        encoder: Literal["conv", "mlp"] = "conv",
        widths: Sequence[int] = (32, 64),
        variational: bool = False,
        code_activation: Literal["none", "sigmoid", "relu"] = "none",
    ) -> None:
        """`widths`: channels of the conv stages (each halves the map) or sizes of the MLP's hidden layers, from the
        input inwards; the decoder mirrors them. `variational`: a VAE. `code_activation` applies to a deterministic
        code: "sigmoid" for the KL sparsity penalty (codes in (0, 1)), "relu" for sparse non-negative codes."""
        super().__init__()
        if encoder not in ENCODERS:
            raise ConfigError(f"AutoEncoder encoder must be one of {', '.join(ENCODERS)}; got {encoder!r}.")
        if code_activation not in CODE_ACTIVATIONS:
            raise ConfigError(
                f"AutoEncoder code_activation must be one of {', '.join(CODE_ACTIVATIONS)}; got {code_activation!r}."
            )
        if variational and code_activation != "none":
            raise ConfigError("AutoEncoder code_activation applies to deterministic codes; a VAE's is Gaussian.")
        if len(widths) == 0 or min(widths) < 1 or latent_dim < 1 or in_channels < 1 or image_size < 1:
            raise ConfigError(
                f"AutoEncoder needs a non-empty list of positive widths and positive latent_dim, in_channels and "
                f"image_size; got widths={list(widths)}, latent_dim={latent_dim}, in_channels={in_channels}, "
                f"image_size={image_size}."
            )
        self.latent_dim = latent_dim
        self.variational = variational
        self.code_activation = code_activation
        Encoder, Decoder = (ConvEncoder, ConvDecoder) if encoder == "conv" else (MLPEncoder, MLPDecoder)
        self.encoder = Encoder(in_channels, image_size, widths)
        features = self.encoder.out_features
        self.code = GaussianCode(features, latent_dim) if variational else Code(features, latent_dim, code_activation)
        self.decoder = Decoder(latent_dim, in_channels, image_size, widths)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        return self.code(self.encoder(x))  # code (B, latent_dim), and for the VAE its mean and log-variance

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)  # (B, C, H, W) logits

    def forward(self, x: Tensor) -> AEOutput:
        z, mean, logvar = self.encode(x)
        return AEOutput(self.decode(z), z, mean, logvar)


vae = partial(AutoEncoder, variational=True)
