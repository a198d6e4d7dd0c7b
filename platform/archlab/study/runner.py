"""A study's runs as the trials of Optuna studies, one per part, run by the sweep's own workers and trial runner.

Each run is enqueued once as a trial with fixed parameters (its factors' levels and its seed) and its key in the user
attribute `run`. Workers pop waiting trials atomically, so `--workers N` never runs a run twice (GridSampler gives no
such guarantee to parallel workers), and the sweep machinery brings the rest: every trial is `archlab fit` through
`archlab.sweep.trial.run_trial`, a trial whose process died is failed and retried from its last checkpoint, and a
re-run enqueues only the runs that have no finished, running or waiting trial.
"""

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState

from archlab import cli
from archlab.errors import ConfigError
from archlab.study.spec import PLACEHOLDER, Part, Plan, Run
from archlab.sweep.storage import Storage, retry_history
from archlab.sweep.workers import Worker, spawn, supervise


@dataclass
class PartSettings:
    """What the sweep's Worker, run_trial and spawn read from a sweep's Settings, for one part of a study."""

    part: Part
    study_name: str
    study_dir: Path
    storage: Storage
    workers: int
    worker_index: int | None
    metric: str
    direction: str
    runs_root: str
    tracker: str = "csv"
    test_after_fit: bool = True
    cfg: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(timeout=None, heartbeat_interval=10))
    # Each run's full fit arguments come from its levels (trial_args), so there is no common base command.
    fit_args: list[str] = field(default_factory=list)
    # The run directory of each earlier part's one run, for options that name its files (spec.reference).
    sources: dict[str, Path] = field(default_factory=dict)

    @property
    def distributions(self) -> dict[str, CategoricalDistribution]:
        factors = {f: CategoricalDistribution(levels) for f, levels in self.part.factors.items()}
        return {**factors, "seed": CategoricalDistribution(sorted({run.seed for run in self.part.runs}))}

    @property
    def n_trials(self) -> int:
        return len(self.part.runs)

    def trial_args(self, params: dict[str, Any]) -> list[str]:
        args = self.run_of(params).args
        for part, run_dir in self.sources.items():
            args = [a.replace(PLACEHOLDER.format(part=part), str(run_dir)) for a in args]
        return args

    def run_of(self, params: dict[str, Any]) -> Run:
        for run in self.part.runs:
            if run.params == params:
                return run
        raise ConfigError(f"study {self.study_name}: no run has the parameters {params}")


def settings_for(plan: Plan, part: Part, options: SimpleNamespace) -> PartSettings:
    study_name = f"{plan.name}-{plan.budget}" + (f"-{part.name}" if len(plan.parts) > 1 else "")
    study_dir = Path(options.runs_root).absolute() / "studies" / plan.name / plan.budget / part.name
    metric, direction = part.metric, part.direction
    monitors = set()
    for args in {tuple(run.args[:-2]) for run in part.runs}:  # the seed (last) changes no task
        task = cli.import_class(cli.parse_fit(list(args)).model.class_path)
        monitors.add((task.monitor, "maximize" if task.mode == "max" else "minimize"))
    if metric is None:
        if len(monitors) > 1:
            raise ConfigError(
                f"study {plan.name}: the runs of part {part.name!r} monitor different metrics ({sorted(monitors)}); "
                "set metric: and direction: for the part, or split it into parts"
            )
        ((metric, direction),) = monitors
    if direction not in ("maximize", "minimize"):
        raise ConfigError(f"study {plan.name}: part {part.name!r} needs direction: maximize or minimize for {metric}")
    url = options.storage or f"journal:{study_dir / 'journal.log'}"
    storage = Storage(url, workers=options.workers, heartbeat_interval=10, grace_period=None, max_retry=3)
    return PartSettings(
        part=part, study_name=study_name, study_dir=study_dir, storage=storage,
        workers=options.workers, worker_index=options.worker_index, metric=metric, direction=direction,
        runs_root=str(options.runs_root),
    )  # fmt: skip


def open_study(settings: PartSettings) -> optuna.Study:
    settings.study_dir.mkdir(parents=True, exist_ok=True)
    sampler = optuna.samplers.RandomSampler(seed=0)  # never consulted: every trial's parameters are fixed
    return settings.storage.open(
        settings.study_name,
        sampler=sampler,
        pruner=optuna.pruners.NopPruner(),
        direction=settings.direction,
        metric=settings.metric,
    )


def run_part(settings: PartSettings, argv: list[str], say: Any) -> tuple[optuna.Study, int | None]:
    """Run what is missing of one part; (the study, None) or (the study, the exit code that stops the command)."""
    study = open_study(settings)
    worker = Worker(settings, study)
    with worker.signals():
        if settings.worker_index is None:
            settings.storage.fail_lost_trials(study)
            missing = enqueue_missing(study, settings)
            done = settings.n_trials - len(missing)
            say(f"part {settings.part.name}: {len(missing)} run(s) to go, {done} finished or under way; "
                f"runs in {settings.study_dir}")  # fmt: skip
            if settings.workers > 1 and missing:
                count = min(settings.workers, len(missing))
                code = supervise(spawn(settings, argv, count, command="study"), worker, settings)
                if code is not None:
                    return study, code
        if worker.signal is None:
            worker.work()
    if worker.signal is not None:
        say(f"study {settings.study_name}: interrupted; re-run the same command to resume.")
        return study, 128 + worker.signal
    return study, None


def enqueue_missing(study: optuna.Study, settings: PartSettings) -> list[Run]:
    """Queue each run that has no complete, running or waiting trial (a re-run skips finished runs)."""
    taken = {
        t.user_attrs.get("run")
        for t in study.get_trials(deepcopy=False)
        if t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
    }
    missing = [run for run in settings.part.runs if run.key not in taken]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        for run in missing:
            study.enqueue_trial(run.params, user_attrs={"run": run.key}, skip_if_exists=False)
    return missing


def finished_runs(study: optuna.Study) -> dict[str, tuple[list[Path], dict[str, float]]]:
    """run key -> (its run directories, oldest first: a retried run continued in a new one; its timing), for the
    completed runs. `wall_s` is the completed trial's duration (start-up, training, validation and the final test)."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    out = {}
    for t in trials.values():
        if t.state != TrialState.COMPLETE or "run" not in t.user_attrs:
            continue
        dirs = [run_dir(trials[n]) for n in retry_history(t) if n in trials] + [run_dir(t)]
        seconds = t.duration.total_seconds() if t.duration else float("nan")
        timing = {"wall_s": seconds, "s_per_epoch": seconds / max(int(t.user_attrs.get("epochs", 1)), 1)}
        if t.datetime_complete is not None:
            timing["completed"] = t.datetime_complete.timestamp()
        out[t.user_attrs["run"]] = ([d for d in dirs if d is not None], timing)
    return out


def failed_runs(study: optuna.Study) -> dict[str, str]:
    """run key -> why, for runs whose latest trial failed and was not retried."""
    latest: dict[str, FrozenTrial] = {}
    for t in study.get_trials(deepcopy=False):
        if "run" in t.user_attrs:
            latest[t.user_attrs["run"]] = t
    return {
        key: t.user_attrs.get("fail_reason", "its process was lost")
        for key, t in latest.items()
        if t.state == TrialState.FAIL
    }


def run_dir(trial: FrozenTrial) -> Path | None:
    path = trial.user_attrs.get("run_dir")
    return Path(path) if path else None
