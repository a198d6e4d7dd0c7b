"""The CI matrix's worker: every experiment config in configs/ under `fast_dev_run`, at 32-true and bf16-mixed, one
after the other in this process, each through the real command (archlab.cli.run) with one JSON record per run; then
(`--equality`) one short real fit per named config, whose validation metrics the test compares with a one-process
validation of its checkpoint.

One process: tests/test_ddp_matrix.py imports `run_matrix` and calls it in pytest's process. Two processes: the
test launches this file once under `torchrun --nproc_per_node 2`, with configs/trainer/ddp_cpu.yaml; Lightning sees
the torchelastic environment and spawns nothing, and the gloo process group, created by the first run, serves every
run after it, so the whole DDP half pays Python's and Lightning's start-up once.

    torchrun --nproc_per_node 2 tests/ddp_matrix.py OUT_DIR DATA_ROOT [--configs ...] [--equality ...]
"""

import argparse
import json
import os
import traceback
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
PRECISIONS = {"32-true": [], "bf16-mixed": ["-c", str(ROOT / "configs/trainer/bf16.yaml")]}
# Files in the datasets' real formats (tests/formats.py) under DATA_ROOT stand in for the downloads.
NEEDS_FILES = ("cifar", "pets")
# Small enough for a 2-core machine: fast_dev_run runs one batch of each stage, its size is what costs.
SMALL = ["--data.batch_size", "4", "--trainer.fast_dev_run", "true", "--tracker", "csv"]
SMALLER = {
    "bert": ["--model.net.dim", "32", "--model.net.num_layers", "1", "--data.vocab_size", "300"],
    "gpt": ["--model.net.dim", "32", "--model.net.num_layers", "1", "--data.seq_len", "32"],
    "lstm_charlm": ["--model.net.hidden_dim", "32", "--data.seq_len", "32"],
    "dcgan": ["--model.fid_samples", "64"],
    "ae_digits": ["--model.fid_samples", "64"],
    "vae": ["--model.fid_samples", "64"],
    "unet_pets": ["--model.net.depth", "2", "--model.net.width", "8", "--data.image_size", "32"],
}


class Record(L.Callback):
    """What a run did in this process: its losses and metrics, and a draw from torch's global generator in the
    first training step (each rank of a DDP run must draw from its own stream)."""

    def __init__(self) -> None:
        self.record: dict = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.record["draw"] = torch.rand(()).item()
            self.record["world_size"] = trainer.world_size
            self.record["precision"] = trainer.precision

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.record["train_loss"] = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train")}

    def on_validation_end(self, trainer, pl_module) -> None:
        self.record["val"] = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        loader = trainer.val_dataloaders
        self.record["val_samples"] = len(loader.dataset)
        self.record["val_replicas"] = getattr(loader.sampler, "num_replicas", 1)  # the processes that share it

    def on_test_end(self, trainer, pl_module) -> None:
        self.record["test"] = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}


# The metric-equality fits: tiny nets, two training batches, the whole validation split (an even number of samples,
# so the DistributedSampler repeats none).
EQUALITY = {
    "unet_cells": ["--model.net.depth", "2", "--model.net.width", "8", "--data.image_size", "32"],
    "gpt_charlm": ["--model.net.dim", "32", "--model.net.num_layers", "1", "--data.seq_len", "64"],
    "ae_digits": ["--model.fid_samples", "64"],
    "lstm_charlm": ["--model.net.hidden_dim", "32", "--data.seq_len", "32", "--data.batch_size", "8"],
}
# What a short fit with the CSV tracker writes into its run directory, each file once (by one process).
RUN_FILES = [
    "checkpoints/best.ckpt",
    "checkpoints/last.ckpt",
    "config.yaml",
    "hparams.yaml",
    "metrics.csv",
    "status.json",
]
SHORT = [
    *("--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.num_sanity_val_steps", "0"),
    *("--tracker", "csv", "--trainer.enable_progress_bar", "false"),
]


def smaller(config: str) -> list[str]:
    return [arg for key, args in SMALLER.items() if config.startswith(key) for arg in args]


def run_one(config: str, precision: str, *, out: Path, data_root: Path, preset: str) -> dict:
    args = [
        *PRECISIONS[precision],
        *SMALL,
        *smaller(config),
        *(["--data.root", str(data_root)] if any(key in config for key in NEEDS_FILES) else []),
    ]
    return run_fit(config, f"{config}-{precision}", args, out=out, preset=preset)


def run_fit(config: str, name: str, more: list[str], *, out: Path, preset: str) -> dict:
    from archlab import cli

    record = Record()
    args = [
        *("fit", "-c", str(ROOT / f"configs/{config}.yaml"), "-c", str(ROOT / f"configs/trainer/{preset}.yaml")),
        *more,
        *("--run_dir", str(out / "runs" / name)),
    ]
    try:
        cli.run(args, callbacks=[record])
        result = {"ok": True, **record.record}
    except BaseException as error:  # SystemExit too: a bad argument must fail its run, not the whole matrix
        result = {"ok": False, "error": "".join(traceback.format_exception(error))[-4000:], **record.record}
    rank = int(os.environ.get("RANK", 0))
    (out / f"{name}.rank{rank}.json").write_text(json.dumps(result))
    return result


def run_matrix(out: Path, data_root: Path, *, preset: str, configs: list[str] | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for config in CONFIGS if configs is None else configs:
        for precision in PRECISIONS:
            run_one(config, precision, out=out, data_root=data_root, preset=preset)


def run_equality(out: Path, *, preset: str, configs: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for config in configs:
        run_fit(config, f"{config}-equality", [*EQUALITY[config], *SHORT, "--test_after_fit", "false"], out=out,
                preset=preset)  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("data_root", type=Path)
    parser.add_argument("--preset", default="ddp_cpu")
    parser.add_argument("--configs", nargs="*", help="the matrix's configs (default: every one)")
    parser.add_argument("--equality", nargs="*", default=[], choices=sorted(EQUALITY))
    options = parser.parse_args()
    run_matrix(options.out, options.data_root, preset=options.preset, configs=options.configs)
    run_equality(options.out, preset=options.preset, configs=options.equality)
