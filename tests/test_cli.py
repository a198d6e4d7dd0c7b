"""The `archlab` command end to end, in subprocesses, as a user runs it."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml"))
FAST = ["--trainer.fast_dev_run", "true", "--tracker", "csv"]


def archlab(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "archlab", *args],
        cwd=cwd,
        env={**os.environ, "WANDB_MODE": "offline", **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


def run_dirs(runs: Path) -> list[Path]:
    return sorted(p.parent for p in runs.glob("*/*/config.yaml"))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from formats import write_cifar, write_oxford_pets

    root = tmp_path_factory.mktemp("data")
    write_cifar(root, "cifar10", n_train=40, n_test=20)
    write_cifar(root, "cifar100", n_train=40, n_test=20)
    write_oxford_pets(root, n_trainval=10, n_test=4)
    return root


def test_layout_keeps_the_stdlib_platform_module() -> None:
    assert not (ROOT / "platform" / "__init__.py").exists()
    code = "import platform, archlab; print(platform.system(), platform.__file__, archlab.__file__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/").stdout
    system, platform_file, archlab_file = out.split()
    assert system == "Linux"
    assert Path(platform_file).parent == Path(os.__file__).parent  # the stdlib's, not our source root
    assert Path(archlab_file).parent == ROOT / "platform" / "archlab"


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_config_runs_fast_dev_run(config: Path, tmp_path: Path, data_root: Path) -> None:
    extra = ["--data.root", str(data_root)] if "cifar" in config.stem or "pets" in config.stem else []
    result = archlab(
        "fit", "-c", str(config), "-c", str(ROOT / "configs/trainer/cpu.yaml"), *FAST, *extra, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert ": results" in result.stdout and "test/" in result.stdout  # fit went on to test and printed the table


@pytest.mark.parametrize("config", [*CONFIGS, *(ROOT / "configs/trainer").glob("*.yaml")], ids=lambda p: p.stem)
def test_configs_have_no_numeric_looking_strings(config: Path) -> None:
    def walk(value, key=""):
        if isinstance(value, dict):
            for k, v in value.items():
                yield from walk(v, f"{key}.{k}" if key else k)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                yield from walk(v, f"{key}[{i}]")
        elif isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", value):
            yield key

    assert list(walk(yaml.safe_load(config.read_text()))) == []


def test_fit_then_test_and_predict_from_the_saved_run(tmp_path: Path) -> None:
    fit = archlab(
        "fit", "-c", str(ROOT / "configs/cnn_digits.yaml"), "--tracker", "csv", "--trainer.max_epochs", "2",
        "--model.net.channels", "[8, 16]", cwd=tmp_path,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "runs")
    assert run.parent.name == "cnn_digits"
    assert "best val/acc" in fit.stdout and "test/acc" in fit.stdout
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["init_args"]["net"]["init_args"]["num_classes"] == 10  # linked from the data
    assert saved["model"]["init_args"]["net"]["init_args"]["in_channels"] == 1
    best = run / "checkpoints" / "best.ckpt"
    assert best.is_file()

    tested = archlab("test", "-c", str(run / "config.yaml"), "--ckpt_path", str(best), "--tracker", "csv", cwd=tmp_path)
    assert tested.returncode == 0, tested.stderr[-3000:]
    assert "test/acc" in tested.stdout
    predicted = archlab(
        "predict", "-c", str(run / "config.yaml"), "--ckpt_path", str(best), "--tracker", "csv", cwd=tmp_path
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    (csv_path,) = (tmp_path / "runs").glob("cnn_digits/*/predictions.csv")
    rows = csv_path.read_text().splitlines()
    assert rows[0] == "index,label,confidence,target"
    assert len(rows) > 100


def test_wandb_offline_run_keeps_the_api_key_out(tmp_path: Path) -> None:
    canary = "canary0123456789abcdef0123456789abcdef0123"
    result = archlab(
        "fit", "-c", str(ROOT / "configs/cnn_digits.yaml"), "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "2", "--model.net.channels", "[8]", cwd=tmp_path,
        env={"WANDB_MODE": "offline", "WANDB_API_KEY": canary},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "runs")
    offline = list(run.glob("wandb/offline-run-*"))
    assert len(offline) == 1
    assert f"wandb sync {offline[0].relative_to(tmp_path)}" in result.stdout
    assert canary not in result.stdout + result.stderr
    for path in run.rglob("*"):
        if path.is_file():
            assert canary.encode() not in path.read_bytes(), path


def test_cifar100_shapes_reach_the_net(tmp_path: Path, data_root: Path) -> None:
    result = archlab(
        "fit", "-c", str(ROOT / "configs/resnet_cifar10.yaml"), "--data", "archlab.data.CIFAR100",
        "--data.root", str(data_root), "--trainer.max_epochs", "1", "--tracker", "csv", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "runs")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["init_args"]["net"]["init_args"]["num_classes"] == 100


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--model.net.dept", "56"], "dept"),
        (["--trainer.max_epochs", "many"], "max_epochs"),
        (["--data.batch_sise", "8"], "batch_sise"),
    ],
)
def test_unknown_keys_and_wrong_types_are_named(args: list[str], named: str, tmp_path: Path) -> None:
    result = archlab("fit", "-c", str(ROOT / "configs/resnet_digits.yaml"), *args, cwd=tmp_path)
    assert result.returncode != 0
    assert named in result.stderr
    assert not (tmp_path / "runs").exists()  # stopped before a run started


@pytest.mark.parametrize(
    ("config", "args", "expected"),
    [
        ("resnet_digits", ["--model.net.depth", "21"], ["depth", "21", "6n+2"]),
        ("resnet_digits", ["--model.net.num_classes", "7"], ["model.net.num_classes", "7", "num_classes=10"]),
        ("timm_cifar10", ["--model.net.name", "resnet81"], ["resnet81", "resnet18"]),
        ("resnet_cifar10", ["--data.root", "{tmp}/nowhere"], ["CIFAR", "nowhere", "--data.download"]),
    ],
)
def test_bad_values_give_one_paragraph_not_a_traceback(
    config: str, args: list[str], expected: list[str], tmp_path: Path, data_root: Path
) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "cifar" in config and "--data.root" not in args:
        args += ["--data.root", str(data_root)]
    result = archlab("fit", "-c", str(ROOT / f"configs/{config}.yaml"), *args, "--tracker", "csv", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    for word in expected:
        assert word in result.stderr, (word, result.stderr[-2000:])


def test_help_print_config_and_shorthand_overrides(tmp_path: Path) -> None:
    helped = archlab("fit", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "--tracker" in helped.stdout and "--trainer.max_epochs" in helped.stdout
    printed = archlab(
        "fit", "-c", str(ROOT / "configs/resnet_digits.yaml"), "--model.net.depth", "56", "--print_config", cwd=tmp_path
    )
    assert printed.returncode == 0, printed.stderr[-2000:]
    net = yaml.safe_load(printed.stdout)["model"]["init_args"]["net"]
    assert net["class_path"] == "archlab.models.ResNet" and net["init_args"]["depth"] == 56


def test_tensorboard_tracker_writes_event_files(tmp_path: Path) -> None:
    result = archlab(
        "fit", "-c", str(ROOT / "configs/cnn_digits.yaml"), "--tracker", "tensorboard", "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "2", "--model.net.channels", "[8]", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "runs")
    assert list(run.glob("events.out.tfevents.*"))
