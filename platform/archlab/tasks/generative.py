"""The shared part of the generative tasks: sample quality as `val/fid` / `test/fid`, sample grids, and `predict`
returning a grid of new samples (written by the CLI as the run's samples.png).

Every generator is scored the same way: the Frechet distance (archlab.fid) between the features of the split's real
images and of `fid_samples` generated ones, so GAN, VAE and autoencoder runs compare in one table.
"""

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from archlab.errors import ConfigError
from archlab.fid import add_samples, make_fid
from archlab.predictions import Images
from archlab.tasks.base import Stage, Task
from archlab.tasks.images import grid, log_grid


class GenerativeTask(Task):
    """A task whose net can `sample(n)` images in [0, 1]; adds FID, sample grids and sample-writing `predict`."""

    def __init__(
        self,
        net: nn.Module,
        *,
        fid_samples: int = 1000,
        num_samples: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(net, **kwargs)
        if fid_samples != 0 and fid_samples < 2:
            raise ConfigError(f"model.fid_samples must be 0 (no FID) or >= 2 generated images; got {fid_samples}.")
        if num_samples < 1:
            raise ConfigError(f"model.num_samples (images in a sample grid) must be >= 1; got {num_samples}.")
        self.fid_samples = fid_samples
        self.num_samples = num_samples
        # How many samples `predict` writes is the caller's choice, not the run's: kept out of checkpoints, whose
        # hyperparameters LightningCLI would otherwise lay over the command line's --model.num_samples.
        self.hparams.pop("num_samples", None)
        self.fid = make_fid() if fid_samples else None
        # The same noise every epoch, so the grids show one set of samples evolving.
        noise = torch.randn((num_samples, net.latent_dim), generator=torch.Generator().manual_seed(0))
        self.register_buffer("fixed_noise", noise, persistent=False)  # (num_samples, latent_dim)

    def sample(self, n: int, noise: Tensor | None = None) -> Tensor:
        """`n` new images (n, C, H, W) in [0, 1], from `noise` (n, latent_dim) when given."""
        raise NotImplementedError

    def check_data(self, datamodule: L.LightningDataModule) -> None:
        # Generated images, the FID's inputs and reconstruction targets are pixels in [0, 1]: standardised data is not.
        if getattr(datamodule, "normalize", False):
            raise ConfigError(
                f"{type(self).__name__} needs pixels in [0, 1], but {type(datamodule).__name__} standardises them; "
                "set data.normalize false"
            )

    def update_real(self, x: Tensor) -> None:
        if self.fid is not None:
            self.fid.update(x, real=True)

    def log_fid(self, stage: Stage) -> None:
        if self.fid is None:
            return
        if int(self.fid.real_features_num_samples) >= 2:
            # Each process generates its share; the metric gathers every process's features when it computes.
            add_samples(self.fid, self.sample, -(-self.fid_samples // self.trainer.world_size))
            self.log(f"{stage}/fid", self.fid.compute(), prog_bar=True)
        self.fid.reset()

    def log_images(self) -> None:
        """Grids for the tracker at the end of each validation epoch."""
        with torch.no_grad():
            samples = self.sample(self.num_samples, self.fixed_noise)
        log_grid(
            self,
            "val/samples",
            grid(samples, nrow=int(self.num_samples**0.5)),
            caption=f"{self.num_samples} samples from the same fixed noise every epoch",
        )

    def on_validation_epoch_end(self) -> None:
        self.log_fid("val")
        self.log_images()

    def on_test_epoch_end(self) -> None:
        self.log_fid("test")

    def predict_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> dict[str, Tensor]:
        return {"samples": self.sample(len(batch[0])).cpu()}  # as many new images as the batch has

    def predictions(self, outputs: list[dict[str, Tensor]]) -> Images:
        """The first `num_samples` generated images as one grid."""
        samples = torch.cat([batch["samples"] for batch in outputs])[: self.num_samples]
        return Images(grid(samples, nrow=int(len(samples) ** 0.5)))
