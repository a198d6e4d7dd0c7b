"""`--model.compile` and `--model.channels_last`, shared by every task, through the real command in this process.

Compiled, a conv net (the CNN on digits) and a Transformer (the dates translator) train to the losses of their eager
runs within float tolerance; a compiled run's checkpoint loads into an eager task and an eager run's into a compiled
one, with the same validation loss. Channels-last holds conv weights in NHWC and changes no loss.
"""

import functools
import importlib.util
import subprocess
from pathlib import Path

import lightning as L
import pytest
import torch

from archlab import cli
from archlab.errors import ConfigError
from archlab.models import GPT
from archlab.tasks import Classification, LanguageModeling

ROOT = Path(__file__).resolve().parents[1]
SHORT = [
    *("-c", str(ROOT / "configs/trainer/cpu.yaml"), "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3"),
    *("--trainer.limit_val_batches", "2", "--trainer.num_sanity_val_steps", "0"),
    *("--tracker", "csv", "--trainer.enable_progress_bar", "false"),
]
TINY = {
    "cnn_digits": ["--model.net.channels", "[8, 16]"],
    "transformer_dates": ["--model.net.dim", "32", "--model.net.num_layers", "1", "--model.net.dropout", "0.0"],
}


class Losses(L.Callback):
    """The training loss of every step and the last validation loss."""

    def __init__(self) -> None:
        self.train: list[float] = []
        self.val: float | None = None
        self.compiled: bool | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.train.append(float(outputs["loss"]))

    def on_validation_start(self, trainer, pl_module) -> None:
        # What nn.Module.compile() sets (no public way to ask): the net that ran was compiled, or not.
        self.compiled = pl_module.net._compiled_call_impl is not None

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.val = float(trainer.callback_metrics["val/loss"])


def run(command: str, config: str, run_dir: Path, *more: str) -> Losses:
    losses = Losses()
    args = [command, "-c", str(ROOT / f"configs/{config}.yaml"), *TINY[config], *SHORT, "--run_dir", str(run_dir)]
    if command == "fit":
        args += ["--test_after_fit", "false"]
    cli.run([*args, *more], callbacks=[losses])
    return losses


@pytest.mark.slow
@pytest.mark.parametrize("config", ["cnn_digits", "transformer_dates"])
def test_compiled_training_matches_eager_and_checkpoints_load_either_way(config: str, tmp_path: Path) -> None:
    eager = run("fit", config, tmp_path / "eager")
    compiled = run("fit", config, tmp_path / "compiled", "--model.compile", "true")
    assert (eager.compiled, compiled.compiled) == (False, True)
    assert len(eager.train) == len(compiled.train) == 3
    assert compiled.train == pytest.approx(eager.train, rel=1.0e-4)
    assert compiled.val == pytest.approx(eager.val, rel=1.0e-4)

    # No `_orig_mod.` in a compiled run's checkpoint: it loads strictly into the eager task, and the reverse.
    checkpoint = torch.load(tmp_path / "compiled/checkpoints/last.ckpt", weights_only=True)
    assert not [key for key in checkpoint["state_dict"] if "_orig_mod" in key]
    # How the run ran stays out of the checkpoint's hyperparameters, which LightningCLI would lay over --model.compile.
    assert "compile" not in checkpoint["hyper_parameters"]
    into_eager = run(
        "validate", config, tmp_path / "v1", "--ckpt_path", str(tmp_path / "compiled/checkpoints/last.ckpt")
    )
    into_compiled = run(
        "validate", config, tmp_path / "v2", "--model.compile", "true",
        "--ckpt_path", str(tmp_path / "eager/checkpoints/last.ckpt"),
    )  # fmt: skip
    assert (into_eager.compiled, into_compiled.compiled) == (False, True)
    assert into_eager.val == pytest.approx(compiled.val, rel=1.0e-4)
    assert into_compiled.val == pytest.approx(eager.val, rel=1.0e-4)


def test_compile_is_in_place_and_keeps_the_state_dict_keys() -> None:
    net = GPT(vocab_size=11, max_len=8, dim=16, num_heads=2, num_layers=1)
    task = LanguageModeling(net, compile=True)
    keys = list(task.state_dict())
    task.configure_model()
    task.configure_model()  # idempotent: Lightning calls it for every stage
    assert list(task.state_dict()) == keys
    assert task.net is net  # compiled in place, not wrapped in an OptimizedModule
    assert net._compiled_call_impl is not None  # what nn.Module.compile() sets; no public way to ask


def test_channels_last_holds_conv_weights_in_nhwc_and_changes_no_loss() -> None:
    from archlab.models import CNN

    torch.manual_seed(0)
    eager = Classification(CNN(in_channels=1, num_classes=10, channels=[8, 16]))
    nhwc = Classification(CNN(in_channels=1, num_classes=10, channels=[8, 16]), channels_last=True)
    nhwc.load_state_dict(eager.state_dict())
    nhwc.configure_model()
    convs = [p for p in nhwc.net.parameters() if p.ndim == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert all(not p.is_contiguous() for p in convs if p.shape[1] > 1)  # a real layout change, not a no-op
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(nhwc(x), eager(x), rtol=1.0e-5, atol=1.0e-5)
    assert list(nhwc.state_dict()) == list(eager.state_dict())


def test_channels_last_on_a_net_without_convolutions_names_the_option() -> None:
    with pytest.raises(ConfigError, match=r"model\.channels_last"):
        LanguageModeling(GPT(vocab_size=11, max_len=8, dim=16, num_heads=2, num_layers=1), channels_last=True)


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks/gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_gpu_check_runs_its_code_path_on_cpu(tmp_path: Path) -> None:
    """benchmarks/gpu_check --cpu: the GPU check's runs (a process per run, eager and compiled, bf16-mixed) for a few
    steps on CPU, and its table."""
    report = tmp_path / "report.md"
    done = subprocess.run(
        [str(ROOT / "benchmarks/gpu_check"), "--cpu", "--steps", "3", "--configs", "cnn_digits", "--out", str(report)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (row,) = [line for line in report.read_text().splitlines() if line.startswith("| cnn_digits |")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    eager_loss, compiled_loss = float(cells[6]), float(cells[7])
    assert 0 < eager_loss < 10 and compiled_loss == pytest.approx(eager_loss, rel=0.05)
    assert cells[8].startswith("no (") and float(cells[1].replace(",", "")) > 0


def test_gpu_check_flags_a_changed_loss_and_a_failed_run() -> None:
    gpu_check = load_gpu_check()
    table = functools.partial(gpu_check.table, steps=300, tolerance=0.1, first_tolerance=0.01)
    run = {"samples_per_s": 100.0, "peak_mem_gib": 1.0, "device": "H100", "first_loss": 2.0}
    rows = [
        {"config": "same", "arm": "eager", "final_loss": 1.0, **run},
        {"config": "same", "arm": "compiled", "final_loss": 1.05, **run},
        {"config": "moved", "arm": "eager", "final_loss": 1.0, **run},
        {"config": "moved", "arm": "compiled", "final_loss": 1.2, **run},
        {"config": "first", "arm": "eager", "final_loss": 1.0, **run},
        {"config": "first", "arm": "compiled", "final_loss": 1.0, **{**run, "first_loss": 2.1}},
    ]
    report, ok = table(rows[:2])
    assert "| same |" in report and "| no (0e+00 / 5e-02) |" in report and ok
    for broken in (rows[2:4], rows[4:]):
        report, ok = table([*rows[:2], *broken])
        assert "| YES (" in report and not ok
    report, ok = table([*rows[:2], {"config": "x", "arm": "eager", "error": ["boom"]}])
    assert "| x | FAILED: eager: boom |" in report and not ok
    report, ok = table([*rows[:1], {**rows[1], "final_loss": float("nan")}])
    assert "YES" in report and not ok


def test_gpu_check_without_a_gpu_says_so() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    done = subprocess.run([str(ROOT / "benchmarks/gpu_check"), "--steps", "3"], capture_output=True, text=True)
    assert done.returncode == 2 and "--cpu" in done.stderr
