"""DDP on CPU (configs/trainer/ddp_cpu.yaml: two gloo processes), through the real command in a subprocess.

One `fit` under two processes of a tiny CNN on digits, then one single-process `validate` of its checkpoint: the
validation loss and accuracy that the two processes reduced equal the single-process values, and the run directory
holds each of its files once, written by one process. And configs/trainer/multinode.yaml under the README's torchrun
recipe, with two torchrun agents on this machine standing in for two nodes.
"""

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import ddp_matrix

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    *("-c", str(ROOT / "configs/cnn_digits.yaml"), "--model.net.channels", "[8, 16]"),
    *("--trainer.max_epochs", "1", "--trainer.limit_train_batches", "6", "--tracker", "csv"),
]


def archlab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # One intra-op thread per process: two DDP ranks share the 2-core machine.
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "archlab", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def logged(run: Path, key: str) -> list[float]:
    return [float(row[key]) for row in rows(run) if row.get(key)]


@pytest.mark.slow
def test_two_process_metrics_equal_one_process_and_files_are_written_once(tmp_path: Path) -> None:
    ddp = tmp_path / "runs/ddp"
    fit = archlab(
        "fit", *TINY, "-c", str(ROOT / "configs/trainer/ddp_cpu.yaml"), "--test_after_fit", "false",
        "--run_dir", str(ddp), cwd=tmp_path,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    # The validation split holds 180 samples: 90 per process, none repeated by the DistributedSampler's padding.
    one = tmp_path / "runs/one"
    validate = archlab(
        "validate", "-c", str(ddp / "config.yaml"), "-c", str(ROOT / "configs/trainer/cpu.yaml"),
        "--trainer.strategy", "auto", "--ckpt_path", str(ddp / "checkpoints/last.ckpt"), "--tracker", "csv",
        "--run_dir", str(one), cwd=tmp_path,
    )  # fmt: skip
    assert validate.returncode == 0, validate.stderr[-3000:]

    # last.ckpt holds the weights that epoch 0's validation ran with; both runs see every validation sample once.
    for key in ("val/loss", "val/acc", "val/acc_top5"):
        (two_processes,), (one_process,) = logged(ddp, key), logged(one, key)
        assert two_processes == pytest.approx(one_process, abs=1.0e-6), key

    # One run directory, each file in it once: rank 1 reused rank 0's directory and wrote none of the records.
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["ddp", "one"]
    files = sorted(str(p.relative_to(ddp)) for p in ddp.rglob("*") if p.is_file() and p.name != ".lock")
    assert files == ddp_matrix.RUN_FILES
    assert len(logged(ddp, "val/loss")) == 1 and len(logged(ddp, "train/loss_epoch")) == 1  # one row per epoch
    config = yaml.safe_load((ddp / "config.yaml").read_text())
    assert config["trainer"]["devices"] == 2
    assert config["trainer"]["strategy"]["init_args"]["process_group_backend"] == "gloo"
    assert fit.stdout.count("cnn_digits: results") == 1  # the summary table, printed by rank 0 only


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_multinode_preset_under_torchrun_as_two_nodes_on_one_machine(tmp_path: Path) -> None:
    """The README's torchrun recipe for configs/trainer/multinode.yaml, with two torchrun agents on this machine
    standing in for two nodes (one CPU process each, gloo): both join one run, which writes one directory."""
    run = tmp_path / "runs/multinode"
    fit = [
        *("-m", "archlab", "fit", *TINY, "-c", str(ROOT / "configs/trainer/multinode.yaml")),
        *("--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32-true"),
        *("--test_after_fit", "false", "--run_dir", str(run)),
    ]
    torchrun = [
        *(sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1"),
        *("--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{free_port()}"),
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    nodes = [
        subprocess.Popen(
            [*torchrun, *fit], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    try:
        outputs = [node.communicate(timeout=300) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(err[-2000:] for _, err in outputs)
    assert sum(out.count("cnn_digits: results") for out, _ in outputs) == 1  # global rank 0 only
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["multinode"]
    assert (run / "checkpoints/last.ckpt").is_file() and len(logged(run, "val/loss")) == 1
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["num_nodes"] == 2
