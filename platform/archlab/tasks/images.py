"""Image grids for the trackers: W&B images and TensorBoard's Images tab where those log, otherwise PNG files in the
run directory; always uint8, readable in size, captioned, at the step of the epoch's scalars."""

from pathlib import Path

import lightning as L
import torch
import torchvision
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger
from PIL import Image
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


# Grids smaller than MIN_SIDE (on their shorter side) are upscaled by a whole factor, nearest-neighbour, for reading
# (64 digits of 8x8 make a 73x73 grid), as long as the longer side stays within MAX_SIDE.
MIN_SIDE, MAX_SIDE = 384, 2048


def to_uint8(image: Tensor) -> Tensor:
    """A grid (3, H, W) in [0, 1] -> uint8 (3, H', W'), upscaled by a whole factor when small.

    Trackers are handed uint8: wandb casts float tensors to uint8 without scaling, which turns [0, 1] into a black
    picture; TensorBoard and PIL agree on uint8 too.
    """
    factor = max(1, min(-(-MIN_SIDE // min(image.shape[-2:])), MAX_SIDE // max(image.shape[-2:])))
    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    return pixels.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def logging_step(trainer: L.Trainer) -> int:
    """The step Lightning gives loggers with the scalars (its count of batches that stepped, not optimizer steps:
    the GAN's two optimizers make global_step twice as large); private in Lightning, with no public equivalent."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped if trainer.training or trainer.validating else 0


def log_grid(module: L.LightningModule, key: str, image: Tensor, *, caption: str) -> Path | None:
    """Send one grid (3, H, W) in [0, 1] to every logger that takes images: W&B (with `caption`, prefixed with the
    epoch) and TensorBoard (its Images tab), at the step of the epoch's scalars. Without such a logger, save it as a
    PNG under <run_dir>/images/ and return its path. Nothing is logged while Lightning runs its sanity check."""
    trainer = module.trainer
    if trainer.sanity_checking or not trainer.is_global_zero:
        return None
    pixels = to_uint8(image)
    step = logging_step(trainer)
    caption = f"epoch {trainer.current_epoch}: {caption}"
    logged = False
    for logger in module.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[pixels.permute(1, 2, 0).numpy()], caption=[caption], step=step)
            logged = True
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, pixels, global_step=step)
            logger.experiment.add_text(f"{key}/caption", caption, global_step=step)
            logged = True
        elif isinstance(logger, MLFlowLogger):
            # MLflow's step-indexed images (its UI shows them by step); MLflow stores no caption, the key names them.
            image = pixels.permute(1, 2, 0).numpy()
            logger.experiment.log_image(logger.run_id, image, key=key.replace("/", "_"), step=step)
            logged = True
    if logged:
        return None
    path = RunDir(trainer.default_root_dir).image(key, trainer.current_epoch)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(path)
    return path
