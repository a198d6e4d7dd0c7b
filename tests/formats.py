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
