"""Segmentation DataModules: generated microscopy-like cells, Oxford-IIIT Pet, and a user's folder of image/mask pairs.

Batches are (image, mask): images (B, C, S, S) float, masks (B, S, S) int64 class indices in 0..num_classes-1,
checked when the data is generated or read in setup. The image base (`archlab.data.base`) converts to float and
normalises on the device; this module adds the paired augmentation (flips, quarter turns, a random affine map plus an
elastic deformation; one geometric transform per sample, applied identically to image and mask).

References: Ronneberger et al. 2015, "U-Net" (https://arxiv.org/abs/1505.04597; the few-labels, strong-augmentation
setting, with elastic deformations); Simard et al. 2003, "Best practices for convolutional neural networks applied to
visual document analysis" (elastic deformation as a smoothed random displacement field); Parkhi et al. 2012, "Cats
and Dogs" (Oxford-IIIT Pet, https://www.robots.ox.ac.uk/~vgg/data/pets/).
"""

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import Dataset, Subset
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms.v2 import functional as TF

from archlab.data.base import ImageDataModule, TensorBatchDataset, check_fraction, split_indices
from archlab.data.download import check_reachable, download_errors
from archlab.data.image_files import image_size as file_image_size
from archlab.data.image_files import read_image
from archlab.errors import ConfigError, DatasetNotFoundError

PET_TRIMAP_CLASSES = ["background", "pet", "border"]
PETS_URL = "https://www.robots.ox.ac.uk/~vgg/data/pets/"  # where torchvision.datasets.OxfordIIITPet downloads from


def augment_pair(
    x: Tensor,
    y: Tensor,
    *,
    degrees: float = 15.0,
    scale: float = 0.1,
    elastic: float = 2.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Random flips, quarter turns, affine map and elastic deformation per sample, the same for image and mask.

    x: (B, C, H, W) float; y: (B, H, W) int64. The image is resampled bilinearly, the mask by nearest neighbour, both
    reflected at the border. `elastic` is the displacement's standard deviation in pixels (0 disables it).

    Hand-written rather than kornia's AugmentationSequential (the same flips, RandomRotation90, RandomAffine and
    RandomElasticTransform on "input" and "mask"), which measured 4-7x slower per batch on a 2-core CPU (best of 15
    rounds, issue 8): 5.2 vs 0.8 ms at (8, 1, 64, 64) and 25 vs 6 ms at (16, 3, 128, 128), 2-5x without the elastic
    step; torchvision.transforms.v2 draws one transform for a whole batch tensor.
    """
    b, _c, h, w = x.shape
    device = x.device

    def rand(*shape: int) -> Tensor:
        return torch.rand(shape, device=device, generator=generator)

    ym = y.unsqueeze(1).float()  # (B, 1, H, W): flipped and resampled alongside x
    flip = (rand(b, 1, 1, 1) < 0.5, rand(b, 1, 1, 1) < 0.5)
    x, ym = (torch.where(flip[0], t.flip(-1), t) for t in (x, ym))
    x, ym = (torch.where(flip[1], t.flip(-2), t) for t in (x, ym))
    if h == w:
        # A transpose with the two flips gives each of the square's 8 symmetries (the quarter turns among them) with
        # equal chance, without a per-sample loop or a device-to-host read of the draw.
        transpose = rand(b, 1, 1, 1) < 0.5
        x, ym = (torch.where(transpose, t.transpose(-2, -1), t) for t in (x, ym))
    if degrees > 0 or scale > 0 or elastic > 0:
        angle = (rand(b) * 2 - 1) * math.radians(degrees)
        zoom = 1 + (rand(b) * 2 - 1) * scale
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        zero = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1)  # (B, 2, 3)
        grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)  # (B, H, W, 2) in [-1, 1]
        if elastic > 0:
            # A coarse random field, upsampled smoothly: neighbouring pixels move together (Simard et al. 2003).
            coarse = torch.randn((b, 2, 4, 4), device=device, generator=generator)
            field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)  # (B, 2, H, W) ~ pixels
            pixels = torch.tensor([w / 2, h / 2], device=device).view(1, 2, 1, 1)
            grid = grid + (field * elastic / pixels).permute(0, 2, 3, 1)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        ym = F.grid_sample(ym, grid, mode="nearest", padding_mode="reflection", align_corners=False)
    return x, ym.squeeze(1).round().long()


class SegmentationDataModule(ImageDataModule):
    """(image, mask) pairs: the image base's loaders and normalisation, with the paired augmentation."""

    # Segmentation images are larger than classification ones: fewer are read for the statistics of file sources.
    stats_samples = 200

    def __init__(
        self,
        *,
        batch_size: int = 8,
        seed: int = 0,
        augment: bool = True,
        degrees: float = 15.0,
        scale: float = 0.1,
        elastic: float = 2.0,
        normalize: bool = True,
        num_workers: int = 0,
    ) -> None:
        """`seed` fixes the data (generated images, splits), never the training. `augment`: flips, quarter turns,
        rotation by up to `degrees`, zoom by up to 1 +- `scale` and an elastic displacement of `elastic` pixels (std),
        per sample, on training batches only. `normalize`: standardise each channel with the training split's stats."""
        super().__init__(
            batch_size=batch_size, seed=seed, augment=augment, normalize=normalize, num_workers=num_workers
        )
        if degrees < 0 or not 0 <= scale < 1 or elastic < 0:
            raise ConfigError(
                f"{self.name}: data.degrees ({degrees}) and data.elastic ({elastic}) must be >= 0 and data.scale "
                f"({scale}) in [0, 1)"
            )
        self.degrees = degrees
        self.scale = scale
        self.elastic = elastic

    def augment_batch(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return augment_pair(x, y, degrees=self.degrees, scale=self.scale, elastic=self.elastic)


def make_cells(
    n: int,
    *,
    image_size: int = 64,
    seed: int = 0,
    cells: tuple[int, int] = (10, 22),
    radius: tuple[float, float] = (5, 10),
) -> tuple[Tensor, Tensor]:
    """`n` microscopy-like images of touching, overlapping cells and their exact masks, deterministic from `seed`.

    Each image: a smooth textured background under uneven illumination; ellipses of random size, elongation,
    orientation and brightness, with a shaded body and a darker nucleus, drawn in order (a later cell covers an
    earlier one); then blur and noise. Returns images (n, 1, S, S) uint8 and masks (n, S, S) int64 (0 = background,
    1 = cell). Image i depends only on `seed` and i, so a smaller `n` gives a prefix of a larger one.
    """
    s = image_size
    generator = torch.Generator().manual_seed(seed)

    def uniform(lo: float, hi: float, *shape: int) -> Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=generator)

    coords = torch.arange(s, dtype=torch.float32) + 0.5
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")  # (S, S)
    blur = torchvision.transforms.GaussianBlur(5, sigma=1.0)
    images, masks = torch.empty(n, 1, s, s, dtype=torch.uint8), torch.empty(n, s, s, dtype=torch.long)
    for i in range(n):
        k = int(torch.randint(cells[0], cells[1] + 1, (1,), generator=generator))
        coarse = torch.randn((1, 1, max(s // 8, 2), max(s // 8, 2)), generator=generator)
        texture = F.interpolate(coarse, size=(s, s), mode="bicubic", align_corners=False)[0, 0]  # (S, S)
        tilt = uniform(-1, 1, 2)
        illumination = 1 + 0.15 * (tilt[0] * (xx / s - 0.5) + tilt[1] * (yy / s - 0.5))
        image = (uniform(0.15, 0.3, 1) + 0.04 * texture) * illumination  # (S, S)
        mask = torch.zeros(s, s, dtype=torch.long)
        cy, cx = uniform(0, s, k), uniform(0, s, k)
        a = uniform(*radius, k)
        b = a * uniform(0.55, 1.0, k)
        angle = uniform(0, math.pi, k)
        brightness = uniform(0.12, 0.5, k)
        nucleus = uniform(0.2, 0.45, k)
        for j in range(k):
            dx, dy = xx - cx[j], yy - cy[j]
            u = (dx * torch.cos(angle[j]) + dy * torch.sin(angle[j])) / a[j]
            v = (-dx * torch.sin(angle[j]) + dy * torch.cos(angle[j])) / b[j]
            q = u.square() + v.square()  # < 1 inside the ellipse
            inside = q <= 1
            body = image.mean() + brightness[j] * (1 - 0.4 * q) - 0.15 * brightness[j] * (q < nucleus[j]).float()
            image = torch.where(inside, body * illumination, image)
            mask[inside] = 1
        image = blur(image[None, None])[0, 0]
        image = image + 0.04 * torch.randn((s, s), generator=generator)
        images[i, 0] = (image.clamp(0, 1) * 255).round().to(torch.uint8)
        masks[i] = mask
    return images, masks


class Cells(SegmentationDataModule):
    """Generated fluorescence-microscopy-like images of many touching cells with exact masks; needs no files."""

    name = "Cells"
    in_channels = 1
    num_classes = 2
    class_names = ["background", "cell"]

    def __init__(
        self, *, labels: int = 32, val_size: int = 32, test_size: int = 64, image_size: int = 64, **kwargs: Any
    ) -> None:
        """`labels`: the number of labelled training images kept (U-Net's few-labels setting). The validation and
        test images come from their own seeded streams, so they stay the same whatever `labels` is."""
        if labels < 1 or val_size < 1 or test_size < 1:
            raise ConfigError(
                f"Cells: data.labels ({labels}), data.val_size ({val_size}) and data.test_size ({test_size}) must be "
                ">= 1"
            )
        if image_size < 16:
            raise ConfigError(f"Cells: data.image_size must be >= 16 pixels, got {image_size}")
        self.labels = labels
        self.val_size = val_size
        self.test_size = test_size
        self.image_size = image_size
        super().__init__(**kwargs)

    def make_datasets(self) -> dict[str, Dataset]:
        sizes = {"train": self.labels, "val": self.val_size, "test": self.test_size}
        # One stream per split: seeds 3 * seed + {0, 1, 2} never collide across data.seed values.
        return {
            split: TensorBatchDataset(*make_cells(n, image_size=self.image_size, seed=3 * self.seed + offset))
            for offset, (split, n) in enumerate(sizes.items())
        }


def to_square(image: Image.Image, size: int, resample: Image.Resampling) -> Tensor:
    """Resize the shorter side to `size` and centre-crop: (C, size, size) uint8."""
    interpolation = (
        TF.InterpolationMode.NEAREST if resample == Image.Resampling.NEAREST else TF.InterpolationMode.BILINEAR
    )
    image = TF.center_crop(TF.resize(image, [size], interpolation=interpolation), [size, size])
    return TF.pil_to_tensor(image)


class PetMasks(Dataset):
    """torchvision's OxfordIIITPet segmentation samples as (image (3, S, S) uint8, mask (S, S) int64)."""

    def __init__(self, pets: torchvision.datasets.OxfordIIITPet, *, image_size: int, binary: bool) -> None:
        self.pets = pets
        self.image_size = image_size
        # Trimap pixels: 1 pet, 2 background, 3 border ("not classified"); binary counts the border as pet.
        self.lookup = torch.tensor([-1, 1, 0, 1 if binary else 2] + [-1] * 252)

    def __len__(self) -> int:
        return len(self.pets)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, trimap = self.pets[index]
        x = to_square(image.convert("RGB"), self.image_size, Image.Resampling.BILINEAR)
        trimap = to_square(trimap, self.image_size, Image.Resampling.NEAREST)[0].long()  # (S, S) in {1, 2, 3}
        y = self.lookup[trimap]
        if (y < 0).any():
            path = self.pets._segs[index]
            raise ConfigError(
                f"OxfordPets: trimap {path} has pixel values {sorted(set(trimap.unique().tolist()) - {1, 2, 3})}; "
                "an Oxford-IIIT Pet trimap holds only 1 (pet), 2 (background) and 3 (border)"
            )
        return x, y


class OxfordPets(SegmentationDataModule):
    """Oxford-IIIT Pet trimaps as masks, read by torchvision from `root`/oxford-iiit-pet (images/, annotations/)."""

    name = "OxfordPets"
    in_channels = 3

    def __init__(
        self,
        *,
        root: str = "data",
        image_size: int = 128,
        binary: bool = False,
        val_fraction: float = 0.1,
        download: bool = False,
        **kwargs: Any,
    ) -> None:
        """Classes: background, pet, border (the trimap's unclassified band), or with `binary` background and pet
        (border counted as pet). Train and validation are carved from the official trainval list with
        `val_fraction`; test is the official test list."""
        if image_size < 8:
            raise ConfigError(f"OxfordPets: data.image_size must be >= 8 pixels, got {image_size}")
        check_fraction("OxfordPets", "val_fraction", val_fraction, positive=True)
        self.root = root
        self.image_size = image_size
        self.binary = binary
        self.val_fraction = val_fraction
        self.download = download
        self.num_classes = 2 if binary else 3
        self.class_names = PET_TRIMAP_CLASSES[: self.num_classes]
        super().__init__(**kwargs)
        if not download:
            self._check_files()

    def check_download(self) -> None:
        if self.download and not (Path(self.root) / "oxford-iiit-pet" / "annotations" / "test.txt").is_file():
            check_reachable("OxfordPets", [PETS_URL], self.root)

    def _check_files(self) -> None:
        base = Path(self.root) / "oxford-iiit-pet"
        required = [base / "images", base / "annotations" / "trimaps"]
        required_files = [base / "annotations" / f"{split}.txt" for split in ("trainval", "test")]
        missing = [p for p in required if not p.is_dir()] + [p for p in required_files if not p.is_file()]
        if missing:
            raise DatasetNotFoundError(
                f"OxfordPets was not found: {', '.join(str(p.resolve()) for p in missing)} missing. Pass "
                "--data.download true on a machine with internet to download it there, or --data.root DIR where "
                "DIR/oxford-iiit-pet holds images/ and annotations/ (trimaps/, trainval.txt, test.txt)"
            )

    def prepare_data(self) -> None:
        if self.download:
            with download_errors("OxfordPets", self.root):
                torchvision.datasets.OxfordIIITPet(self.root, split="test", target_types="segmentation", download=True)

    def make_datasets(self) -> dict[str, Dataset]:
        self._check_files()

        def pets(split: str) -> PetMasks:
            source = torchvision.datasets.OxfordIIITPet(self.root, split=split, target_types="segmentation")
            return PetMasks(source, image_size=self.image_size, binary=self.binary)

        trainval = pets("trainval")
        train, val, _ = split_indices(
            len(trainval), val_fraction=self.val_fraction, test_fraction=0.0, seed=self.seed, name=self.name
        )
        return {"train": Subset(trainval, train.tolist()), "val": Subset(trainval, val.tolist()), "test": pets("test")}


def read_mask(path: Path, *, name: str = "SegmentationFolder") -> np.ndarray:
    """A mask file as (H, W) int64 class indices."""
    return np.array(read_image(path, None, name=name), dtype=np.int64)


class MaskFiles(Dataset):
    """(image path, mask path) pairs read as (image (C, S, S) uint8, mask (S, S) int64)."""

    def __init__(self, pairs: list[tuple[Path, Path]], *, image_size: int, in_channels: int) -> None:
        self.pairs = pairs
        self.image_size = image_size
        self.mode = "L" if in_channels == 1 else "RGB"

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image_path, mask_path = self.pairs[index]
        image = read_image(image_path, self.mode, name="SegmentationFolder")
        x = to_square(image, self.image_size, Image.Resampling.BILINEAR)
        labels = Image.fromarray(read_mask(mask_path).astype(np.int32))
        y = to_square(labels, self.image_size, Image.Resampling.NEAREST)
        return x, y[0].long()


class SegmentationFolder(SegmentationDataModule):
    """A user's pairs `path`/images/<name>.<ext> and `path`/masks/<name>.png (class index per pixel)."""

    name = "SegmentationFolder"

    def __init__(
        self,
        path: str,
        *,
        num_classes: int = 2,
        image_size: int = 128,
        in_channels: int = 3,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        **kwargs: Any,
    ) -> None:
        """Images and masks pair by file stem; sizes must agree (both are then resized to `image_size`); masks hold
        class indices 0..num_classes-1. Train, val and test are carved with the fractions, seeded by data.seed."""
        if num_classes < 2:
            raise ConfigError(f"SegmentationFolder: data.num_classes must be >= 2, got {num_classes}")
        if in_channels not in (1, 3):
            raise ConfigError(f"SegmentationFolder: data.in_channels must be 1 or 3, got {in_channels}")
        check_fraction("SegmentationFolder", "val_fraction", val_fraction)
        check_fraction("SegmentationFolder", "test_fraction", test_fraction)
        self.path = path
        self.num_classes = num_classes
        self.image_size = image_size
        self.in_channels = in_channels
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.class_names = [str(i) for i in range(num_classes)]
        super().__init__(**kwargs)
        self.pairs = self._pair_files()

    def _pair_files(self) -> list[tuple[Path, Path]]:
        folder = Path(self.path)
        images_dir, masks_dir = folder / "images", folder / "masks"
        if not images_dir.is_dir() or not masks_dir.is_dir():
            raise DatasetNotFoundError(
                f"SegmentationFolder: {folder.resolve()} needs images/ and masks/ subfolders, pairing "
                "images/<name>.<ext> with masks/<name>.png"
            )

        def files(directory: Path) -> dict[str, Path]:
            return {p.stem: p for p in sorted(directory.iterdir()) if p.suffix.lower() in IMG_EXTENSIONS}

        images, masks = files(images_dir), files(masks_dir)
        if not images:
            raise DatasetNotFoundError(f"SegmentationFolder: {images_dir.resolve()} holds no images ({IMG_EXTENSIONS})")
        unmasked, orphans = sorted(set(images) - set(masks)), sorted(set(masks) - set(images))
        if unmasked or orphans:
            raise ConfigError(
                f"SegmentationFolder: {len(images)} images but {len(masks)} masks; "
                + (f"no mask in {masks_dir.resolve()} for images {unmasked[:5]}; " if unmasked else "")
                + (f"no image in {images_dir.resolve()} for masks {orphans[:5]}; " if orphans else "")
                + "every images/<name>.<ext> needs a masks/<name>.png"
            )
        pairs = [(images[stem], masks[stem]) for stem in sorted(images)]
        for image_path, mask_path in pairs:
            size, mask_size = file_image_size(image_path, name=self.name), file_image_size(mask_path, name=self.name)
            if size != mask_size:
                raise ConfigError(
                    f"SegmentationFolder: {image_path} is {size[0]}x{size[1]} but its mask {mask_path} "
                    f"is {mask_size[0]}x{mask_size[1]}; an image and its mask must have the same size"
                )
        return pairs

    def check_masks(self) -> None:
        """Every mask single-channel with labels in 0..num_classes-1, read once here rather than per batch."""
        for _image_path, mask_path in self.pairs:
            labels = read_mask(mask_path)
            if labels.ndim != 2:
                raise ConfigError(
                    f"SegmentationFolder: mask {mask_path} is not single-channel; save class indices as L/P"
                )
            outside = sorted(set(np.unique(labels).tolist()) - set(range(self.num_classes)))
            if outside:
                raise ConfigError(
                    f"SegmentationFolder: mask {mask_path} holds labels {outside}, outside "
                    f"0..{self.num_classes - 1} (data.num_classes={self.num_classes}); raise data.num_classes or fix "
                    "the mask"
                )

    def make_datasets(self) -> dict[str, Dataset]:
        self.check_masks()
        splits = split_indices(
            len(self.pairs),
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            seed=self.seed,
            name=self.name,
            unit="images",
        )
        return {
            split: MaskFiles(
                [self.pairs[i] for i in indices.tolist()], image_size=self.image_size, in_channels=self.in_channels
            )
            for split, indices in zip(("train", "val", "test"), splits, strict=True)
        }
