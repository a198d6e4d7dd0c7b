"""Pure nn.Modules, one file per architecture family, and the registry of names the configs and tests use."""

from collections.abc import Callable

from torch import nn

from archlab.models.autoencoder import AEOutput, AutoEncoder, vae
from archlab.models.bert import BERT, bert_base
from archlab.models.cnn import CNN
from archlab.models.gan import DCGAN, Discriminator, Generator
from archlab.models.inception import AuxLogits, GoogLeNet, InceptionAux, InceptionModule, googlenet_small
from archlab.models.recurrent import RecurrentNet
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
from archlab.models.transformer import GPT, Transformer
from archlab.models.unet import UNet

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
    "unet": UNet,
    "dcgan": DCGAN,
    "autoencoder": AutoEncoder,
    "vae": vae,
    "recurrent": RecurrentNet,
    "transformer": Transformer,
    "gpt": GPT,
    "bert": BERT,
    "bert_base": bert_base,
}

__all__ = [
    "BERT",
    "CNN",
    "DCGAN",
    "GPT",
    "MODELS",
    "AEOutput",
    "AutoEncoder",
    "AuxLogits",
    "Discriminator",
    "Generator",
    "GoogLeNet",
    "InceptionAux",
    "InceptionModule",
    "RecurrentNet",
    "ResNet",
    "TimmNet",
    "Transformer",
    "UNet",
    "bert_base",
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
    "vae",
]
