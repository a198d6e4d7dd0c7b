"""Who records a run: the experiment tracker, and secret redaction.

W&B is the default tracker: online when the user has credentials, otherwise offline inside the run directory, to
be uploaded later with `wandb sync`; online, a server that cannot be reached makes the run offline with a warning
rather than failing it. CSV and TensorBoard are the alternatives; `none` records nothing.

Secrets (values under secret-looking keys such as `api_key` or `db_password`, passwords inside URLs) are masked in
everything a run writes: `redact` for configs and hyperparameters, `redact_checkpoint` for the hyperparameters inside
a checkpoint, `mask_argv` for the command line that W&B copies into its run files, `mask_logs` for what Lightning
logs (the checkpoint path it restores from). The objects that need a secret (a DataModule reading from a database,
say) still receive the real value.
"""

import csv
import inspect
import json
import logging
import netrc
import os
import re
import secrets
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import lightning as L
import yaml
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.loggers.logger import DummyLogger, rank_zero_experiment

Tracker = Literal["wandb", "csv", "tensorboard", "mlflow", "none"]
# Whole key names only: `db_password`, `client_secret`, `api_key`, `auth_token` are secrets; `chars_per_token` is not.
SECRET_KEY = re.compile(
    r"^(?:.*_)?(?:password|passwd|secret|secret_key|api_?key|credentials?)$"
    r"|^(?:(?:auth|access|api|bearer|refresh|hf|wandb|github)_?)?token$",
    re.IGNORECASE,
)
URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]+:)(?P<password>[^@/\s]+)(?P<tail>@)")
MASK = "***"


def mask_url(text: str) -> str:
    """postgresql://user:hunter2@host/db -> postgresql://user:***@host/db, anywhere inside `text`."""
    return URL_PASSWORD.sub(r"\g<head>***\g<tail>", text)


def redact(value: Any) -> Any:
    """A copy of a config in which values under secret-looking keys and passwords inside URLs are masked."""
    if isinstance(value, dict):
        return {k: MASK if SECRET_KEY.match(str(k)) and v else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    if isinstance(value, str):
        return mask_url(value)
    return value


class MaskSecrets(logging.Filter):
    """A logging filter that masks passwords inside URLs in every record it lets through. Lightning logs the
    checkpoint path it restores from ("Restoring states from the checkpoint path at https://user:...@host/x.ckpt"):
    `mask_logs()` puts this filter on the handlers of Lightning's loggers."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(noise in message for noise in LOG_NOISE):
            return False
        masked = mask_url(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


# Lines of Lightning's start-up that say nothing about this run, dropped by MaskSecrets (which mask_logs installs):
# an advertisement, and a note on how Lightning counts the schedule's steps.
LOG_NOISE = ("litlogger", "to estimate number of stepping batches")
# Library warnings known to be noise in archlab's runs, ignored while a command runs (archlab.cli.run):
WARNING_NOISE = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",  # torch's pytree API, inside Lightning
    r".*is smaller than the logging interval.*",  # a small epoch; archlab logs every 10 steps anyway
    r".*callbacks used to create the checkpoint need to be provided.*",  # test/predict need no training callbacks
    r".*module\(s\) in eval mode at the start of training.*",  # the frozen FID feature network, by design
)


def mask_logs(names: tuple[str, ...] = ("lightning.pytorch", "lightning.fabric", "")) -> None:
    """Mask URL passwords in whatever the handlers of these loggers (Lightning's, and the root's) print."""
    for name in names:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, MaskSecrets) for f in handler.filters):
                handler.addFilter(MaskSecrets())


def is_secret_key(key: str) -> bool:
    """`api_key`, `data.init_args.db_password`, `--trainer.logger.init_args.api_key`: the last dotted part decides."""
    return bool(SECRET_KEY.match(key.lstrip("-").rpartition(".")[2]))


def redact_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Mask secrets in the hyperparameters Lightning copies into a checkpoint (the task's `hyper_parameters`, the
    DataModule's `datamodule_hyper_parameters`), in place; call it from `on_save_checkpoint`. The weights and states
    are left alone."""
    for key in ("hyper_parameters", "datamodule_hyper_parameters"):
        if isinstance(checkpoint.get(key), dict):
            checkpoint[key] = redact(checkpoint[key])
    return checkpoint


def without_masked(value: Any) -> Any:
    """A copy of a config without the entries that `redact` masked, so that hyperparameters read back from a
    checkpoint never put "***" in place of the value the user gives now."""
    if isinstance(value, dict):
        return {k: without_masked(v) for k, v in value.items() if not _masked(v)}
    if isinstance(value, list | tuple):
        return type(value)(without_masked(v) for v in value)
    return value


def _masked(value: Any) -> bool:
    return isinstance(value, str) and (value == MASK or f":{MASK}@" in value)


def mask_argv(argv: list[str] | None = None) -> list[str]:
    """Mask the secrets in a command line in place (sys.argv by default) and return a copy of the original.

    W&B copies sys.argv into its run files (wandb-metadata.json), and so would anything else that records the
    command. Call it once at start, after taking the real arguments for the parser and before any tracker starts:
    `args = tracking.mask_argv()[1:]`. Masked: passwords inside URLs anywhere, the value after a secret-looking
    option (`--data.api_key VALUE`, `--data.api_key=VALUE`), and secret keys inside an inline YAML/JSON value.
    """
    argv = sys.argv if argv is None else argv
    original = list(argv)
    secret_next = False
    for i, arg in enumerate(original):
        option, eq, _ = arg.partition("=")
        if secret_next:
            masked = MASK
        elif arg.startswith("--") and eq and is_secret_key(option):
            masked = f"{option}={MASK}"
        else:
            masked = _mask_inline(arg)
        secret_next = arg.startswith("--") and not eq and is_secret_key(arg)
        argv[i] = masked
    return original


def mask_values(text: str, argv: list[str]) -> str:
    """`text` (an error message quoting the command line) with URL passwords and the values of the secret-looking
    options of `argv` masked."""
    masked = list(argv)
    mask_argv(masked)
    for original, shown in zip(argv, masked, strict=True):
        if original != shown:
            value = original.partition("=")[2] if original.startswith("--") and "=" in original else original
            if value:
                text = text.replace(value, MASK)
    return mask_url(text)


def _mask_inline(arg: str) -> str:
    """An argument with URL passwords masked, and, when it is an inline YAML/JSON mapping or list
    (`--data '{"api_key": "..."}'`), its secret keys too."""
    option, eq, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
    if value.lstrip().startswith(("{", "[")):
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = None
        if isinstance(parsed, dict | list) and redact(parsed) != parsed:
            return f"{option}{eq}{json.dumps(redact(parsed))}"
    return mask_url(arg)


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


class OfflineFallbackWandbLogger(WandbLogger):
    """Lightning's WandbLogger; online, a W&B server that cannot be reached (down, firewalled, a wrong
    WANDB_BASE_URL) switches the run to offline, inside the run directory, with a warning saying how to upload it.

    Starting again sets WandbLogger's private `_experiment`, `_wandb_init` and `_id`: Lightning has no public way to
    start a logger's run a second time with other settings, and the run must start lazily, on rank zero only, once the
    Trainer exists (Lightning's `rank_zero_experiment`), so building a second logger there is not an option. The
    tests of an unreachable server (tests/test_safety.py) and of a held run id (tests/test_tracking.py) break if
    Lightning renames them."""

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        import wandb

        try:
            return self._start()
        except wandb.errors.CommError as error:
            if self._offline:
                raise
            server = mask_url(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
            reason = mask_url(str(error).strip().splitlines()[0])
            warnings.warn(
                f"W&B server {server} could not be reached ({reason}); this run is recorded offline in "
                f"{self.save_dir} instead. Upload it later with `wandb sync {self.save_dir}/wandb/offline-run-*`.",
                stacklevel=2,
            )
            # wandb read WANDB_MODE when it first set up: say offline to init itself.
            self._offline = True
            self._wandb_init["mode"] = "offline"
            self._experiment = None
            return self._start()

    def _start(self) -> Any:
        """Start (or continue) the W&B run. A resumed run's id can still be held for a while by the W&B service of
        the process that was killed ("run ID ... is in use"): wait for it to let go, then continue in a new run."""
        deadline, renamed = time.monotonic() + RUN_IN_USE_WAIT_S, False
        while True:
            try:
                return super().experiment
            except Exception as error:
                if "is in use" not in str(error) or renamed:
                    raise
                if time.monotonic() < deadline:
                    time.sleep(2.0)
                    continue
                held = self._wandb_init.get("id") or os.environ.get("WANDB_RUN_ID")
                warnings.warn(
                    f"W&B run {held} is still held by the W&B service of the process that was stopped; this part of "
                    "the run is recorded as a new W&B run instead.",
                    stacklevel=2,
                )
                # A new id of its own: without one, resume="allow" would pick the held id again from the run
                # directory's wandb-resume.json. (W&B ids: lowercase letters and digits.)
                os.environ.pop("WANDB_RUN_ID", None)
                self._wandb_init["id"] = self._id = secrets.token_hex(4)
                self._experiment = None
                renamed = True


# How long a resumed run waits for its W&B run id to be released by the killed process's W&B service.
RUN_IN_USE_WAIT_S = 60.0


def make_logger(
    tracker: Tracker, run_dir: Path, *, experiment: str, project: str, tags: list[str] | None = None
) -> Logger | bool:
    if tracker == "wandb":
        import wandb

        return OfflineFallbackWandbLogger(
            # quiet: no start banner and no 30-line history at the end; archlab's summary says where the run is.
            settings=wandb.Settings(quiet=True),
            save_dir=str(run_dir),
            project=project,
            name=f"{experiment}/{run_dir.name}",
            group=experiment,
            tags=tags or None,
            offline=wandb_offline(),
        )
    if tracker == "csv":
        return CSVLogger(save_dir=str(run_dir), name="", version="")
    if tracker == "mlflow":
        # A SQLite store and its artifacts inside the run directory (MLflow 3 refuses its old file store), unless
        # MLFLOW_TRACKING_URI names a server or another store.
        root = run_dir.resolve()
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"
        return MLFlowLogger(
            experiment_name=experiment,
            run_name=run_dir.name,
            tracking_uri=uri,
            tags=dict(zip(("task", "net", "data"), tags or [], strict=False)),
            artifact_location=None if "MLFLOW_TRACKING_URI" in os.environ else (root / "mlartifacts").as_uri(),
        )
    if tracker == "tensorboard":
        # No placeholder hp_metric: the HParams view gets the run's real results when fit ends (record_results).
        return TensorBoardLogger(save_dir=str(run_dir), name="", version="", default_hp_metric=False)
    return False


class BestInSummary(L.Callback):
    """W&B's summary of the monitored metric holds its best value (W&B's define_metric), not the last epoch's, so
    that sorting runs, or a sweep's group, ranks them by the value archlab tested."""

    def __init__(self, monitor: str, mode: str) -> None:
        self.monitor = monitor
        self.mode = mode

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and trainer.is_global_zero:
                # The same x-axis as every other metric (WandbLogger's own definition for "*").
                logger.experiment.define_metric(self.monitor, step_metric="trainer/global_step", summary=self.mode)


def hparams(config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The hyperparameters worth a column in TensorBoard's HParams view: the config flattened to dotted keys, without
    nulls, and without the Trainer options left at their defaults (about 80 of them); plus `extra`."""
    defaults = {
        name: p.default for name, p in inspect.signature(L.Trainer.__init__).parameters.items() if name != "self"
    }
    flat: dict[str, Any] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif value is not None and value != {}:
            name = key.removeprefix("trainer.")
            objects = ("callbacks", "logger", "plugins")
            if key.startswith("trainer.") and (name in objects or defaults.get(name) == value):
                return
            flat[key] = value if isinstance(value, int | float | str | bool) else str(value)

    walk(config, "")
    return {**flat, **extra}


def record_results(
    loggers: list[Logger],
    *,
    config: dict[str, Any],
    num_params: int,
    monitor: str | None,
    best: float | None,
    best_epoch: int | None,
    results: dict[str, float],
    checkpoint: Path | None,
) -> None:
    """At the end of fit: the best value and its epoch in W&B's summary and TensorBoard's HParams metrics (with the
    test metrics of the best checkpoint), and the best checkpoint as a W&B model artifact when `checkpoint` is given."""
    best_values = {f"best/{monitor}": best, "best/epoch": best_epoch} if monitor and best is not None else {}
    tested = {key: value for key, value in results.items() if key.startswith("test/")}
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            run = logger.experiment
            run.summary.update({key: value for key, value in best_values.items() if value is not None})
            if checkpoint is not None:
                import wandb

                # Offline too: the artifact is recorded with the run and uploaded by `wandb sync` (Lightning's
                # log_model refuses offline runs).
                artifact = wandb.Artifact(
                    f"model-{run.id}", type="model", metadata={"monitor": monitor, "score": best, "epoch": best_epoch}
                )
                artifact.add_file(str(checkpoint), name=checkpoint.name)
                run.log_artifact(artifact, aliases=["best", "latest"])
        elif isinstance(logger, TensorBoardLogger):
            metrics = {key: value for key, value in {**best_values, **tested}.items() if value is not None}
            logger.log_hyperparams(hparams(config, **{"model/params": num_params}), metrics=metrics or None)
        elif isinstance(logger, MLFlowLogger):
            # MLflow keeps every value of a metric and shows the last: the best goes in under its own name.
            logger.log_metrics({key: value for key, value in best_values.items() if value is not None})
            logger.log_hyperparams({"model/params": num_params})
            if checkpoint is not None:
                logger.experiment.log_artifact(logger.run_id, str(checkpoint), artifact_path="checkpoints")


def is_offline(run: Any) -> bool:
    """Whether a W&B run records offline (to be uploaded with `wandb sync`)."""
    return bool(getattr(run, "offline", False)) or getattr(run.settings, "mode", "") in ("offline", "dryrun")


def describe(logger: Logger) -> str:
    """One line telling where the logger's record is, and for an offline W&B run how to upload it."""
    if isinstance(logger, DummyLogger):
        return "tracker: none (fast_dev_run)"
    if isinstance(logger, WandbLogger):
        run = logger.experiment
        if is_offline(run):
            sync_dir = Path(run.settings.sync_dir)
            return f"W&B (offline): {sync_dir}  -> upload with: wandb sync {sync_dir}"
        return f"W&B: {run.url}"
    if isinstance(logger, MLFlowLogger):
        store = mask_url(logger.experiment.tracking_uri)
        return f"MLflow: run {logger.run_id}  -> browse with: mlflow ui --backend-store-uri {store}"
    return f"{type(logger).__name__}: {logger.log_dir}"


def finish(logger: Logger) -> None:
    """Close a W&B run so the next run in this process never merges into it."""
    # wandb.run (public) is the logger's run once it started; asking the logger would start one that never did.
    wandb = sys.modules.get("wandb")
    if isinstance(logger, WandbLogger) and wandb is not None and (run := wandb.run) is not None:
        run.finish()


def keep_csv_history(logger: CSVLogger) -> None:
    """A CSVLogger deletes an existing metrics.csv when it starts: a resumed run logs the earlier rows again first."""
    path = Path(logger.log_dir) / "metrics.csv"
    if not path.is_file():
        return
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    logger.experiment  # noqa: B018 - starting the writer is what removes the file
    for row in rows:
        step = int(row.pop("step"))
        values = {key: value for key, value in row.items() if value not in ("", None)}
        logger.log_metrics({key: int(v) if v.lstrip("-").isdigit() else float(v) for key, v in values.items()}, step)
    logger.save()
