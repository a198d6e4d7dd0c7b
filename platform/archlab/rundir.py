"""Where everything in a run directory goes, decided here and nowhere else.

    runs/<experiment>/<YYYYmmdd-HHMMSS>/    (a fit; test, validate and predict runs end in -test, -validate, -predict)
        config.yaml          the resolved config, secrets masked (`archlab fit -c` of it reruns the run)
        status.json          running | finished | failed | interrupted, with the step, the latest checkpoint and
                             the command that continues the run; for test, validate and predict, the checkpoint
                             and the run it came from (source_run)
        checkpoints/         best.ckpt (the monitored metric's best) and last.ckpt (the latest completed step)
        tokenizer.json       a text run's vocabulary
        images/              sample grids and overlays, when the tracker takes no images
        predictions.csv      `archlab predict`: one row per sample (or samples.png / samples.txt for generators)
        wandb/ | events.* | metrics.csv   the tracker's own files
        wandb_id             the W&B run id, so that a resumed run continues the same W&B run
        .lock                held (fcntl.flock) by the one live command writing into the directory

The CLI creates the directory and hands it to the Trainer as `default_root_dir`; tasks and DataModules ask this
module for a path instead of building one. Files that a kill must never leave half-written (config, status,
checkpoints) are written by `write_atomic`: a temporary file beside the target, flushed and fsynced, renamed over it.
"""

import contextlib
import fcntl
import json
import os
import secrets
import socket
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Literal

from archlab.errors import ConfigError

# Lightning's DDP launcher re-runs the command for ranks > 0 with LOCAL_RANK set and our environment inherited.
RUN_DIR_ENV = "ARCHLAB_RUN_DIR"
# What `archlab predict` writes, by the kind of prediction a task returns.
PREDICTION_FILES = {"table": "predictions.csv", "images": "samples.png", "texts": "samples.txt"}
# Temporary files of atomic writes: `.<name>.partial-<random>` beside the target; a kill leaves one behind.
PARTIAL = ".partial-"
Status = Literal["running", "finished", "failed", "interrupted"]


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
    def last_checkpoint(self) -> Path:
        """The latest completed step (archlab.checkpoints.LastCheckpoint writes it); sweeps resume retries from it."""
        return self.checkpoints / "last.ckpt"

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    @property
    def wandb_id(self) -> Path:
        return self.root / "wandb_id"

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

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

    def holds_a_run(self) -> bool:
        """True when an earlier command already wrote a run here (its config, status or checkpoints)."""
        return self.config.is_file() or self.status.is_file() or any(self.checkpoints.glob("*.ckpt"))

    def lock(self) -> "RunLock":
        """Take the directory for this process, or raise ConfigError naming the live command that holds it."""
        self.root.mkdir(parents=True, exist_ok=True)
        handle = open(self.lock_file, "a+")  # noqa: SIM115 - held open for the life of the run
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            raise ConfigError(
                f"{self.root} is in use by another archlab command ({holder or 'starting'}): two commands must not "
                "write checkpoints and tracker runs into one directory. Give this one another --run_dir (or none, "
                f"for a new one), or wait for that one to end; to continue it after it has died: archlab fit --resume "
                f"{self.root}"
            ) from None
        # The lock belongs to the open file: a dead process releases it, whatever the file says; the text is for
        # the message above.
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        return RunLock(handle)

    def read_status(self) -> dict[str, Any] | None:
        try:
            status = json.loads(self.status.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return status if isinstance(status, dict) else None

    def write_status(self, status: Status, **fields: Any) -> dict[str, Any]:
        """Record what state the run is in: running, finished, failed or interrupted, plus `fields` (step, checkpoint,
        message...). Fields of the previous record are kept unless given again."""
        record = {
            **(self.read_status() or {}),
            **fields,
            "status": status,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "updated": datetime.now().isoformat(timespec="seconds"),
        }
        write_atomic(self.status, lambda f: f.write(json.dumps(record, indent=2, default=str).encode() + b"\n"))
        return record

    def remove_partial_writes(self) -> list[Path]:
        """Delete the temporary files that a kill in the middle of an atomic write left behind."""
        removed = []
        for directory in (self.root, self.checkpoints):
            for path in directory.glob(f".*{PARTIAL}*"):
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed


class RunLock:
    """An exclusive flock on RUN/.lock, released by `release()` or by the death of the process."""

    def __init__(self, handle: IO[str]) -> None:
        self.handle = handle

    def release(self) -> None:
        if not self.handle.closed:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write a file so that a kill at any moment leaves either the previous file or the new one, never a torn one.

    `write(f)` fills a temporary file in the target's own directory (a rename is atomic only within one filesystem,
    whatever $TMPDIR is); it is flushed and fsynced, renamed over the target, and the directory is fsynced so that
    the rename itself survives a crash. A leftover temporary file is `.<name>.partial-*` (RunDir.remove_partial_writes).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{PARTIAL}{secrets.token_hex(4)}")
    # os.open rather than mkstemp: the file gets the usual permissions (0666 less the umask), not 0600.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_primary_process() -> bool:
    """False in the extra processes of a multi-process launch (DDP ranks > 0, other nodes, SLURM tasks > 0), which
    share the primary's run directory and must neither lock it nor write its records."""
    return all(os.environ.get(key, "0") == "0" for key in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"))


def new_run_dir(runs_root: str | Path, experiment: str, command: str = "fit") -> RunDir:
    """runs/<experiment>/<YYYYmmdd-HHMMSS>[-<command>][-N], created; reused by the other ranks of a multi-process
    run. A training run has the bare time; `test`, `validate` and `predict` runs carry their command's name."""
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited and os.environ.get("LOCAL_RANK", "0") != "0":
        return RunDir(inherited)
    name = datetime.now().strftime("%Y%m%d-%H%M%S") + ("" if command == "fit" else f"-{command}")
    base = Path(runs_root) / experiment / name
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
