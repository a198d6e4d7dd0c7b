"""The `archlab` command: LightningCLI over archlab's tasks and DataModules.

    archlab fit -c configs/resnet_digits.yaml [-c configs/trainer/gpu.yaml] [--model.net.depth 56]
    archlab test -c runs/resnet_digits/<time>/config.yaml --ckpt_path runs/resnet_digits/<time>/checkpoints/best.ckpt

`fit` trains, then tests the best checkpoint and prints one table of metrics. Every run gets its own directory,
runs/<experiment>/<time>/, holding the resolved config, checkpoints, predictions and the tracker's files.
"""

import importlib
import inspect
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from rich.console import Console
from rich.table import Table

from archlab import tracking
from archlab.errors import ArchlabError, ConfigError
from archlab.tasks import Task


class RunConfig(SaveConfigCallback):
    """Saves the resolved config beside the run and logs it to the tracker once, with secrets masked."""

    def __init__(self, parser: LightningArgumentParser, config: Namespace, **kwargs: Any) -> None:
        super().__init__(parser, config, save_to_log_dir=False, **kwargs)

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        config = tracking.redact(yaml.safe_load(self.parser.dump(self.config, skip_none=False)))
        path = Path(trainer.default_root_dir) / self.config_filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        for logger in trainer.loggers:
            logger.log_hyperparams(config)


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

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand]
        if not cfg.experiment:
            sources = cfg.get("config") or []
            cfg.experiment = Path(str(sources[0])).stem if sources else "archlab"
        self.data = link_data_shapes(cfg)
        check_net(cfg)
        self.run_dir = Path(cfg.run_dir) if cfg.run_dir else tracking.make_run_dir(cfg.runs_root, cfg.experiment)
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        # Train with the very DataModule whose shapes built the model: a second instance may differ (a subword
        # vocabulary trained again need not come out the same size).
        self.datamodule = self.data

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        cfg = self.config[self.subcommand]
        kwargs.setdefault("default_root_dir", str(self.run_dir))
        if cfg.trainer.logger in (None, True):
            kwargs["logger"] = tracking.make_logger(
                cfg.tracker, self.run_dir, experiment=cfg.experiment, project=cfg.project
            )
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.extend(self.extra_callbacks)
        return trainer

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
        if best and checkpoint.best_model_score is not None:
            self.results[f"best {checkpoint.monitor}"] = float(checkpoint.best_model_score)
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
        outputs = self.trainer.predict(**kwargs)
        if self.trainer.is_global_zero and outputs:
            Console(soft_wrap=True).print(f"predictions: {self.model.write_predictions(outputs, self.run_dir)}")

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


def link_data_shapes(cfg: Namespace) -> L.LightningDataModule:
    """Copy the DataModule's shapes (in_channels, num_classes, vocab_size...) into the task and its net.

    jsonargparse's link_arguments needs one fixed target key, but nets differ in which shapes they take, so the
    link is made here: a shape goes to every constructor among the task and its net that has a parameter of that
    name. A value the user set that disagrees with the data is an error, never silently replaced.
    """
    data = instantiate(cfg.data)
    shapes = getattr(data, "shapes", None)
    if not shapes:
        return data
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
    return data


def check_net(cfg: Namespace) -> None:
    """Build the net once before anything else, so that an impossible shape or an unknown name is reported as
    archlab's own one-paragraph error; raised inside jsonargparse's instantiation it would arrive folded into a
    union-validation message."""
    net = cfg.model.init_args.get("net") if cfg.model.get("init_args") else None
    if isinstance(net, Namespace) and net.get("class_path"):
        instantiate(net)


def import_class(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def instantiate(component: Namespace) -> Any:
    init_args = component.get("init_args")
    return import_class(component.class_path)(**(init_args.as_dict() if init_args else {}))


def run(args: list[str] | None = None, *, callbacks: list[L.Callback] | None = None) -> ArchlabCLI:
    """Run one `archlab` command in this process; the single training path of fit, sweeps and studies."""
    warnings.filterwarnings("ignore", message=r".*configure_optimizers` will be overridden by.*")
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
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
