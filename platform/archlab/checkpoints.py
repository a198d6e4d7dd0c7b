"""Checkpoints that survive kills, and runs that resume exactly.

- `AtomicCheckpointIO`: Lightning's TorchCheckpointIO, writing through `rundir.write_atomic` (a temporary file in the
  checkpoint's own directory, fsynced, renamed over the target), refusing weights that are not finite, and loading
  with `weights_only=True` only.
- `ExactResume`: the random-number generators (Python, NumPy, torch, CUDA; every rank's) and the training loader's
  position in every checkpoint, restored right before training resumes; validation draws from a copy of the
  generators, so it never moves the training's stream.
- `LastCheckpoint`: RUN/checkpoints/last.ckpt, the latest completed step: at every training epoch's end (after its
  validation), every N optimizer steps and/or M minutes inside epochs, and at SIGTERM or Ctrl-C (at the next batch
  boundary, after which the run stops on every rank).
- `latest_checkpoint`: what `--ckpt_path last` means: the run's loadable checkpoint with the highest global step.

The training loader's position in its epoch is its state (`archlab.data.base.ResumableLoader`, Lightning's
stateful-dataloader protocol), so a resumed epoch serves exactly the batches the killed one had not. Lightning saves
that state, but does not restore it when `configure_optimizers` reads `trainer.estimated_stepping_batches` (as the
one-cycle schedule does): https://github.com/Lightning-AI/pytorch-lightning/issues/20550. ExactResume restores it.
"""

import math
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from archlab.errors import ConfigError, CorruptFileError, DatasetNotFoundError, DivergedError
from archlab.loading import load_checkpoint
from archlab.rundir import RunDir, is_primary_process, write_atomic


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temporary file beside the target, fsync, rename; a kill mid-write leaves the old file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        bad = [
            key
            for key, value in checkpoint.get("state_dict", {}).items()
            if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all()
        ]
        if bad:
            # A diverged run's weights never become a checkpoint, let alone the best or the last one.
            raise DivergedError(
                f"not writing {path}: {len(bad)} weight tensor(s) hold NaN or Inf at epoch {checkpoint.get('epoch')}, "
                f"step {checkpoint.get('global_step')} ({', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}): "
                "the run diverged. Lower model.lr or clip gradients (trainer.gradient_clip_val)."
            )
        write_atomic(path, lambda f: torch.save(checkpoint, f))

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None) -> dict:
        # Always weights_only, whatever the caller asks: a checkpoint never runs code when it is read.
        return load_checkpoint(path)


def latest_checkpoint(run: RunDir) -> tuple[Path | None, int | None, list[str]]:
    """The run's loadable checkpoint with the highest global step (last.ckpt wins a tie), that step, and one line per
    file that was skipped because it could not be read. Candidates: checkpoints/*.ckpt and SLURM's hpc_ckpt_*.ckpt."""
    best: tuple[tuple[int, bool], Path] | None = None
    skipped = []
    for path in [*sorted(run.checkpoints.glob("*.ckpt")), *sorted(run.root.glob("hpc_ckpt_*.ckpt"))]:
        try:
            step = load_checkpoint(path).get("global_step")
        except (CorruptFileError, DatasetNotFoundError) as error:
            skipped.append(str(error))
            continue
        if not isinstance(step, int):
            skipped.append(f"{path} holds no global_step: not a Lightning training checkpoint.")
            continue
        key = (step, path.name == "last.ckpt")
        if best is None or key > best[0]:
            best = (key, path)
    if best is None:
        return None, None, skipped
    return best[1], best[0][0], skipped


def rng_states() -> dict[str, Any]:
    """This process's random-number generators, as tensors and plain values that load with weights_only=True."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    # Not is_available(): under Lightning (which sets PYTORCH_NVML_BASED_CUDA_CHECK) it opens NVML on every call.
    if torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, key, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


class ExactResume(L.Callback):
    """RNG states of every rank + the training loader's position -> each checkpoint -> restored at train start."""

    def __init__(self) -> None:
        self.trainer: L.Trainer | None = None
        self.resumed: dict[str, Any] | None = None
        self.before_validation: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        # Called on every rank for every checkpoint (trainer.save_checkpoint runs on all ranks), so it may gather.
        states = rng_states()
        # The intra-op thread count too: archlab.threads picks it by the machine's load, and a different count can
        # change the order of floating-point sums, so a resume runs with the count of the run it continues.
        state: dict[str, Any] = {"rng": [states], "threads": torch.get_num_threads()}
        if self.trainer is None:
            return state
        if self.trainer.world_size > 1:
            state["rng"] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(state["rng"], states)
        loader = self.trainer.train_dataloader
        if loader is not None and hasattr(loader, "state_dict"):
            state["loader"] = loader.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.resumed = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Here, not when the checkpoint loads: after the sanity check and the loaders' setup, right before the first
        # batch is drawn, which is where the checkpointed run stood.
        resumed, self.resumed = self.resumed, None
        if resumed is None:
            if trainer.ckpt_path and trainer.is_global_zero:
                print(
                    f"archlab: warning: {trainer.ckpt_path} holds no random-number states or loader position (it was "
                    "not written by archlab); training continues, but not exactly as the uninterrupted run would have.",
                    file=sys.stderr,
                    flush=True,
                )
            return
        loader = trainer.train_dataloader
        if "loader" in resumed and hasattr(loader, "load_state_dict"):
            loader.load_state_dict(resumed["loader"])
        threads = resumed.get("threads")
        if threads and threads != torch.get_num_threads():
            if trainer.is_global_zero:
                print(f"archlab: {threads} intra-op thread(s), as the run being resumed", file=sys.stderr, flush=True)
            torch.set_num_threads(threads)
        ranks = resumed["rng"]
        if len(ranks) != trainer.world_size:
            if trainer.is_global_zero:
                print(
                    f"archlab: warning: {trainer.ckpt_path} was written by {len(ranks)} process(es), this run has "
                    f"{trainer.world_size}; random-number states are not restored, so the resumed run is not exact.",
                    file=sys.stderr,
                    flush=True,
                )
            return
        set_rng_states(ranks[trainer.global_rank])

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Taken before the validation loop builds its loader's iterator, which draws a seed from the global stream.
        if validation_follows(trainer, batch_idx):
            self.before_validation = rng_states()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.before_validation = None  # no validation came after the previous batch

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and self.before_validation is None:
            self.before_validation = rng_states()  # a validation by time (val_check_interval as a duration)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs before ModelCheckpoint's own on_validation_end (Lightning calls checkpoint callbacks last), so best.ckpt
        # records the states that training goes on with.
        if self.before_validation is not None:
            set_rng_states(self.before_validation)
            self.before_validation = None


class LastCheckpoint(Checkpoint):
    """checkpoints/last.ckpt <- the latest completed step: epoch ends, every N steps / M minutes, SIGTERM, Ctrl-C.

    SIGTERM and SIGINT only raise a flag while training runs; at the next batch's end (or the epoch's end, when
    they arrive during validation) every rank agrees on it and the checkpoint is written; once that step's logs are
    out, Lightning's SIGTERMException stops the run on all ranks at once (before the next batch or validation).
    Lightning's own SIGTERM handler broadcasts from inside the signal handler, which under DDP can pair with another
    collective and break the process group; it is set aside while training runs. The handler it replaced, when an
    enclosing program set one (a sweep worker's), runs once the checkpoint is written (`hand_over`).
    """

    def __init__(self, run: RunDir, *, every_n_steps: int | None = None, every_minutes: float | None = 30.0) -> None:
        check_frequency(every_n_steps, every_minutes)
        self.run = run
        self.every_n_steps = every_n_steps
        self.every_minutes = every_minutes
        self.saved_step: int | None = None  # global step of the latest save
        self.saved_at = time.monotonic()
        self.stop_signal: int | None = None  # SIGTERM or SIGINT, once one has asked the run to stop
        self.stopping = False  # every rank agreed to stop and the checkpoint is written
        self.outer_handlers: dict[int, Any] = {}  # before Lightning's: an enclosing program's (a sweep worker's)
        self.outer_pending: Any = None  # that handler, once a signal came, until the run stops (`hand_over`)
        self.replaced: dict[int, Any] = {}

    @property
    def path(self) -> Path:
        return self.run.last_checkpoint

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.outer_handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.saved_step = trainer.global_step
        self.saved_at = time.monotonic()
        if threading.current_thread() is threading.main_thread():
            self.replaced = {s: signal.signal(s, self.on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    def on_signal(self, signum: int, frame: Any) -> None:
        outer = self.outer_handlers.get(signum)
        if callable(outer) and outer is not signal.default_int_handler:
            self.outer_pending = self.outer_pending or outer
        if signum == signal.SIGINT and self.stop_signal == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        first = self.stop_signal is None
        self.stop_signal = self.stop_signal or signum
        if first and is_primary_process():
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            again = " (Ctrl-C again stops at once, without it)" if signum == signal.SIGINT else ""
            message = f"archlab: {name}: saving a checkpoint at the next batch boundary, then stopping{again}."
            print(f"\n{message}", file=sys.stderr, flush=True)

    def restore_signals(self) -> None:
        for signum, handler in self.replaced.items():
            signal.signal(signum, handler)
        self.replaced = {}

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.restore_signals()

    def stop_requested(
        self, trainer: L.Trainer, pl_module: L.LightningModule, by_time: bool = False
    ) -> tuple[bool, bool]:
        """(stop, save by time), the same on every rank: any rank's signal, rank 0's clock."""
        stop = self.stop_signal is not None or trainer.received_sigterm
        if trainer.world_size > 1:
            flags = torch.tensor([float(stop), float(by_time and trainer.is_global_zero)], device=pl_module.device)
            stop, by_time = (bool(flag > 0) for flag in trainer.strategy.reduce(flags, reduce_op="sum"))
        if stop:
            self.stop_signal = self.stop_signal or signal.SIGTERM
        return stop, by_time

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        by_time = self.every_minutes is not None and time.monotonic() - self.saved_at >= 60 * self.every_minutes
        stop, by_time = self.stop_requested(trainer, pl_module, by_time)
        by_steps = self.every_n_steps is not None and trainer.global_step - self.saved_step >= self.every_n_steps
        if stop:
            if not trainer.fast_dev_run and self.saved_step != trainer.global_step:
                self.save(trainer)
            self.stopping = True
            self.hand_over()
        # A checkpoint taken right before a validation would resume past it: this one waits until it is over.
        elif (by_time or by_steps) and not trainer.fast_dev_run and not validation_follows(trainer, batch_idx):
            self.save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.fast_dev_run:
            self.save(trainer)
        self.stopping = self.stopping or self.stop_requested(trainer, pl_module)[0]
        if self.stopping:
            self.hand_over()

    def hand_over(self) -> None:
        """Run the enclosing program's handler of the signal (a sweep worker's, which fails the trial by raising) now
        that the checkpoint is written, at a batch or epoch boundary. Called from inside the signal handler, it raised
        wherever the signal landed, once in the middle of the pruning callback's write to the study's database."""
        outer, self.outer_pending = self.outer_pending, None
        if outer is not None:
            outer(self.stop_signal, None)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.stopping:
            raise SIGTERMException

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stopping and not trainer.sanity_checking:
            raise SIGTERMException

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.restore_signals()
        if self.stopping:
            raise SIGTERMException

    def save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)
        self.saved_step = trainer.global_step
        self.saved_at = time.monotonic()
        if trainer.is_global_zero:
            self.run.write_status(
                "running", epoch=trainer.current_epoch, step=trainer.global_step, checkpoint=str(self.path)
            )


def check_frequency(every_n_steps: int | None, every_minutes: float | None) -> None:
    if every_n_steps is not None and every_n_steps < 1:
        raise ConfigError(
            "--checkpoint_every_n_steps must be a positive number of optimizer steps, or null (off); "
            f"got {every_n_steps}"
        )
    if every_minutes is not None and not (every_minutes > 0 and math.isfinite(every_minutes)):
        raise ConfigError(f"--checkpoint_every_minutes must be a positive number, or null (off); got {every_minutes}")


def validation_follows(trainer: L.Trainer, batch_idx: int) -> bool:
    """Whether this training batch is followed by validation or by the epoch's end (Lightning's own schedule: the
    epoch's last batch, every `val_check_interval` batches, every `check_val_every_n_epoch` epochs)."""
    if batch_idx + 1 >= trainer.num_training_batches or trainer.should_stop:
        return True
    every = trainer.val_check_batch
    if not trainer.enable_validation or every is None or math.isinf(every):
        return False
    epochs = trainer.check_val_every_n_epoch
    if epochs is not None and (trainer.current_epoch + 1) % epochs:
        return False
    index = batch_idx if epochs is not None else trainer.fit_loop.total_batch_idx
    return (index + 1) % every == 0


def expand_resume(args: list[str]) -> list[str]:
    """`fit --resume RUN [options]` -> `fit -c RUN/config.yaml --run_dir RUN --ckpt_path last [options]`."""
    at = next((i for i, arg in enumerate(args) if arg == "--resume" or arg.startswith("--resume=")), None)
    if at is None:
        return args
    if args[at].startswith("--resume="):
        value, rest = args[at].split("=", 1)[1], [*args[:at], *args[at + 1 :]]
    elif at + 1 < len(args):
        value, rest = args[at + 1], [*args[:at], *args[at + 2 :]]
    else:
        raise ConfigError("--resume needs the run directory to continue: archlab fit --resume runs/<experiment>/<time>")
    if args[:1] != ["fit"]:
        raise ConfigError(f"--resume continues a training run: archlab fit --resume {value}")
    if any(arg == "--run_dir" or arg.startswith("--run_dir=") for arg in rest):
        raise ConfigError(f"--resume {value} sets --run_dir {value}; give one of them.")
    run = RunDir(value)
    if not run.config.is_file():
        raise DatasetNotFoundError(
            f"--resume {value}: {run.config} does not exist; --resume takes a directory that `archlab fit` wrote "
            "(runs/<experiment>/<time>), whose config.yaml it reads."
        )
    return ["fit", "-c", str(run.config), "--run_dir", str(run.root), "--ckpt_path", "last", *rest[1:]]
