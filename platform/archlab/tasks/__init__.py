"""LightningModules, one per training objective; the architecture is the `net` argument."""

from archlab.tasks.adversarial import Adversarial
from archlab.tasks.base import Task
from archlab.tasks.classification import Classification
from archlab.tasks.language_modeling import LanguageModeling
from archlab.tasks.masked_lm import MaskedLanguageModeling
from archlab.tasks.reconstruction import Reconstruction
from archlab.tasks.segmentation import Segmentation
from archlab.tasks.seq2seq import Seq2Seq
from archlab.tasks.sequence import SequenceRegression, SequenceTagging

__all__ = [
    "Adversarial",
    "Classification",
    "LanguageModeling",
    "MaskedLanguageModeling",
    "Reconstruction",
    "Segmentation",
    "Seq2Seq",
    "SequenceRegression",
    "SequenceTagging",
    "Task",
]
