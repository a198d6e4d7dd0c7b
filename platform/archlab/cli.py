"""The `archlab` command: LightningCLI over archlab's tasks and DataModules.

    archlab fit -c configs/resnet_digits.yaml [-c configs/trainer/gpu.yaml] [--model.net.depth 56]
    archlab test -c runs/resnet_digits/<time>/config.yaml --ckpt_path runs/resnet_digits/<time>/checkpoints/best.ckpt

`fit` trains, then tests the best checkpoint and prints one table of metrics. Every run gets its own directory,
runs/<experiment>/<time>/ (laid out by archlab.rundir), holding the resolved config, checkpoints, predictions and the
tracker's files.

Everything is built once per command: the DataModule (and its vocabulary), the net (and any weights it loads from
--init_from), the task. LightningCLI's own instantiation receives the DataModule and net already built.
"""

import contextlib
import importlib
import inspect
import logging
import os
import sys
import time
import warnings
from argparse import ArgumentError
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from rich.console import Console
from rich.table import Table
from torch import nn

from archlab import tracking
from archlab.errors import ArchlabError, ConfigError, DatasetNotFoundError
from archlab.predictions import PredictionWriter
from archlab.rundir import RunDir, new_run_dir
from archlab.tasks import Task


class RunConfig(SaveConfigCallback):
    """Saves the resolved config beside the run and logs it to the tracker once, with secrets masked."""

    def __init__(self, parser: LightningArgumentParser, config: Namespace, **kwargs: Any) -> None:
        super().__init__(parser, config, save_to_log_dir=False, **kwargs)

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        config = tracking.redact(yaml.safe_load(self.parser.dump(self.config, skip_none=False)))
        run = RunDir(trainer.default_root_dir)
        for logger in trainer.loggers:
            logger.log_hyperparams({**config, "run_dir": str(run.root)})
        # The file reruns the run elsewhere: `archlab test -c RUN/config.yaml` must not write into (and over) RUN.
        run.config.parent.mkdir(parents=True, exist_ok=True)
        run.config.write_text(yaml.safe_dump({**config, "run_dir": None}, sort_keys=False))


class ArchlabParser(LightningArgumentParser):
    """LightningCLI's parser, with a one-line usage above errors instead of every option the Trainer has."""

    def print_usage(self, file: Any = None) -> None:
        prog = self.prog.replace(" [options]", "")
        if " " not in prog:
            prog += " {fit,validate,test,predict,sweep}"
        (file or sys.stderr).write(f"usage: {prog} -c CONFIG [--section.key VALUE ...]\n")


class ArchlabCLI(LightningCLI):
    def __init__(self, args: list[str] | None = None, *, callbacks: list[L.Callback] | None = None) -> None:
        self.extra_callbacks = callbacks or []
        self.results: dict[str, float] = {}
        self.run_dir: Path | None = None
        # The monitored metric's best value in this run (the checkpoint callback's), for sweeps and studies.
        self.monitor: str | None = None
        self.best_score: float | None = None
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
            "--init_from",
            type=str | None,
            default=None,
            help="Initialise the net from the weights of an archlab checkpoint (RUN/checkpoints/best.ckpt) or a "
            "state-dict file; keys the net lacks or the file lacks are listed. The weights then live in this run's "
            "own checkpoints, so test and predict of this run need only its directory.",
        )

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand]
        if not cfg.experiment:
            sources = cfg.get("config") or []
            cfg.experiment = Path(str(sources[0])).stem if sources else "archlab"
        if cfg.init_from and cfg.get("ckpt_path"):
            raise ConfigError(
                "--init_from and --ckpt_path exclude each other: --ckpt_path continues that run (its weights, "
                "optimizer and epoch), --init_from starts a new run from a checkpoint's net weights; give one."
            )
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
        self.run_dir = Path(cfg.run_dir) if cfg.run_dir else new_run_dir(cfg.runs_root, cfg.experiment).root
        self.run_dir.mkdir(parents=True, exist_ok=True)
        run = RunDir(self.run_dir)
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
            kwargs["logger"] = tracking.make_logger(
                cfg.tracker, run.tracker, experiment=cfg.experiment, project=cfg.project
            )
        callbacks = list(trainer_cfg.get("callbacks") or [])
        checkpoints = [c for c in callbacks if isinstance(c, ModelCheckpoint)]
        if self.subcommand == "fit" and trainer_cfg.get("enable_checkpointing") is not False:
            # The run directory holds the checkpoints, whoever configured the callback; archlab's own only when the
            # user configured none (Lightning would otherwise add a default one that monitors nothing).
            for callback in checkpoints:
                if callback.dirpath is None:
                    callback.dirpath = str(run.checkpoints)
            if not checkpoints:
                callbacks.append(
                    ModelCheckpoint(
                        dirpath=run.checkpoints,
                        monitor=self.model.monitor,
                        mode=self.model.mode,
                        filename="best",
                        save_last=True,
                    )
                )
        if self.subcommand == "predict":
            callbacks.append(PredictionWriter(run))
        kwargs["callbacks"] = [*callbacks, *self.extra_callbacks]
        return super().instantiate_trainer(**kwargs)

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            # A run that raises (a pruned or failed sweep trial, Ctrl-C) must not stay open and merge into the next.
            self.finish_loggers()
            raise

    def fit(self, **kwargs: Any) -> None:
        start = time.perf_counter()
        self.trainer.fit(**kwargs)
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
        records = [tracking.describe(logger) for logger in self.trainer.loggers]
        # W&B prints its own run summary when the run closes; close it first so ours is the last word.
        self.finish_loggers()
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
        console.print(f"run:        {self.run_dir}")
        if (self.run_dir / "config.yaml").is_file():
            console.print(f"config:     {self.run_dir / 'config.yaml'}")
        if best_checkpoint:
            console.print(f"checkpoint: {best_checkpoint}")
        for record in records:
            console.print(record)


def has_stage(datamodule: L.LightningDataModule, stage: str) -> bool:
    hook = getattr(type(datamodule), f"{stage}_dataloader", None)
    return hook is not None and hook is not getattr(L.LightningDataModule, f"{stage}_dataloader")


@dataclass
class Built:
    data: L.LightningDataModule
    net: nn.Module | None
    model: Task | None = None


def build(
    cfg: Namespace,
    *,
    data: L.LightningDataModule | None = None,
    init_from: str | None = None,
    task: bool = True,
    meta: bool = False,
) -> Built:
    """Build a `fit`/`test`/... config's DataModule (unless `data` is given) and net, once.

    The data's shapes are linked into `cfg` first; with `init_from`, the net's weights are read from that file;
    with `task` (the default), the task is built around the net as well; with `meta`, net and task are built on the
    meta device (no memory, no initialisation), which checks every argument at the cost of a constructor call.
    Errors are archlab's own one-paragraph ones: built here rather than inside jsonargparse's instantiation, they are
    not folded into a union-validation message.
    """
    data = data if data is not None else instantiate(cfg.data)
    link_data_shapes(cfg, data)
    net_cfg = cfg.model.init_args.get("net") if cfg.model.get("init_args") else None
    device = torch.device("meta") if meta else contextlib.nullcontext()
    net = None
    with device:
        if isinstance(net_cfg, Namespace) and net_cfg.get("class_path"):
            net = instantiate(net_cfg)
            if init_from and not meta:
                load_weights(net, init_from)
        model = None
        if task:
            args = cfg.model.init_args.as_dict() if cfg.model.get("init_args") else {}
            if net is not None:
                args["net"] = net
            model = import_class(cfg.model.class_path)(**args)
    return Built(data=data, net=net, model=model)


def link_data_shapes(cfg: Namespace, data: L.LightningDataModule) -> None:
    """Copy the DataModule's shapes (in_channels, num_classes, vocab_size, pad_id...) into the task and its net.

    jsonargparse's link_arguments needs one fixed target key, but nets differ in which shapes they take, so the
    link is made here: a shape goes to every constructor among the task and its net that has a parameter of that
    name. A value the user set that disagrees with the data is an error, never silently replaced.
    """
    shapes = getattr(data, "shapes", None)
    if not shapes:
        return
    targets = [("model", cfg.model)]
    net = cfg.model.init_args.get("net") if cfg.model.get("init_args") else None
    if isinstance(net, Namespace) and net.get("class_path"):
        targets.append(("model.net", net))
    for prefix, target in targets:
        params = inspect.signature(import_class(target.class_path)).parameters
        for key, value in shapes.items():
            if key not in params:
                continue
            current, default = target.init_args.get(key), params[key].default
            if current not in (None, default, value):
                raise ConfigError(
                    f"{prefix}.{key} is {current} but the data ({cfg.data.class_path}) provides {key}={value}. "
                    f"Remove {prefix}.{key} from the config: the DataModule sets it."
                )
            target.init_args[key] = value


def load_weights(net: nn.Module, path: str) -> None:
    """Load a net's weights from an archlab checkpoint (`state_dict` keys `net.<...>`) or a plain state dict.

    Weights present in both with the same shape are copied; the rest of the net keeps its fresh initialisation (a
    new head, say). Shapes that disagree, or no key in common, are an error that lists them.
    """
    file = Path(path)
    if not file.is_file():
        raise DatasetNotFoundError(
            f"--init_from {file.resolve()} does not exist; pass a checkpoint written by `archlab fit` "
            "(runs/<experiment>/<time>/checkpoints/best.ckpt) or a state-dict file."
        )
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated, foreign or unsafe file: say which and why
        raise ConfigError(
            f"--init_from {file}: cannot read it as a checkpoint: {type(error).__name__}: {error}"
        ) from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ConfigError(f"--init_from {file} holds no state dict.")
    if any(key.startswith("net.") for key in state):
        state = {key.removeprefix("net."): value for key, value in state.items() if key.startswith("net.")}
    own = net.state_dict()
    mismatched = [
        f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}"
        for key in own
        if key in state and state[key].shape != own[key].shape
    ]
    common = [key for key in own if key in state and state[key].shape == own[key].shape]
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    if mismatched or not common:
        raise ConfigError(
            f"--init_from {file} does not fit model.net ({type(net).__name__}): "
            f"{len(mismatched)} shape(s) differ (checkpoint vs net): {', '.join(mismatched[:10]) or 'none'}; "
            f"{len(common)} key(s) in common. Keys the checkpoint lacks: {', '.join(missing[:10]) or 'none'}"
            f"{' ...' if len(missing) > 10 else ''}. The checkpoint must come from the same net with the same sizes "
            "(and, for text, the same vocabulary: pass its run's tokenizer.json as --data.vocab_path)."
        )
    net.load_state_dict({key: state[key] for key in common}, strict=False)
    notes = []
    if missing:
        notes.append(
            f"{len(missing)} fresh (not in the checkpoint): {', '.join(missing[:8])}{' ...' * (len(missing) > 8)}"
        )
    if unexpected:
        notes.append(f"{len(unexpected)} unused: {', '.join(unexpected[:8])}{' ...' * (len(unexpected) > 8)}")
    print(
        f"init_from {file}: {len(common)} tensors loaded" + (f"; {'; '.join(notes)}" if notes else ""), file=sys.stderr
    )


@contextlib.contextmanager
def archlab_errors():
    """Re-raise an ArchlabError that jsonargparse's instantiation wrapped in its own error, as itself."""
    try:
        yield
    except ArchlabError:
        raise
    except Exception as error:
        cause = error
        while cause is not None and not isinstance(cause, ArchlabError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise cause from None


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
    seed_log = logging.getLogger("lightning.fabric.utilities.seed")  # "Seed set to 0", once per parse otherwise
    level = seed_log.level
    try:
        seed_log.setLevel(logging.WARNING)
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            _ParseOnly(["fit", *args])
    except _Parsed as parsed:
        return parsed.config
    except ArgumentError as error:
        raise ConfigError(f"`archlab fit {' '.join(args)}` is invalid: {tracking.mask_url(str(error))}") from None
    finally:
        seed_log.setLevel(level)
    raise AssertionError("unreachable: _ParseOnly always raises")


def import_class(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def instantiate(component: Namespace) -> Any:
    init_args = component.get("init_args")
    return import_class(component.class_path)(**(init_args.as_dict() if init_args else {}))


def run(args: list[str] | None = None, *, callbacks: list[L.Callback] | None = None) -> ArchlabCLI:
    """Run one `archlab` command in this process; the single training path of fit, sweeps and studies."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*configure_optimizers` will be overridden by.*")
        # In-process callers (sweeps, studies, tests) pass `args` while sys.argv holds their own command line.
        warnings.filterwarnings("ignore", message=r".*LightningCLI's args parameter is intended.*")
        cli = ArchlabCLI(args, callbacks=callbacks)
    if getattr(cli, "trainer", None) is not None:
        cli.finish_loggers()
    return cli


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        if args[:1] == ["sweep"]:
            from archlab.sweep import main as sweep_main

            return sweep_main(args[1:])
        run(argv)
    except ArchlabError as error:
        if os.environ.get("ARCHLAB_DEBUG"):
            raise
        print(f"archlab: error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
