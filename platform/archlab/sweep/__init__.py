"""`archlab sweep`: an Optuna study over an experiment config, every trial a real `archlab fit`.

    archlab sweep -c configs/sweeps/resnet_digits.yaml [--n_trials 30] [--workers 2] [--storage postgresql://u@h/db]
    archlab sweep -c configs/sweeps/resnet_digits.yaml -- --trainer.max_epochs 5     # fit arguments for every trial

A sweep file names the base experiment config(s), the search space (dotted config keys -> keyword arguments of
`trial.suggest_float/int/categorical`), the sampler, the pruner and the budget. `settings` reads and checks it
(`space` probes the space through the CLI before the first trial), `storage` opens the study, `workers` runs the
trial loop (and the processes of --workers), `trial` runs one trial, `report` sums the study up. Re-running the same
command resumes the study by name and runs only the trials still missing.

Exit codes: 0 the study holds a completed trial; 1 a programming error (with its traceback); 2 a bad sweep file or
argument (printed by `archlab.cli.main`); 3 the storage cannot be reached; 4 no trial of the study completed;
128 + N stopped by signal N (143 for SIGTERM, 130 for Ctrl-C).

Akiba et al. 2019, "Optuna: A Next-generation Hyperparameter Optimization Framework" (arXiv:1907.10902);
Li et al. 2018, "Hyperband" (JMLR 18(185)).
"""

import contextlib
import json
import shlex
import sys
from collections.abc import Iterator

import optuna
import sqlalchemy.exc
from optuna.trial import TrialState
from rich.console import Console

from archlab import tracking
from archlab.errors import ConfigError
from archlab.sweep.report import summarize
from archlab.sweep.settings import Settings, parse
from archlab.sweep.storage import StorageUnreachable, counted, first_line
from archlab.sweep.workers import Worker, spawn, split_passthrough, supervise

EXIT_STORAGE_UNREACHABLE = 3
EXIT_NO_TRIAL_COMPLETED = 4


def main(argv: list[str]) -> int:
    argv_before = sys.argv[:]
    # W&B records sys.argv with every run; a password typed into --storage must not travel with it.
    sys.argv[:] = [tracking.mask_url(arg) for arg in sys.argv]
    try:
        return sweep(argv)
    except StorageUnreachable as error:
        print(f"archlab sweep: error: {error}", file=sys.stderr)
        return EXIT_STORAGE_UNREACHABLE
    finally:
        sys.argv[:] = argv_before


def sweep(argv: list[str]) -> int:
    console = Console(soft_wrap=True)
    own, passthrough = split_passthrough(argv)
    settings = parse(own, passthrough)
    settings.study_dir.mkdir(parents=True, exist_ok=True)
    study = settings.storage.open(
        settings.study_name,
        sampler=settings.sampler,
        pruner=settings.pruner,
        direction=settings.direction,
        metric=settings.metric,
    )
    check_resumable(study, settings)
    worker = Worker(settings, study)
    with worker.signals(), storage_lost(settings):
        if settings.workers > 1:
            settings.storage.fail_lost_trials(study)
            trials = study.get_trials(deepcopy=False)
            remaining = settings.n_trials - counted(trials) + sum(t.state == TrialState.WAITING for t in trials)
            count = min(settings.workers, max(remaining, 0))
            console.print(
                f"study {settings.study_name}: {count} workers, logs in {settings.study_dir}/worker-*.log, "
                f"storage {settings.storage.masked_url}"
            )
            code = supervise(spawn(settings, argv, count), worker, settings)
            if code is not None:
                return code
        if worker.signal is None:
            # With --workers this runs only what the workers left behind (the retries of their lost trials).
            worker.work()
    if worker.signal is not None:
        command = tracking.mask_url(shlex.join(["archlab", "sweep", *argv]))
        resume = "" if settings.worker_index is not None else f" Continue with: {command}"  # a worker's: its parent's
        console.print(
            f"study {settings.study_name}: interrupted; the running trial is marked FAIL and queued again, to resume "
            f"from its last checkpoint.{resume}"
        )
        return 128 + worker.signal
    if settings.worker_index is not None:
        return 0
    if not summarize(study, settings, console):
        print(f"archlab sweep: no trial of study {settings.study_name} completed", file=sys.stderr)
        return EXIT_NO_TRIAL_COMPLETED
    return 0


def check_resumable(study: optuna.Study, settings: Settings) -> None:
    """A study resumed by name must have this sweep's metric, direction and space."""
    stored = study.user_attrs.get("sweep")
    if stored is None:
        study.set_user_attr("sweep", settings.spec)
    elif stored != json.loads(json.dumps(settings.spec)):
        raise ConfigError(
            f"study {settings.study_name!r} already exists in {settings.storage.masked_url} with a different metric "
            f"or space ({stored}); resume it with the same sweep, or choose a new --study_name"
        )


@contextlib.contextmanager
def storage_lost(settings: Settings) -> Iterator[None]:
    """A database that goes away in the middle of a sweep is StorageUnreachable too."""
    try:
        yield
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as error:
        raise StorageUnreachable(f"lost the storage {settings.storage.masked_url}: {first_line(error)}") from None
