"""Where a study lives (SQLite, a journal file, PostgreSQL), and what happens to a trial whose worker died.

RDB storages (SQLite, PostgreSQL) record a heartbeat per running trial; Optuna fails a trial whose heartbeat went
stale and calls `RetryHeartbeatStaleTrialCallback`, which queues a retry with the same parameters. Optuna 5.0's
JournalStorage has no heartbeat (it does not implement `BaseHeartbeat`), so on a journal file a running trial is
failed (`study.tell`) and retried through the same callback when the process that ran it, on this machine, is gone.
"""

import os
import random
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import optuna
import sqlalchemy.exc
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from archlab import tracking
from archlab.errors import ConfigError

# Workers started together on an empty database race to create Optuna's tables; the losers try again.
CREATE_ATTEMPTS = 5
# A database that is down, a host that does not answer, a file that cannot be opened.
UNREACHABLE = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, OSError)


class StorageUnreachable(Exception):
    """The study's storage cannot be reached: the server is down or refuses the login, or the file cannot be opened."""


class Storage:
    """One storage URL: the Optuna storage built from it, whether it records heartbeats, and lost-trial handling."""

    def __init__(
        self, url: str, *, workers: int, heartbeat_interval: int, grace_period: int | None, max_retry: int | None
    ) -> None:
        if url.startswith("sqlite") and workers > 1:
            raise ConfigError(
                f"storage {url}: SQLite is not safe for {workers} worker processes. Run this study with --workers 1, "
                "or copy it into a journal file first (optuna.copy_study(from_study_name=NAME, from_storage=URL, "
                "to_storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(PATH)))) and "
                "give --storage journal:PATH; without --storage, archlab moves its own study.db into journal.log itself"
            )
        self.url = url
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        # The retry inherits the dead trial's reported values: it resumes mid-run, and pruners compare per step.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            self.retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry, inherit_intermediate_values=True)
        self.storage: optuna.storages.BaseStorage | None = None

    @property
    def heartbeat(self) -> bool:
        rdb = isinstance(self.storage, optuna.storages.RDBStorage)
        return rdb and self.storage.get_heartbeat_interval() is not None

    @property
    def masked_url(self) -> str:
        return tracking.mask_url(self.url)

    def open(
        self,
        name: str,
        *,
        sampler: optuna.samplers.BaseSampler,
        pruner: optuna.pruners.BasePruner,
        direction: str,
        metric: str | None = None,
    ) -> optuna.Study:
        """Create the study, or load it to resume; StorageUnreachable when the storage does not answer."""
        for attempt in range(CREATE_ATTEMPTS):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ExperimentalWarning)
                    self.storage = self.make()
                    study = optuna.create_study(
                        study_name=name,
                        storage=self.storage,
                        sampler=sampler,
                        pruner=pruner,
                        direction=direction,
                        load_if_exists=True,
                    )
                    if metric and study.metric_names != [metric]:
                        # The objective's name in optuna-dashboard and the plots, instead of "Objective 0".
                        study.set_metric_names([metric])
                    return study
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
                if attempt == CREATE_ATTEMPTS - 1:
                    raise
                time.sleep(0.5 + random.random())
            except UNREACHABLE as error:
                raise StorageUnreachable(
                    f"cannot reach the storage {self.masked_url} of study {name!r}: {first_line(error)}"
                ) from None
            except (sqlalchemy.exc.ArgumentError, ImportError, ValueError) as error:
                # A URL SQLAlchemy cannot parse, a driver not installed, a study stored with another direction.
                raise ConfigError(f"cannot open study {name!r} in {self.masked_url}: {first_line(error)}") from None
        raise AssertionError("unreachable: the last attempt returns or raises")

    def make(self) -> optuna.storages.BaseStorage:
        if self.url.startswith("journal:"):
            path = Path(self.url.removeprefix("journal:").removeprefix("//"))
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
        return optuna.storages.RDBStorage(
            sqlalchemy_url(self.url),
            heartbeat_interval=self.heartbeat_interval,
            grace_period=self.grace_period,
            heartbeat_stale_trial_callback=self.retry,
        )

    def fail_lost_trials(self, study: optuna.Study) -> None:
        """Fail, and queue a retry of, each running trial whose worker is gone."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            if self.heartbeat:
                optuna.storages.fail_stale_trials(study)
                return
            for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if not lost_locally(trial):
                    continue
                try:
                    study.tell(trial.number, state=TrialState.FAIL)
                except (UpdateFinishedTrialError, ValueError):
                    continue  # another worker failed it first, and queued its retry
                except RuntimeError:
                    # The FAIL is stored; then GridSampler.after_trial, seeing its grid done, calls study.stop(),
                    # which raises outside study.optimize. The loop stops at the cap on its own.
                    pass
                # A copy: the callback extends the failed trial's retry history in place.
                (failed,) = [t for t in study.get_trials(deepcopy=True) if t.number == trial.number]
                self.retry(study, failed)


def migrate_to_journal(sqlite: Path, journal: Path, study_name: str) -> None:
    """Move a study from its SQLite file into a journal file (Optuna's `copy_study`: every trial in its state, with
    its number, attributes and reported values); the SQLite file is kept beside it as `<name>.migrated`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        target = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created": the study is not new
        try:
            optuna.copy_study(from_study_name=study_name, from_storage=f"sqlite:///{sqlite}", to_storage=target)
        except BaseException:
            journal.unlink(missing_ok=True)
            raise
        finally:
            optuna.logging.set_verbosity(verbosity)
    sqlite.rename(sqlite.with_name(f"{sqlite.name}.migrated"))
    print(
        f"archlab sweep: moved study {study_name!r} from {sqlite} into {journal}, which several worker processes can "
        f"share (SQLite cannot); the SQLite file is kept as {sqlite.name}.migrated",
        file=sys.stderr,
    )


def worker_record(trial: optuna.Trial) -> dict[str, Any]:
    """Who runs this trial; stored as the user attribute `worker`. A retry inherits its predecessor's user attributes,
    so the record names its trial: a record with another trial's number is not (yet) this trial's."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "trial": trial.number}


def lost_locally(trial: FrozenTrial) -> bool:
    """The trial's worker ran on this machine and its process is gone."""
    worker = trial.user_attrs.get("worker")
    if not isinstance(worker, dict) or worker.get("trial") != trial.number:
        return False
    if worker.get("host") != socket.gethostname() or worker.get("pid") == os.getpid():
        return False
    return not pid_alive(worker["pid"])


def alive_locally(trial: FrozenTrial) -> bool:
    worker = trial.user_attrs.get("worker")
    return isinstance(worker, dict) and worker.get("host") == socket.gethostname() and pid_alive(worker["pid"])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def retried_number(trial: FrozenTrial) -> int | None:
    """The number of the lost trial that this one retries (the first of the series), or None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


def retry_history(trial: FrozenTrial) -> list[int]:
    """The lost trials this one retries, oldest first; empty for a trial that is not a retry."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback.retry_history(trial)


def counted(trials: list[FrozenTrial]) -> int:
    """The trials that count towards n_trials: every trial in any state, except retries, which take the place of the
    trial they retry."""
    return sum(retried_number(t) is None for t in trials)


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return tracking.mask_url(f"{type(error).__name__}: {lines[0] if lines else ''}")


def sqlalchemy_url(url: str) -> str:
    """postgresql://... names psycopg 3 in SQLAlchemy >= 2.1; archlab depends on psycopg2, so name it unless psycopg
    is installed."""
    scheme, sep, rest = url.partition("://")
    if scheme in ("postgresql", "postgres") and sep:
        try:
            import psycopg  # noqa: F401

            return f"postgresql+psycopg://{rest}"
        except ImportError:
            return f"postgresql+psycopg2://{rest}"
    return url


def strip_password(url: str) -> tuple[str, str | None]:
    """(the URL without its password, the password or None)."""
    parts = urlsplit(url) if "://" in url else None
    if parts is None or parts.password is None:
        return url, None
    user, host = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=f"{user.split(':', 1)[0]}@{host}")), parts.password
