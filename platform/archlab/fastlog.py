"""`self.log` at a third of its cost: Lightning re-moves a logged value's state to the value's device on every call.

Each `LightningModule.log(name, value)` ends in `_ResultCollection.log`, which calls `_ResultMetric.to(value.device)`;
that runs `apply_to_collection` over the whole `__dict__` of the result (its metadata dataclasses are deep-copied on
the way) even when every tensor is already there, which is every call after the first. Measured on this project's
2-core CPU (Lightning 2.6.6): 290 us per `self.log`, 68 % of it in that move; a task logs 1 to 5 values per training
step, so this was 0.4 to 1.5 ms of the 4 ms archlab added to a step (`benchmarks/perf.py`).

Lightning has no setting for it, so `install()` wraps that one method with a check that returns early when every
tensor the move would visit is already on the target device, and otherwise calls Lightning's own method: results are
identical (`tests/test_fastlog.py`). The wrap is applied only to the method it was written against; on a Lightning
whose `_ResultMetric.to` differs it does nothing, and `installed()` says so (a test fails then, so an upgrade shows).
"""

import dataclasses
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

KNOWN_QUALNAME = "_ResultMetric.to"


def on_device(obj: Any, device: torch.device, depth: int = 0) -> bool:
    """True when every tensor in `obj` (dicts, lists, tuples, dataclasses and torchmetrics Metrics inside it, as
    `apply_to_collection` visits them) is on `device`; False where it cannot vouch (other modules, deep nesting)."""
    if isinstance(obj, Tensor):
        return obj.device == device
    if isinstance(obj, Metric):  # a torchmetrics object passed to self.log: its states live on its `device`
        return obj.device == device
    if depth > 3 or isinstance(obj, torch.nn.Module):
        return False
    if obj is None or isinstance(obj, (bool, int, float, str)) or callable(obj):
        return True
    if isinstance(obj, dict):
        return all(on_device(v, device, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple, set)):
        return all(on_device(v, device, depth + 1) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return all(on_device(getattr(obj, f.name), device, depth + 1) for f in dataclasses.fields(obj))
    return True  # other objects: apply_to_collection leaves them alone too


def install() -> bool:
    """Wrap `_ResultMetric.to` once per process; True if the fast path is in place."""
    from lightning.pytorch.trainer.connectors.logger_connector.result import _ResultMetric

    original = _ResultMetric.to
    if getattr(original, "archlab_fast", False):
        return True
    if getattr(original, "__qualname__", None) != KNOWN_QUALNAME:
        return False

    def to(self, *args: Any, **kwargs: Any):
        # Lightning calls it as .to(value.device), and .to(device="cpu") at the end of an epoch.
        device = args[0] if len(args) == 1 and not kwargs else kwargs.get("device") if not args else None
        if isinstance(device, (str, torch.device)) and list(kwargs) in ([], ["device"]):
            device = torch.device(device)
            if all(on_device(value, device) for value in self.__dict__.values()):
                return self
        return original(self, *args, **kwargs)

    to.archlab_fast = True  # type: ignore[attr-defined]
    to.__wrapped__ = original  # type: ignore[attr-defined]
    _ResultMetric.to = to
    return True


def installed() -> bool:
    from lightning.pytorch.trainer.connectors.logger_connector.result import _ResultMetric

    return bool(getattr(_ResultMetric.to, "archlab_fast", False))
