"""Image grids for the tracker: W&B's `log_image` where the logger has it, otherwise PNG files in the run directory."""

from pathlib import Path

import lightning as L
import torch
import torchvision
from torch import Tensor

from archlab.rundir import RunDir

# Colours of classes 1, 2, ... in overlays (class 0, the background, stays uncoloured).
PALETTE = torch.tensor(
    [[1.0, 0.2, 0.2], [0.2, 0.8, 0.2], [0.2, 0.4, 1.0], [1.0, 0.8, 0.1], [0.9, 0.2, 0.9], [0.1, 0.9, 0.9]]
)


def grid(images: Tensor, *, nrow: int = 8) -> Tensor:
    """Images (N, C, H, W) in [0, 1] -> one (3, H', W') grid with a one-pixel white border."""
    return torchvision.utils.make_grid(images.detach().float().clamp(0, 1).cpu(), nrow=nrow, padding=1, pad_value=1.0)


def to_unit_range(x: Tensor) -> Tensor:
    """Per-image min-max scaling to [0, 1], for showing normalised inputs: (N, C, H, W) -> same shape."""
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-6)


def overlay(images: Tensor, masks: Tensor, *, alpha: float = 0.45) -> Tensor:
    """Images (N, C, H, W) in [0, 1] and class masks (N, H, W) -> RGB (N, 3, H, W) with classes >= 1 tinted."""
    rgb = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images[:, :3]
    colours = torch.cat([torch.zeros(1, 3), PALETTE])[(masks.cpu() - 1) % len(PALETTE) + 1]  # (N, H, W, 3)
    colours = colours.permute(0, 3, 1, 2).to(rgb)  # (N, 3, H, W)
    tinted = (1 - alpha) * rgb + alpha * colours
    return torch.where((masks > 0).unsqueeze(1).to(rgb.device), tinted, rgb)


def log_grid(module: L.LightningModule, key: str, image: Tensor) -> Path | None:
    """Send one grid (3, H, W) to every logger that takes images (W&B); without one, save it as a PNG under
    <run_dir>/images/ and return its path. Nothing is logged while Lightning runs its sanity check."""
    trainer = module.trainer
    if trainer.sanity_checking:
        return None
    takes_images = [logger for logger in module.loggers if hasattr(logger, "log_image")]
    for logger in takes_images:
        logger.log_image(key=key, images=[image], step=module.global_step)
    if takes_images:
        return None
    path = RunDir(trainer.default_root_dir).image(key, trainer.current_epoch)
    path.parent.mkdir(parents=True, exist_ok=True)
    torchvision.utils.save_image(image, path)
    return path
