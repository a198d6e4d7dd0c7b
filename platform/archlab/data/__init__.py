"""Shared LightningDataModules, one file per modality."""

from archlab.data.base import DataModule, ImageDataModule
from archlab.data.segmentation import Cells, OxfordPets, SegmentationDataModule, SegmentationFolder
from archlab.data.synthetic import AddingProblem, CopyMemory, Dates
from archlab.data.text import TextClassification, TextClassificationFile, TextCorpus, TopicClassification
from archlab.data.vision import CIFAR10, CIFAR100, MNIST, Digits, FashionMNIST, ImageFolder, VisionDataModule

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "MNIST",
    "AddingProblem",
    "Cells",
    "CopyMemory",
    "DataModule",
    "Dates",
    "Digits",
    "FashionMNIST",
    "ImageDataModule",
    "ImageFolder",
    "OxfordPets",
    "SegmentationDataModule",
    "SegmentationFolder",
    "TextClassification",
    "TextClassificationFile",
    "TextCorpus",
    "TopicClassification",
    "VisionDataModule",
]
