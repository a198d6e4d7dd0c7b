"""GoogLeNet (Inception v1): nine Inception modules, two auxiliary classifiers, global average pool.

Szegedy et al. "Going Deeper with Convolutions", CVPR 2015. https://arxiv.org/abs/1409.4842

Channel table from paper Table 1; layout and submodule names from torchvision's `googlenet`, whose randomly
initialised state dict (aux_logits=False) loads strictly into `GoogLeNet(num_classes=1000, branch5_kernel=3)` and
gives the same logits. Shared with torchvision, and unlike the paper: BatchNorm (eps 1e-3) after every conv in place
of local response normalisation (the paper predates BatchNorm), maxpool4 is 2x2/2 rather than 3x3/2 (both give 7x7
at 224 px), and the auxiliary heads pool adaptively to 4x4 in place of the 5x5/3 average pool (the same at 14x14,
and it works on small inputs).

Unlike torchvision, the "5x5" branch is a 5x5 conv as in the paper; torchvision's is 3x3
(https://github.com/pytorch/vision/issues/906) and `branch5_kernel=3` reproduces it. Parameters at 1000 classes
without auxiliary heads: 6,624,904 with branch5_kernel=3 (equal to torchvision), 7,005,832 with the paper's 5x5
(380,928 more: 16 weights per "#5x5 reduce" x "#5x5" pair).

`small_input=True` is for 8-32 px images: a 3x3/1 stem and no pooling before inception3a, so inception3a..3b see the
full image, 4a..4e half of it and 5a..5b a quarter. `width` scales every channel count.
"""

from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from archlab.errors import ConfigError

# name: (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj), paper Table 1
INCEPTION_TABLE: dict[str, tuple[int, int, int, int, int, int]] = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


class AuxLogits(NamedTuple):
    """Training-time output of GoogLeNet(aux_logits=True): main logits and the aux1, aux2 heads' logits."""

    logits: Tensor
    aux: tuple[Tensor, ...]


class BasicConv2d(nn.Module):
    """x -> conv -> BN -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, *, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class InceptionModule(nn.Module):
    """x -> [1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | 3x3 max pool -> 1x1] -> concatenate channels (paper Figure 2b)."""

    def __init__(
        self,
        in_channels: int,
        ch1x1: int,
        ch3x3red: int,
        ch3x3: int,
        ch5x5red: int,
        ch5x5: int,
        pool_proj: int,
        *,
        branch5_kernel: int = 5,
    ) -> None:
        super().__init__()
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj
        self.branch1 = BasicConv2d(in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(
            BasicConv2d(in_channels, ch3x3red, kernel_size=1), BasicConv2d(ch3x3red, ch3x3, kernel_size=3)
        )
        self.branch3 = nn.Sequential(
            BasicConv2d(in_channels, ch5x5red, kernel_size=1),
            BasicConv2d(ch5x5red, ch5x5, kernel_size=branch5_kernel),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            BasicConv2d(in_channels, pool_proj, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        # (B, in_channels, H, W) -> (B, ch1x1 + ch3x3 + ch5x5 + pool_proj, H, W)
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], dim=1)


class InceptionAux(nn.Module):
    """x -> avg pool to 4x4 -> 1x1 conv -> fc-ReLU -> dropout -> fc (paper Section 5)."""

    def __init__(
        self, in_channels: int, num_classes: int, *, channels: int = 128, hidden_dim: int = 1024, dropout: float = 0.7
    ) -> None:
        super().__init__()
        self.conv = BasicConv2d(in_channels, channels, kernel_size=1)
        self.fc1 = nn.Linear(channels * 4 * 4, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, num_classes)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = F.adaptive_avg_pool2d(x, (4, 4))  # (B, in_channels, 4, 4)
        x = torch.flatten(self.conv(x), 1)  # (B, channels * 16)
        x = self.dropout(F.relu(self.fc1(x), inplace=True))  # (B, hidden_dim)
        return self.fc2(x)  # (B, num_classes)


class GoogLeNet(nn.Module):
    """stem -> inception3a-3b -> pool -> inception4a-4e (aux1 at 4a, aux2 at 4d) -> pool -> inception5a-5b -> fc."""

    def __init__(
        self,
        *,
        in_channels: int = 3,
        num_classes: int = 10,
        aux_logits: bool = False,
        small_input: bool = False,
        width: float = 1.0,
        branch5_kernel: int = 5,
        dropout: float = 0.4,
        aux_dropout: float = 0.7,
    ) -> None:
        super().__init__()
        if branch5_kernel not in (3, 5):
            raise ConfigError(
                f"GoogLeNet branch5_kernel must be 5 (the paper) or 3 (torchvision's googlenet); got {branch5_kernel}."
            )
        if not width > 0:
            raise ConfigError(
                f"GoogLeNet width must be a positive channel multiplier such as 1.0 or 0.25; got {width}."
            )
        if min(in_channels, num_classes) < 1:
            raise ConfigError(
                f"GoogLeNet in_channels and num_classes must be >= 1; got in_channels={in_channels}, "
                f"num_classes={num_classes}."
            )
        for name, p in (("dropout", dropout), ("aux_dropout", aux_dropout)):
            if not 0.0 <= p < 1.0:
                raise ConfigError(f"GoogLeNet {name} must be a probability in [0, 1); got {p}.")
        self.num_classes = num_classes
        self.aux_logits = aux_logits

        def ch(n: int) -> int:
            return max(1, round(n * width))

        if small_input:
            self.conv1 = BasicConv2d(in_channels, ch(64), kernel_size=3)
            self.maxpool1 = nn.Identity()
        else:
            self.conv1 = BasicConv2d(in_channels, ch(64), kernel_size=7, stride=2)
            self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(ch(64), ch(64), kernel_size=1)
        self.conv3 = BasicConv2d(ch(64), ch(192), kernel_size=3)
        self.maxpool2 = nn.Identity() if small_input else nn.MaxPool2d(3, stride=2, ceil_mode=True)

        inception = partial(InceptionModule, branch5_kernel=branch5_kernel)
        table = {name: [ch(c) for c in row] for name, row in INCEPTION_TABLE.items()}
        self.inception3a = inception(ch(192), *table["3a"])
        self.inception3b = inception(self.inception3a.out_channels, *table["3b"])
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = inception(self.inception3b.out_channels, *table["4a"])
        self.inception4b = inception(self.inception4a.out_channels, *table["4b"])
        self.inception4c = inception(self.inception4b.out_channels, *table["4c"])
        self.inception4d = inception(self.inception4c.out_channels, *table["4d"])
        self.inception4e = inception(self.inception4d.out_channels, *table["4e"])
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.inception5a = inception(self.inception4e.out_channels, *table["5a"])
        self.inception5b = inception(self.inception5a.out_channels, *table["5b"])

        if aux_logits:
            aux = partial(InceptionAux, channels=ch(128), hidden_dim=ch(1024), dropout=aux_dropout)
            self.aux1 = aux(self.inception4a.out_channels, num_classes)
            self.aux2 = aux(self.inception4d.out_channels, num_classes)
        else:
            self.aux1 = self.aux2 = None
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(self.inception5b.out_channels, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor | AuxLogits:
        # shapes at 224 px, width 1; with small_input the maps keep the input size H x W up to maxpool3
        with_aux = self.aux_logits and self.training
        aux = []
        x = self.conv1(x)  # (B, 64, 112, 112)
        x = self.maxpool1(x)  # (B, 64, 56, 56)
        x = self.conv2(x)  # (B, 64, 56, 56)
        x = self.conv3(x)  # (B, 192, 56, 56)
        x = self.maxpool2(x)  # (B, 192, 28, 28)
        x = self.inception3a(x)  # (B, 256, 28, 28)
        x = self.inception3b(x)  # (B, 480, 28, 28)
        x = self.maxpool3(x)  # (B, 480, 14, 14)
        x = self.inception4a(x)  # (B, 512, 14, 14)
        if with_aux:
            aux.append(self.aux1(x))  # (B, num_classes)
        x = self.inception4b(x)  # (B, 512, 14, 14)
        x = self.inception4c(x)  # (B, 512, 14, 14)
        x = self.inception4d(x)  # (B, 528, 14, 14)
        if with_aux:
            aux.append(self.aux2(x))  # (B, num_classes)
        x = self.inception4e(x)  # (B, 832, 14, 14)
        x = self.maxpool4(x)  # (B, 832, 7, 7)
        x = self.inception5a(x)  # (B, 832, 7, 7)
        x = self.inception5b(x)  # (B, 1024, 7, 7)
        x = torch.flatten(self.avgpool(x), 1)  # (B, 1024)
        logits = self.fc(self.dropout(x))  # (B, num_classes)
        return AuxLogits(logits, tuple(aux)) if with_aux else logits


googlenet_small = partial(GoogLeNet, small_input=True, width=0.25)
