"""Whether this machine can run what a config's `trainer` section asks for, checked before anything is built.

Lightning finds out that a GPU, a TPU or a multi-node launcher is missing only when the Trainer is built, after the
data has loaded, and says so with a traceback; a run under `num_nodes: 2` without a launcher waits for the other node
forever. `check_hardware` reads the parsed trainer config (configs/trainer/*.yaml and --trainer.* overrides) and
raises one ConfigError that says what hardware the config needs, what this machine has, and which preset runs here.
"""

import importlib.util
import os
from collections.abc import Mapping
from typing import Any

import torch

from archlab.errors import ConfigError

GPU_ACCELERATORS = ("gpu", "cuda", "cudaaccelerator")
# Strategies that Lightning runs on CUDA devices only.
GPU_ONLY_STRATEGIES = ("fsdp", "deepspeed", "model_parallel", "modelparallel")
# Precisions whose autocast or loss scaling Lightning supports on CUDA only (fp16 AMP has no CPU kernel path).
GPU_ONLY_PRECISIONS = ("16-mixed", "16", "16-true", "transformer-engine", "transformer-engine-float16")
BF16_PRECISIONS = ("bf16-mixed", "bf16", "bf16-true")
# Environment variables by which a launcher tells each process its place in a multi-node job.
LAUNCHERS = {
    "SLURM (srun)": ("SLURM_NTASKS", "SLURM_PROCID"),
    "torchrun": ("TORCHELASTIC_RUN_ID", "WORLD_SIZE"),
    "LSF (jsrun)": ("LSB_JOBID", "JSM_NAMESPACE_SIZE"),
    "Kubeflow / manual": ("MASTER_ADDR", "WORLD_SIZE", "NODE_RANK"),
}
RUNS_HERE = "configs/trainer/cpu.yaml (one process) or configs/trainer/ddp_cpu.yaml (two processes)"


def check_hardware(trainer_config: Any) -> None:
    """Raise a ConfigError when this machine lacks the accelerator, device count, precision support or multi-node
    launcher that `trainer_config` (the parsed `trainer` section: a jsonargparse Namespace or a dict) asks for."""
    accelerator = (name_of(get(trainer_config, "accelerator")) or "auto").lower()
    strategy = name_of(get(trainer_config, "strategy")) or "auto"
    precision = str(get(trainer_config, "precision") or "32-true")
    devices = get(trainer_config, "devices") or "auto"
    num_nodes = int(get(trainer_config, "num_nodes") or 1)
    needs: list[str] = []

    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    wants_gpu = accelerator in GPU_ACCELERATORS
    if any(s in strategy.lower() for s in GPU_ONLY_STRATEGIES):
        wants_gpu = True
        if accelerator not in ("auto", *GPU_ACCELERATORS):
            needs.append(f"strategy {strategy!r} runs on CUDA GPUs only, not on accelerator {accelerator!r}")
    if precision in GPU_ONLY_PRECISIONS and accelerator not in ("tpu", "xla", "xlaaccelerator"):
        if accelerator == "cpu" or not cuda:
            needs.append(f"precision {precision!r} (float16) needs a CUDA GPU; on CPU use precision bf16-mixed")
        elif accelerator == "auto":
            wants_gpu = True
    if wants_gpu:
        wanted = count(devices)
        if not cuda:
            needs.append(f"it needs {describe(wanted, 'NVIDIA GPU')} with CUDA, and this machine has none")
        elif wanted is not None and wanted > cuda:
            needs.append(f"it needs {describe(wanted, 'GPU')}, and this machine has {cuda}")
        elif precision in BF16_PRECISIONS and torch.cuda.get_device_capability(0) < (8, 0):
            needs.append(
                f"precision {precision!r} needs a GPU with bfloat16 (compute capability 8.0 or newer: A100, H100, "
                f"L4, RTX 30xx/40xx); {torch.cuda.get_device_name(0)} has none: compose -c configs/trainer/fp16.yaml "
                "after the hardware preset for float16 with loss scaling"
            )
    several = num_nodes > 1 or (count(devices) or 1) > 1
    if get(trainer_config, "sync_batchnorm") and several and (accelerator == "cpu" or (not wants_gpu and not cuda)):
        # PyTorch's SyncBatchNorm refuses CPU tensors in its first training step, after the data has loaded.
        needs.append(
            "sync_batchnorm needs CUDA (or XPU) devices: PyTorch's SyncBatchNorm has no CPU implementation; under "
            "configs/trainer/ddp_cpu.yaml leave trainer.sync_batchnorm false"
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        needs.append("accelerator 'mps' needs an Apple-silicon Mac with PyTorch's MPS backend")
    if accelerator in ("tpu", "xla", "xlaaccelerator") and not tpu_available():
        needs.append(
            "accelerator 'tpu' needs a Cloud TPU VM with PyTorch/XLA installed (pip install torch_xla[tpu]); "
            + (
                "torch_xla finds no TPU here"
                if importlib.util.find_spec("torch_xla")
                else "torch_xla is not installed here"
            )
        )
    if num_nodes > 1 and not launched():
        needs.append(
            f"num_nodes {num_nodes} needs a launcher that starts one process per device on every node: sbatch "
            "docker/slurm/archlab.sbatch (SLURM) or torchrun on each node; this process was started by neither"
        )
    if needs:
        raise ConfigError(
            f"this trainer config (accelerator {accelerator}, devices {devices}, strategy {strategy}, precision "
            f"{precision}, num_nodes {num_nodes}) cannot run on this machine: " + "; ".join(needs) + ". Nothing was "
            f"loaded. Here, use {RUNS_HERE}; see configs/trainer/ for what each preset needs."
        )


def get(config: Any, key: str) -> Any:
    if isinstance(config, Mapping):
        return config.get(key)
    return getattr(config, key, None)


def name_of(value: Any) -> str | None:
    """'ddp' for 'ddp', 'FSDPStrategy' for a class_path or an object of that class."""
    if value is None or isinstance(value, str):
        return value or None
    class_path = get(value, "class_path")
    return class_path.rpartition(".")[2] if isinstance(class_path, str) else type(value).__name__


def count(devices: Any) -> int | None:
    """How many devices `devices` asks for; None for 'all of them' (-1, 'auto')."""
    if isinstance(devices, list | tuple):
        return len(devices)
    if isinstance(devices, str):
        devices = devices.strip()
        if "," in devices:
            return len([d for d in devices.split(",") if d.strip()])
        if not devices.lstrip("-").isdigit():
            return None
        devices = int(devices)
    if isinstance(devices, int) and devices > 0:
        return devices
    return None


def describe(n: int | None, what: str) -> str:
    return f"at least one {what}" if n is None else f"{n} {what}{'s' if n > 1 else ''}"


def tpu_available() -> bool:
    if importlib.util.find_spec("torch_xla") is None:
        return False
    from lightning.pytorch.accelerators import XLAAccelerator

    return XLAAccelerator.is_available()


def launched() -> bool:
    return any(all(key in os.environ for key in keys) for keys in LAUNCHERS.values())
