"""The scale-out matrix: every experiment config in configs/ under `fast_dev_run` at {32-true, bf16-mixed} x {one
process, configs/trainer/ddp_cpu.yaml}, and two-process validation metrics equal to one-process ones for a
segmentation, a language-modelling and a generative config (the classification one is in tests/test_ddp.py).

The one-process half runs in pytest's process; the whole DDP half, and the equality fits, run in one
`torchrun --nproc_per_node 2 tests/ddp_matrix.py` launch (one start-up, one gloo process group for every run).
CIFAR-10 and Oxford-IIIT Pet are small files written in their real formats (tests/formats.py).
"""

import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

import ddp_matrix
from archlab import cli

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ddp_matrix.CONFIGS
PRECISIONS = list(ddp_matrix.PRECISIONS)
EQUALITY = sorted(ddp_matrix.EQUALITY)
# Metrics that do not depend on how the samples are grouped into batches. Left out: segmentation's val/dice_loss (and
# val/loss, which holds it), a soft Dice per batch, so its mean depends on the grouping; the autoencoder's val/fid,
# which scores freshly drawn samples.
COMPARED = {
    "unet_cells": ["val/ce", "val/dice", "val/dice_0", "val/dice_1", "val/iou", "val/iou_0", "val/iou_1"],
    "gpt_charlm": ["val/loss", "val/bpc", "val/ppl"],
    "lstm_charlm": ["val/loss", "val/bpc", "val/ppl"],
    "ae_digits": ["val/loss", "val/recon", "val/mse"],
}
RUN_FILES = ddp_matrix.RUN_FILES
MORE_FILES = {
    "ae_digits": ["images/val_reconstructions_epoch000.png", "images/val_samples_epoch000.png"],
    "gpt_charlm": ["tokenizer.json"],
    "lstm_charlm": ["tokenizer.json"],
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from formats import write_cifar, write_oxford_pets

    root = tmp_path_factory.mktemp("data")
    write_cifar(root, "cifar10", n_train=40, n_test=20)
    write_oxford_pets(root, n_trainval=10, n_test=4)
    return root


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    out = tmp_path_factory.mktemp("one")
    ddp_matrix.run_matrix(out, data_root, preset="cpu")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("ddp")
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())),
        *(str(ROOT / "tests/ddp_matrix.py"), str(out), str(data_root), "--preset", "ddp_cpu", "--equality", *EQUALITY),
    ]
    # One intra-op thread per process: two ranks share the 2-core machine.
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=out, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout


def record(out: Path, name: str, rank: int = 0) -> dict:
    result = json.loads((out / f"{name}.rank{rank}.json").read_text())
    assert result["ok"], result["error"]
    return result


def finite(values: dict[str, float]) -> bool:
    return bool(values) and all(math.isfinite(v) for v in values.values())


@pytest.mark.slow
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("config", CONFIGS)
def test_one_process(config: str, precision: str, one_process: Path) -> None:
    result = record(one_process, f"{config}-{precision}")
    assert (result["world_size"], result["precision"]) == (1, precision)
    assert finite(result["train_loss"]) and finite(result["test"])
    if precision != "32-true" and "test/loss" in result["test"]:
        # The same start, one step: bfloat16 autocast moves the loss a little, never far.
        full = record(one_process, f"{config}-32-true")["test"]["test/loss"]
        assert result["test"]["test/loss"] == pytest.approx(full, rel=0.1)


@pytest.mark.slow
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("config", CONFIGS)
def test_ddp_cpu(config: str, precision: str, two_processes: tuple[Path, str]) -> None:
    out, _ = two_processes
    ranks = [record(out, f"{config}-{precision}", rank) for rank in (0, 1)]
    for result in ranks:
        assert (result["world_size"], result["precision"]) == (2, precision)
        assert finite(result["train_loss"]) and finite(result["test"])
    # The epoch metrics are reduced over both processes: each one reports the same value.
    assert ranks[0]["test"] == ranks[1]["test"]
    # Each process draws its own augmentation, dropout and noise (archlab.tasks.base.seed_per_rank).
    assert ranks[0]["draw"] != ranks[1]["draw"]


@pytest.mark.slow
def test_ddp_cpu_runs_write_one_directory_and_print_one_summary_each(two_processes: tuple[Path, str]) -> None:
    out, stdout = two_processes
    names = [f"{c}-{p}" for c in CONFIGS for p in PRECISIONS] + [f"{c}-equality" for c in EQUALITY]
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(names)
    for config in CONFIGS:
        printed = re.findall(rf"(?<![\w-]){config}: results", stdout)
        assert len(printed) == len(PRECISIONS) + (config in EQUALITY), config


class Validated(L.Callback):
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        self.buffers = {k: v.clone() for k, v in pl_module.named_buffers() if k.startswith("code_")}


@pytest.mark.slow
@pytest.mark.parametrize("config", EQUALITY)
def test_two_process_validation_equals_one_process(config: str, two_processes: tuple[Path, str], tmp_path) -> None:
    out, _ = two_processes
    run = out / f"runs/{config}-equality"
    ranks = [record(out, f"{config}-equality", rank) for rank in (0, 1)]
    assert ranks[0]["val"] == ranks[1]["val"]
    # An even validation split: the DistributedSampler repeats no sample to even out the two shards (the char-LSTM's
    # streams are shared out by rows, every window to both processes).
    assert ranks[0]["val_samples"] % ranks[0]["val_replicas"] == 0

    validated = Validated()
    cli.run(
        [
            "validate", "-c", str(run / "config.yaml"), "-c", str(ROOT / "configs/trainer/cpu.yaml"),
            "--trainer.strategy", "auto", "--ckpt_path", str(run / "checkpoints/last.ckpt"), "--tracker", "csv",
            "--run_dir", str(tmp_path / "one"),
        ],
        callbacks=[validated],
    )  # fmt: skip
    # last.ckpt holds the weights that the two-process validation ran with.
    for key in COMPARED[config]:
        assert ranks[0]["val"][key] == pytest.approx(validated.metrics[key], rel=1.0e-5, abs=1.0e-6), key
    # The autoencoder's sampling Gaussian is fitted to every process's validation codes, not to rank 0's half.
    state = torch.load(run / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    for key, value in validated.buffers.items():
        torch.testing.assert_close(state[key], value, rtol=1.0e-4, atol=1.0e-5)

    # Each file of the run once, written by rank 0; one row of validation metrics for the one epoch.
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and p.name != ".lock")
    assert files == sorted(RUN_FILES + MORE_FILES.get(config, []))
    rows = (run / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert sum(1 for row in rows[1:] if row.split(",")[header.index(COMPARED[config][0])]) == 1
