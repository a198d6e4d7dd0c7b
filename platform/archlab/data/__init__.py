"""Shared LightningDataModules, one file per modality."""

from archlab.data.vision import CIFAR10, CIFAR100, MNIST, Digits, FashionMNIST, ImageFolder, VisionDataModule

__all__ = ["CIFAR10", "CIFAR100", "MNIST", "Digits", "FashionMNIST", "ImageFolder", "VisionDataModule"]
