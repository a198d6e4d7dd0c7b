"""U-Net: a contracting path of conv stages and max pools, an expanding path that upsamples and concatenates the
encoder's features at each scale, and a 1x1 conv to per-pixel class logits.

Ronneberger, Fischer, Brox. "U-Net: Convolutional Networks for Biomedical Image Segmentation", MICCAI 2015.
https://arxiv.org/abs/1505.04597 (fig. 1: down1..down4 are the red arrows plus the two blue 3x3 convs after them,
up1..up4 the green up-convs, the concatenation and the two 3x3 convs).

Unlike the paper's unpadded convs, the 3x3 convs are padded (and batch-normalised), so a map keeps its size; the max
pools round up, so any input size works, odd sizes too: each upsampled map is padded or cropped to its skip
connection's size, and the output always has the input's height and width.
"""

from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from archlab.errors import ConfigError

UPSAMPLING = ("transpose", "bilinear")


class DoubleConv(nn.Sequential):
    """x -> (conv3x3-BN-ReLU) x 2."""

    def __init__(self, in_channels: int, out_channels: int, *, dropout: float = 0.0) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
        )


class Down(nn.Sequential):
    """x -> 2x2 max pool (rounding up) -> double conv."""

    def __init__(self, in_channels: int, out_channels: int, *, dropout: float = 0.0) -> None:
        super().__init__(nn.MaxPool2d(2, ceil_mode=True), DoubleConv(in_channels, out_channels, dropout=dropout))


class Up(nn.Module):
    """(x, skip) -> 2x upsample x -> pad/crop to skip's size -> concat [skip, x] -> double conv.

    `skip=False` is the ablation without the skip connection: the skip gives only its size, nothing is concatenated."""

    def __init__(
        self, in_channels: int, out_channels: int, *, upsampling: str = "transpose", skip: bool = True
    ) -> None:
        super().__init__()
        self.skip = skip
        if upsampling == "transpose":
            # The paper's "up-conv 2x2" that halves the channels.
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, 2, stride=2)
        else:
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_channels, in_channels // 2, 1),
            )
        self.conv = DoubleConv(in_channels // 2 + (out_channels if skip else 0), out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.up(x)  # (B, C_in / 2, 2h, 2w)
        dh, dw = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
        # The encoder's pools round up, so 2h may exceed the skip's height by one: negative padding crops.
        x = F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))  # (B, C_in / 2, H_skip, W_skip)
        if self.skip:
            x = torch.cat([skip, x], dim=1)  # (B, C_out + C_in / 2, H_skip, W_skip)
        return self.conv(x)  # (B, C_out, H_skip, W_skip)


class UNet(nn.Module):
    """image -> inc -> down1..downN (contracting) -> up1..upN with skip concatenations (expanding) -> 1x1 conv."""

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 2,
        depth: int = 4,
        width: int = 64,
        upsampling: Literal["transpose", "bilinear"] = "transpose",
        dropout: float = 0.0,
        skips: bool = True,
    ) -> None:
        """`depth` down/up stages; the first stage has `width` channels and each down stage doubles them (the paper:
        depth 4, width 64). `num_classes` >= 2 logits per pixel (binary segmentation is 2 classes). `dropout`
        (Dropout2d) after the deepest stage, as in the paper's "drop-out layers at the end of the contracting path".
        `skips: false` removes the encoder-decoder concatenations: a plain encoder-decoder, the ablation baseline."""
        super().__init__()
        if depth < 1:
            raise ConfigError(f"UNet depth must be >= 1 (the paper uses 4); got {depth}.")
        if width < 2:
            raise ConfigError(f"UNet width must be >= 2 (the paper uses 64); got {width}.")
        if upsampling not in UPSAMPLING:
            raise ConfigError(f"UNet upsampling must be one of {', '.join(UPSAMPLING)}; got {upsampling!r}.")
        if in_channels < 1 or num_classes < 2:
            raise ConfigError(
                f"UNet needs in_channels >= 1 and num_classes >= 2 (binary segmentation is 2 classes); "
                f"got in_channels={in_channels}, num_classes={num_classes}."
            )
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"UNet dropout must be a probability in [0, 1); got {dropout}.")
        self.num_classes = num_classes
        self.depth = depth
        widths = [width * 2**i for i in range(depth + 1)]
        self.inc = DoubleConv(in_channels, widths[0])
        for i in range(1, depth + 1):
            self.add_module(f"down{i}", Down(widths[i - 1], widths[i], dropout=dropout if i == depth else 0.0))
        for i in range(1, depth + 1):
            self.add_module(f"up{i}", Up(widths[depth - i + 1], widths[depth - i], upsampling=upsampling, skip=skips))
        self.outc = nn.Conv2d(widths[0], num_classes, 1)

        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        skips = [self.inc(x)]  # (B, width, H, W)
        for i in range(1, self.depth + 1):
            skips.append(getattr(self, f"down{i}")(skips[-1]))  # (B, width * 2^i, ceil(H / 2^i), ceil(W / 2^i))
        x = skips.pop()
        for i in range(1, self.depth + 1):
            x = getattr(self, f"up{i}")(x, skips.pop())  # (B, width * 2^(depth - i), ...) at the skip's size
        return self.outc(x)  # (B, num_classes, H, W)
