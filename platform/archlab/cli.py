"""The `archlab` command: LightningCLI over archlab's tasks and DataModules.

    archlab fit -c configs/resnet_digits.yaml [-c configs/trainer/gpu.yaml] [--model.net.depth 56]
    archlab test -c runs/resnet_digits/<time>/config.yaml --ckpt_path runs/resnet_digits/<time>/checkpoints/best.ckpt

`fit` trains, then tests the best checkpoint and prints one table of metrics. Every run gets its own directory,
runs/<experiment>/<time>/ (laid out by archlab.rundir), holding the resolved config, checkpoints, predictions and the
tracker's files, and held by one live command at a time (a lock file).

A run survives kills: `archlab fit --resume RUN` continues it from its latest valid checkpoint, exactly (archlab.
checkpoints), in the same tracker run. SIGTERM and Ctrl-C save a checkpoint at the next batch boundary and exit with
143 and 130.

Everything is built once per command (archlab.building): the DataModule (and its vocabulary), the net (and any weights
it loads from --init_from), the task. LightningCLI's own instantiation receives the DataModule and net already built.
The run's directory, status record and exit messages are archlab.lifecycle's; short names and `archlab list` are
archlab.catalog's; what the parser says about a bad command line is archlab.usage's; the command line against a
checkpoint's hyperparameters (test and predict with --ckpt_path) is archlab.hparams'.
"""

import contextlib
import functools
import logging
import os
import signal
import sys
import time
import warnings
from argparse import ArgumentError
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
import yaml
from jsonargparse import Namespace
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from rich.console import Console
from rich.table import Table

from archlab import catalog, hparams, lifecycle, tracking, usage
from archlab.building import Built, archlab_errors, build, import_class, instantiate  # noqa: F401 - cli.Built, ...
from archlab.checkpoints import (
    AtomicCheckpointIO,
    ExactResume,
    LastCheckpoint,
    check_frequency,
    expand_resume,
)
from archlab.errors import ConfigError
from archlab.guards import NonFiniteGuard, Policy
from archlab.hardware import check_hardware
from archlab.loading import check_state_dict, load_checkpoint
from archlab.predictions import PredictionWriter
from archlab.progress import LineProgress
from archlab.rundir import RunDir, RunLock, is_primary_process, new_run_dir, write_atomic
from archlab.tasks import Task
from archlab.tracking import BestInSummary


class RunConfig(SaveConfigCallback):
    """Saves the resolved config beside the run and logs it to the tracker once, with secrets masked."""

    def __init__(self, parser: LightningArgumentParser, config: Namespace, **kwargs: Any) -> None:
        super().__init__(parser, config, save_to_log_dir=False, **kwargs)

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        config = tracking.redact(yaml.safe_load(self.parser.dump(self.config, skip_none=False)))
        run = RunDir(trainer.default_root_dir)
        logged = {**config, "run_dir": str(run.root), **lifecycle.source_run(config.get("ckpt_path"), stage)}
        for logger in trainer.loggers:
            logger.log_hyperparams(logged)
            if isinstance(logger, WandbLogger) and logger.version:
                # `--resume` continues this W&B run, by its id.
                run.wandb_id.write_text(f"{logger.version}\n")
        # The file reruns the run elsewhere: `archlab test -c RUN/config.yaml` must not write into (and over) RUN,
        # nor resume from its checkpoint.
        text = yaml.safe_dump({**config, "run_dir": None, "ckpt_path": None, "resume": None}, sort_keys=False)
        write_atomic(run.config, lambda f: f.write(text.encode()))


class ArchlabParser(LightningArgumentParser):
    """LightningCLI's parser, with help limited to archlab's classes and one paragraph for a rejected command line
    (archlab.usage), instead of every option the Trainer has and every union member jsonargparse tried."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", usage.HelpFormatter)
        super().__init__(*args, **kwargs)
        self.argv: list[str] = []  # what it parses, for masking secret values out of an error

    def parse_args(self, args: Any = None, *rest: Any, **kwargs: Any) -> Namespace:
        self.argv = [str(arg) for arg in args or []]
        return super().parse_args(args, *rest, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        # A class's own parser inside a union (jsonargparse marks it inner) reports to the outer one: the paragraph
        # is made once, from the whole report.
        if os.environ.get("ARCHLAB_DEBUG") or getattr(self, "_inner_parser", False):
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        options = [option for action in parser._actions for option in action.option_strings]
        paragraph = tracking.mask_values(usage.one_paragraph(message, prog, options), self.argv)
        if not self.exit_on_error:
            super().error(paragraph, ex)
        self.exit(2, f"archlab: error: {paragraph}\n")

    def print_usage(self, file: Any = None) -> None:
        prog = self.prog.replace(" [options]", "")
        if " " not in prog:
            prog += " {fit,validate,test,predict,sweep,study,list}"
        (file or sys.stderr).write(f"usage: {prog} -c CONFIG [--section.key VALUE ...]\n")


class ArchlabCLI(LightningCLI):
    def __init__(self, args: list[str] | None = None, *, callbacks: list[L.Callback] | None = None) -> None:
        self.extra_callbacks = callbacks or []
        self.results: dict[str, float] = {}
        self.run_dir: Path | None = None
        self.lock: RunLock | None = None
        self.resuming = False
        # The monitored metric's best value in this run (the checkpoint callback's), for sweeps and studies.
        self.monitor: str | None = None
        self.best_score: float | None = None
        # `fit --resume RUN` is `fit -c RUN/config.yaml --run_dir RUN --ckpt_path last`, before anything is parsed.
        args = expand_resume(sys.argv[1:] if args is None else list(args))
        args = catalog.expand_short_names(args)  # --data Digits, --model.net ResNet: archlab's classes first
        # `--print_config` is answered after the data's shapes are linked (what the run's config.yaml will hold), not
        # by jsonargparse at parse time, which prints the unlinked defaults (in_channels: 3 for 1-channel digits).
        self.print_config = any(arg == "--print_config" or arg.startswith("--print_config=") for arg in args)
        args = [arg for arg in args if not (arg == "--print_config" or arg.startswith("--print_config="))]
        # With --ckpt_path, LightningCLI lays the checkpoint's hyperparameters over these (archlab.hparams).
        self.model_options = hparams.model_options(args)
        self.given_model: Namespace | None = None
        self.checkpoint: dict[str, Any] | None = None
        try:
            super().__init__(
                model_class=Task,
                subclass_mode_model=True,
                datamodule_class=L.LightningDataModule,
                subclass_mode_data=True,
                save_config_callback=RunConfig,
                save_config_kwargs={"overwrite": True},
                seed_everything_default=0,
                parser_class=ArchlabParser,
                args=args,
            )
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Give the run directory up: the command is over (a dead process gives it up by dying)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--experiment",
            type=str | None,
            default=None,
            help="Name of the experiment; default: "
            "the first config file's name. Runs go under <runs_root>/<experiment>/<time>/.",
        )
        parser.add_argument("--runs_root", type=str, default="runs", help="Directory holding all runs.")
        parser.add_argument(
            "--run_dir",
            type=str | None,
            default=None,
            help="This run's directory; default: a new <runs_root>/<experiment>/<time>/.",
        )
        parser.add_argument(
            "--tracker",
            type=tracking.Tracker,
            default="wandb",
            help="Experiment tracker, unless trainer.logger is set explicitly.",
        )
        parser.add_argument("--project", type=str, default="archlab", help="W&B project name.")
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="After `fit`, test the best checkpoint and print the metrics.",
        )
        parser.add_argument(
            "--log_checkpoint",
            type=bool,
            default=True,
            help="(fit, W&B) Log the best checkpoint as a W&B model artifact (aliases best, latest) when fit ends, "
            "offline as online; it uploads the checkpoint's size again (`ls -l RUN/checkpoints/best.ckpt`).",
        )
        parser.add_argument(
            "--init_from",
            type=str | None,
            default=None,
            help="Initialise the net from the weights of an archlab checkpoint (RUN/checkpoints/best.ckpt) or a "
            "state-dict file; keys the net lacks or the file lacks are listed. The weights then live in this run's "
            "own checkpoints, so test and predict of this run need only its directory.",
        )
        parser.add_argument(
            "--resume",
            type=str | None,
            default=None,
            help="(fit) Continue a killed or interrupted run by its directory: its config.yaml, its latest valid "
            "checkpoint, its tracker run. Same as -c RUN/config.yaml --run_dir RUN --ckpt_path last; other options "
            "given after it apply on top.",
        )
        parser.add_argument(
            "--checkpoint_every_n_steps",
            type=int | None,
            default=None,
            help="(fit) Also write checkpoints/last.ckpt every N optimizer steps inside an epoch (it is written at "
            "every epoch end anyway); default: off.",
        )
        parser.add_argument(
            "--nonfinite",
            type=Policy,
            default="stop",
            help="(fit) When a loss or gradient becomes NaN or infinite: stop the run at that step (exit 5; no "
            "checkpoint of a diverged net is written), or skip the step and count it (train/skipped_steps); off: no "
            "check (it costs a gradient norm per step, and on a GPU a device-to-host sync).",
        )
        parser.add_argument(
            "--checkpoint_every_minutes",
            type=float | None,
            default=30.0,
            help="(fit) Also write checkpoints/last.ckpt when this many minutes have passed since the last one, at the "
            "next batch boundary; null: off.",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and self.model_options:
            self.given_model = self.config[subcommand].model.clone()
        if ckpt_path and ckpt_path not in ("last", "best", "hpc") and not str(ckpt_path).startswith("registry"):
            # Read once through archlab's loader (weights_only, one paragraph naming the file on any failure) before
            # LightningCLI reads the file's hyperparameters with a bare torch.load.
            checkpoint = load_checkpoint(ckpt_path, what="--ckpt_path")
            # validate, test and predict check it against the model before a run directory exists (the task checks
            # again when Lightning loads it).
            self.checkpoint = checkpoint if subcommand != "fit" else None

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand]
        if self.given_model is not None and Path(cfg.ckpt_path).is_file():
            hparams.reconcile(self.subcommand, self.given_model, cfg.model, self.model_options, cfg.ckpt_path)
        if not cfg.experiment:
            sources = cfg.get("config") or []
            cfg.experiment = Path(str(sources[0])).stem if sources else "archlab"
        if cfg.init_from and cfg.get("ckpt_path"):
            raise ConfigError(
                "--init_from and --ckpt_path exclude each other: --ckpt_path continues that run (its weights, "
                "optimizer and epoch), --init_from starts a new run from a checkpoint's net weights; give one."
            )
        if self.print_config:
            build(cfg, task=False)  # the DataModule's shapes, linked into cfg
            config = tracking.redact(yaml.safe_load(self.parser.dump(self.config, skip_none=False)))
            sys.stdout.write(yaml.safe_dump(config[self.subcommand], sort_keys=False))
            raise lifecycle.ConfigPrinted
        if self.subcommand == "fit":
            check_frequency(cfg.checkpoint_every_n_steps, cfg.checkpoint_every_minutes)
        # A preset this machine cannot run (a GPU, a TPU, several nodes) stops here, before a run directory or data.
        check_hardware(cfg.trainer)
        self.lock, self.resuming = lifecycle.take_run_dir(cfg, self.subcommand)
        # The task is left to LightningCLI's instantiation, which records the config as its hyperparameters.
        self.built = build(cfg, init_from=cfg.init_from, task=False)
        # This run's own files, not the sources it was built from: test and predict of it need only its directory.
        cfg.init_from = None
        if getattr(self.built.data, "vocabulary", None) is not None and "vocab_path" in cfg.data.init_args:
            cfg.data.init_args.vocab_path = None

    def instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand]
        # LightningCLI instantiates the task (so that its checkpoints record the config as hyperparameters) and the
        # trainer's callbacks; the DataModule and the net arrive built, and are not built a second time.
        config = self.config.clone()
        config[self.subcommand].data = self.built.data
        if self.built.net is not None:
            config[self.subcommand].model.init_args.net = self.built.net
        with archlab_errors():
            self.config_init = self.parser.instantiate(config)
        self.datamodule = self.built.data
        self.model = self._get(self.config_init, "model")
        self.model.check_data(self.datamodule)
        if self.checkpoint is not None:
            check_state_dict(self.model, self.checkpoint, source=cfg.ckpt_path)
            self.checkpoint = None
        self.run_dir = (
            Path(cfg.run_dir) if cfg.run_dir else new_run_dir(cfg.runs_root, cfg.experiment, self.subcommand).root
        )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        run = RunDir(self.run_dir)
        if self.lock is None and is_primary_process():
            self.lock = run.lock()  # a new directory: nobody else can hold it yet
        vocabulary = getattr(self.datamodule, "vocabulary", None)
        if vocabulary is not None and os.environ.get("LOCAL_RANK", "0") == "0":
            vocabulary.save(run.tokenizer)
            if "vocab_path" in cfg.data.init_args:
                cfg.data.init_args.vocab_path = str(run.tokenizer)
        self._add_configure_optimizers_method_to_model(self.subcommand)
        self.trainer = self.instantiate_trainer()

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        cfg = self.config[self.subcommand]
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        run = RunDir(self.run_dir)
        kwargs.setdefault("default_root_dir", str(run.root))
        if cfg.trainer.logger in (None, True):
            if cfg.tracker == "wandb" and self.resuming and run.wandb_id.is_file():
                # W&B's own mechanism; WandbLogger passes resume="allow", so the run continues rather than restarts.
                os.environ["WANDB_RUN_ID"] = run.wandb_id.read_text().strip()
            # Tags: what was trained on what, to filter runs by in the dashboard.
            tags = [type(self.model).__name__, type(self.model.net).__name__, type(self.datamodule).__name__]
            kwargs["logger"] = tracking.make_logger(
                cfg.tracker, run.tracker, experiment=cfg.experiment, project=cfg.project, tags=tags
            )
        if self.subcommand == "fit" and not sys.stdout.isatty() and cfg.trainer.enable_progress_bar is not False:
            # A pipe, a file, CI, `docker run` without -t: plain lines instead of a bar that redraws one line.
            if cfg.trainer.enable_progress_bar is None:
                kwargs["enable_progress_bar"] = False
            self.extra_callbacks = [*self.extra_callbacks, LineProgress()]
        if cfg.trainer.log_every_n_steps is None:
            # Lightning's 50 leaves the per-step training curve empty for the 4-20 batches of a small epoch.
            kwargs["log_every_n_steps"] = 10
        plugins = trainer_cfg.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        callbacks = list(trainer_cfg.get("callbacks") or [])
        checkpoints = [c for c in callbacks if isinstance(c, ModelCheckpoint)]
        if self.subcommand == "fit":
            callbacks += [ExactResume(), BestInSummary(self.model.monitor, self.model.mode)]
            if cfg.nonfinite != "off":
                callbacks.append(NonFiniteGuard(cfg.nonfinite))
            logged = kwargs.get("logger", cfg.trainer.logger) not in (False, None)  # `--tracker none`: no logger
            if logged and not any(isinstance(c, LearningRateMonitor) for c in callbacks):
                callbacks.append(LearningRateMonitor(logging_interval="step"))  # the one-cycle schedule, as a curve
        if self.subcommand == "fit" and trainer_cfg.get("enable_checkpointing") is not False:
            # The run directory holds the checkpoints, whoever configured the callback; archlab's own only when the
            # user configured none (Lightning would otherwise add a default one that monitors nothing).
            given = [c for c in as_list(cfg.trainer.callbacks) if str(c.get("class_path", "")).endswith("Checkpoint")]
            for callback, config in zip(checkpoints, given if len(given) == len(checkpoints) else [], strict=False):
                dirpath = config.get("init_args", {}).get("dirpath")
                if dirpath and not Path(dirpath).is_absolute():
                    callback.dirpath = str(run.root / dirpath)  # relative: inside the run, like everything it writes
            for callback in checkpoints:
                if callback.dirpath is None:
                    callback.dirpath = str(run.checkpoints)
            if not checkpoints:
                callbacks.append(
                    ModelCheckpoint(
                        dirpath=run.checkpoints, monitor=self.model.monitor, mode=self.model.mode, filename="best"
                    )
                )
            # last.ckpt is archlab's: the latest completed step (ModelCheckpoint's save_last writes it only when the
            # monitored metric improved).
            callbacks.append(
                LastCheckpoint(
                    run, every_n_steps=cfg.checkpoint_every_n_steps, every_minutes=cfg.checkpoint_every_minutes
                )
            )
        if self.subcommand == "predict":
            callbacks.append(PredictionWriter(run))
        kwargs["callbacks"] = [*callbacks, *self.extra_callbacks]
        return super().instantiate_trainer(**kwargs)

    def _run_subcommand(self, subcommand: str) -> None:
        # The run's status record: a run that fails or is stopped never looks finished (RUN/status.json).
        record = RunDir(self.run_dir) if is_primary_process() else None
        if record is not None:
            lifecycle.record_start(record, subcommand, self.config[subcommand].get("ckpt_path"))
        try:
            super()._run_subcommand(subcommand)
        except BaseException as error:
            # A run that raises (a pruned or failed sweep trial, Ctrl-C) must not stay open and merge into the next.
            self.finish_loggers()
            if record is not None:
                lifecycle.record_stop(record, error)
            raise
        if record is not None:
            lifecycle.record_finished(record)

    def fit(self, **kwargs: Any) -> None:
        start = time.perf_counter()
        # Never a full unpickling (the CheckpointIO loads with weights_only=True whatever it is asked).
        kwargs["weights_only"] = True
        if self.resuming and kwargs.get("ckpt_path"):
            for logger in self.trainer.loggers:
                if isinstance(logger, CSVLogger):
                    tracking.keep_csv_history(logger)
        try:
            self.trainer.fit(**kwargs)
        except SystemExit as exit_:  # SIGTERMException, or Lightning's sys.exit(1) after a second Ctrl-C
            stopper = next((c for c in self.trainer.callbacks if isinstance(c, LastCheckpoint)), None)
            signum = stopper.stop_signal if stopper is not None else None
            if isinstance(exit_, SIGTERMException) or signum is not None:
                trainer = self.trainer
                run = RunDir(self.run_dir)
                raise lifecycle.interrupted(
                    run, trainer.current_epoch, trainer.global_step, signum or signal.SIGTERM, stopper
                ) from None
            raise
        if self.trainer.interrupted:
            return
        checkpoint = self.trainer.checkpoint_callback
        best = getattr(checkpoint, "best_model_path", "") or None
        self.monitor = self.model.monitor
        if best and checkpoint.monitor and checkpoint.best_model_score is not None:
            score = float(checkpoint.best_model_score)
            self.results[f"best {checkpoint.monitor}"] = score
            if checkpoint.monitor == self.monitor:
                self.best_score = score
        if self.config.fit.test_after_fit and self.datamodule is not None and has_stage(self.datamodule, "test"):
            tested = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best, verbose=False)
            self.results.update(tested[0] if tested else {})
        wall_time = time.perf_counter() - start
        if not self.trainer.is_global_zero:
            return
        cfg = self.config.fit
        saved = RunDir(self.run_dir).config  # as RunConfig saved it, masked (not under fast_dev_run)
        tracking.record_results(
            self.trainer.loggers,
            config=yaml.safe_load(saved.read_text()) if saved.is_file() else {},
            num_params=self.model.num_params,
            monitor=self.monitor if self.best_score is not None else None,
            best=self.best_score,
            best_epoch=load_checkpoint(best).get("epoch") if best and self.best_score is not None else None,
            results=self.results,
            checkpoint=Path(best) if best and cfg.log_checkpoint else None,
        )
        records = [tracking.describe(logger) for logger in self.trainer.loggers]
        # W&B prints its own run summary when the run closes; close it first so ours is the last word.
        self.finish_loggers()
        lifecycle.record_finished(RunDir(self.run_dir), epoch=self.trainer.current_epoch, step=self.trainer.global_step)
        self.print_summary(wall_time, best, records)

    def predict(self, **kwargs: Any) -> None:
        kwargs.setdefault("return_predictions", False)
        self.trainer.predict(**kwargs)
        writer = next(c for c in self.trainer.callbacks if isinstance(c, PredictionWriter))
        if self.trainer.is_global_zero and writer.path is not None:
            Console(soft_wrap=True).print(f"predictions: {writer.path}")

    def finish_loggers(self) -> None:
        for logger in self.trainer.loggers:
            tracking.finish(logger)

    def print_summary(self, wall_time: float, best_checkpoint: str | None, records: list[str]) -> None:
        table = Table(title=f"{self.config.fit.experiment}: results", title_justify="left")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in self.results.items():
            table.add_row(key, f"{value:.4f}")
        table.add_row("parameters", f"{self.model.num_params:,}")
        table.add_row("epochs", str(self.trainer.current_epoch))
        table.add_row("wall time (fit + test)", f"{wall_time:.1f} s")
        # soft_wrap: paths and commands stay on one line, whole, for copying.
        console = Console(soft_wrap=True)
        console.print(table)
        console.print(f"run:        {self.run_dir}  (finished; record: {RunDir(self.run_dir).status.name})")
        if (self.run_dir / "config.yaml").is_file():
            console.print(f"config:     {self.run_dir / 'config.yaml'}")
        if best_checkpoint:
            console.print(f"checkpoint: {best_checkpoint}")
        for record in records:
            console.print(record)


@functools.cache  # one class per subcommand and process (a sweep asks at every trial)
def one_subcommand(name: str) -> type[ArchlabCLI]:
    """ArchlabCLI with the parser of the subcommand given only: building the parsers of the other three (every
    Trainer, task and DataModule option, three more times) was 3/4 of building the parser, which every command, and
    a sweep or study every trial, paid (benchmarks/perf.py, startup and sweep sections)."""
    subcommands = {name: LightningCLI.subcommands()[name]}
    return type(f"{name.capitalize()}CLI", (ArchlabCLI,), {"subcommands": staticmethod(lambda: subcommands)})


def as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [] if value is None else [value]


def has_stage(datamodule: L.LightningDataModule, stage: str) -> bool:
    hook = getattr(type(datamodule), f"{stage}_dataloader", None)
    return hook is not None and hook is not getattr(L.LightningDataModule, f"{stage}_dataloader")


class _Parsed(Exception):
    def __init__(self, config: Namespace) -> None:
        self.config = config


class _ParseOnly(ArchlabCLI):
    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        return super().init_parser(exit_on_error=False, **kwargs)

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand]
        if not cfg.experiment:
            sources = cfg.get("config") or []
            cfg.experiment = Path(str(sources[0])).stem if sources else "archlab"
        raise _Parsed(cfg)


def parse_fit(args: list[str]) -> Namespace:
    """The resolved `fit` config for these arguments, nothing built; a ConfigError names what the parser rejected."""
    return parse(["fit", *args])


def parse(args: list[str]) -> Namespace:
    """The resolved config of a command line (`fit ...`, `test ...`, ...), nothing built; a ConfigError names what the
    parser rejected."""
    seed_log = logging.getLogger("lightning.fabric.utilities.seed")  # "Seed set to 0", once per parse otherwise
    level = seed_log.level
    try:
        seed_log.setLevel(logging.WARNING)
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            _ParseOnly(args)
    except _Parsed as parsed:
        return parsed.config
    except ArgumentError as error:
        raise ConfigError(f"`archlab {' '.join(args)}` is invalid: {tracking.mask_url(str(error))}") from None
    finally:
        seed_log.setLevel(level)
    raise AssertionError("unreachable: _ParseOnly always raises")


def run(args: list[str] | None = None, *, callbacks: list[L.Callback] | None = None) -> ArchlabCLI:
    """Run one `archlab` command in this process; the single training path of fit, sweeps and studies."""
    wandb_run_id = os.environ.get("WANDB_RUN_ID")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*configure_optimizers` will be overridden by.*")
            # In-process callers (sweeps, studies, tests) pass `args` while sys.argv holds their own command line.
            warnings.filterwarnings("ignore", message=r".*LightningCLI's args parameter is intended.*")
            for noise in tracking.WARNING_NOISE:
                warnings.filterwarnings("ignore", message=noise)
            named = (sys.argv[1:] if args is None else args)[:1]
            known = named and named[0] in LightningCLI.subcommands()
            cli = (one_subcommand(named[0]) if known else ArchlabCLI)(args, callbacks=callbacks)
        if getattr(cli, "trainer", None) is not None:
            cli.finish_loggers()
        cli.release()
        return cli
    finally:
        # What this command set for itself must not reach the next one in this process (a sweep's next trial).
        if wandb_run_id is None:
            os.environ.pop("WANDB_RUN_ID", None)
        else:
            os.environ["WANDB_RUN_ID"] = wandb_run_id


def main(argv: list[str] | None = None, *, callbacks: list[L.Callback] | None = None) -> int:
    # W&B copies sys.argv into its run files and Lightning logs checkpoint paths: both see secrets masked.
    args = tracking.mask_argv()[1:] if argv is None else argv
    tracking.mask_logs()
    try:
        if args[:1] == ["sweep"]:
            from archlab.sweep import main as sweep_main

            return sweep_main(args[1:])
        run(args, callbacks=callbacks)
    except BaseException as error:
        status = lifecycle.exit_status(error, args)
        if status is None:
            raise
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
