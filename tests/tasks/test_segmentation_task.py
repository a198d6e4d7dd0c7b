import torch

from archlab.tasks.segmentation import class_map


def test_class_map_is_argmax_over_the_classes_ties_to_the_first():
    torch.manual_seed(0)
    logits = torch.randn(4, 3, 9, 7)
    logits[0, :, 0, 0] = 1.0  # a three-way tie: class 0
    logits[1, 1:, 2, 3] = 5.0  # a tie between classes 1 and 2: class 1
    pred = class_map(logits)
    assert torch.equal(pred, logits.argmax(dim=1)) and pred.shape == (4, 9, 7)
    assert pred[0, 0, 0] == 0 and pred[1, 2, 3] == 1
