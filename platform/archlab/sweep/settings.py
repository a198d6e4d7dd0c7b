"""The sweep file and its command line, checked before anything runs, and the sampler and pruner they name."""

import math
import os
from argparse import ArgumentError
from pathlib import Path
from typing import Any

import optuna
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from archlab import cli, tracking
from archlab.errors import ConfigError
from archlab.sweep import space
from archlab.sweep.storage import Storage, migrate_to_journal

SAMPLERS = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "grid": optuna.samplers.GridSampler,
}
PRUNERS = {
    "median": optuna.pruners.MedianPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "none": optuna.pruners.NopPruner,
}


class Settings:
    """A checked sweep: the trials' fit command, the space, the objective, sampler, pruner, budget and storage."""

    def __init__(self, cfg: Namespace, passthrough: list[str]) -> None:
        self.cfg = cfg
        sweep_file = Path(str(cfg.config[-1])) if cfg.get("config") else None
        self.base = [str(resolve_path(p, sweep_file)) for p in as_list(cfg.base)]
        if not self.base:
            raise ConfigError("base: name at least one experiment config, e.g. base: ../resnet_digits.yaml")
        # Every trial's `archlab fit` arguments, before its sampled values.
        self.fit_args = [
            *(arg for path in self.base for arg in ("-c", path)),
            *space.option_args(cfg.fixed or {}),
            *passthrough,
        ]
        if cfg.n_trials < 1:
            raise ConfigError(f"n_trials must be >= 1, got {cfg.n_trials}")
        if cfg.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {cfg.workers}")
        if not cfg.space:
            raise ConfigError("space is empty: give at least one key, e.g. model.lr: {type: float, low: 1.0e-4, ...}")
        self.distributions = {key: space.make_distribution(key, spec) for key, spec in cfg.space.items()}
        self.study_name = cfg.study_name or f"{Path(sweep_file or self.base[0]).stem}-sweep"
        self.runs_root = str(cfg.runs_root)
        self.study_dir = Path(cfg.runs_root).absolute() / self.study_name
        self.tracker = cfg.tracker
        self.test_after_fit = cfg.test_after_fit
        self.worker_index = cfg.worker_index
        self.workers = cfg.workers
        # A worker of --workers: the command that started it has probed the space.
        config = space.check(
            self.fit_args,
            self.distributions,
            keys=[*self.distributions, *(cfg.fixed or {})],
            base=self.base,
            probe=cfg.worker_index is None,
        )
        task = cli.import_class(config.model.class_path)
        self.metric = cfg.metric or task.monitor
        if cfg.direction is None and self.metric != task.monitor:
            raise ConfigError(
                f"metric {self.metric!r} is not {task.__name__}'s monitor ({task.monitor!r}, {task.mode}); "
                "set direction: maximize or minimize"
            )
        self.direction = cfg.direction or ("maximize" if task.mode == "max" else "minimize")
        if self.direction not in ("maximize", "minimize"):
            raise ConfigError(f"direction must be 'maximize' or 'minimize', got {self.direction!r}")
        self.n_trials = cfg.n_trials
        self.sampler = self.make_sampler()
        self.pruner = self.make_pruner(config.trainer.get("max_epochs"))
        self.storage = Storage(
            cfg.storage or self.default_storage(),
            workers=cfg.workers,
            heartbeat_interval=cfg.heartbeat_interval,
            grace_period=cfg.grace_period,
            max_retry=cfg.max_retry,
        )

    def trial_args(self, params: dict[str, Any]) -> list[str]:
        """A trial's `archlab fit` arguments: the base command's, then its sampled values (a study maps its own)."""
        return [*self.fit_args, *space.option_args(params)]

    @property
    def spec(self) -> dict[str, Any]:
        """What a resumed study must share with this sweep."""
        return {"metric": self.metric, "direction": self.direction, "space": dict(self.cfg.space)}

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        name, kwargs = self.cfg.sampler, dict(self.cfg.sampler_args or {})
        if name not in SAMPLERS:
            raise ConfigError(f"sampler {name!r} is unknown; accepted: {', '.join(SAMPLERS)}")
        # Workers started by --workers get distinct seeds, or they would all propose the same points; the command
        # that started them runs what they leave (retries of lost trials) with the next seed.
        if self.cfg.seed is not None:
            offset = self.worker_index if self.worker_index is not None else self.workers if self.workers > 1 else 0
            kwargs.setdefault("seed", self.cfg.seed + offset)
        if name == "grid":
            grid = {key: space.grid_values(key, d) for key, d in self.distributions.items()}
            self.n_trials = min(self.n_trials, math.prod(len(v) for v in grid.values()))
            kwargs["search_space"] = grid
        if name == "cmaes":
            try:
                import cmaes  # noqa: F401
            except ImportError:
                raise ConfigError("sampler 'cmaes' needs the cmaes package: pip install cmaes") from None
        return construct(f"sampler {name}", SAMPLERS[name], kwargs)

    def make_pruner(self, max_epochs: int | None) -> optuna.pruners.BasePruner:
        name, kwargs = self.cfg.pruner, dict(self.cfg.pruner_args or {})
        if name not in PRUNERS:
            raise ConfigError(f"pruner {name!r} is unknown; accepted: {', '.join(PRUNERS)}")
        if name == "hyperband" and isinstance(max_epochs, int) and max_epochs > 0:
            kwargs.setdefault("max_resource", max_epochs)
        return construct(f"pruner {name}", PRUNERS[name], kwargs)

    def default_storage(self) -> str:
        journal, sqlite = self.study_dir / "journal.log", self.study_dir / "study.db"
        if self.workers > 1 and sqlite.exists() and not journal.exists():
            # A study begun with one worker, continued with several: SQLite does not take several writers.
            migrate_to_journal(sqlite, journal, self.study_name)
        if journal.exists() or self.workers > 1:
            return f"journal:{journal}"
        return f"sqlite:///{sqlite}"


def parse(argv: list[str], passthrough: list[str]) -> Settings:
    try:
        cfg = make_parser().parse_args(argv)
    except ArgumentError as error:
        raise ConfigError(f"sweep: {tracking.mask_url(str(error))}") from None
    return Settings(cfg, passthrough)


def make_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="archlab sweep", description="An Optuna study over an experiment config.", exit_on_error=False
    )
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="The sweep file (YAML).")
    parser.add_argument(
        "--base", type=str | list[str], default=[], help="Experiment config(s), relative to the sweep file."
    )
    parser.add_argument("--fixed", type=dict[str, Any], default={}, help="Config keys set for every trial.")
    parser.add_argument(
        "--space", type=dict[str, dict[str, Any]], default={}, help="key -> {type: float|int|categorical, ...}."
    )
    parser.add_argument("--metric", type=str | None, default=None, help="Objective; default: the task's monitor.")
    parser.add_argument(
        "--direction", type=str | None, default=None, help="maximize|minimize; default: from the task's mode."
    )
    parser.add_argument("--sampler", type=str, default="tpe", help=f"One of: {', '.join(SAMPLERS)}.")
    parser.add_argument("--sampler_args", type=dict[str, Any], default={}, help="Keyword arguments of the sampler.")
    parser.add_argument("--pruner", type=str, default="median", help=f"One of: {', '.join(PRUNERS)}.")
    parser.add_argument("--pruner_args", type=dict[str, Any], default={}, help="Keyword arguments of the pruner.")
    parser.add_argument("--seed", type=int | None, default=None, help="Sampler seed (worker i uses seed + i).")
    parser.add_argument(
        "--n_trials",
        type=int,
        default=20,
        help="Trials in the study, counting those already there in any state; a retry of a lost trial takes its "
        "place and does not count.",
    )
    parser.add_argument("--timeout", type=float | None, default=None, help="Seconds after which no trial starts.")
    parser.add_argument("--study_name", type=str | None, default=None, help="Default: <sweep file name>-sweep.")
    parser.add_argument(
        "--storage",
        type=str | None,
        default=None,
        help="sqlite:///PATH, journal:PATH or postgresql://user@host:port/db (password from PGPASSWORD or "
        "~/.pgpass). Default: <runs_root>/<study>/study.db, or journal.log with --workers > 1.",
    )
    parser.add_argument("--workers", type=int, default=1, help="Worker processes on this machine.")
    parser.add_argument("--runs_root", type=str, default="runs", help="Trials run in <runs_root>/<study>/trial-N/.")
    parser.add_argument("--tracker", type=tracking.Tracker, default="wandb", help="Tracker of every trial.")
    parser.add_argument("--test_after_fit", type=bool, default=False, help="Test each trial's best checkpoint.")
    parser.add_argument("--heartbeat_interval", type=int, default=10, help="Seconds between RDB heartbeats.")
    parser.add_argument(
        "--grace_period", type=int | None, default=None, help="Seconds without heartbeat before a trial is stale."
    )
    parser.add_argument("--max_retry", type=int | None, default=3, help="Retries of a trial whose worker died.")
    parser.add_argument("--top", type=int, default=5, help="Rows in the table of best trials.")
    parser.add_argument("--worker_index", type=int | None, default=None, help="Set by --workers; not for users.")
    return parser


def as_list(value: str | list[str] | None) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def resolve_path(path: str, sweep_file: Path | None) -> Path:
    candidates = [Path(path)]
    if sweep_file is not None and not Path(path).is_absolute():
        candidates.insert(0, sweep_file.parent / path)
    for candidate in candidates:
        if candidate.is_file():
            return Path(os.path.normpath(candidate.absolute()))
    raise ConfigError(f"base: config {path!r} not found (looked in: {', '.join(str(c) for c in candidates)})")


def construct(what: str, cls: type, kwargs: dict[str, Any]) -> Any:
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{what}: {error} (arguments given: {kwargs})") from None
