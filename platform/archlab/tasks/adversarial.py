"""Adversarial: a GAN's two-player game, one discriminator step then one generator step per batch, each with its own
optimizer (manual optimization).

Goodfellow et al. 2014 (https://arxiv.org/abs/1406.2661): D maximises log D(x) + log(1 - D(G(z))); G uses the
non-saturating loss -log D(G(z)) (sec. 3), which gives strong gradients early, when D rejects G's samples easily.
Radford et al. 2016: Adam with lr 2e-4 and beta1 0.5. Salimans et al. 2016 (https://arxiv.org/abs/1606.03498,
sec. 3.4): one-sided label smoothing, real targets 1 - `label_smoothing`, fake targets 0.

The net is a pair with `generator`, `discriminator` and `latent_dim` (archlab.models.DCGAN). Losses carry no quality
signal, so checkpoints follow `val/fid`.
"""

from typing import ClassVar, Literal

import torch
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor, nn
from torch.nn import functional as F

from archlab.errors import ConfigError
from archlab.tasks.generative import GenerativeTask


class Adversarial(GenerativeTask):
    """z -> G -> fake; D step on BCE(D(x), 1 - smoothing) + BCE(D(fake), 0); G step on BCE(D(fake), 1)."""

    monitor: ClassVar[str] = "val/fid"
    mode: ClassVar[Literal["min", "max"]] = "min"

    def __init__(
        self,
        net: nn.Module,
        *,
        lr: float = 2.0e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        label_smoothing: float = 0.0,
        fid_samples: int = 1000,
        num_samples: int = 64,
        compile: bool = False,
        channels_last: bool = False,
    ) -> None:
        if not all(hasattr(net, name) for name in ("generator", "discriminator", "latent_dim")):
            raise ConfigError(
                "model.net must be a GAN with generator, discriminator and latent_dim (archlab.models.DCGAN); "
                f"got {type(net).__name__}."
            )
        if not 0 <= label_smoothing < 1:
            raise ConfigError(f"model.label_smoothing (one-sided) must be in [0, 1); got {label_smoothing}.")
        if not all(0 <= b < 1 for b in betas):
            raise ConfigError(f"model.betas must be two numbers in [0, 1); got {betas}.")
        if fid_samples < 2:
            raise ConfigError(f"model.fid_samples must be >= 2: checkpoints follow val/fid; got {fid_samples}.")
        super().__init__(
            net,
            fid_samples=fid_samples,
            num_samples=num_samples,
            lr=lr,
            schedule="constant",
            compile=compile,
            channels_last=channels_last,
        )
        self.betas = tuple(betas)
        self.label_smoothing = label_smoothing
        self.automatic_optimization = False

    def setup(self, stage: str) -> None:
        if isinstance(self.trainer.strategy, DDPStrategy):
            # The D step leaves G's parameters without gradients and the G step D's, which DDP's reducer takes for a
            # bug unless it searches for unused parameters (https://github.com/Lightning-AI/pytorch-lightning/issues/
            # 20328). The strategy reads the flag when it wraps the task, after this hook, and has no public setter.
            self.trainer.strategy._ddp_kwargs["find_unused_parameters"] = True

    def compiled_modules(self) -> list[nn.Module]:
        return [self.net.generator, self.net.discriminator]  # the steps call the two players, never net(...)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        lr = self.hparams.lr
        return [
            torch.optim.Adam(self.net.discriminator.parameters(), lr=lr, betas=self.betas),
            torch.optim.Adam(self.net.generator.parameters(), lr=lr, betas=self.betas),
        ]

    def sample(self, n: int, noise: Tensor | None = None) -> Tensor:
        z = noise if noise is not None else torch.randn((n, self.net.latent_dim), device=self.fixed_noise.device)
        return self.net.generator(z)  # (n, C, H, W) in [0, 1]

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        real = batch[0]  # (B, C, H, W) in [0, 1]; labels are ignored
        b = len(real)
        opt_d, opt_g = self.optimizers()
        fake = self.sample(b)  # (B, C, H, W)

        self.toggle_optimizer(opt_d)
        real_logits = self.net.discriminator(real)  # (B,)
        fake_logits = self.net.discriminator(fake.detach())  # (B,); detached: this step leaves G alone
        d_loss = F.binary_cross_entropy_with_logits(
            real_logits, torch.full_like(real_logits, 1 - self.label_smoothing)
        ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        self.untoggle_optimizer(opt_d)

        self.toggle_optimizer(opt_g)
        g_logits = self.net.discriminator(fake)  # (B,)
        g_loss = F.binary_cross_entropy_with_logits(g_logits, torch.ones_like(g_logits))  # non-saturating
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        self.untoggle_optimizer(opt_g)

        self.log_dict(
            {
                "train/d_loss": d_loss,
                "train/g_loss": g_loss,
                "train/d_real": torch.sigmoid(real_logits).mean(),  # D(x)
                "train/d_fake": torch.sigmoid(fake_logits).mean(),  # D(G(z)) before the G step
            },
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            sync_dist=True,  # averaged over every process under DDP, as the other tasks' losses
            batch_size=b,
        )

    def step(self, batch: tuple[Tensor, ...], stage: str) -> None:
        self.update_real(batch[0])
