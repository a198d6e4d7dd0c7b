"""Downloads of public datasets (through torchvision), checked before a run starts.

`--data.download true` on a machine that cannot reach the dataset's server stops when the DataModule is built, before
a run directory exists, with one paragraph, in at most a few seconds per server (a name that does not resolve fails at
once), rather than with the downloader's traceback after its retries. A download that fails half-way is reported the
same way.
"""

import contextlib
import socket
import urllib.parse
import urllib.request
from collections.abc import Iterator

from archlab.errors import DatasetNotFoundError

TIMEOUT_S = 5.0


def check_reachable(name: str, urls: list[str], root: str) -> None:
    """Raise DatasetNotFoundError unless one of `urls` (mirrors) can be connected to, through the proxy the
    environment names if any."""
    reasons = []
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        proxy = urllib.request.getproxies().get(parts.scheme)
        target = urllib.parse.urlsplit(proxy) if proxy else parts
        port = target.port or (443 if target.scheme == "https" else 80)
        try:
            with socket.create_connection((target.hostname, port), timeout=TIMEOUT_S):
                return
        except OSError as error:
            reasons.append(f"{target.hostname}:{port} ({error.strerror or error})")
    raise DatasetNotFoundError(
        f"{name}: --data.download true, but this machine cannot reach the server it downloads from: "
        f"{'; '.join(reasons)}. Download it where there is internet (the same command with --data.root DIR), copy "
        f"DIR here and pass --data.root DIR without --data.download; it would have been written under {root}."
    )


@contextlib.contextmanager
def download_errors(name: str, root: str) -> Iterator[None]:
    """A download that fails half-way (the connection drops, the disk fills) as archlab's one paragraph."""
    try:
        yield
    except (OSError, RuntimeError) as error:  # urllib's URLError is an OSError; torchvision's MNIST a RuntimeError
        raise DatasetNotFoundError(
            f"{name}: downloading into {root} failed: {error}. Run the command again to retry, or pass --data.root DIR "
            "where the files already are."
        ) from None
