"""DCGAN: a generator of up-convolutions from a noise vector and a discriminator of strided convolutions.

Goodfellow et al. "Generative Adversarial Nets", NeurIPS 2014. https://arxiv.org/abs/1406.2661
Radford, Metz, Chintala. "Unsupervised Representation Learning with Deep Convolutional Generative Adversarial
Networks", ICLR 2016. https://arxiv.org/abs/1511.06434 (fig. 1; sec. 3: no pooling or fully connected hidden layers,
batch norm in both nets except the generator's output and the discriminator's input, ReLU in the generator,
LeakyReLU(0.2) in the discriminator, weights from N(0, 0.02)).

Both nets are sized from `image_size`: the map is halved while it stays even and at least 4 px (28 -> 14 -> 7,
32 -> 16 -> 8 -> 4, 8 -> 4), so they work on 8x8 digits as on 28 and 32 px images. The generator ends in a sigmoid
(pixels in [0, 1], the DataModules' range without normalisation) where the paper's tanh targets [-1, 1].
"""

import itertools

import torch
from torch import Tensor, nn

from archlab.errors import ConfigError


def stages(image_size: int) -> tuple[int, int]:
    """(start, k): the smallest map size and the number of 2x stages between it and image_size."""
    start, k = image_size, 0
    while start % 2 == 0 and start // 2 >= 4:
        start, k = start // 2, k + 1
    return start, k


def dcgan_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class Generator(nn.Module):
    """z -> project (up-conv from 1x1) -> k x (up-conv4x4 stride 2 - BN - ReLU) -> conv3x3 -> sigmoid."""

    def __init__(self, *, in_channels: int = 1, image_size: int = 32, latent_dim: int = 100, width: int = 64) -> None:
        super().__init__()
        start, k = stages(image_size)
        widths = [width * 2**i for i in reversed(range(k + 1))]  # e.g. [256, 128, 64] for k = 2
        self.latent_dim = latent_dim
        self.project = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, widths[0], start, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(True)
        )
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            layers += [nn.ConvTranspose2d(a, b, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]
        self.up = nn.Sequential(*layers)
        self.to_image = nn.Sequential(nn.Conv2d(widths[-1], in_channels, 3, padding=1), nn.Sigmoid())
        dcgan_init(self)

    def forward(self, z: Tensor) -> Tensor:
        x = self.project(z.view(*z.shape, 1, 1))  # (B, width * 2^k, start, start)
        return self.to_image(self.up(x))  # (B, C, image_size, image_size) in [0, 1]


class Discriminator(nn.Module):
    """image -> conv3x3 - LeakyReLU -> k x (conv4x4 stride 2 - BN - LeakyReLU) -> conv over the map -> logit."""

    def __init__(self, *, in_channels: int = 1, image_size: int = 32, width: int = 64) -> None:
        super().__init__()
        start, k = stages(image_size)
        widths = [width * 2**i for i in range(k + 1)]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1), nn.LeakyReLU(0.2, True))
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            layers += [nn.Conv2d(a, b, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(b), nn.LeakyReLU(0.2, True)]
        self.down = nn.Sequential(*layers)
        self.head = nn.Conv2d(widths[-1], 1, start)
        dcgan_init(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.down(self.stem(x))  # (B, width * 2^k, start, start)
        return self.head(x).flatten()  # (B,) logits of "real"


class DCGAN(nn.Module):
    """The pair the Adversarial task trains: z -> generator -> images -> discriminator -> logits."""

    def __init__(self, *, in_channels: int = 1, image_size: int = 32, latent_dim: int = 100, width: int = 64) -> None:
        """`width`: channels of the generator's last and the discriminator's first stage (the paper: 128 for
        64x64 images); they double per stage inwards."""
        super().__init__()
        if min(in_channels, image_size, latent_dim, width) < 1:
            raise ConfigError(
                f"DCGAN needs positive in_channels, image_size, latent_dim and width; got in_channels={in_channels}, "
                f"image_size={image_size}, latent_dim={latent_dim}, width={width}."
            )
        self.latent_dim = latent_dim
        self.generator = Generator(in_channels=in_channels, image_size=image_size, latent_dim=latent_dim, width=width)
        self.discriminator = Discriminator(in_channels=in_channels, image_size=image_size, width=width)

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        device = next(self.parameters()).device
        z = torch.randn((n, self.latent_dim), device=device, generator=generator)
        return self.generator(z)  # (n, C, H, W)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        images = self.generator(z)  # (B, C, H, W)
        return images, self.discriminator(images)  # and (B,) logits
