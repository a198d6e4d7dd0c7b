"""Reading checkpoints and weight files safely: `torch.load(weights_only=True)` only, local or remote.

A checkpoint is a pickle, and full unpickling runs whatever code the file asks for. archlab never does that: every
checkpoint, state dict, FID cache and URL goes through `load_checkpoint`, which accepts only tensors, containers
and plain values (torch's weights-only unpickler), and turns each way a file can be wrong (missing, empty,
truncated, random bytes, another format, a pickle asking for Python objects) into one paragraph naming the file.
`check_state_dict` does the same for a checkpoint written by another architecture: the keys it lacks, the keys it
has in excess, and the shapes that differ, before any weight is copied.
"""

import base64
import contextlib
import pickletools
import re
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from archlab.errors import ConfigError, CorruptFileError, DatasetNotFoundError
from archlab.tracking import mask_url

URL_TIMEOUT_S = 60
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6 is a zip archive
# How torch (and timm, which rewraps torch's error) name the global that weights-only loading refused.
REFUSED_GLOBALS = (re.compile(r"GLOBAL ([\w.]+) "), re.compile(r"[Uu]nsupported globals: ([\w.]+)"))
WEIGHTS_ONLY_REFUSAL = ("Weights only load failed", "non-allowlisted")
TORCH_OWN = ("torch.", "collections.OrderedDict", "_codecs.encode")  # what every torch.save file imports


class UnsafeFileError(CorruptFileError):
    """A pickle that asks for Python objects (classes, functions) that only full unpickling would build: possibly
    planted, never loaded, never silently replaced."""


def is_url(path: str | Path) -> bool:
    return str(path).startswith(("http://", "https://"))


def load_checkpoint(path: str | Path, *, what: str = "checkpoint") -> dict:
    """The dict inside a `torch.save` file or http(s) URL, on the CPU, read with torch's weights-only unpickler.

    `what` names the file's role in messages ("--ckpt_path", "--init_from", "the FID cache"). Raises
    DatasetNotFoundError for a missing file or URL, UnsafeFileError (a CorruptFileError) for a pickle asking for
    Python objects, CorruptFileError for anything else that is not a checkpoint.
    """
    if is_url(path):
        with _downloaded(str(path), what=what) as file:
            return _load(file, shown=mask_url(str(path)), what=what)
    file = Path(path).expanduser()
    if not file.is_file():
        kind = "is a directory, not a file" if file.is_dir() else "does not exist"
        raise DatasetNotFoundError(
            f"{what} {file.resolve()} {kind}; pass a checkpoint written by `archlab fit` "
            "(runs/<experiment>/<time>/checkpoints/best.ckpt or last.ckpt), a state-dict file saved with torch.save, "
            "or an http(s) URL of one."
        )
    return _load(file, shown=str(file.resolve()), what=what)


def _load(file: Path, *, shown: str, what: str) -> dict:
    with open(file, "rb") as f:
        head = f.read(len(ZIP_MAGIC))
    if not head:
        raise CorruptFileError(f"{what} {shown} is empty (0 bytes): not a checkpoint. {_REWRITE}")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        raise unreadable(error, file, shown=shown, what=what) from None
    if not isinstance(checkpoint, dict):
        raise CorruptFileError(
            f"{what} {shown} holds a {type(checkpoint).__name__}, not a checkpoint: archlab reads a dict with a "
            f"'state_dict' (as `archlab fit` writes) or a state dict of tensors. {_REWRITE}"
        )
    return checkpoint


_REWRITE = "Pass another file, or write this one again (a run's own checkpoints are under its checkpoints/ directory)."


def unreadable(error: Exception, file: Path, *, shown: str | None = None, what: str = "checkpoint") -> CorruptFileError:
    """The one-paragraph error for a file that torch.load(weights_only=True) (or a library calling it) failed on."""
    with open(file, "rb") as f:
        head = f.read(len(ZIP_MAGIC))
    shown = shown or str(file.resolve())
    message = str(error)
    refused = [match.group(1).rstrip(".") for pattern in REFUSED_GLOBALS if (match := pattern.search(message))]
    if refused:
        globals_ = refused[:1]
    elif any(refusal in message for refusal in WEIGHTS_ONLY_REFUSAL):
        globals_ = [g for g in _pickled_globals(file, zipped=head == ZIP_MAGIC) if not g.startswith(TORCH_OWN)]
    else:
        globals_ = []
    if globals_:
        asks = f" (it asks for {', '.join(sorted(set(globals_))[:5])})"
        return UnsafeFileError(
            f"{what} {shown} holds Python objects that only full unpickling would build{asks}: refused, archlab "
            "never runs code from a checkpoint. Only tensors, containers and plain values are read. If you trust "
            "the file and wrote it yourself, load it in Python with torch.load(..., weights_only=False) and save "
            "its tensors again with torch.save(model.state_dict(), path)."
        )
    if any(refusal in message for refusal in WEIGHTS_ONLY_REFUSAL):
        reason = "its bytes are not a pickle"
    else:  # the first sentence: torch's own explanations run to a paragraph
        first = re.split(r"(?<=\.)\s", message.strip())[0][:200]
        reason = f"{type(error).__name__}: {first}" if first else type(error).__name__
    if file.suffix == ".safetensors":
        return CorruptFileError(f"{what} {shown} is not a valid safetensors file ({reason}). {_REWRITE}")
    if head == ZIP_MAGIC:
        return CorruptFileError(
            f"{what} {shown} starts like a torch checkpoint but is truncated or corrupt ({reason}); an interrupted "
            f"copy or write leaves such a file. {_REWRITE}"
        )
    return CorruptFileError(
        f"{what} {shown} is not a checkpoint torch can read: it is neither a torch.save zip archive nor a legacy "
        f"torch pickle ({reason}); random bytes, a truncated file or another format. "
        f"{_REWRITE}"
    )


def _pickled_globals(file: Path, *, zipped: bool) -> list[str]:
    """The classes and functions a pickle would import (GLOBAL, STACK_GLOBAL, INST), found by reading its opcodes
    with pickletools, which executes nothing; empty when the bytes are not a whole pickle (random bytes, truncation).
    """
    try:
        if zipped:
            with zipfile.ZipFile(file) as archive:
                name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                data = archive.read(name)
        else:
            data = file.read_bytes()
        found, strings = [], []
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # not a pickle at all: the caller says so
        return []
    return found


def _request(url: str) -> urllib.request.Request:
    """A GET for `url`; credentials inside it (https://user:password@host/...) go in a Basic auth header, which
    urllib does not do by itself."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return urllib.request.Request(url)
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    bare = urllib.parse.urlunsplit(parts._replace(netloc=host))
    credentials = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
    token = base64.b64encode(credentials.encode()).decode()
    return urllib.request.Request(bare, headers={"Authorization": f"Basic {token}"})


@contextlib.contextmanager
def _downloaded(url: str, *, what: str) -> Iterator[Path]:
    """The URL's bytes in a temporary file, removed afterwards; nothing is cached or unpickled here."""
    shown = mask_url(url)
    with tempfile.TemporaryDirectory(prefix="archlab-download-") as tmp:
        file = Path(tmp) / "checkpoint"
        try:
            with urllib.request.urlopen(_request(url), timeout=URL_TIMEOUT_S) as response, open(file, "wb") as out:
                shutil.copyfileobj(response, out)
        except urllib.error.HTTPError as error:
            if error.code in (404, 410):
                raise DatasetNotFoundError(
                    f"{what} {shown} does not exist (HTTP {error.code}); check the URL, or download the file and "
                    "pass its local path."
                ) from None
            raise CorruptFileError(
                f"{what} {shown} could not be downloaded: HTTP {error.code} {error.reason}. Download it yourself "
                "and pass its local path."
            ) from None
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            raise DatasetNotFoundError(
                f"{what} {shown} could not be downloaded ({mask_url(str(reason))}); check the address and the "
                "network, or download the file and pass its local path."
            ) from None
        yield file


def state_dict_of(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
    """The state dict inside an archlab/Lightning checkpoint (`state_dict`), or the checkpoint itself when it is one."""
    state = checkpoint.get("state_dict", checkpoint)
    return state if isinstance(state, Mapping) else {}


def format_state_mismatch(
    own: Mapping[str, Any],
    loaded: Mapping[str, Any],
    *,
    shown: str,
    what: str = "checkpoint",
    target: str = "the model",
    limit: int = 10,
) -> str | None:
    """One paragraph listing keys missing from `loaded`, keys it has that `own` lacks, and shapes that differ, or
    None when the two agree. `own` and `loaded` are state dicts (`module.state_dict()` and the file's)."""
    missing = [key for key in own if key not in loaded]
    unexpected = [key for key in loaded if key not in own]
    shapes = [
        f"{key} {tuple(loaded[key].shape)} in the file vs {tuple(own[key].shape)}"
        for key in own
        if key in loaded and hasattr(loaded[key], "shape") and hasattr(own[key], "shape")
        if tuple(loaded[key].shape) != tuple(own[key].shape)
    ]
    if not (missing or unexpected or shapes):
        return None

    def listed(keys: list[str]) -> str:
        return ", ".join(keys[:limit]) + (f" ... ({len(keys) - limit} more)" if len(keys) > limit else "") or "none"

    return (
        f"{what} {shown} was written by another architecture or configuration than {target}: "
        f"{len(missing)} key(s) missing from the file: {listed(missing)}; "
        f"{len(unexpected)} unexpected key(s) in the file: {listed(unexpected)}; "
        f"{len(shapes)} shape(s) differ: {listed(shapes)}. "
        "Pass a checkpoint of the same model with the same sizes (the run's own config.yaml rebuilds it: "
        "`archlab test -c RUN/config.yaml --ckpt_path RUN/checkpoints/best.ckpt`), or start a new run from its "
        "weights with --init_from."
    )


def check_state_dict(
    module: nn.Module, checkpoint: Mapping[str, Any], *, source: str | Path, what: str = "--ckpt_path"
) -> None:
    """Raise ConfigError listing what differs when `checkpoint` (or its `state_dict`) does not load strictly into
    `module`. Call it before `load_state_dict`, e.g. from a LightningModule's `on_load_checkpoint`."""
    shown = mask_url(str(source))
    message = format_state_mismatch(
        module.state_dict(), state_dict_of(checkpoint), shown=shown, what=what, target=type(module).__name__
    )
    if message:
        raise ConfigError(message)


def load_weights(net: nn.Module, path: str) -> None:
    """Load a net's weights from an archlab checkpoint (`state_dict` keys `net.<...>`) or a plain state dict, a local
    file or an http(s) URL, always read with the weights-only unpickler (archlab.loading).

    Weights present in both with the same shape are copied; the rest of the net keeps its fresh initialisation (a
    new head, say). Shapes that disagree, or no key in common, are an error that lists them.
    """
    file = mask_url(path)
    state = dict(state_dict_of(load_checkpoint(path, what="--init_from")))
    if any(key.startswith("net.") for key in state):
        state = {key.removeprefix("net."): value for key, value in state.items() if key.startswith("net.")}
    state = {key: value for key, value in state.items() if torch.is_tensor(value)}
    own = net.state_dict()
    mismatched = [
        f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}"
        for key in own
        if key in state and state[key].shape != own[key].shape
    ]
    common = [key for key in own if key in state and state[key].shape == own[key].shape]
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    if mismatched or not common:
        raise ConfigError(
            f"--init_from {file} does not fit model.net ({type(net).__name__}): "
            f"{len(mismatched)} shape(s) differ (checkpoint vs net): {', '.join(mismatched[:10]) or 'none'}; "
            f"{len(common)} key(s) in common. Keys the checkpoint lacks: {', '.join(missing[:10]) or 'none'}"
            f"{' ...' if len(missing) > 10 else ''}. The checkpoint must come from the same net with the same sizes "
            "(and, for text, the same vocabulary: pass its run's tokenizer.json as --data.vocab_path)."
        )
    net.load_state_dict({key: state[key] for key in common}, strict=False)
    notes = []
    if missing:
        notes.append(
            f"{len(missing)} fresh (not in the checkpoint): {', '.join(missing[:8])}{' ...' * (len(missing) > 8)}"
        )
    if unexpected:
        notes.append(f"{len(unexpected)} unused: {', '.join(unexpected[:8])}{' ...' * (len(unexpected) > 8)}")
    print(
        f"init_from {file}: {len(common)} tensors loaded" + (f"; {'; '.join(notes)}" if notes else ""), file=sys.stderr
    )
