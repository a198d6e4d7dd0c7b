"""Pure nn.Modules, one file per architecture family, and the registry of names the configs and tests use."""

from collections.abc import Callable

from torch import nn

from archlab.models.cnn import CNN
from archlab.models.inception import AuxLogits, GoogLeNet, InceptionAux, InceptionModule, googlenet_small
from archlab.models.resnet import (
    ResNet,
    plain20,
    plain56,
    resnet18,
    resnet20,
    resnet32,
    resnet34,
    resnet44,
    resnet50,
    resnet56,
    resnet101,
    resnet110,
    resnet152,
)
from archlab.models.timm_net import TimmNet

MODELS: dict[str, Callable[..., nn.Module]] = {
    "cnn": CNN,
    "resnet": ResNet,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "plain20": plain20,
    "plain56": plain56,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet101": resnet101,
    "resnet152": resnet152,
    "googlenet": GoogLeNet,
    "googlenet_small": googlenet_small,
    "timm": TimmNet,
}

__all__ = [
    "CNN",
    "MODELS",
    "AuxLogits",
    "GoogLeNet",
    "InceptionAux",
    "InceptionModule",
    "ResNet",
    "TimmNet",
    "googlenet_small",
    "plain20",
    "plain56",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet34",
    "resnet44",
    "resnet50",
    "resnet56",
    "resnet101",
    "resnet110",
    "resnet152",
]
