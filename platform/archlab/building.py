"""Everything a command is built from, built once: the DataModule, the data's shapes linked into the task and its
net, the net (and the weights it loads from --init_from), the task. The CLI (archlab.cli), sweep probes and studies
build through here; errors are archlab's one-paragraph ones.
"""

import contextlib
import importlib
import inspect
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from jsonargparse import Namespace
from torch import nn

from archlab.data.base import DataModule
from archlab.errors import ArchlabError, ConfigError
from archlab.loading import load_weights
from archlab.tasks import Task


@dataclass
class Built:
    data: L.LightningDataModule
    net: nn.Module | None
    model: Task | None = None


def build(
    cfg: Namespace,
    *,
    data: L.LightningDataModule | None = None,
    init_from: str | None = None,
    task: bool = True,
    meta: bool = False,
) -> Built:
    """Build a `fit`/`test`/... config's DataModule (unless `data` is given) and net, once.

    The data's shapes are linked into `cfg` first; with `init_from`, the net's weights are read from that file;
    with `task` (the default), the task is built around the net as well; with `meta`, net and task are built on the
    meta device (no memory, no initialisation), which checks every argument at the cost of a constructor call.
    Errors are archlab's own one-paragraph ones: built here rather than inside jsonargparse's instantiation, they are
    not folded into a union-validation message.
    """
    if data is None:
        data = instantiate(cfg.data)
        if isinstance(data, DataModule):
            data.check_download()
    link_data_shapes(cfg, data)
    net_cfg = cfg.model.init_args.get("net") if cfg.model.get("init_args") else None
    device = torch.device("meta") if meta else contextlib.nullcontext()
    net = None
    with device:
        if isinstance(net_cfg, Namespace) and net_cfg.get("class_path"):
            net = instantiate(net_cfg)
            if init_from and not meta:
                load_weights(net, init_from)
        model = None
        if task:
            args = cfg.model.init_args.as_dict() if cfg.model.get("init_args") else {}
            if net is not None:
                args["net"] = net
            model = import_class(cfg.model.class_path)(**args)
    return Built(data=data, net=net, model=model)


def link_data_shapes(cfg: Namespace, data: L.LightningDataModule) -> None:
    """Copy the DataModule's shapes (in_channels, num_classes, vocab_size, pad_id...) into the task and its net.

    jsonargparse's link_arguments needs one fixed target key, but nets differ in which shapes they take, so the
    link is made here: a shape goes to every constructor among the task and its net that has a parameter of that
    name. A value the user set that disagrees with the data is an error, never silently replaced.
    """
    shapes = getattr(data, "shapes", None)
    if not shapes:
        return
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


@contextlib.contextmanager
def archlab_errors():
    """Re-raise an ArchlabError that jsonargparse's instantiation wrapped in its own error, as itself."""
    try:
        yield
    except ArchlabError:
        raise
    except Exception as error:
        cause = error
        while cause is not None and not isinstance(cause, ArchlabError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise cause from None


def import_class(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def instantiate(component: Namespace) -> Any:
    init_args = component.get("init_args")
    return import_class(component.class_path)(**(init_args.as_dict() if init_args else {}))
