"""`archlab sweep`: an Optuna study over an experiment config, every trial a real `archlab fit`.

    archlab sweep -c configs/sweeps/resnet_digits.yaml [--n_trials 30] [--workers 2] [--storage postgresql://u@h/db]
    archlab sweep -c configs/sweeps/resnet_digits.yaml -- --trainer.max_epochs 5     # fit arguments for every trial

A sweep file names the base experiment config(s), the search space (dotted config keys -> keyword arguments of
`trial.suggest_float/int/categorical`), the sampler, the pruner and the budget. Each trial runs `archlab.cli.run`
with its own run directory (<runs_root>/<study>/trial-NNNN/), the study name as experiment (so W&B groups the trials)
and a pruning callback; its value is the best monitored validation value. Re-running the same command resumes the
study by name and runs only the trials still missing.

Crash safety: RDB storages (SQLite, PostgreSQL) record heartbeats; a trial whose worker was killed goes stale, is
marked FAIL and re-queued with the same parameters, and the retry resumes from the dead trial's last checkpoint.
A journal file (the default of --workers) has no heartbeats: there a trial whose worker process died on this machine
is failed and re-queued the same way. SIGTERM or Ctrl-C marks the running trial FAIL at once. A trial that raises is
FAIL with its reason in the user attribute `fail_reason`, and the sweep goes on.

Akiba et al. 2019, "Optuna: A Next-generation Hyperparameter Optimization Framework" (arXiv:1907.10902);
Li et al. 2018, "Hyperband" (JMLR 18(185)).
"""

import contextlib
import copy
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
import warnings
from argparse import ArgumentError
from difflib import get_close_matches
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import lightning as L
import optuna
import sqlalchemy.exc
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.table import Table

from archlab import cli, tracking
from archlab.errors import ArchlabError, ConfigError

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
DISTRIBUTIONS = {"float": FloatDistribution, "int": IntDistribution, "categorical": CategoricalDistribution}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
STATE_WORDS = {s: s.name.lower() for s in TrialState} | {TrialState.FAIL: "failed"}
# Base configs probed before the first trial: one parse per candidate value, up to this many.
MAX_PROBES = 6
STORAGE_ATTEMPTS = 5


class Interrupted(Exception):
    """SIGTERM or SIGINT arrived while a trial ran; raised inside the trial so that Optuna records it as FAIL."""


class TrialFailed(Exception):
    """The trial ran but produced no usable value (the monitored metric missing or not finite)."""


class Surplus(Exception):
    """Another worker took the study's last trial slot between this worker's check and its `ask`."""


class _Parsed(Exception):
    def __init__(self, config: Namespace) -> None:
        self.config = config


class _ProbeCLI(cli.ArchlabCLI):
    """Parses a fit command exactly as `archlab fit` does, links shapes and builds the net, and stops there."""

    def init_parser(self, **kwargs: Any):
        return super().init_parser(exit_on_error=False, **kwargs)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        cli.link_data_shapes(config)
        cli.check_net(config)
        raise _Parsed(config)


def parse_fit(args: list[str]) -> Namespace:
    """The resolved `fit` config for these arguments, or a ConfigError naming what the parser rejected."""
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            _ProbeCLI(["fit", *args])
    except _Parsed as parsed:
        return parsed.config
    except ArgumentError as error:
        raise ConfigError(f"the trial command `archlab fit {' '.join(args)}` is invalid: {error}") from None
    raise ConfigError(f"`archlab fit {' '.join(args)}` did not parse")  # unreachable: the probe always raises


class TrialRecorder(L.Callback):
    """Reports the monitored metric to the trial every validation and prunes; records the trial in the tracker."""

    def __init__(self, trial: optuna.Trial, *, study: str, metric: str, maximize: bool, params: dict) -> None:
        self.trial = trial
        self.study = study
        self.metric = metric
        self.maximize = maximize
        self.params = params
        self.best: float | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        record = {"study": self.study, "trial": self.trial.number, "params": self.params}
        retried = retried_number(self.trial)
        if retried is not None:
            record["retry_of"] = retried
        for logger in trainer.loggers:
            logger.log_hyperparams({"optuna": record})

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


class Sweep:
    """One worker's view of the study: the validated settings, the storage, the objective and the trial loop."""

    def __init__(self, cfg: Namespace, fit_args: list[str]) -> None:
        self.cfg = cfg
        self.sweep_file = Path(str(cfg.config[-1])) if cfg.get("config") else None
        self.base = [str(resolve_path(p, self.sweep_file)) for p in as_list(cfg.base)]
        if not self.base:
            raise ConfigError("base: name at least one experiment config, e.g. base: ../resnet_digits.yaml")
        self.fixed_args = [*option_args(cfg.fixed or {}), *fit_args]
        if cfg.n_trials < 1:
            raise ConfigError(f"n_trials must be >= 1, got {cfg.n_trials}")
        if cfg.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {cfg.workers}")
        if not cfg.space:
            raise ConfigError("space is empty: give at least one key, e.g. model.lr: {type: float, low: 1.0e-4, ...}")
        self.distributions = {key: make_distribution(key, spec) for key, spec in cfg.space.items()}
        self.study_name = cfg.study_name or f"{Path(self.sweep_file or self.base[0]).stem}-sweep"
        self.study_dir = Path(cfg.runs_root).absolute() / self.study_name
        self.base_config = self.validate()
        task = cli.import_class(self.base_config.model.class_path)
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
        self.pruner = self.make_pruner()
        self.storage_url = self.default_storage()
        self.stop = False
        self.in_trial = False

    def validate(self) -> Namespace:
        base_args = [arg for path in self.base for arg in ("-c", path)]
        config = parse_fit([*base_args, *self.fixed_args])
        for key in [*self.distributions, *(self.cfg.fixed or {})]:
            resolve_key(config, key, self.base)
        if self.cfg.worker_index is not None:
            return config  # a worker of --workers: the command that started it has checked the points below
        # Parse each candidate value (ends of ranges, every choice) so a type error or an impossible net (a ResNet
        # depth that is not 6n+2) is reported now, not in trial 7.
        candidates = {key: candidate_values(d) for key, d in self.distributions.items()}
        for i in range(min(max(len(c) for c in candidates.values()), MAX_PROBES)):
            point = {key: values[i % len(values)] for key, values in candidates.items()}
            try:
                parse_fit([*base_args, *self.fixed_args, *option_args(point)])
            except ArchlabError as error:
                raise ConfigError(f"space: the point {point} is rejected: {error}") from None
        return config

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        name, kwargs = self.cfg.sampler, dict(self.cfg.sampler_args or {})
        if name not in SAMPLERS:
            raise ConfigError(f"sampler {name!r} is unknown; accepted: {', '.join(SAMPLERS)}")
        # Workers started by --workers get distinct seeds, or they would all propose the same points.
        if self.cfg.seed is not None:
            offset = self.cfg.worker_index if self.cfg.worker_index is not None else self.cfg.workers - 1
            kwargs.setdefault("seed", self.cfg.seed + offset)
        if name == "grid":
            grid = {key: grid_values(key, d) for key, d in self.distributions.items()}
            self.n_trials = min(self.n_trials, math.prod(len(v) for v in grid.values()))
            kwargs["search_space"] = grid
        if name == "cmaes":
            try:
                import cmaes  # noqa: F401
            except ImportError:
                raise ConfigError("sampler 'cmaes' needs the cmaes package: pip install cmaes") from None
        return construct(f"sampler {name}", SAMPLERS[name], kwargs)

    def make_pruner(self) -> optuna.pruners.BasePruner:
        name, kwargs = self.cfg.pruner, dict(self.cfg.pruner_args or {})
        if name not in PRUNERS:
            raise ConfigError(f"pruner {name!r} is unknown; accepted: {', '.join(PRUNERS)}")
        max_epochs = self.base_config.trainer.get("max_epochs")
        if name == "hyperband" and isinstance(max_epochs, int) and max_epochs > 0:
            kwargs.setdefault("max_resource", max_epochs)
        return construct(f"pruner {name}", PRUNERS[name], kwargs)

    def default_storage(self) -> str:
        if self.cfg.storage:
            return self.cfg.storage
        journal, sqlite = self.study_dir / "journal.log", self.study_dir / "study.db"
        if journal.exists() or (self.cfg.workers > 1 and not sqlite.exists()):
            return f"journal:{journal}"
        return f"sqlite:///{sqlite}"

    def open_study(self) -> optuna.Study:
        url = self.storage_url
        if url.startswith("sqlite") and self.cfg.workers > 1:
            raise ConfigError(
                f"storage {url}: SQLite is not safe for {self.cfg.workers} worker processes; use a journal file "
                "(--storage journal:PATH, the default for --workers > 1) or postgresql://user@host/db"
            )
        self.study_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(STORAGE_ATTEMPTS):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    study = optuna.create_study(
                        study_name=self.study_name,
                        storage=self.make_storage(url),
                        sampler=self.sampler,
                        pruner=self.pruner,
                        direction=self.direction,
                        load_if_exists=True,
                    )
                break
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
                # Workers started together on an empty database race to create Optuna's tables; the loser retries.
                if attempt == STORAGE_ATTEMPTS - 1:
                    raise
                time.sleep(0.5 + random.random())
            except ArchlabError:
                raise
            except Exception as error:  # any driver error becomes one paragraph, password masked
                message = tracking.mask_url(f"{type(error).__name__}: {error}".splitlines()[0])
                raise ConfigError(
                    f"cannot open study {self.study_name!r} in {tracking.mask_url(url)}: {message}"
                ) from None
        spec = {"metric": self.metric, "direction": self.direction, "space": dict(self.cfg.space)}
        stored = study.user_attrs.get("sweep")
        if stored is None:
            study.set_user_attr("sweep", spec)
        elif stored != json.loads(json.dumps(spec)):
            raise ConfigError(
                f"study {self.study_name!r} already exists in {tracking.mask_url(url)} with a different metric or "
                f"space ({stored}); resume it with the same sweep, or choose a new --study_name"
            )
        return study

    def make_storage(self, url: str) -> optuna.storages.BaseStorage:
        if url.startswith("journal:"):
            path = Path(url.removeprefix("journal:").removeprefix("//"))
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
        return optuna.storages.RDBStorage(
            sqlalchemy_url(url),
            heartbeat_interval=self.cfg.heartbeat_interval,
            grace_period=self.cfg.grace_period,
            heartbeat_stale_trial_callback=self.retry_callback(),
        )

    def retry_callback(self) -> RetryHeartbeatStaleTrialCallback:
        # The retry inherits the dead trial's reported values: it resumes mid-run, and pruners compare per step.
        return RetryHeartbeatStaleTrialCallback(max_retry=self.cfg.max_retry, inherit_intermediate_values=True)

    def objective(self, trial: optuna.Trial) -> float:
        retried = retried_number(trial)
        if retried is None and slot_rank(trial.study.get_trials(deepcopy=False), trial.number) >= self.n_trials:
            trial.set_user_attr("surplus", True)
            raise Surplus(f"the study already has its {self.n_trials} trials")
        params = {key: suggest(trial, key, d) for key, d in self.distributions.items()}
        run_dir = self.study_dir / f"trial-{trial.number:04d}"
        resume = self.resume_checkpoint(trial) if retried is not None else None
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        if resume:
            trial.set_user_attr("resumed_from", str(resume))
        args = [
            "fit",
            *(arg for path in self.base for arg in ("-c", path)),
            *self.fixed_args,
            *option_args(params),
            *("--run_dir", str(run_dir), "--experiment", self.study_name, "--runs_root", str(self.cfg.runs_root)),
            *("--tracker", self.cfg.tracker, "--test_after_fit", str(self.cfg.test_after_fit).lower()),
            *(("--ckpt_path", str(resume)) if resume else ()),
        ]
        recorder = TrialRecorder(
            trial, study=self.study_name, metric=self.metric, maximize=self.direction == "maximize", params=params
        )
        failed = True
        self.in_trial = True
        try:
            with warnings.catch_warnings():
                # LightningCLI warns when given args while sys.argv holds others: here sys.argv is `archlab sweep`.
                warnings.filterwarnings("ignore", message=r".*LightningCLI's args parameter is intended.*")
                result = cli.run(args, callbacks=[recorder])
            failed = False
        except optuna.TrialPruned:
            failed = False
            raise
        except (KeyboardInterrupt, SystemExit) as error:
            self.stop = True
            trial.set_user_attr("fail_reason", f"interrupted ({type(error).__name__})")
            raise Interrupted(f"trial {trial.number} interrupted") from error
        except Exception as error:
            trial.set_user_attr("fail_reason", tracking.mask_url(f"{type(error).__name__}: {error}")[:1000])
            raise
        finally:
            self.in_trial = False
            finish_wandb(failed)
        value = result.results.get(f"best {self.metric}", recorder.best)
        # A retry resumed mid-run: its checkpoint callback saw only the epochs after the resume, while the values
        # the dead trial reported before were inherited by this one.
        reported = list(trial.study._storage.get_trial(trial._trial_id).intermediate_values.values())
        if value is not None and reported:
            value = (max if self.direction == "maximize" else min)([value, *reported])
        if value is None or not math.isfinite(value):
            reason = f"no finite value of {self.metric} (got {value})"
            trial.set_user_attr("fail_reason", reason)
            raise TrialFailed(reason)
        return float(value)

    def resume_checkpoint(self, trial: optuna.Trial) -> Path | None:
        """The last checkpoint of the trial this one retries (its run_dir arrives in the inherited user_attrs)."""
        candidates = []
        if trial.user_attrs.get("run_dir"):
            candidates.append(Path(trial.user_attrs["run_dir"]) / "checkpoints" / "last.ckpt")
        if trial.user_attrs.get("resumed_from"):
            candidates.append(Path(trial.user_attrs["resumed_from"]))
        return next((path for path in candidates if path.is_file()), None)

    def on_signal(self, signum: int, frame: Any) -> None:
        self.stop = True
        # Raised only inside a trial: there it becomes the trial's FAIL; elsewhere it could land in the middle of
        # Optuna writing a trial's final state, so the loop just stops before the next trial.
        if self.in_trial:
            raise Interrupted(f"{signal.Signals(signum).name} received")

    def work(self, study: optuna.Study) -> None:
        start = time.monotonic()
        heartbeat = heartbeat_enabled(study)
        while not self.stop:
            if self.cfg.timeout is not None and time.monotonic() - start > self.cfg.timeout:
                break
            self.fail_lost_trials(study)
            trials = study.get_trials(deepcopy=False)
            waiting = any(t.state == TrialState.WAITING for t in trials)
            if not waiting and slot_rank(trials, None) >= self.n_trials:
                running = [t for t in trials if t.state == TrialState.RUNNING]
                # A running trial may still fail (its worker died) and come back as a retry: wait for it to end.
                if running and (heartbeat or any(local_pid_alive(t) for t in running)):
                    time.sleep(min(self.cfg.heartbeat_interval, 2))
                    continue
                break
            study.optimize(self.objective, n_trials=1, catch=(Exception,), gc_after_trial=True)

    def fail_lost_trials(self, study: optuna.Study) -> None:
        """Fail (and re-queue) RUNNING trials whose worker is gone: stale heartbeats, or a dead pid on this host."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if heartbeat_enabled(study):
                optuna.storages.fail_stale_trials(study)
                return
            for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if trial.user_attrs.get("host") != socket.gethostname() or local_pid_alive(trial):
                    continue
                if "pid" not in trial.user_attrs or trial.user_attrs["pid"] == os.getpid():
                    continue
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", "its worker process died")
                    if study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                        self.retry_callback()(study, copy.deepcopy(study._storage.get_trial(trial._trial_id)))

    def spawn_workers(self, argv: list[str]) -> list[subprocess.Popen]:
        """`--workers N`: N copies of this command, one worker each, sharing the study; logs beside the study."""
        own, passthrough = split_passthrough(argv)
        own = drop_option(own, "--storage")
        url, env = self.storage_url, dict(os.environ)
        password = urlsplit(url).password if "://" in url else None
        if password:
            # The password travels in the environment (libpq reads PGPASSWORD), never on a command line.
            env["PGPASSWORD"] = password
            url = strip_password(url)
        procs = []
        for i in range(self.cfg.workers):
            log = (self.study_dir / f"worker-{i}.log").open("w")
            command = [sys.executable, "-m", "archlab", "sweep", *own, "--workers", "1", "--worker_index", str(i)]
            command += [
                "--storage",
                url,
                "--study_name",
                self.study_name,
                *(["--", *passthrough] if passthrough else []),
            ]
            procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env))
            log.close()
        return procs

    def summarize(self, study: optuna.Study, console: Console) -> None:
        trials = study.get_trials(deepcopy=False)
        counts = {state: sum(t.state == state for t in trials) for state in TrialState}
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        done.sort(key=lambda t: t.value, reverse=self.direction == "maximize")
        table = Table(title=f"{self.study_name}: best trials ({self.metric}, {self.direction})", title_justify="left")
        for column in ("trial", self.metric, "epochs", *short_names(list(self.distributions))):
            table.add_column(column, justify="right", no_wrap=True)
        for t in done[: self.cfg.top]:
            table.add_row(
                str(t.number), f"{t.value:.4f}", str(t.user_attrs.get("epochs", "")),
                *(format_param(t.params.get(key)) for key in self.distributions),
            )  # fmt: skip
        console.print(table)
        console.print(
            "trials:     "
            + ", ".join(f"{counts[s]} {STATE_WORDS[s]}" for s in (*FINISHED, TrialState.RUNNING, TrialState.WAITING))
        )
        replaced = {t.system_attrs["retry_history"][-1] for t in trials if t.system_attrs.get("retry_history")}
        for t in trials:
            if t.state == TrialState.FAIL and not t.user_attrs.get("surplus"):
                reason = t.user_attrs.get("fail_reason") or (
                    "its worker was lost (stale heartbeat); re-queued" if t.number in replaced else "see the log"
                )
                console.print(f"  trial {t.number} failed: {reason}")
        if done:
            best = done[0]
            console.print(f"best:       trial {best.number}, {self.metric} = {best.value:.4f}")
            console.print(f"params:     {json.dumps(best.params)}")
            path = self.write_best_config(best)
            if path:
                console.print(f"config:     {path}  -> reproduce with: archlab fit -c {path}")
        else:
            console.print("best:       none: no trial completed")
        for path in self.write_plots(study) if done else []:
            console.print(f"plot:       {path}")
        console.print(f"storage:    {tracking.mask_url(self.storage_url)}  (study {self.study_name})")
        if not self.storage_url.startswith("journal:"):
            console.print(f"dashboard:  optuna-dashboard {tracking.mask_url(sqlalchemy_url(self.storage_url))}")

    def write_best_config(self, best: FrozenTrial) -> Path | None:
        source = Path(best.user_attrs.get("run_dir", "")) / "config.yaml"
        if not source.is_file():
            return None
        config = yaml.safe_load(source.read_text())
        # A fresh run of exactly the trial's resolved config: its own new run directory, from scratch, then tested.
        config.update(run_dir=None, ckpt_path=None, test_after_fit=True)
        path = self.study_dir / "best.yaml"
        header = (
            f"# Best trial of study {self.study_name}: trial {best.number}, {self.metric} = {best.value:.6g}\n"
            f"# params: {json.dumps(best.params)}\n# Reproduce: archlab fit -c {path}\n"
        )
        path.write_text(header + yaml.safe_dump(tracking.redact(config), sort_keys=False))
        return path

    def write_plots(self, study: optuna.Study) -> list[Path]:
        import optuna.visualization as vis

        written = []
        plots = {
            "history": vis.plot_optimization_history,
            "importance": vis.plot_param_importances,
            "parallel_coordinate": vis.plot_parallel_coordinate,
        }
        for name, plot in plots.items():
            path = self.study_dir / f"{name}.html"
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    # "directory": one plotly.min.js beside the pages, so they open offline without three copies.
                    plot(study).write_html(str(path), include_plotlyjs="directory")
            except (ValueError, RuntimeError, ZeroDivisionError) as error:
                # Importance needs two finished trials that differ; with fewer there is nothing to plot.
                print(f"archlab sweep: no {name} plot: {error}", file=sys.stderr)
                continue
            written.append(path)
        return written


def make_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="archlab sweep", description=__doc__.split("\n\n")[0], exit_on_error=False)
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
    parser.add_argument("--n_trials", type=int, default=20, help="Trials in the study, counting those already run.")
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


def resolve_key(config: Namespace, key: str, base: list[str]) -> str:
    """The full config path of a dotted key, accepting the CLI's shorthand (model.lr for model.init_args.lr)."""
    node, path = config, []
    for part in key.split("."):
        if isinstance(node, Namespace) and part in vars(node):
            node, path = node[part], [*path, part]
        elif (
            isinstance(node, Namespace)
            and isinstance(node.get("init_args"), Namespace)
            and part in vars(node.init_args)
        ):
            node, path = node.init_args[part], [*path, "init_args", part]
        else:
            here = node.init_args if isinstance(node, Namespace) and "init_args" in node else node
            keys = list(vars(here)) if isinstance(here, Namespace) else []
            close = get_close_matches(part, keys, n=3)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            where = ".".join(path) or "the top level"
            raise ConfigError(
                f"space key {key!r} is not in the base config ({', '.join(base)}): {where} has no {part!r}{hint} "
                f"Keys there: {', '.join(keys) or 'none'}"
            )
    return ".".join(path)


def make_distribution(key: str, spec: dict[str, Any]) -> optuna.distributions.BaseDistribution:
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"space.{key}: type must be one of {', '.join(DISTRIBUTIONS)} (got {kind!r})")
    if kind == "categorical" and not isinstance(spec.get("choices"), list | tuple):
        raise ConfigError(f"space.{key}: categorical needs choices: [a, b, ...] (got {spec})")
    try:
        return DISTRIBUTIONS[kind](**spec)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"space.{key}: Optuna rejects {{type: {kind}, {format_spec(spec)}}}: {error}") from None


def format_spec(spec: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in spec.items())


def candidate_values(d: optuna.distributions.BaseDistribution) -> list[Any]:
    if isinstance(d, CategoricalDistribution):
        return list(d.choices)
    return [d.low, d.high] if d.low != d.high else [d.low]


def grid_values(key: str, d: optuna.distributions.BaseDistribution) -> list[Any]:
    if isinstance(d, CategoricalDistribution):
        return list(d.choices)
    if isinstance(d, IntDistribution):
        return list(range(d.low, d.high + 1, d.step))
    if d.step is None:
        raise ConfigError(f"space.{key}: the grid sampler needs a finite set: give step, or use categorical choices")
    n = round((d.high - d.low) / d.step)
    return [d.low + i * d.step for i in range(n + 1)]


def suggest(trial: optuna.Trial, key: str, d: optuna.distributions.BaseDistribution) -> Any:
    if isinstance(d, CategoricalDistribution):
        return trial.suggest_categorical(key, d.choices)
    if isinstance(d, IntDistribution):
        return trial.suggest_int(key, d.low, d.high, step=d.step, log=d.log)
    return trial.suggest_float(key, d.low, d.high, step=d.step, log=d.log)


def option_args(values: dict[str, Any]) -> list[str]:
    """{"model.lr": 0.001, "model.net.channels": [8, 16]} -> --model.lr 0.001 --model.net.channels "[8, 16]"."""
    return [
        arg
        for key, value in values.items()
        for arg in (f"--{key}", value if isinstance(value, str) else json.dumps(value))
    ]


def format_param(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else json.dumps(value)


def short_names(keys: list[str]) -> list[str]:
    """The shortest dotted suffix of each key that no other key shares: model.net.dropout -> dropout."""
    names = []
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            name = ".".join(parts[-n:])
            if not any(other != key and (other == name or other.endswith("." + name)) for other in keys):
                break
        names.append(name)
    return names


def construct(what: str, cls: type, kwargs: dict[str, Any]) -> Any:
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{what}: {error} (arguments given: {kwargs})") from None


def slot_rank(trials: list[FrozenTrial], number: int | None) -> int:
    """How many trials count towards n_trials (below `number`, or in all): not surplus, not replaced by a retry."""
    replaced = {t.system_attrs["retry_history"][-1] for t in trials if t.system_attrs.get("retry_history")}
    return sum(
        1
        for t in trials
        if (number is None or t.number < number) and t.number not in replaced and not t.user_attrs.get("surplus")
    )


def retried_number(trial: optuna.Trial) -> int | None:
    """The number of the dead trial that this one retries (RetryHeartbeatStaleTrialCallback's record), or None."""
    return trial.study._storage.get_trial(trial._trial_id).system_attrs.get("failed_trial")


def heartbeat_enabled(study: optuna.Study) -> bool:
    interval = getattr(study._storage, "get_heartbeat_interval", None)
    return interval is not None and interval() is not None


def local_pid_alive(trial: FrozenTrial) -> bool:
    pid = trial.user_attrs.get("pid")
    if trial.user_attrs.get("host") != socket.gethostname() or pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def finish_wandb(failed: bool) -> None:
    """Close the trial's W&B run even when the fit raised, so the next trial never logs into it."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1 if failed else 0)


def split_passthrough(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def drop_option(argv: list[str], name: str) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(f"{name}="):
            out.append(arg)
    return out


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


def strip_password(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc[1]}"))


def main(argv: list[str]) -> int:
    # W&B records sys.argv with every run; a password typed into --storage must not travel with it.
    sys.argv[:] = [tracking.mask_url(arg) for arg in sys.argv]
    console = Console(soft_wrap=True)
    own, passthrough = split_passthrough(argv)
    try:
        cfg = make_parser().parse_args(own)
    except ArgumentError as error:
        raise ConfigError(f"sweep: {tracking.mask_url(str(error))}") from None
    sweep = Sweep(cfg, passthrough)
    study = sweep.open_study()
    previous = {s: signal.signal(s, sweep.on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if cfg.workers > 1:
            console.print(
                f"study {sweep.study_name}: {cfg.workers} workers, logs in {sweep.study_dir}/worker-*.log, "
                f"storage {tracking.mask_url(sweep.storage_url)}"
            )
            procs = sweep.spawn_workers(argv)
            while any(p.poll() is None for p in procs):
                if sweep.stop:
                    for p in procs:
                        if p.poll() is None:
                            p.send_signal(signal.SIGTERM)
                    for p in procs:
                        p.wait()
                    break
                time.sleep(0.5)
            for i, p in enumerate(procs):
                if p.returncode:
                    log = sweep.study_dir / f"worker-{i}.log"
                    print(f"archlab sweep: worker {i} exited with {p.returncode}; see {log}", file=sys.stderr)
        if not sweep.stop:
            # With --workers this runs only what dead workers left behind (their trials' retries).
            sweep.work(study)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if sweep.stop:
        console.print(f"study {sweep.study_name}: interrupted; the running trial is marked FAIL. Re-run to resume.")
        return 128 + signal.SIGTERM
    if cfg.worker_index is None:
        sweep.summarize(study, console)
    return 0
