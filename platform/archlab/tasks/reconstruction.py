"""Reconstruction: autoencoders trained to reproduce their input, and the VAE's evidence lower bound.

Plain: reconstruction loss (BCE on logits, or MSE on the sigmoid), summed over pixels, averaged over the batch.
Denoising (Vincent et al. 2008): the input is corrupted (Gaussian noise or masking) and the clean image is the target.
Sparse (Ng 2011): plus `sparsity_weight` x an L1 penalty on the code, or the KL divergence between a target activation
`sparsity_target` and each sigmoid unit's mean activation over the batch.
VAE (Kingma, Welling 2014; Higgins et al. 2017): plus `beta` x KL(q(z|x) || N(0, I)), the negative ELBO for beta 1.

Samples: the VAE decodes z ~ N(0, I); a deterministic autoencoder has no prior, so it decodes z from a Gaussian fitted
to the codes of the validation images (full covariance; Ghosh et al. 2020, https://arxiv.org/abs/1903.12436).
"""

from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from archlab.errors import ConfigError
from archlab.tasks.base import Stage
from archlab.tasks.generative import GenerativeTask
from archlab.tasks.images import grid, log_grid

LOSSES = ("bce", "mse")
NOISES = ("none", "gaussian", "masking")
SPARSITIES = ("none", "l1", "kl")


def corrupt(x: Tensor, noise: str, level: float) -> Tensor:
    """Gaussian: x + level * N(0, 1), clipped to [0, 1]; masking: each pixel zeroed with probability `level`."""
    if noise == "gaussian":
        return (x + level * torch.randn_like(x)).clamp(0, 1)
    if noise == "masking":
        return x * (torch.rand_like(x) >= level)
    return x


def kl_sparsity(code: Tensor, target: float) -> Tensor:
    """sum_j KL(Bernoulli(target) || Bernoulli(mean activation of unit j)), code (B, latent_dim) in (0, 1)."""
    rho = code.mean(dim=0).clamp(1e-6, 1 - 1e-6)  # (latent_dim,)
    return (target * torch.log(target / rho) + (1 - target) * torch.log((1 - target) / (1 - rho))).sum()


class Reconstruction(GenerativeTask):
    """image -> [corrupt] -> encoder -> code -> decoder -> reconstruction loss (+ sparsity or beta x KL)."""

    monitor: ClassVar[str] = "val/loss"
    mode: ClassVar[Literal["min", "max"]] = "min"

    def __init__(
        self,
        net: nn.Module,
        *,
        loss: Literal["bce", "mse"] = "bce",
        beta: float = 1.0,
        noise: Literal["none", "gaussian", "masking"] = "none",
        noise_level: float = 0.3,
        sparsity: Literal["none", "l1", "kl"] = "none",
        sparsity_weight: float = 1.0e-2,
        sparsity_target: float = 0.05,
        fid_samples: int = 1000,
        num_samples: int = 64,
        weight_decay: float = 0.0,
        **kwargs: Any,
    ) -> None:
        for key, value, choices in (
            ("loss", loss, LOSSES),
            ("noise", noise, NOISES),
            ("sparsity", sparsity, SPARSITIES),
        ):
            if value not in choices:
                raise ConfigError(f"model.{key} must be one of {', '.join(choices)}; got {value!r}.")
        if not all(hasattr(net, name) for name in ("encode", "decode", "latent_dim")):
            raise ConfigError(
                f"model.net must be an autoencoder with encode, decode and latent_dim (archlab.models.AutoEncoder); "
                f"got {type(net).__name__}."
            )
        variational = getattr(net, "variational", False)
        if beta < 0:
            raise ConfigError(f"model.beta weighs the VAE's KL term and must be >= 0; got {beta}.")
        if not 0 <= noise_level < 1:
            raise ConfigError(f"model.noise_level must be in [0, 1); got {noise_level}.")
        if sparsity != "none" and variational:
            raise ConfigError("model.sparsity applies to deterministic autoencoders; set model.net variational false.")
        if sparsity == "kl" and getattr(net, "code_activation", None) != "sigmoid":
            raise ConfigError(
                "model.sparsity 'kl' needs codes in (0, 1): set model.net.code_activation sigmoid (or use sparsity l1)."
            )
        if not 0 < sparsity_target < 1 or sparsity_weight < 0:
            raise ConfigError(
                f"model.sparsity_target must be in (0, 1) and model.sparsity_weight >= 0; got {sparsity_target} and "
                f"{sparsity_weight}."
            )
        super().__init__(net, fid_samples=fid_samples, num_samples=num_samples, weight_decay=weight_decay, **kwargs)
        self.loss = loss
        self.beta = beta
        self.variational = variational
        self.noise = noise
        self.noise_level = noise_level
        self.sparsity = sparsity
        self.sparsity_weight = sparsity_weight
        self.sparsity_target = sparsity_target
        latent_dim = net.latent_dim
        # A Gaussian fitted to the validation codes: the deterministic autoencoder's sampling distribution.
        self.register_buffer("code_mean", torch.zeros(latent_dim))
        self.register_buffer("code_scale", torch.eye(latent_dim))  # Cholesky factor of the codes' covariance
        self._codes: list[Tensor] = []
        self._shown: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.net(x).logits)  # (B, C, H, W) reconstructions in [0, 1]

    def step(self, batch: tuple[Tensor, ...], stage: Stage) -> Tensor:
        x = batch[0]  # (B, C, H, W) in [0, 1] (check_data); labels are ignored
        noisy = corrupt(x, self.noise, self.noise_level)
        out = self.net(noisy)
        b = len(x)
        if self.loss == "bce":
            recon = F.binary_cross_entropy_with_logits(out.logits, x, reduction="sum") / b
        else:
            recon = F.mse_loss(torch.sigmoid(out.logits), x, reduction="sum") / b
        loss = recon
        if out.mean is not None:
            kl = -0.5 * torch.sum(1 + out.logvar - out.mean.square() - out.logvar.exp()) / b
            loss = loss + self.beta * kl
            self.log(f"{stage}/kl", kl, on_step=False, on_epoch=True, batch_size=b, sync_dist=True)
        if self.sparsity != "none":
            code = out.code
            penalty = code.abs().sum(dim=1).mean() if self.sparsity == "l1" else kl_sparsity(code, self.sparsity_target)
            loss = loss + self.sparsity_weight * penalty
            self.log(f"{stage}/sparsity", penalty, on_step=False, on_epoch=True, batch_size=b, sync_dist=True)
            self.log(
                f"{stage}/active",
                (code > 0.1).float().mean(),
                on_step=False,
                on_epoch=True,
                batch_size=b,
                sync_dist=True,
            )
        mse = F.mse_loss(torch.sigmoid(out.logits.detach()), x)
        self.log_loss(stage, loss, batch_size=b)
        self.log(f"{stage}/recon", recon, on_step=False, on_epoch=True, batch_size=b, sync_dist=True)
        self.log(f"{stage}/mse", mse, on_step=False, on_epoch=True, batch_size=b, sync_dist=True)
        if stage != "train":
            self.update_real(x)
        if stage == "val":
            self._codes.append(out.code.detach())
            if self._shown is None:
                self._shown = torch.stack([x, noisy, torch.sigmoid(out.logits.detach())], 1)[:8]  # (8, 3, C, H, W)
        return loss

    def sample(self, n: int, noise: Tensor | None = None) -> Tensor:
        z = noise if noise is not None else torch.randn((n, self.net.latent_dim), device=self.code_mean.device)
        if not self.variational:
            z = self.code_mean + z @ self.code_scale.T  # (n, latent_dim) from the fitted Gaussian
        return torch.sigmoid(self.net.decode(z))  # (n, C, H, W)

    def fit_code_distribution(self) -> None:
        codes, self._codes = self._codes, []
        if self.variational or len(codes) == 0:
            return
        codes = torch.cat(codes)  # (N, latent_dim)
        if self.trainer.world_size > 1:
            # Every process fits the same Gaussian, to all the validation codes (the sampler shards them equally).
            codes = self.all_gather(codes).flatten(0, 1)  # (world_size * N, latent_dim)
        codes = codes.double()
        if len(codes) < 2:
            return
        mean = codes.mean(dim=0)
        cov = torch.cov(codes.T).reshape(len(mean), len(mean))
        cov = cov + 1e-6 * cov.diagonal().mean().clamp_min(1e-6) * torch.eye(
            len(mean), dtype=cov.dtype, device=cov.device
        )
        self.code_mean.copy_(mean.float())
        self.code_scale.copy_(torch.linalg.cholesky(cov).float())

    def on_validation_epoch_end(self) -> None:
        self.fit_code_distribution()
        super().on_validation_epoch_end()

    def log_images(self) -> None:
        super().log_images()
        shown, self._shown = self._shown, None
        if shown is not None:
            # One row per image: input | corrupted input | reconstruction.
            log_grid(
                self,
                "val/reconstructions",
                grid(shown.flatten(0, 1), nrow=3),
                caption="one row per validation image: input | corrupted input | reconstruction",
            )
        if self.variational and shown is not None and len(shown) >= 2:
            with torch.no_grad():
                _z, mean, _logvar = self.net.encode(shown[:2, 0])  # the first two validation images' means
                t = torch.linspace(0, 1, 10, device=mean.device).view(-1, 1)
                path = torch.sigmoid(self.net.decode((1 - t) * mean[0] + t * mean[1]))  # (10, C, H, W)
            log_grid(
                self,
                "val/interpolation",
                grid(path, nrow=10),
                caption="decoded from 10 points on the line between two validation images' codes",
            )
