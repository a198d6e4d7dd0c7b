"""Writers of small datasets in the real on-disk formats that torchvision and archlab read."""

import pickle
from pathlib import Path

import numpy as np

# The CIFAR page's class lists (https://www.cs.toronto.edu/~kriz/cifar.html), spelt as the meta files spell them.
CIFAR10_LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_SUPERCLASSES = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
# The meta file lists both label sets in alphabetical order; a label is an index into it.
CIFAR100_FINE_LABEL_NAMES = sorted(name for names in CIFAR100_SUPERCLASSES.values() for name in names)
CIFAR100_COARSE_LABEL_NAMES = sorted(CIFAR100_SUPERCLASSES)


def write_cifar(root: Path, name: str, *, n_train: int, n_test: int, seed: int = 0) -> Path:
    """CIFAR-10 (`cifar-10-batches-py`) or CIFAR-100 (`cifar-100-python`) python pickle batches, with the real meta
    file. Labels are balanced (each class n // num_classes times, +1 for the first n % num_classes), in random order."""
    rng = np.random.default_rng(seed)
    if name == "cifar10":
        folder, num_classes = root / "cifar-10-batches-py", 10
        splits = {"data_batch": n_train, "test_batch": n_test}
        meta = ("batches.meta", {b"label_names": [n.encode() for n in CIFAR10_LABEL_NAMES], b"num_vis": 3072})
    else:
        folder, num_classes = root / "cifar-100-python", 100
        splits = {"train": n_train, "test": n_test}
        meta = (
            "meta",
            {
                b"fine_label_names": [n.encode() for n in CIFAR100_FINE_LABEL_NAMES],
                b"coarse_label_names": [n.encode() for n in CIFAR100_COARSE_LABEL_NAMES],
            },
        )
        coarse = {
            CIFAR100_FINE_LABEL_NAMES.index(fine): CIFAR100_COARSE_LABEL_NAMES.index(superclass)
            for superclass, names in CIFAR100_SUPERCLASSES.items()
            for fine in names
        }
    label_key = b"labels" if name == "cifar10" else b"fine_labels"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in splits.items():
        images = rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)  # channel-major rows: R, G, B planes
        labels = rng.permutation(np.arange(n) % num_classes).tolist()
        batch = {b"data": images, label_key: labels}
        if name == "cifar100":
            batch[b"coarse_labels"] = [coarse[label] for label in labels]
        if split == "data_batch":  # CIFAR-10's training set is five files
            for i, part in enumerate(np.array_split(np.arange(n), 5), start=1):
                part_batch = {b"data": images[part], label_key: [labels[j] for j in part]}
                (folder / f"data_batch_{i}").write_bytes(pickle.dumps(part_batch, protocol=2))
        else:
            (folder / split).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / meta[0]).write_bytes(pickle.dumps(meta[1], protocol=2))
    return folder


def read_pickle(path: Path) -> dict:
    """A CIFAR file as the CIFAR page reads it: a Python 2 pickle, keys as bytes."""
    with path.open("rb") as file:
        return pickle.load(file, encoding="bytes")


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
