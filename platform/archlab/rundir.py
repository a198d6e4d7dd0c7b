"""Where everything in a run directory goes, decided here and nowhere else.

    runs/<experiment>/<YYYYmmdd-HHMMSS>/
        config.yaml          the resolved config, secrets masked (`archlab fit -c` of it reruns the run)
        checkpoints/         best.ckpt (the monitored metric's best) and last.ckpt
        tokenizer.json       a text run's vocabulary
        images/              sample grids and overlays, when the tracker takes no images
        predictions.csv      `archlab predict`: one row per sample (or samples.png / samples.txt for generators)
        wandb/ | events.* | metrics.csv   the tracker's own files

The CLI creates the directory and hands it to the Trainer as `default_root_dir`; tasks and DataModules ask this
module for a path instead of building one.
"""

import os
from datetime import datetime
from pathlib import Path

# Lightning's DDP launcher re-runs the command for ranks > 0 with LOCAL_RANK set and our environment inherited.
RUN_DIR_ENV = "ARCHLAB_RUN_DIR"
# What `archlab predict` writes, by the kind of prediction a task returns.
PREDICTION_FILES = {"table": "predictions.csv", "images": "samples.png", "texts": "samples.txt"}


class RunDir:
    """The paths of one run's files."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer.json"

    @property
    def tracker(self) -> Path:
        return self.root

    def image(self, key: str, epoch: int) -> Path:
        """`val/samples` at epoch 3 -> images/val_samples_epoch003.png."""
        return self.root / "images" / f"{key.replace('/', '_')}_epoch{epoch:03d}.png"

    def predictions(self, kind: str) -> Path:
        if kind not in PREDICTION_FILES:
            raise ValueError(f"unknown kind of predictions {kind!r}; known: {', '.join(PREDICTION_FILES)}")
        return self.root / PREDICTION_FILES[kind]


def new_run_dir(runs_root: str | Path, experiment: str) -> RunDir:
    """runs/<experiment>/<YYYYmmdd-HHMMSS>[-N], created; reused by the other ranks of a multi-process run."""
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited and os.environ.get("LOCAL_RANK", "0") != "0":
        return RunDir(inherited)
    base = Path(runs_root) / experiment / datetime.now().strftime("%Y%m%d-%H%M%S")
    root, n = base, 0
    while True:
        try:
            root.mkdir(parents=True)
            break
        except FileExistsError:
            n += 1
            root = base.with_name(f"{base.name}-{n}")
    os.environ[RUN_DIR_ENV] = str(root)
    return RunDir(root)
