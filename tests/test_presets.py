"""The trainer presets in configs/trainer/ and archlab.hardware's check of what they need.

Every preset composes with an experiment and names only Trainer arguments (parsed by the real `fit` parser, nothing
built); the presets this machine can run pass the hardware check, and the others (GPU, TPU, several nodes, float16)
stop before any data loads with one paragraph saying what they need, whatever machine the suite runs on (the CUDA
state is simulated where it matters).
"""

from pathlib import Path

import pytest
import torch
import yaml

from archlab import cli, hardware
from archlab.errors import ConfigError
from archlab.hardware import check_hardware
from archlab.models.transformer import TransformerBlock

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.stem for p in (ROOT / "configs/trainer").glob("*.yaml"))
RUN_ON_CPU = ["bf16", "cpu", "ddp_cpu"]
NEED_MORE = ["ddp", "fp16", "fsdp", "gpu", "multinode", "tpu"]
LAUNCHER_ENV = {key for keys in hardware.LAUNCHERS.values() for key in keys}


def parse(preset: str, *more: str):
    return cli.parse_fit(
        ["-c", str(ROOT / "configs/cnn_digits.yaml"), "-c", str(ROOT / f"configs/trainer/{preset}.yaml"), *more]
    )


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    for key in LAUNCHER_ENV:
        monkeypatch.delenv(key, raising=False)


def fake_gpus(monkeypatch: pytest.MonkeyPatch, n: int, capability: tuple[int, int], name: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    for key in LAUNCHER_ENV:
        monkeypatch.delenv(key, raising=False)


def test_the_issue_presets_exist() -> None:
    assert set(PRESETS) == set(RUN_ON_CPU + NEED_MORE)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_holds_only_trainer_options_and_parses_with_an_experiment(preset: str) -> None:
    raw = yaml.safe_load((ROOT / f"configs/trainer/{preset}.yaml").read_text())
    assert list(raw) == ["trainer"], "a preset sets hardware, never the model or the data"
    trainer = parse(preset).trainer
    for key, value in raw["trainer"].items():
        if not isinstance(value, dict):
            assert trainer[key] == value, key
    # An experiment's own trainer settings survive the preset (max_epochs comes from cnn_digits.yaml).
    assert trainer.max_epochs == 30


def test_a_misspelt_trainer_option_is_rejected_by_the_same_parse(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  acelerator: gpu\n")
    with pytest.raises(ConfigError, match="acelerator"):
        cli.parse_fit(["-c", str(ROOT / "configs/cnn_digits.yaml"), "-c", str(bad)])


def test_preset_details() -> None:
    ddp_cpu = parse("ddp_cpu").trainer
    assert (ddp_cpu.accelerator, ddp_cpu.devices) == ("cpu", 2)
    assert ddp_cpu.strategy.init_args.process_group_backend == "gloo"
    fsdp = parse("fsdp").trainer.strategy
    assert fsdp.class_path.endswith("FSDPStrategy")
    # The block class of the Transformer, GPT and BERT families (BERT reuses transformer.py's block).
    assert fsdp.init_args.auto_wrap_policy == {TransformerBlock}
    multinode = parse("multinode").trainer
    assert (multinode.num_nodes, multinode.strategy) == (2, "ddp")
    assert parse("gpu").trainer.devices == 1 and parse("ddp").trainer.devices == -1
    assert parse("gpu", "-c", str(ROOT / "configs/trainer/fp16.yaml")).trainer.precision == "16-mixed"


@pytest.mark.parametrize("preset", RUN_ON_CPU)
def test_cpu_presets_pass_the_hardware_check(preset: str, no_gpu: None) -> None:
    check_hardware(parse(preset).trainer)


@pytest.mark.parametrize("preset", NEED_MORE)
def test_gpu_tpu_and_multinode_presets_fail_cleanly_without_their_hardware(preset: str, no_gpu: None) -> None:
    with pytest.raises(ConfigError) as error:
        check_hardware(parse(preset).trainer)
    message = str(error.value)
    assert "\n" not in message and "cpu.yaml" in message
    needs = {
        "ddp": "NVIDIA GPU",
        "fp16": "needs a CUDA GPU",
        "fsdp": "NVIDIA GPU",
        "gpu": "1 NVIDIA GPU with CUDA",
        "multinode": "sbatch docker/slurm/archlab.sbatch",
        "tpu": "Cloud TPU VM",
    }
    assert needs[preset] in message


def test_the_command_stops_before_loading_data_with_exit_status_2(
    no_gpu: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def no_build(*args, **kwargs):
        raise AssertionError("the data was loaded")

    monkeypatch.setattr(cli, "build", no_build)
    args = ["fit", "-c", str(ROOT / "configs/cnn_digits.yaml"), "-c", str(ROOT / "configs/trainer/gpu.yaml")]
    assert cli.main([*args, "--runs_root", "/nonexistent/runs"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("archlab: error: this trainer config") and "Traceback" not in err
    assert "needs 1 NVIDIA GPU with CUDA, and this machine has none" in err


def test_more_gpus_than_the_machine_has(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpus(monkeypatch, 2, (9, 0), "NVIDIA H100")
    check_hardware({"accelerator": "gpu", "devices": 2, "precision": "bf16-mixed"})
    check_hardware({"accelerator": "gpu", "devices": -1, "strategy": "ddp"})
    for devices in (4, [0, 1, 2], "0,1,2", "3"):
        with pytest.raises(ConfigError, match=r"GPUs, and this machine has 2"):
            check_hardware({"accelerator": "gpu", "devices": devices})


def test_bf16_on_a_gpu_without_bfloat16_points_at_the_fp16_preset(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpus(monkeypatch, 1, (7, 0), "Tesla V100-SXM2-16GB")
    with pytest.raises(ConfigError, match=r"Tesla V100-SXM2-16GB has none: compose -c configs/trainer/fp16.yaml"):
        check_hardware(parse("gpu").trainer)
    check_hardware(parse("gpu", "-c", str(ROOT / "configs/trainer/fp16.yaml")).trainer)


def test_multinode_runs_under_a_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpus(monkeypatch, 8, (8, 0), "NVIDIA A100")
    trainer = parse("multinode").trainer
    with pytest.raises(ConfigError, match="num_nodes 2 needs a launcher"):
        check_hardware(trainer)
    monkeypatch.setenv("SLURM_NTASKS", "16")
    monkeypatch.setenv("SLURM_PROCID", "3")
    check_hardware(trainer)


def test_fsdp_is_refused_on_cpu(no_gpu: None) -> None:
    with pytest.raises(ConfigError, match="runs on CUDA GPUs only, not on accelerator 'cpu'"):
        check_hardware(parse("fsdp", "--trainer.accelerator", "cpu").trainer)


def test_sync_batchnorm_is_refused_under_ddp_on_cpu(no_gpu: None) -> None:
    with pytest.raises(ConfigError, match=r"sync_batchnorm needs CUDA .* leave trainer.sync_batchnorm false"):
        check_hardware(parse("ddp_cpu", "--trainer.sync_batchnorm", "true").trainer)
    check_hardware(parse("cpu", "--trainer.sync_batchnorm", "true").trainer)  # one process: plain BatchNorm


def test_sync_batchnorm_passes_with_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpus(monkeypatch, 2, (9, 0), "NVIDIA H100")
    check_hardware(parse("ddp", "--trainer.sync_batchnorm", "true").trainer)
