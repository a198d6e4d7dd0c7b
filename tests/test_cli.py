"""The `archlab` command end to end, in subprocesses, as a user runs it."""

import functools
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


# Every config runs in tests/test_ddp_matrix.py (in-process, some nets shrunk); here, through `python -m archlab` in a
# fresh process, those whose nets the matrix shrinks, at their own size, and one CNN.
FULL_SIZE = ["bert_mlm", "bert_topics", "cnn_digits", "dcgan_digits", "gpt_charlm", "lstm_charlm", "unet_pets"]


@pytest.mark.slow
@pytest.mark.parametrize("config", [ROOT / f"configs/{name}.yaml" for name in FULL_SIZE], ids=lambda p: p.stem)
def test_configs_run_fast_dev_run_through_the_command(config: Path, tmp_path: Path, data_root: Path) -> None:
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


@pytest.mark.slow
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
@pytest.mark.slow
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
@pytest.mark.slow
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


@pytest.mark.slow
def test_help_print_config_and_shorthand_overrides(tmp_path: Path) -> None:
    helped = archlab("fit", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "--tracker" in helped.stdout and "--trainer.max_epochs" in helped.stdout
    printed = archlab(
        "fit", "-c", str(ROOT / "configs/resnet_digits.yaml"), "--model.net.depth", "56", "--print_config", cwd=tmp_path
    )
    assert printed.returncode == 0, printed.stderr[-2000:]
    net = yaml.safe_load(printed.stdout)["model"]["init_args"]["net"]
    assert net["class_path"] == "archlab.models.ResNet" and net["init_args"]["depth"] == 56
    assert net["init_args"]["in_channels"] == 1  # the data's shape, linked: what the run's config.yaml will hold
    assert not (tmp_path / "runs").exists()  # printing starts no run


def test_tensorboard_tracker_writes_event_files(tmp_path: Path) -> None:
    result = archlab(
        "fit", "-c", str(ROOT / "configs/cnn_digits.yaml"), "--tracker", "tensorboard", "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "2", "--model.net.channels", "[8]", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "runs")
    assert list(run.glob("events.out.tfevents.*"))


TINY_BERT = [
    "--model.net.dim", "32", "--model.net.num_layers", "1", "--model.net.num_heads", "2",
    "--data.vocab_size", "300", "--data.seq_len", "32",
]  # fmt: skip
SHORT = ["--tracker", "csv", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"]


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (short) bert_mlm pre-training run: its checkpoint and tokenizer.json."""
    # fast_dev_run writes no checkpoint (Lightning turns checkpointing off in it), so: one epoch of two batches.
    cwd = tmp_path_factory.mktemp("mlm")
    result = archlab(
        "fit", "-c", str(ROOT / "configs/bert_mlm.yaml"), *SHORT, *TINY_BERT, "--trainer.limit_val_batches", "1",
        "--test_after_fit", "false", "--run_dir", str(cwd / "mlm"), cwd=cwd,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (cwd / "mlm/checkpoints/best.ckpt").is_file() and (cwd / "mlm/tokenizer.json").is_file()
    return cwd / "mlm"


@pytest.mark.slow
def test_each_thing_is_built_once_per_command(mlm_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from archlab import cli
    from archlab.data import TopicClassification
    from archlab.data.text import Vocabulary
    from archlab.models import BERT

    counts = {"data": 0, "vocabulary": 0, "net": 0, "weights": 0}

    def counting(key, fn):
        @functools.wraps(fn)  # keeps the signature that jsonargparse reads
        def wrapper(*args, **kwargs):
            counts[key] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(TopicClassification, "__init__", counting("data", TopicClassification.__init__))
    monkeypatch.setattr(BERT, "__init__", counting("net", BERT.__init__))
    monkeypatch.setattr(Vocabulary, "train", classmethod(counting("vocabulary", Vocabulary.train.__func__)))
    init_from = mlm_run / "checkpoints/best.ckpt"
    real_load = torch.load

    def load(f, *args, **kwargs):
        counts["weights"] += Path(str(f)) == init_from
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    monkeypatch.chdir(tmp_path)
    result = cli.run(
        ["fit", "-c", str(ROOT / "configs/bert_topics.yaml"), *SHORT, *TINY_BERT, "--init_from", str(init_from)]
    )
    assert counts == {"data": 1, "vocabulary": 1, "net": 1, "weights": 1}
    assert result.best_score is not None and result.monitor == "val/acc"


@pytest.mark.slow
def test_fine_tuned_run_needs_only_its_own_directory(mlm_run: Path, tmp_path: Path) -> None:
    init_from = mlm_run / "checkpoints/best.ckpt"
    fit = archlab(
        "fit", "-c", str(ROOT / "configs/bert_topics.yaml"), *SHORT, *TINY_BERT, "--init_from", str(init_from),
        "--data.vocab_path", str(mlm_run / "tokenizer.json"), "--run_dir", str(tmp_path / "ft"), cwd=tmp_path,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    # The encoder came from the checkpoint, the classification head starts fresh: both are listed.
    assert re.search(r"init_from .*: \d+ tensors loaded; 4 fresh .*pooler.*classifier.*unused: mlm_", fit.stderr)
    ft = tmp_path / "ft"
    import torch

    pre = torch.load(init_from, weights_only=True)["state_dict"]
    tuned = torch.load(ft / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert "net.blocks.0.ffn.fc1.weight" in tuned and "net.classifier.1.weight" in tuned
    saved = yaml.safe_load((ft / "config.yaml").read_text())
    assert saved["init_from"] is None and saved["run_dir"] is None
    assert saved["data"]["init_args"]["vocab_path"] == str(ft / "tokenizer.json")
    # Two AdamW steps at lr 5e-4 move a weight by about 1e-3; a fresh initialisation (std 0.02) would differ by ~0.1.
    for key in ("net.token_embedding.weight", "net.blocks.0.ffn.fc1.weight"):
        assert (tuned[key] - pre[key]).abs().max() < 0.01, key

    moved = tmp_path / "moved"
    mlm_run.rename(moved)  # the pre-training run is gone
    try:
        ckpt = str(ft / "checkpoints/best.ckpt")
        tested = archlab("test", "-c", str(ft / "config.yaml"), "--ckpt_path", ckpt, "--tracker", "csv", cwd=tmp_path)
        assert tested.returncode == 0, tested.stderr[-3000:]
        assert "test/acc" in tested.stdout
        predicted = archlab(
            "predict", "-c", str(ft / "config.yaml"), "--ckpt_path", ckpt, "--tracker", "csv", cwd=tmp_path
        )
        assert predicted.returncode == 0, predicted.stderr[-3000:]
        (csv_path,) = (tmp_path / "runs").glob("bert_topics/*/predictions.csv")
        assert csv_path.read_text().splitlines()[0] == "index,label,confidence,target"
    finally:
        moved.rename(mlm_run)
    assert yaml.safe_load((ft / "config.yaml").read_text()) == saved  # test and predict wrote their own runs


@pytest.mark.slow
def test_init_from_a_checkpoint_that_does_not_fit_lists_the_keys(mlm_run: Path, tmp_path: Path) -> None:
    init_from = str(mlm_run / "checkpoints/best.ckpt")
    wider = [*TINY_BERT[:1], "64", *TINY_BERT[2:]]  # --model.net.dim 64 against a dim-32 checkpoint
    result = archlab("fit", "-c", str(ROOT / "configs/bert_topics.yaml"), *SHORT, *wider, "--init_from", init_from,
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "token_embedding.weight (300, 32) vs (300, 64)" in result.stderr or "vs (" in result.stderr
    missing = archlab("fit", "-c", str(ROOT / "configs/cnn_digits.yaml"), *SHORT, "--init_from",
                      str(tmp_path / "nowhere.ckpt"), cwd=tmp_path)  # fmt: skip
    assert missing.returncode == 2 and "nowhere.ckpt" in missing.stderr and "does not exist" in missing.stderr
    assert not (tmp_path / "runs").exists()  # stopped before a run started


@pytest.mark.slow
def test_the_users_checkpoint_callback_and_enable_checkpointing_are_honoured(tmp_path: Path) -> None:
    top3 = archlab(
        "fit", "-c", str(ROOT / "configs/cnn_digits.yaml"), "--tracker", "csv", "--trainer.max_epochs", "4",
        "--model.net.channels", "[8]", "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.save_top_k", "3",
        "--trainer.callbacks.monitor", "val/loss", "--run_dir", str(tmp_path / "top3"), cwd=tmp_path,
    )  # fmt: skip
    assert top3.returncode == 0, top3.stderr[-3000:]
    assert len(list((tmp_path / "top3/checkpoints").glob("epoch=*.ckpt"))) == 3
    assert not (tmp_path / "top3/checkpoints/best.ckpt").exists()  # archlab's own callback stepped aside
    off = archlab(
        "fit", "-c", str(ROOT / "configs/cnn_digits.yaml"), "--tracker", "csv", "--trainer.max_epochs", "2",
        "--model.net.channels", "[8]", "--trainer.enable_checkpointing", "false", "--run_dir", str(tmp_path / "off"),
        cwd=tmp_path,
    )  # fmt: skip
    assert off.returncode == 0, off.stderr[-3000:]
    assert "test/acc" in off.stdout  # tested the final weights
    assert not list((tmp_path / "off").rglob("*.ckpt"))
