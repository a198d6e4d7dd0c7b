"""Who records a run: the experiment tracker, and secret redaction.

W&B is the default tracker: online when the user has credentials, otherwise offline inside the run directory, to
be uploaded later with `wandb sync`. CSV and TensorBoard are the alternatives; `none` records nothing.
"""

import netrc
import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.loggers.logger import DummyLogger

Tracker = Literal["wandb", "csv", "tensorboard", "none"]
# Whole key names only: `db_password`, `client_secret`, `api_key`, `auth_token` are secrets; `chars_per_token` is not.
SECRET_KEY = re.compile(
    r"^(?:.*_)?(?:password|passwd|secret|secret_key|api_?key|credentials?)$"
    r"|^(?:(?:auth|access|api|bearer|refresh|hf|wandb|github)_?)?token$",
    re.IGNORECASE,
)
URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]+:)(?P<password>[^@/\s]+)(?P<tail>@)")


def mask_url(text: str) -> str:
    """postgresql://user:hunter2@host/db -> postgresql://user:***@host/db, anywhere inside `text`."""
    return URL_PASSWORD.sub(r"\g<head>***\g<tail>", text)


def redact(value: Any) -> Any:
    """A copy of a config in which values under secret-looking keys and passwords inside URLs are masked."""
    if isinstance(value, dict):
        return {k: "***" if SECRET_KEY.match(str(k)) and v else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    if isinstance(value, str):
        return mask_url(value)
    return value


def wandb_has_credentials() -> bool:
    """True when W&B can log in without asking: an API key in the environment or a netrc entry for its host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_offline() -> bool:
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode in ("offline", "dryrun", "disabled")
    return not wandb_has_credentials()


def make_logger(tracker: Tracker, run_dir: Path, *, experiment: str, project: str) -> Logger | bool:
    if tracker == "wandb":
        return WandbLogger(
            save_dir=str(run_dir),
            project=project,
            name=f"{experiment}/{run_dir.name}",
            group=experiment,
            offline=wandb_offline(),
        )
    if tracker == "csv":
        return CSVLogger(save_dir=str(run_dir), name="", version="")
    if tracker == "tensorboard":
        return TensorBoardLogger(save_dir=str(run_dir), name="", version="")
    return False


def describe(logger: Logger) -> str:
    """One line telling where the logger's record is, and for an offline W&B run how to upload it."""
    if isinstance(logger, DummyLogger):
        return "tracker: none (fast_dev_run)"
    if isinstance(logger, WandbLogger):
        run = logger.experiment
        if getattr(run, "offline", False) or getattr(run.settings, "mode", "") == "offline":
            sync_dir = Path(run.settings.sync_dir)
            return f"W&B (offline): {sync_dir}  -> upload with: wandb sync {sync_dir}"
        return f"W&B: {run.url}"
    return f"{type(logger).__name__}: {logger.log_dir}"


def finish(logger: Logger) -> None:
    """Close a W&B run so the next run in this process never merges into it."""
    if isinstance(logger, WandbLogger) and logger._experiment is not None:
        logger.experiment.finish()
