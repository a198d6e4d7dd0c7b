"""One trial: `archlab fit` of the sampled point, in this process, with nothing global carried over to the next trial.

Its value is the run's best monitored value (`best_score` of the run); for another metric, the best value the
recorder saw at validation. Only expected failures end a trial as FAIL and let the sweep go on: a diverged or
metric-less run (TrialFailed), a data or config error (ArchlabError), an interrupt. Any other exception is recorded
with the FAIL trial and then stops the sweep.
"""

import contextlib
import math
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
import optuna
from lightning.pytorch.loggers import WandbLogger
from optuna.trial import FrozenTrial

from archlab import cli, tracking
from archlab.errors import ArchlabError
from archlab.rundir import RunDir
from archlab.sweep.space import suggest
from archlab.sweep.storage import retried_number, retry_history, worker_record

if TYPE_CHECKING:
    from archlab.sweep.settings import Settings


class TrialFailed(Exception):
    """The trial ran but produced no usable value: the monitored metric missing or not finite."""


class Interrupted(Exception):
    """SIGTERM or SIGINT arrived while a trial ran; raised inside the trial so that Optuna records it as FAIL."""


# The failures that end a trial as FAIL and let the sweep go on (optuna.TrialPruned ends it as PRUNED).
EXPECTED = (TrialFailed, ArchlabError, Interrupted)


class TrialRecorder(L.Callback):
    """Reports the monitored metric to the trial every validation and prunes; records the trial in the tracker."""

    def __init__(
        self, trial: optuna.Trial, *, study: str, metric: str, maximize: bool, params: dict, retry_of: int | None
    ) -> None:
        self.trial = trial
        self.study = study
        self.metric = metric
        self.maximize = maximize
        self.params = params
        self.retry_of = retry_of
        self.best: float | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        record = {"study": self.study, "trial": self.trial.number, "params": self.params}
        if self.retry_of is not None:
            record["retry_of"] = self.retry_of
        for logger in trainer.loggers:
            logger.log_hyperparams({"optuna": record})
            if isinstance(logger, WandbLogger) and trainer.is_global_zero:
                # The trial names its W&B run: an id, and a URL online or the directory to `wandb sync` offline.
                run = logger.experiment
                where = {"dir": str(run.settings.sync_dir)} if tracking.is_offline(run) else {"url": run.url}
                self.trial.set_user_attr("wandb", {"id": run.id, "project": run.project, **where})

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        mark_wandb(trainer, "complete")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        mark_wandb(trainer, "pruned" if isinstance(exception, optuna.TrialPruned) else "failed")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After a checkpoint restore, the loops' progress (and so global_step) is already the checkpoint's.
        self.trial.set_user_attr("restored_global_step", int(trainer.global_step))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.metric)
        if value is None:
            raise TrialFailed(
                f"metric {self.metric!r} was not logged at validation; logged: {sorted(trainer.callback_metrics)}"
            )
        value = float(value)
        if not math.isfinite(value):
            raise TrialFailed(f"{self.metric} is {value} at epoch {pl_module.current_epoch}: the run diverged")
        if self.best is None or (value > self.best if self.maximize else value < self.best):
            self.best = value
        epoch = pl_module.current_epoch
        self.trial.set_user_attr("epochs", epoch + 1)
        # The pruning callback, here rather than optuna_integration's PyTorchLightningPruningCallback: the value is
        # reported every validation whatever the pruner (history plots, retries inherit it) and only once per step.
        self.trial.report(value, step=epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} with {self.metric} = {value:.4g}")


def run_trial(trial: optuna.Trial, settings: "Settings") -> float:
    """The objective: run the trial's fit and return its value, or raise (pruned, expected failure, or a bug)."""
    trials = {t.number: t for t in trial.study.get_trials(deepcopy=False)}
    this = trials[trial.number]
    retry_of = retried_number(this)
    params = {key: suggest(trial, key, d) for key, d in settings.distributions.items()}
    run_dir = settings.study_dir / f"trial-{trial.number:04d}"
    resume = resume_checkpoint(this, trials)
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("worker", worker_record(trial))
    if resume:
        trial.set_user_attr("resumed_from", str(resume))
    args = [
        "fit",
        *settings.trial_args(params),
        *("--run_dir", str(run_dir), "--experiment", settings.study_name, "--runs_root", settings.runs_root),
        *("--tracker", settings.tracker, "--test_after_fit", str(settings.test_after_fit).lower()),
        *(("--ckpt_path", str(resume)) if resume else ()),
    ]
    maximize = settings.direction == "maximize"
    recorder = TrialRecorder(
        trial, study=settings.study_name, metric=settings.metric, maximize=maximize, params=params, retry_of=retry_of
    )
    failed = True
    try:
        with isolated():
            # LightningCLI warns when given args while sys.argv holds others: here sys.argv is `archlab sweep`.
            warnings.filterwarnings("ignore", message=r".*LightningCLI's args parameter is intended.*")
            result = cli.run(args, callbacks=[recorder])
        failed = False
    except optuna.TrialPruned:
        failed = False
        raise
    except Exception as error:
        trial.set_user_attr("fail_reason", tracking.mask_url(f"{type(error).__name__}: {error}")[:1000])
        raise
    finally:
        finish_wandb(failed)
    value = result.best_score if result.monitor == settings.metric else None
    if value is None:
        value = recorder.best  # another metric than the task's monitor, or the user's checkpointing turned off
    # A retry resumed mid-run: the checkpoint callback saw only the epochs after the resume, while the values the
    # lost trial reported before were inherited by this one.
    inherited = list(this.intermediate_values.values()) if retry_of is not None else []
    if value is not None and inherited:
        value = (max if maximize else min)([value, *inherited])
    if value is None or not math.isfinite(value):
        reason = f"no finite value of {settings.metric} (got {value})"
        trial.set_user_attr("fail_reason", reason)
        raise TrialFailed(reason)
    return float(value)


def resume_checkpoint(trial: FrozenTrial, trials: dict[int, FrozenTrial]) -> Path | None:
    """The newest last.ckpt among the lost trials this one retries, or None."""
    for number in reversed(retry_history(trial)):
        run_dir = trials[number].user_attrs.get("run_dir")
        if run_dir and (path := RunDir(run_dir).checkpoints / "last.ckpt").is_file():
            return path
    return None


@contextlib.contextmanager
def isolated() -> Iterator[None]:
    """Environment variables and warnings filters as they were before: a trial leaves nothing for the next one."""
    environ = dict(os.environ)
    try:
        with warnings.catch_warnings():
            yield
    finally:
        for key in set(os.environ) - set(environ):
            del os.environ[key]
        for key, value in environ.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


def mark_wandb(trainer: L.Trainer, state: str) -> None:
    """Say in the trial's W&B run how the trial ended: `optuna/state` in its summary, and a tag unless it completed."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            run = logger.experiment
            run.summary["optuna/state"] = state
            if state != "complete":
                run.tags = (*run.tags, state)


def finish_wandb(failed: bool) -> None:
    """Close the trial's W&B run even when the fit raised, so the next trial never logs into it."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1 if failed else 0)
