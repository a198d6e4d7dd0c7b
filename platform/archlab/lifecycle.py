"""A run's life as the `archlab` command sees it: the directory it takes, the checkpoint it resumes from, the status it
records, and what the user is told (and the exit status) when it ends.

    take_run_dir     lock an explicit --run_dir, refuse one that holds another run, resolve `--ckpt_path last`
    record_*         RUN/status.json: running -> finished | failed | interrupted
    interrupted      where a stopped run stands and the exact command that continues it
    exit_status      the one paragraph and exit status of every error archlab reports (archlab.errors)

Where the files go is archlab.rundir's; how checkpoints are written and read back is archlab.checkpoints'.
"""

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from jsonargparse import Namespace

from archlab import tracking
from archlab.checkpoints import LastCheckpoint, latest_checkpoint
from archlab.errors import ArchlabError, ConfigError, CorruptFileError, RunInterrupted
from archlab.rundir import RunDir, RunLock, is_primary_process


class ConfigPrinted(Exception):
    """`--print_config` printed the linked config; the command ends there, successfully."""


def take_run_dir(cfg: Namespace, subcommand: str) -> tuple[RunLock | None, bool]:
    """Lock an explicit --run_dir before anything is built; refuse one that holds another run unless this command
    resumes it; remove what a kill left half-written; resolve `--ckpt_path last` in it. Returns the lock (None when
    there is no explicit directory yet, or in a secondary process) and whether this command resumes a run."""
    fit = subcommand == "fit"
    if fit and cfg.get("ckpt_path") == "last" and not cfg.run_dir:
        raise ConfigError(
            "--ckpt_path last continues the run in --run_dir, and no --run_dir was given; continue a run with "
            "`archlab fit --resume RUN` (or --run_dir RUN --ckpt_path last)."
        )
    if not cfg.run_dir:
        return None, False
    run = RunDir(cfg.run_dir)
    if fit and not cfg.get("ckpt_path") and int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0 and run.holds_a_run():
        # SLURM requeued this job (Lightning's auto-requeue, or scontrol requeue): the same command continues.
        cfg.ckpt_path = "last"
    resuming = fit and bool(cfg.get("ckpt_path"))
    lock = None
    if is_primary_process():
        lock = run.lock()
        try:
            if run.holds_a_run() and not resuming:
                status = run.read_status() or {}
                state = f" ({status['status']} at step {status.get('step', 0)})" if "status" in status else ""
                raise ConfigError(
                    f"{run.root} already holds a run{state}; a new run there would mix its checkpoints and tracker "
                    f"run with that one's. Continue that run with `archlab fit --resume {run.root}`, or give this "
                    "one a new --run_dir (or none)."
                )
            for path in run.remove_partial_writes():
                print(f"archlab: removed {path}, a write that a kill interrupted", file=sys.stderr)
            if fit and cfg.ckpt_path == "last":
                cfg.ckpt_path = resolve_last(run)
        except BaseException:
            lock.release()
            raise
    elif fit and cfg.ckpt_path == "last":
        cfg.ckpt_path = resolve_last(run)
    return lock, resuming


def resolve_last(run: RunDir) -> str | None:
    """The run's loadable checkpoint with the highest global step; None (train from step 0) when it has none."""
    path, step, skipped = latest_checkpoint(run)
    say = is_primary_process()
    for reason in skipped:
        if say:
            print(f"archlab: warning: skipping a checkpoint: {reason}", file=sys.stderr)
    if path is None and skipped:
        raise CorruptFileError(
            f"none of the {len(skipped)} checkpoint(s) of {run.root} can be read (listed above); move them "
            "away to start this run again from step 0, or start a new run."
        )
    status = run.read_status() or {}
    before = status.get("status")
    if before == "running":  # this process holds the lock, so the one that wrote "running" is gone
        before = f"killed while running (pid {status.get('pid')})"
    elif before == "interrupted":
        before = f"{status.get('message', 'interrupted').split(';')[0]}"
    if say:
        if path is None:
            print(f"archlab: {run.root} has no checkpoint yet: training starts there from step 0", file=sys.stderr)
        else:
            print(
                f"archlab: resuming {run.root} from {path} (step {step}); it was {before or 'not recorded'}",
                file=sys.stderr,
            )
    return str(path) if path else None


def record_start(run: RunDir, subcommand: str, ckpt_path: str | None) -> None:
    """`running`; a fit records the checkpoint it resumes from and the command that continues it, a test, validate or
    predict run the checkpoint it evaluates and the run that wrote it."""
    fit = subcommand == "fit"
    checkpoint = tracking.mask_url(str(ckpt_path)) if ckpt_path else None
    run.write_status(
        "running",
        command=subcommand,
        started=time.strftime("%Y-%m-%dT%H:%M:%S"),
        resumed_from=checkpoint if fit else None,
        continue_with=f"archlab fit --resume {run.root}" if fit else None,
        **({} if fit else {"checkpoint": checkpoint, **source_run(ckpt_path, subcommand)}),
        message=None,
        exit_code=None,
    )


def source_run(ckpt_path: str | None, stage: str) -> dict[str, str]:
    """For test, validate and predict of a run's checkpoint: that run's directory and W&B run id, which tie this
    tracker run to the run it evaluates (both are also in the same W&B group, the experiment)."""
    if stage == "fit" or not ckpt_path or "://" in str(ckpt_path):
        return {}
    source = RunDir(Path(ckpt_path).resolve().parent.parent)
    if not source.config.is_file():
        return {}
    wandb_id = source.wandb_id.read_text().strip() if source.wandb_id.is_file() else None
    return {"source_run": str(source.root), **({"source_wandb_id": wandb_id} if wandb_id else {})}


def record_stop(run: RunDir, error: BaseException) -> None:
    """A run that raised: interrupted (SIGTERM, Ctrl-C) or failed, with the message and the exit status."""
    stopped = isinstance(error, RunInterrupted | KeyboardInterrupt)
    message = str(error) if stopped else f"{type(error).__name__}: {error}"
    run.write_status(
        "interrupted" if stopped else "failed",
        message=tracking.mask_url(message)[:2000],
        exit_code=getattr(error, "exit_code", 130 if isinstance(error, KeyboardInterrupt) else 1),
    )


def record_finished(run: RunDir, **fields: Any) -> None:
    if fields or (run.read_status() or {}).get("status") != "finished":
        run.write_status("finished", exit_code=0, **fields)


def interrupted(run: RunDir, epoch: int, step: int, signum: int, stopper: LastCheckpoint | None) -> RunInterrupted:
    """Where a stopped run stands, which checkpoint it continues from, and the command that continues it."""
    name = "Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal.Signals(signum).name
    where = f"stopped by {name} at epoch {epoch}, step {step}"
    if stopper is not None and stopper.saved_step == step and run.last_checkpoint.is_file():
        saved = f"saved {run.last_checkpoint} (step {stopper.saved_step})"
    elif run.last_checkpoint.is_file():
        saved = f"it continues from its latest checkpoint, {run.last_checkpoint}"
    else:
        saved = "no checkpoint was written yet, so it starts again from step 0"
    return RunInterrupted(f"{where}; {saved}. Continue with: archlab fit --resume {run.root}", signum=signum)


def exit_status(error: BaseException, args: list[str]) -> int | None:
    """Print archlab's one paragraph for `error` and return the command's exit status; None for an error that is not
    archlab's to report (a bug: its traceback is the report). ARCHLAB_DEBUG=1 shows tracebacks of archlab's errors."""
    if isinstance(error, ConfigPrinted):
        return 0
    if isinstance(error, RunInterrupted):
        if is_primary_process():
            print(f"archlab: {error}", file=sys.stderr)
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):  # outside training (there, Ctrl-C is a RunInterrupted after a checkpoint)
        print("archlab: interrupted (Ctrl-C).", file=sys.stderr)
        return 128 + signal.SIGINT
    if isinstance(error, ArchlabError) and not os.environ.get("ARCHLAB_DEBUG"):
        print(f"archlab: error: {tracking.mask_values(str(error), args)}", file=sys.stderr)
        return error.exit_code
    return None
