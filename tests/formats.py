"""Writers of small datasets in the real on-disk formats that torchvision and archlab read."""

import pickle
from pathlib import Path

import numpy as np


def write_cifar(root: Path, name: str, *, n_train: int, n_test: int, seed: int = 0) -> Path:
    """CIFAR-10 (`cifar-10-batches-py`) or CIFAR-100 (`cifar-100-python`) python pickle batches."""
    rng = np.random.default_rng(seed)
    if name == "cifar10":
        folder, label_key, num_classes = root / "cifar-10-batches-py", b"labels", 10
        splits = {f"data_batch_{i}": n_train // 5 for i in range(1, 6)} | {"test_batch": n_test}
        meta = ("batches.meta", {b"label_names": [f"class{i}".encode() for i in range(10)]})
    else:
        folder, label_key, num_classes = root / "cifar-100-python", b"fine_labels", 100
        splits = {"train": n_train, "test": n_test}
        meta = ("meta", {b"fine_label_names": [f"class{i}".encode() for i in range(100)]})
    folder.mkdir(parents=True, exist_ok=True)
    for file, n in splits.items():
        batch = {
            b"data": rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8),
            label_key: rng.integers(0, num_classes, size=n).tolist(),
        }
        (folder / file).write_bytes(pickle.dumps(batch))
    (folder / meta[0]).write_bytes(pickle.dumps(meta[1]))
    return folder


def write_oxford_pets(root: Path, *, n_trainval: int, n_test: int, seed: int = 0) -> Path:
    """Oxford-IIIT Pet as torchvision reads it: `oxford-iiit-pet`/images/<name>.jpg, annotations/trimaps/<name>.png
    (1 pet, 2 background, 3 border) and annotations/trainval.txt, test.txt ("<name> <class> <species> <breed>")."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = root / "oxford-iiit-pet"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "annotations" / "trimaps").mkdir(parents=True, exist_ok=True)
    breeds = [("Abyssinian", 1, 1), ("american_bulldog", 2, 2)]
    for split, n in (("trainval", n_trainval), ("test", n_test)):
        lines = []
        for i in range(n):
            breed, class_id, species = breeds[i % len(breeds)]
            name = f"{breed}_{split}{i}"
            h, w = int(rng.integers(24, 40)), int(rng.integers(24, 40))
            yy, xx = np.mgrid[:h, :w]
            r = ((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 3)) ** 2
            trimap = np.where(r < 0.8, 1, np.where(r < 1.2, 3, 2)).astype(np.uint8)
            image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            image[trimap == 1] //= 2
            Image.fromarray(image).save(folder / "images" / f"{name}.jpg")
            Image.fromarray(trimap).save(folder / "annotations" / "trimaps" / f"{name}.png")
            lines.append(f"{name} {class_id} {species} {class_id}")
        (folder / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return folder
