"""ResNet in the paper's CIFAR and ImageNet layouts, and the plain network it is compared against.

He, Zhang, Ren, Sun. "Deep Residual Learning for Image Recognition", CVPR 2016. https://arxiv.org/abs/1512.03385

- style="imagenet" (paper Table 1): 7x7/2 stem, 3x3/2 max pool, layer1..layer4 of BasicBlocks (depth 18, 34) or
  Bottlenecks (50, 101, 152). Submodule names and layout equal torchvision's `resnet18..152`, so their state dicts
  load strictly and give the same logits. As in torchvision ("ResNet v1.5"), a Bottleneck strides in its 3x3 conv
  rather than in its first 1x1 as the paper does; the parameter count is the same.
- style="cifar" (paper Section 4.2): 3x3 stem, three stages of n BasicBlocks with 16, 32, 64 filters on 32, 16,
  8 px maps, global average pool, fc: depth = 6n + 2.
- shortcut (paper Section 3.3): "A" subsamples by the stride and zero-pads the new channels, parameter-free (the
  paper's CIFAR choice); "B" projects with 1x1 conv + BN where the shape changes (its ImageNet choice); "none" has
  no shortcut at all: the plain network of paper Figures 3 and 6, with exactly the same layers.

Parameter counts at 10 classes, option A (paper Table 6: 0.27M, 0.85M, 1.7M): ResNet-20 269,722; ResNet-56 853,018;
ResNet-110 1,727,962. The plain networks have the same counts.
"""

from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from archlab.errors import ConfigError

Shortcut = Literal["A", "B", "none"]
STYLES = ("cifar", "imagenet")
SHORTCUTS = ("A", "B", "none")


class ZeroPadShortcut(nn.Module):
    """x -> x[:, :, ::stride, ::stride] -> zero-pad channels to out_channels (option A)."""

    def __init__(self, extra_channels: int, stride: int) -> None:
        super().__init__()
        self.extra_channels = extra_channels
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]  # (B, C, H / stride, W / stride)
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))  # (B, C + extra_channels, H / stride, W / stride)


def _downsample(shortcut: Shortcut, in_planes: int, out_planes: int, stride: int) -> nn.Module | None:
    if shortcut == "none" or (stride == 1 and in_planes == out_planes):
        return None
    if shortcut == "A":
        return ZeroPadShortcut(out_planes - in_planes, stride)
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out_planes)
    )


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """x -> conv3x3-BN-ReLU -> conv3x3-BN -> (+ shortcut(x)) -> ReLU (paper Figure 2)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, *, stride: int = 1, shortcut: Shortcut = "B") -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(shortcut, in_planes, planes, stride)
        self.residual = shortcut != "none"

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))  # (B, planes, H / stride, W / stride)
        out = self.bn2(self.conv2(out))
        if self.residual:  # False in the plain network
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class Bottleneck(nn.Module):
    """x -> conv1x1-BN-ReLU -> conv3x3-BN-ReLU -> conv1x1 (x4 channels)-BN -> (+ shortcut(x)) -> ReLU (Figure 5)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, *, stride: int = 1, shortcut: Shortcut = "B") -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(shortcut, in_planes, out_planes, stride)
        self.residual = shortcut != "none"

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))  # (B, planes, H, W)
        out = self.relu(self.bn2(self.conv2(out)))  # (B, planes, H / stride, W / stride)
        out = self.bn3(self.conv3(out))  # (B, 4 * planes, H / stride, W / stride)
        if self.residual:  # False in the plain network
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


IMAGENET_LAYOUTS: dict[int, tuple[type[BasicBlock | Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class ResNet(nn.Module):
    """stem -> [max pool] -> layer1..layer3 [-> layer4] of residual blocks -> global average pool -> fc."""

    def __init__(
        self,
        *,
        depth: int = 20,
        style: Literal["cifar", "imagenet"] = "cifar",
        shortcut: Shortcut | None = None,
        in_channels: int = 3,
        num_classes: int = 10,
        width: int | None = None,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if style not in STYLES:
            raise ConfigError(f"ResNet style must be one of {', '.join(map(repr, STYLES))}; got {style!r}.")
        # None means the paper's choice for the style: shortcut "A" and width 16 on CIFAR, "B" and 64 on ImageNet
        shortcut = shortcut if shortcut is not None else ("A" if style == "cifar" else "B")
        if shortcut not in SHORTCUTS:
            raise ConfigError(f"ResNet shortcut must be one of {', '.join(map(repr, SHORTCUTS))}; got {shortcut!r}.")
        if style == "cifar" and (depth < 8 or (depth - 2) % 6 != 0):
            raise ConfigError(
                f"ResNet depth for style='cifar' must be 6n+2 with n >= 1 (e.g. 8, 20, 32, 44, 56, 110); got {depth}."
            )
        if style == "imagenet" and depth not in IMAGENET_LAYOUTS:
            raise ConfigError(
                f"ResNet depth for style='imagenet' must be one of {', '.join(map(str, IMAGENET_LAYOUTS))}; "
                f"got {depth}. For CIFAR depths (6n+2) use style='cifar'."
            )
        width = width if width is not None else (16 if style == "cifar" else 64)
        if min(in_channels, num_classes, width) < 1:
            raise ConfigError(
                f"ResNet in_channels, num_classes and width must be >= 1; "
                f"got in_channels={in_channels}, num_classes={num_classes}, width={width}."
            )
        self.num_classes = num_classes
        self.shortcut = shortcut

        if style == "cifar":
            block, blocks = BasicBlock, ((depth - 2) // 6,) * 3
            self.conv1 = _conv3x3(in_channels, width)
            self.maxpool = nn.Identity()
        else:
            block, blocks = IMAGENET_LAYOUTS[depth]
            self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self._in_planes = width
        self.layer1 = self._make_layer(block, width, blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 2 * width, blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, blocks[2], stride=2)
        # the CIFAR network has three stages
        self.layer4 = self._make_layer(block, 8 * width, blocks[3], stride=2) if len(blocks) == 4 else nn.Identity()
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self._in_planes, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:  # each block starts as its shortcut: Goyal et al. 2017, https://arxiv.org/abs/1706.02677
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for i in range(blocks):
            layers.append(block(self._in_planes, planes, stride=stride if i == 0 else 1, shortcut=self.shortcut))
            self._in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        # shapes: ImageNet style at 224 px (ResNet-50 channels); CIFAR style at 32 px
        x = self.relu(self.bn1(self.conv1(x)))  # (B, 64, 112, 112); CIFAR (B, 16, 32, 32)
        x = self.maxpool(x)  # (B, 64, 56, 56); identity on CIFAR
        x = self.layer1(x)  # (B, 256, 56, 56); CIFAR (B, 16, 32, 32)
        x = self.layer2(x)  # (B, 512, 28, 28); CIFAR (B, 32, 16, 16)
        x = self.layer3(x)  # (B, 1024, 14, 14); CIFAR (B, 64, 8, 8)
        x = self.layer4(x)  # (B, 2048, 7, 7); identity on CIFAR
        x = torch.flatten(self.avgpool(x), 1)  # (B, 2048); CIFAR (B, 64)
        return self.fc(x)  # (B, num_classes)


resnet20 = partial(ResNet, depth=20)
resnet32 = partial(ResNet, depth=32)
resnet44 = partial(ResNet, depth=44)
resnet56 = partial(ResNet, depth=56)
resnet110 = partial(ResNet, depth=110)
plain20 = partial(ResNet, depth=20, shortcut="none")
plain56 = partial(ResNet, depth=56, shortcut="none")
resnet18 = partial(ResNet, depth=18, style="imagenet")
resnet34 = partial(ResNet, depth=34, style="imagenet")
resnet50 = partial(ResNet, depth=50, style="imagenet")
resnet101 = partial(ResNet, depth=101, style="imagenet")
resnet152 = partial(ResNet, depth=152, style="imagenet")
