"""The records of an offline W&B run (its run-<id>.wandb file), for tests that check what W&B itself stored.

wandb 0.31 ships no Python reader for this file (its writer and reader moved into the Go `wandb-core` binary), so this
is a small one: the file is a 7-byte header (":W&B", a 2-byte magic, a version byte) followed by LevelDB's log
format (32 KiB blocks; each chunk a 4-byte CRC, a 2-byte length, a 1-byte type: full, first, middle, last), whose
payloads are W&B's own `Record` protobuf messages (wandb.proto.wandb_internal_pb2).
"""

import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = HEADER, b""
    while pos + 7 <= len(data):
        space = BLOCK - pos % BLOCK
        if space < 7:  # a block's tail too short for a chunk header is padding
            pos += space
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += space  # zero padding to the block's end
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, FIRST):
            pending = chunk
        else:
            pending += chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def run_file(run_dir: Path, timeout: float = 60) -> Path:
    """The one offline W&B run file under an archlab run directory (or a `wandb.init(dir=...)` directory), once W&B's
    service has written the run's end into it (its "exit" record: `finish` can return before the file is whole)."""
    (path,) = [*run_dir.glob("wandb/offline-run-*/run-*.wandb")]
    deadline = time.monotonic() + timeout
    while not any(r.WhichOneof("record_type") == "exit" for r in records(path)):
        assert time.monotonic() < deadline, f"{path} has no exit record after {timeout} s"
        time.sleep(0.2)
    return path


def items(entries) -> dict[str, Any]:
    return {"/".join(e.nested_key) if e.nested_key else e.key: json.loads(e.value_json) for e in entries}


def history(path: Path) -> list[dict[str, Any]]:
    """Every logged row, in order, as W&B stored it (`_step`, `trainer/global_step`, the values)."""
    return [items(r.history.item) for r in records(path) if r.WhichOneof("record_type") == "history"]


def summary(path: Path) -> dict[str, Any]:
    """The run's summary as its summary records left it (the last update of each key wins)."""
    out: dict[str, Any] = {}
    for r in records(path):
        if r.WhichOneof("record_type") == "summary":
            out.update(items(r.summary.update))
            for e in r.summary.remove:
                out.pop("/".join(e.nested_key) if e.nested_key else e.key, None)
    return out


def of_type(path: Path, kind: str) -> list[Any]:
    """The payloads of every record of one kind: "run", "config", "metric", "artifact", ..."""
    return [getattr(r, kind) for r in records(path) if r.WhichOneof("record_type") == kind]
