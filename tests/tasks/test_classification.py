import lightning as L
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from archlab.data import Digits
from archlab.errors import ConfigError
from archlab.models import CNN, AuxLogits, ResNet
from archlab.tasks import Classification


def test_overfits_one_batch_to_near_zero_loss(tmp_path):
    torch.manual_seed(0)
    data = Digits(batch_size=32)
    task = Classification(ResNet(depth=8, width=8, in_channels=1, num_classes=10), lr=1.0e-2, schedule="constant")
    trainer = L.Trainer(
        max_steps=150, overfit_batches=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0, check_val_every_n_epoch=1000,
    )  # fmt: skip
    trainer.fit(task, datamodule=data)
    loss = trainer.callback_metrics["train/loss_step"]  # the last step's loss on the one batch it saw 150 times
    assert loss < 0.05


class WithAux(nn.Module):
    """Returns fixed main and auxiliary logits in training mode, like GoogLeNet with aux_logits."""

    num_classes = 3

    def __init__(self, logits: torch.Tensor, aux: torch.Tensor) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.logits, self.aux = logits, aux

    def forward(self, x):
        if self.training:
            return AuxLogits(self.scale * self.logits, (self.scale * self.aux, self.scale * self.aux))
        return self.scale * self.logits


def test_auxiliary_losses_are_added_with_their_weight():
    logits, aux = torch.randn(4, 3), torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 0])
    task = Classification(WithAux(logits, aux), aux_weight=0.3)
    task.log = task.log_dict = lambda *a, **k: None
    expected = F.cross_entropy(logits, y) + 0.3 * 2 * F.cross_entropy(aux, y)
    torch.testing.assert_close(task.step((torch.zeros(4, 1), y), "train"), expected)
    task.eval()
    torch.testing.assert_close(task.step((torch.zeros(4, 1), y), "val"), F.cross_entropy(logits, y))


def test_top5_accuracy_only_with_at_least_five_classes():
    assert "acc_top5" in Classification(CNN(num_classes=5)).val_metrics
    assert "acc_top5" not in Classification(CNN(num_classes=4)).val_metrics


@pytest.mark.parametrize(("kwargs", "key"), [({"label_smoothing": 1.5}, "label_smoothing"), ({"lr": -1.0}, "lr")])
def test_bad_hyperparameters_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        Classification(CNN(num_classes=3), **kwargs)
