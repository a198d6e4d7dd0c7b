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
