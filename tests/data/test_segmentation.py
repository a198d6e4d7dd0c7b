"""Segmentation DataModules: generated cells, Oxford-IIIT Pet in torchvision's layout, a folder of image/mask pairs,
and the paired augmentation."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from archlab.data import Cells, OxfordPets, SegmentationFolder
from archlab.data.segmentation import augment_pair, make_cells
from archlab.errors import ConfigError, CorruptFileError, DatasetNotFoundError
from formats import write_oxford_pets


def test_cells_are_deterministic_with_exact_masks():
    x, y = make_cells(4, image_size=32, seed=3)
    x2, y2 = make_cells(2, image_size=32, seed=3)
    assert x.shape == (4, 1, 32, 32) and x.dtype == torch.uint8 and y.shape == (4, 32, 32)
    assert torch.equal(x[:2], x2) and torch.equal(y[:2], y2)  # a smaller n is a prefix
    assert not torch.equal(make_cells(1, image_size=32, seed=4)[0], x[:1])
    assert set(y.unique().tolist()) == {0, 1}
    # Cells are brighter than the background on average: the mask describes the image.
    assert x[:, 0][y == 1].float().mean() > x[:, 0][y == 0].float().mean() + 20


def test_cells_datamodule_keeps_the_labelled_images_and_fixed_eval_splits():
    data = Cells(labels=5, val_size=3, test_size=4, image_size=32, batch_size=2)
    assert data.shapes == {"in_channels": 1, "num_classes": 2, "image_size": 32}
    data.setup()
    assert [len(data.dataset(s)) for s in ("train", "val", "test")] == [5, 3, 4]
    other = Cells(labels=9, val_size=3, test_size=4, image_size=32)
    other.setup()
    assert torch.equal(data.dataset("test").x, other.dataset("test").x)  # test set independent of labels
    x, y = data.on_after_batch_transfer(next(iter(data.val_dataloader())), 0)
    assert x.dtype == torch.float32 and x.shape == (2, 1, 32, 32) and y.shape == (2, 32, 32)
    assert abs(float(x.mean())) < 1.0  # normalised


@pytest.mark.parametrize("kwargs", [{"labels": 0}, {"image_size": 8}, {"degrees": -1.0}, {"batch_size": 0}])
def test_cells_bad_arguments(kwargs: dict):
    with pytest.raises(ConfigError):
        Cells(**kwargs)


def test_without_resampling_each_sample_gets_one_of_the_eight_symmetries():
    torch.manual_seed(0)
    y = torch.arange(16).view(1, 4, 4).repeat(64, 1, 1)  # every pixel distinct: each symmetry gives another image
    x = y.unsqueeze(1).float()
    xa, ya = augment_pair(x, y, degrees=0.0, scale=0.0, elastic=0.0)
    square = y[0]
    symmetries = [torch.rot90(t, k) for t in (square, square.T) for k in range(4)]  # the dihedral group D4
    assert all(any(torch.equal(m, s) for s in symmetries) for m in ya)
    assert {i for m in ya for i, s in enumerate(symmetries) if torch.equal(m, s)} == set(range(8))
    assert torch.equal(xa[:, 0].long(), ya)


def test_augmentation_keeps_image_and_mask_aligned():
    torch.manual_seed(0)
    y = torch.zeros(16, 32, 32, dtype=torch.long)
    y[:, 4:14, 6:24] = 1  # an asymmetric L: a bar and a leg
    y[:, 14:28, 6:12] = 1
    x = y.unsqueeze(1).float()  # the image is the shape itself
    xa, ya = augment_pair(x, y, degrees=30.0, scale=0.2, elastic=2.0)
    assert xa.shape == x.shape and ya.shape == y.shape and ya.dtype == torch.long
    moved = (ya != y).flatten(1).any(1)
    assert moved.sum() >= 12  # the samples were really transformed, each its own way
    assert len({tuple(m.flatten().tolist()) for m in ya}) > 8
    # Wherever the image shows the shape, the mask has it too (bilinear edges aside).
    agree = ((xa[:, 0] > 0.5) == (ya == 1)).float().mean(dim=(1, 2))
    assert (agree > 0.97).all(), agree
    inter = ((xa[:, 0] > 0.5) & (ya == 1)).sum((1, 2)).float()
    union = ((xa[:, 0] > 0.5) | (ya == 1)).sum((1, 2)).float()
    assert (inter / union > 0.9).all()


@pytest.mark.parametrize(("binary", "classes"), [(False, {0, 1, 2}), (True, {0, 1})])
def test_oxford_pets_reads_torchvisions_layout(tmp_path: Path, binary: bool, classes: set):
    write_oxford_pets(tmp_path, n_trainval=10, n_test=4)
    data = OxfordPets(root=str(tmp_path), image_size=16, binary=binary, batch_size=4, val_fraction=0.2)
    assert data.shapes == {"in_channels": 3, "num_classes": len(classes), "image_size": 16}
    data.setup()
    assert [len(data.dataset(s)) for s in ("train", "val", "test")] == [8, 2, 4]
    x, y = next(iter(data.test_dataloader()))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.uint8 and y.shape == (4, 16, 16)
    assert set(y.unique().tolist()) == classes
    assert (y[:, 8, 8] == 1).all()  # the pet in the middle of each trimap


def test_oxford_pets_missing_is_reported(tmp_path: Path):
    with pytest.raises(DatasetNotFoundError, match="oxford-iiit-pet"):
        OxfordPets(root=str(tmp_path))


def write_pairs(root: Path, n: int, *, size=(20, 12), mask_size=None, top_label: int = 1) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        w, h = mask_size or size
        mask = np.zeros((h, w), dtype=np.uint8)
        mask[: h // 2] = top_label
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    return root


def test_segmentation_folder_pairs_images_and_masks(tmp_path: Path):
    write_pairs(tmp_path, 10, top_label=2)
    data = SegmentationFolder(str(tmp_path), num_classes=3, image_size=8, batch_size=10)
    data.setup()
    assert [len(data.dataset(s)) for s in ("train", "val", "test")] == [7, 1, 2]
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (7, 3, 8, 8) and y.shape == (7, 8, 8)
    assert set(y.unique().tolist()) == {0, 2}


def test_segmentation_folder_image_without_mask(tmp_path: Path):
    write_pairs(tmp_path, 3)
    (tmp_path / "masks" / "1.png").unlink()
    with pytest.raises(ConfigError, match=r"3 images but 2 masks.*\['1'\]"):
        SegmentationFolder(str(tmp_path))


def test_segmentation_folder_sizes_disagree(tmp_path: Path):
    write_pairs(tmp_path, 2, mask_size=(10, 12))
    with pytest.raises(ConfigError, match=r"20x12 but its mask .* is 10x12"):
        SegmentationFolder(str(tmp_path))


@pytest.mark.parametrize("normalize", [True, False])
def test_segmentation_folder_label_outside_num_classes_stops_setup(tmp_path: Path, normalize: bool):
    write_pairs(tmp_path, 4, top_label=1)
    Image.fromarray(np.full((12, 20), 5, dtype=np.uint8)).save(tmp_path / "masks" / "3.png")  # one bad mask
    data = SegmentationFolder(str(tmp_path), num_classes=2, val_fraction=0.0, test_fraction=0.25, normalize=normalize)
    with pytest.raises(ConfigError, match=r"3\.png holds labels \[5\], outside 0..1.*data\.num_classes"):
        data.setup()  # every mask is read once here, whichever split it lands in


def test_generated_labels_are_checked_at_setup(monkeypatch: pytest.MonkeyPatch):
    def bad_cells(n: int, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = make_cells(n, **kwargs)
        return x, y + 1  # labels 1..2 for 2 classes

    monkeypatch.setattr("archlab.data.segmentation.make_cells", bad_cells)
    with pytest.raises(ConfigError, match=r"train labels span 1..2, outside 0..1"):
        Cells(labels=2, val_size=1, test_size=1, image_size=16).setup()


def test_segmentation_folder_corrupt_files_are_named(tmp_path: Path):
    write_pairs(tmp_path, 4)
    (tmp_path / "masks" / "2.png").write_bytes(b"not a png")
    with pytest.raises(CorruptFileError, match=r"masks/2\.png cannot be read"):
        SegmentationFolder(str(tmp_path))
    write_pairs(tmp_path / "cut", 4)
    mask = tmp_path / "cut" / "masks" / "3.png"
    mask.write_bytes(mask.read_bytes()[:50])  # header intact: found when the masks are checked in setup
    data = SegmentationFolder(str(tmp_path / "cut"), val_fraction=0.0, test_fraction=0.25)
    with pytest.raises(CorruptFileError, match=r"masks/3\.png cannot be read"):
        data.setup()
