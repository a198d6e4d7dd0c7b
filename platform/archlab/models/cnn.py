"""A plain convolutional classifier in the LeNet / VGG tradition: stages of 3x3 conv-BN-ReLU, each ending in a pool.

LeCun et al. "Gradient-Based Learning Applied to Document Recognition", Proc. IEEE 1998.
Simonyan, Zisserman. "Very Deep Convolutional Networks for Large-Scale Image Recognition", ICLR 2015.
https://arxiv.org/abs/1409.1556 (3x3 convs stacked between 2x2 max pools).
Ioffe, Szegedy. "Batch Normalization", ICML 2015. https://arxiv.org/abs/1502.03167

The max pools round up (ceil mode), so a map shrinks 8 -> 4 -> 2 -> 1 and then stays at 1 px: any number of stages
works on 8x8 digits as well as on 28x28 and 32x32 images; a global average pool feeds the head.
"""

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from archlab.errors import ConfigError


class ConvStage(nn.Sequential):
    """x -> N x (conv3x3-BN-ReLU) -> 2x2 max pool."""

    def __init__(self, in_channels: int, out_channels: int, *, convs: int) -> None:
        layers: list[nn.Module] = []
        for i in range(convs):
            layers += [
                nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
        super().__init__(*layers, nn.MaxPool2d(2, ceil_mode=True))


class CNN(nn.Module):
    """image -> stages of (conv-BN-ReLU x N -> max pool) -> global average pool -> [fc-ReLU] -> dropout -> fc."""

    def __init__(
        self,
        *,
        in_channels: int = 3,
        num_classes: int = 10,
        channels: Sequence[int] = (32, 64, 128),
        convs_per_stage: int = 2,
        hidden_dim: int | None = 256,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(channels) == 0 or min(channels) < 1:
            raise ConfigError(
                f"CNN channels must be a non-empty list of positive widths, e.g. [32, 64]; got {channels}."
            )
        if convs_per_stage < 1:
            raise ConfigError(f"CNN convs_per_stage must be >= 1; got {convs_per_stage}.")
        if hidden_dim is not None and hidden_dim < 1:
            raise ConfigError(f"CNN hidden_dim must be >= 1, or null for no hidden layer; got {hidden_dim}.")
        if min(in_channels, num_classes) < 1:
            raise ConfigError(
                f"CNN in_channels and num_classes must be >= 1; "
                f"got in_channels={in_channels}, num_classes={num_classes}."
            )
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"CNN dropout must be a probability in [0, 1); got {dropout}.")
        self.num_classes = num_classes

        widths = [in_channels, *channels]
        self.features = nn.Sequential(*(ConvStage(a, b, convs=convs_per_stage) for a, b in itertools.pairwise(widths)))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        if hidden_dim is None:
            self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels[-1], num_classes))
        else:
            self.classifier = nn.Sequential(
                nn.Linear(channels[-1], hidden_dim),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(hidden_dim, num_classes),
            )

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)  # (B, channels[-1], ceil(H / 2**stages), ceil(W / 2**stages))
        x = torch.flatten(self.avgpool(x), 1)  # (B, channels[-1])
        return self.classifier(x)  # (B, num_classes)
