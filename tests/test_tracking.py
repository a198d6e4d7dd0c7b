import subprocess
import sys

import pytest

from archlab import rundir, tracking


def test_mask_url_hides_the_password_only():
    url = "postgresql://archlab:s3cr3t-pw@db.example:5432/sweeps"
    assert tracking.mask_url(url) == "postgresql://archlab:***@db.example:5432/sweeps"
    assert tracking.mask_url("sqlite:///runs/study.db") == "sqlite:///runs/study.db"
    assert "s3cr3t" not in tracking.mask_url(f"storage is {url}, retrying")


def test_redact_masks_secret_keys_and_urls_at_any_depth():
    config = {
        "trainer": {"logger": {"init_args": {"api_key": "abc123", "project": "archlab"}}},
        "storage": ["postgresql://u:pw@h/db"],
        "password": "",
        "data": {"chars_per_token": 4, "max_tokens": 512, "db_password": "pw", "auth_token": "t"},
    }
    redacted = tracking.redact(config)
    assert redacted["trainer"]["logger"]["init_args"] == {"api_key": "***", "project": "archlab"}
    assert redacted["storage"] == ["postgresql://u:***@h/db"]
    assert redacted["password"] == ""  # nothing to hide
    assert redacted["data"] == {"chars_per_token": 4, "max_tokens": 512, "db_password": "***", "auth_token": "***"}
    assert config["trainer"]["logger"]["init_args"]["api_key"] == "abc123"  # the original is untouched


@pytest.mark.parametrize(
    ("env", "netrc", "offline"),
    [
        ({"WANDB_MODE": "offline", "WANDB_API_KEY": "k"}, "", True),
        ({"WANDB_MODE": "online"}, "", False),
        ({"WANDB_API_KEY": "k"}, "", False),
        ({}, "", True),
        ({}, "machine api.wandb.ai\n  login user\n  password k\n", False),
    ],
)
def test_wandb_is_offline_without_credentials(env, netrc, offline, monkeypatch, tmp_path):
    for key in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    path = tmp_path / "netrc"
    path.write_text(netrc)
    path.chmod(0o600)
    monkeypatch.setenv("NETRC", str(path))
    assert tracking.wandb_offline() is offline


def test_run_dirs_are_unique_per_run(tmp_path, monkeypatch):
    monkeypatch.delenv(rundir.RUN_DIR_ENV, raising=False)
    first = rundir.new_run_dir(tmp_path, "exp").root
    second = rundir.new_run_dir(tmp_path, "exp").root
    assert first != second and first.parent == second.parent == tmp_path / "exp"
    assert first.is_dir() and second.is_dir()


def test_mask_argv_masks_secrets_in_place_and_returns_the_original():
    argv = [
        "archlab", "fit", "--data.api_key", "k1", "--data.db_password=k2", "--data.root", "https://u:k3@host/x",
        "--data", '{"class_path": "my.Data", "init_args": {"auth_token": "k4"}}', "--model.lr", "1.0e-3",
    ]  # fmt: skip
    original = list(argv)
    assert tracking.mask_argv(argv) == original
    assert argv == [
        "archlab", "fit", "--data.api_key", "***", "--data.db_password=***", "--data.root", "https://u:***@host/x",
        "--data", '{"class_path": "my.Data", "init_args": {"auth_token": "***"}}', "--model.lr", "1.0e-3",
    ]  # fmt: skip
    assert not any(secret in " ".join(argv) for secret in ("k1", "k2", "k3", "k4"))


def test_redact_checkpoint_masks_hyperparameters_only():
    weights = {"net.fc.weight": [1.0]}
    checkpoint = {
        "state_dict": weights,
        "hyper_parameters": {"lr": 0.1, "net": {"init_args": {"api_key": "k"}}},
        "datamodule_hyper_parameters": {"root": "https://u:pw@h/x", "db_password": "pw", "batch_size": 8},
    }
    assert tracking.redact_checkpoint(checkpoint) is checkpoint
    assert checkpoint["hyper_parameters"] == {"lr": 0.1, "net": {"init_args": {"api_key": "***"}}}
    assert checkpoint["datamodule_hyper_parameters"] == {
        "root": "https://u:***@h/x",
        "db_password": "***",
        "batch_size": 8,
    }
    assert checkpoint["state_dict"] is weights


def test_without_masked_drops_what_redact_masked():
    redacted = tracking.redact({"lr": 0.1, "api_key": "k", "root": "https://u:pw@h/x", "net": {"token": "t", "dim": 8}})
    assert tracking.without_masked(redacted) == {"lr": 0.1, "net": {"dim": 8}}


def test_mask_logs_masks_url_passwords_in_lightnings_log_lines():
    # In a process of its own, as the CLI runs: Lightning sets up its log handler only when the root logger has none.
    code = (
        "import lightning.pytorch\n"
        "from lightning.pytorch.utilities import rank_zero_info\n"
        "from archlab import tracking\n"
        "tracking.mask_logs()\n"
        "tracking.mask_logs()\n"  # idempotent: one filter per handler
        "rank_zero_info('Restoring states from the checkpoint path at https://user:hunter2@host/x.ckpt')\n"
    )
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    assert err.strip() == "Restoring states from the checkpoint path at https://user:***@host/x.ckpt"


def test_mask_values_masks_what_the_command_line_holds_under_secret_options():
    argv = ["sweep", "--data.api_key", "k3y-value", "--data.token=t0k", "--storage", "postgresql://u:pw@h/db"]
    message = "unrecognized arguments: --data.api_key k3y-value --data.token=t0k postgresql://u:pw@h/db"
    masked = tracking.mask_values(message, argv)
    assert "k3y-value" not in masked and "t0k" not in masked and ":pw@" not in masked
    assert masked.startswith("unrecognized arguments: --data.api_key *** --data.token=***")


def test_a_resumed_wandb_run_waits_for_its_id_then_continues_in_a_new_run(monkeypatch, tmp_path):
    from lightning.pytorch.loggers import WandbLogger

    calls = []

    def experiment(self):
        calls.append(self._wandb_init.get("id"))
        if self._wandb_init.get("id") == "held":
            raise RuntimeError("run ID held is in use")
        return "started"

    monkeypatch.setattr(WandbLogger, "experiment", property(experiment))
    monkeypatch.setattr(tracking, "RUN_IN_USE_WAIT_S", 3.0)
    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    logger = tracking.OfflineFallbackWandbLogger(save_dir=str(tmp_path), id="held", offline=True)
    with pytest.warns(UserWarning, match="still held"):
        assert logger._start() == "started"
    assert calls[0] == "held" and calls[-1] not in (None, "held") and len(calls) >= 2
