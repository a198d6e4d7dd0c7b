"""LightningModules, one per training objective; the architecture is the `net` argument."""

from archlab.tasks.base import Task
from archlab.tasks.classification import Classification

__all__ = ["Classification", "Task"]
