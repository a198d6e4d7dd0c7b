"""The shared base of every archlab task: stage-keyed steps, the default optimizer, the monitored metric, and the
options every task shares: `compile` (torch.compile) and `channels_last` (the memory format of conv nets).

A task is the LightningModule for one training objective; the architecture arrives as `net`, a plain nn.Module.
"""

import os
import random
from typing import ClassVar, Literal

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection

from archlab import fastlog, tracking
from archlab.errors import ConfigError
from archlab.loading import check_state_dict
from archlab.predictions import Images, Table, Texts

Stage = Literal["train", "val", "test"]


class Task(L.LightningModule):
    """net -> loss and metrics per stage; AdamW with a one-cycle cosine schedule unless the CLI overrides it."""

    # The metric that checkpointing, early stopping and sweeps optimise, declared once per task.
    monitor: ClassVar[str] = "val/loss"
    mode: ClassVar[Literal["min", "max"]] = "min"

    def __init__(
        self,
        net: nn.Module,
        *,
        lr: float = 1.0e-3,
        weight_decay: float = 1.0e-2,
        warmup: float = 0.1,
        schedule: Literal["cosine", "constant"] = "cosine",
        compile: bool = False,
        channels_last: bool = False,
    ) -> None:
        """`compile`: compile the modules the training step calls (`compiled_modules`) with torch.compile, in place, so
        checkpoints keep the uncompiled net's keys and load either way. `channels_last`: hold a conv net's weights,
        and the image batches it is given, in channels-last memory format (NHWC), which GPU tensor cores and
        oneDNN convolutions prefer."""
        super().__init__()
        fastlog.install()  # self.log without Lightning's per-call device move (archlab/fastlog.py)
        if lr <= 0:
            raise ConfigError(f"model.lr must be > 0, got {lr}.")
        if not 0 <= warmup < 1:
            raise ConfigError(f"model.warmup is the fraction of steps spent warming up, in [0, 1); got {warmup}.")
        if schedule not in ("cosine", "constant"):
            raise ConfigError(f"model.schedule must be 'cosine' or 'constant', got {schedule!r}.")
        if channels_last and not any(p.ndim == 4 for p in net.parameters()):
            raise ConfigError(
                f"model.channels_last is for conv nets (2-d convolutions); {type(net).__name__} has none: set it false."
            )
        self.net = net
        self.compile_net = compile  # not `self.compile`: that is nn.Module's method
        self.channels_last = channels_last
        self.prepared = False  # compile and channels_last applied (configure_model runs once per stage)
        # The CLI records the full config (net included) itself; `logger=False` keeps the tracker's config to one copy.
        self.save_hyperparameters(ignore=["net"], logger=False)
        # How to run, not what was trained: kept out of checkpoints, whose hyperparameters LightningCLI lays over the
        # command line, so that a compiled run's checkpoint validates eagerly unless --model.compile says otherwise.
        for key in ("compile", "channels_last"):
            self.hparams.pop(key, None)
        self.num_params = sum(p.numel() for p in net.parameters())

    def step(self, batch: tuple[Tensor, ...], stage: Stage) -> Tensor:
        raise NotImplementedError

    def set_metrics(self, metrics: dict[str, Metric]) -> None:
        """One torchmetrics collection per stage (`train_metrics`, `val_metrics`, `test_metrics`), keyed <stage>/..."""
        collection = MetricCollection(metrics)
        for stage in ("train", "val", "test"):
            setattr(self, f"{stage}_metrics", collection.clone(prefix=f"{stage}/"))
        for metric in self.train_metrics.values():
            # torchmetrics checks the targets' range at every update (torch.unique: a host sync per training step on
            # a GPU); the loss has checked the same targets, and validation and test keep the checks.
            if hasattr(metric, "validate_args"):
                metric.validate_args = False

    def log_loss(self, stage: Stage, loss: Tensor, batch_size: int) -> None:
        """Log `<stage>/loss`, per epoch and (in training) per step.

        Under DDP the loss is averaged over every process's samples (`sync_dist`; in training that is one scalar
        all-reduce per step beside DDP's gradient all-reduce; nothing in one process)."""
        on_step = stage == "train"
        self.log(
            f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=batch_size, sync_dist=True
        )

    def log_stage(self, stage: Stage, loss: Tensor, batch_size: int) -> None:
        """Log `<stage>/loss` and the stage's metrics, computed per epoch (torchmetrics Metrics gather their own
        states under DDP). The training metrics, updated at every step, are logged once, by `on_train_epoch_end`:
        handing them to `self.log` at every step as well cost 0.1-0.4 ms per metric per step."""
        self.log_loss(stage, loss, batch_size)
        if stage != "train":
            self.log_dict(getattr(self, f"{stage}_metrics"), on_step=False, on_epoch=True, prog_bar=True)

    def on_train_epoch_end(self) -> None:
        metrics = getattr(self, "train_metrics", None)
        if metrics is not None and any(metric.update_called for metric in metrics.values()):
            self.log_dict(metrics.compute())
            metrics.reset()

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        return self.step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        return self.step(batch, "val")

    def test_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        return self.step(batch, "test")

    def compiled_modules(self) -> list[nn.Module]:
        """The modules `compile` compiles: the ones the training step calls (other paths, such as sampling or greedy
        decoding through other methods of the net, stay eager)."""
        return [self.net]

    def configure_model(self) -> None:
        if self.prepared:
            return
        self.prepared = True
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
            self.net.register_forward_pre_hook(to_channels_last)
        if self.compile_net:
            for module in self.compiled_modules():
                module.compile()  # in place: the state_dict keys stay the net's own (no `_orig_mod.` prefix)

    def on_fit_start(self) -> None:
        for logger in self.loggers:
            logger.log_hyperparams({"model/params": self.num_params})
        if self.trainer.world_size > 1:
            seed_per_rank(self.trainer.global_rank)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Lightning copies the task's and the DataModule's constructor arguments into every checkpoint: no secrets.
        tracking.redact_checkpoint(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Before Lightning's strict load: a checkpoint of another architecture is one paragraph listing its keys.
        if self.strict_loading:
            check_state_dict(self, checkpoint, source=self.trainer.ckpt_path or "the checkpoint")

    def configure_optimizers(self):
        hp = self.hparams
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:
                # Norm scales and biases are 1-d; decaying them hurts (https://arxiv.org/abs/1706.02677, sec. 2.2).
                (decay if p.ndim > 1 else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=hp.lr)
        if hp.schedule == "constant":
            return optimizer
        total = self.trainer.estimated_stepping_batches
        if total == float("inf"):
            raise ConfigError(
                "model.schedule 'cosine' needs a finite run: set trainer.max_epochs or trainer.max_steps, "
                "or use model.schedule constant."
            )
        steps = max(int(total), 1)
        # OneCycleLR divides by its warmup length in steps less one (pct_start * total_steps - 1): zero, and a
        # ZeroDivisionError, when the warmup is exactly one step (10 steps at warmup 0.1). One step is no warmup.
        warmup = 0.0 if hp.warmup * steps == 1 else hp.warmup
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=hp.lr, total_steps=steps, pct_start=warmup, anneal_strategy="cos"
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def check_data(self, datamodule: L.LightningDataModule) -> None:
        """Raise a ConfigError when this task cannot train on `datamodule`. The CLI calls it once, after building the
        data and before the run starts; checks on the data never run per step."""

    def predictions(self, outputs: list[dict[str, Tensor]]) -> Table | Images | Texts:
        """What `predict_step` returned (1-d tensors per key) as a table with a row per sample."""
        return Table({key: torch.cat([batch[key] for batch in outputs]).tolist() for key in outputs[0]})


def to_channels_last(module: nn.Module, args: tuple) -> tuple:
    """A forward pre-hook: image batches (B, C, H, W) in channels-last memory format, the layout of the weights."""
    return tuple(
        x.contiguous(memory_format=torch.channels_last) if isinstance(x, Tensor) and x.ndim == 4 else x for x in args
    )


def seed_per_rank(rank: int) -> None:
    """Reseed Python's, NumPy's and torch's global generators from (the run's seed, `rank`).

    Every process of a distributed run starts from the same `seed_everything` seed, so without this each rank would
    draw rank 0's augmentation (crops, flips, elastic fields), dropout masks, masked tokens and GAN noise for its own
    samples. The loaders' shuffling does not use these generators (it is seeded by PL_GLOBAL_SEED and the epoch), so
    the ranks' shards stay disjoint; the net's initial weights were drawn before and DDP broadcasts rank 0's."""
    seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
    state = np.random.SeedSequence([seed, rank]).generate_state(2)
    random.seed(int(state[0]))
    np.random.seed(int(state[1]))
    torch.manual_seed(int(state[0]) << 32 | int(state[1]))
