"""`archlab sweep`: trials through the real CLI, pruning, resumption after SIGKILL, SIGTERM, workers on PostgreSQL."""

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from archlab import cli as archlab_cli
from archlab import sweep as archlab_sweep
from archlab.cli import main as archlab_main

ROOT = Path(__file__).resolve().parents[1]
# A tiny CNN and short runs: these tests check the sweep machinery, not accuracy.
FAST = {
    "trainer.max_epochs": 1,
    "trainer.enable_progress_bar": False,
    "trainer.enable_model_summary": False,
    "trainer.log_every_n_steps": 5,
    "model.net.channels": [8],
    "model.net.hidden_dim": 32,
    "model.schedule": "constant",
    "data.batch_size": 128,
    "data.augment": False,
}
LR = {"type": "float", "low": 1.0e-3, "high": 3.0e-2, "log": True}


def write_sweep(tmp_path: Path, name: str = "sweep", **settings) -> Path:
    spec = {
        "base": str(ROOT / "configs/cnn_digits.yaml"),
        "fixed": FAST,
        "space": {"model.lr": LR},
        "sampler": "random",
        "seed": 0,
        "pruner": "none",
        "n_trials": 2,
        "tracker": "csv",
        "runs_root": str(tmp_path / "runs"),
        "study_name": name,
    }
    spec.update(settings)
    spec["fixed"] = {**FAST, **settings.get("fixed", {})}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def sweep_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "archlab", "sweep", *args]


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        sweep_command(*args),
        cwd=cwd,
        env={**os.environ, "WANDB_MODE": "offline", **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


def sqlite_study(tmp_path: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/runs/{name}/study.db")


def states(study: optuna.Study) -> dict[str, int]:
    trials = study.get_trials(deepcopy=False)
    return {s.name: n for s in TrialState if (n := sum(t.state == s for t in trials))}


def wait_for(predicate, *, timeout: float = 240, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            stderr = proc.stderr.read().decode()[-3000:] if proc.stderr else ""
            raise AssertionError(f"the sweep exited early ({proc.returncode}): {stderr}")
        with contextlib.suppress(Exception):
            if predicate():
                return
        time.sleep(0.3)
    raise AssertionError("timed out")


def test_two_trial_sweep_end_to_end_and_the_best_config_reproduces_its_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_sweep(tmp_path, "e2e", tracker="wandb", fixed={"trainer.max_epochs": 2})
    result = run("-c", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    study = sqlite_study(tmp_path, "e2e")
    assert states(study) == {"COMPLETE": 2}
    assert "e2e: best trials (val/acc, maximize)" in result.stdout
    best = study.best_trial
    assert f"best:       trial {best.number}, val/acc = {best.value:.4f}" in result.stdout
    for plot in ("history", "importance", "parallel_coordinate"):
        assert (tmp_path / f"runs/e2e/{plot}.html").stat().st_size > 1000

    # One W&B run per trial, in the trial's own directory, grouped by the study and named after the trial.
    run_ids = set()
    for trial in study.trials:
        run_dir = Path(trial.user_attrs["run_dir"])
        assert run_dir == tmp_path / f"runs/e2e/trial-{trial.number:04d}"
        (offline,) = run_dir.glob("wandb/offline-run-*")
        run_ids.add(offline.name.rsplit("-", 1)[1])
        (record,) = offline.glob("*.wandb")
        data = record.read_bytes()
        assert f"e2e/trial-{trial.number:04d}".encode() in data and b"e2e" in data
        assert repr(trial.params["model.lr"]).encode()[:8] in data  # the sampled value is in the run's config
    assert len(run_ids) == 2

    best_config = tmp_path / "runs/e2e/best.yaml"
    assert f"archlab fit -c {best_config}" in result.stdout
    saved = yaml.safe_load(best_config.read_text())
    assert saved["model"]["init_args"]["lr"] == best.params["model.lr"]
    assert saved["run_dir"] is None and saved["ckpt_path"] is None
    monkeypatch.chdir(tmp_path)
    fit = archlab_cli.run(["fit", "-c", str(best_config), "--tracker", "csv"])  # the same seed, config and run
    assert fit.results["best val/acc"] == pytest.approx(best.value, abs=1e-6)


def test_pruning_stops_trials_in_a_bad_region(tmp_path: Path) -> None:
    # lr 1e-9 leaves the net at chance; with this seed the sampler proposes bad, good, bad, bad. After the first
    # (bad) trial, the median pruner compares each epoch with the completed trials': both later bad ones fall below.
    bad, good = 1.0e-9, 1.0e-2
    path = write_sweep(
        tmp_path, "prune", space={"model.lr": {"type": "categorical", "choices": [good, bad]}},
        pruner="median", pruner_args={"n_startup_trials": 1}, n_trials=4, fixed={"trainer.max_epochs": 3},
    )  # fmt: skip
    assert archlab_sweep.main(["-c", str(path)]) == 0
    study = sqlite_study(tmp_path, "prune")
    assert states(study) == {"COMPLETE": 2, "PRUNED": 2}
    for trial in study.trials:
        if trial.state == TrialState.PRUNED:
            assert trial.params["model.lr"] == bad
            assert trial.user_attrs["epochs"] < 3  # stopped early
    assert study.best_trial.params["model.lr"] == good


def test_a_diverging_trial_fails_with_its_reason_and_the_sweep_goes_on(tmp_path: Path) -> None:
    path = write_sweep(
        tmp_path, "nan", space={"model.lr": {"type": "categorical", "choices": [1.0e30, 1.0e-2]}},
        sampler="grid", metric="val/loss", direction="minimize",
    )  # fmt: skip
    assert archlab_sweep.main(["-c", str(path)]) == 0
    study = sqlite_study(tmp_path, "nan")
    assert states(study) == {"COMPLETE": 1, "FAIL": 1}
    (failed,) = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed.params["model.lr"] == 1.0e30
    assert failed.user_attrs["fail_reason"] == "TrialFailed: val/loss is nan at epoch 0: the run diverged"


def test_sigkill_mid_trial_then_rerun_resumes_the_retry_from_its_checkpoint(tmp_path: Path) -> None:
    path = write_sweep(
        tmp_path, "kill", n_trials=1, heartbeat_interval=1, grace_period=3, fixed={"trainer.max_epochs": 40}
    )
    proc = subprocess.Popen(
        sweep_command("-c", str(path)), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        # Two validations reported: the first epoch's last.ckpt is on disk (checkpoints are written atomically).
        wait_for(lambda: len(sqlite_study(tmp_path, "kill").trials[0].intermediate_values) >= 2, proc=proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert states(sqlite_study(tmp_path, "kill")) == {"RUNNING": 1}  # the kill left the trial RUNNING

    result = run("-c", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    study = sqlite_study(tmp_path, "kill")
    assert states(study) == {"FAIL": 1, "COMPLETE": 1}
    killed, retry = study.trials
    assert killed.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert retry.system_attrs["failed_trial"] == killed.number
    assert retry.params == killed.params
    assert retry.user_attrs["resumed_from"] == str(tmp_path / "runs/kill/trial-0000/checkpoints/last.ckpt")
    assert retry.user_attrs["restored_global_step"] > 0
    assert retry.user_attrs["run_dir"] == str(tmp_path / "runs/kill/trial-0001")
    assert "trial 0 failed: its worker was lost (stale heartbeat); re-queued" in result.stdout


def test_sigterm_marks_the_running_trial_failed_at_once(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, "term", n_trials=2, fixed={"trainer.max_epochs": 20})
    proc = subprocess.Popen(
        sweep_command("-c", str(path)), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        wait_for(lambda: len(sqlite_study(tmp_path, "term").trials[0].intermediate_values) >= 1, proc=proc)
    finally:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    study = sqlite_study(tmp_path, "term")
    assert states(study) == {"FAIL": 1}
    assert "SIGTERM" in study.trials[0].user_attrs["fail_reason"]
    assert b"interrupted" in out


def test_local_workers_share_a_journal_file(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, "local", n_trials=2, workers=2)
    proc = subprocess.Popen(sweep_command("-c", str(path)), cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    stdout, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "runs/local/journal.log"))
    )
    study = optuna.load_study(study_name="local", storage=storage)
    assert states(study) == {"COMPLETE": 2}
    assert proc.pid not in {t.user_attrs["pid"] for t in study.trials}  # run by the worker processes
    assert len({t.params["model.lr"] for t in study.trials}) == 2  # distinct seeds per worker
    assert "trials:     2 complete, 0 pruned, 0 failed, 0 running, 0 waiting" in stdout
    assert sorted(p.name for p in (tmp_path / "runs/local").glob("worker-*.log")) == ["worker-0.log", "worker-1.log"]


def test_three_workers_on_postgresql_and_the_password_never_leaks(tmp_path: Path) -> None:
    from postgres import throwaway_database

    with throwaway_database() as db:
        path = write_sweep(tmp_path, "pg", n_trials=4, tracker="wandb", seed=None)
        with_password = db.url.replace("@", f":{db.password}@", 1)
        # Two workers take the password from PGPASSWORD; the third has it in the URL, where it must be masked.
        commands = [
            (["--storage", db.url], {"PGPASSWORD": db.password}),
            (["--storage", db.url], {"PGPASSWORD": db.password}),
            (["--storage", with_password], {}),
        ]
        procs = [
            subprocess.Popen(
                sweep_command("-c", str(path), *args),
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**os.environ, "WANDB_MODE": "offline", **env},
            )
            for args, env in commands
        ]
        outputs = [p.communicate(timeout=600) for p in procs]
        for proc, (out, err) in zip(procs, outputs, strict=True):
            assert proc.returncode == 0, err[-3000:].decode()
            assert db.password.encode() not in out + err
        study = optuna.load_study(study_name="pg", storage=archlab_sweep.sqlalchemy_url(with_password))
        assert states(study) == {"COMPLETE": 4}
        trials = study.trials
        assert len({t.user_attrs["pid"] for t in trials}) >= 2  # the workers shared the study
        retries = {t.number for t in trials if "failed_trial" in t.system_attrs}
        params = [t.params["model.lr"] for t in trials if t.number not in retries]
        assert len(params) == len(set(params))
        assert b"***@" in outputs[2][0]  # the summary shows the URL, masked
        for file in (tmp_path / "runs").rglob("*"):
            if file.is_file():
                assert db.password.encode() not in file.read_bytes(), file


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"space": {"model.lrr": LR}}, ["model.lrr", "'lrr'", "did you mean 'lr'"]),
        ({"space": {"model.net.widht": LR}}, ["model.net.widht", "model.init_args.net"]),
        ({"sampler": "tpee"}, ["sampler 'tpee'", "tpe, random, cmaes, grid"]),
        ({"pruner": "hyperbnd"}, ["pruner 'hyperbnd'", "median, successive_halving, hyperband, none"]),
        ({"space": {"model.lr": {"type": "float", "low": 1.0e-1, "high": 1.0e-3}}}, ["space.model.lr", "low"]),
        ({"space": {"model.lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}}, ["space.model.lr", "log"]),
        ({"space": {"model.lr": {"type": "floats", "low": 0.1, "high": 1.0}}}, ["space.model.lr", "'floats'"]),
        ({"space": {"model.lr": {"type": "float", "lo": 0.1, "high": 1.0}}}, ["space.model.lr", "lo"]),
        ({"space": {"model.net.channels": {"type": "categorical", "choices": ["wide"]}}}, ["channels", "wide"]),
        ({"pruner_args": {"n_startup": 2}, "pruner": "median"}, ["pruner median", "n_startup"]),
        ({"metric": "val/loss"}, ["val/loss", "'val/acc'", "direction"]),
    ],
)
def test_invalid_sweeps_are_named_before_any_trial(
    settings: dict, expected: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = write_sweep(tmp_path, "bad", **settings)
    assert archlab_main(["sweep", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "archlab: error:" in err and "Traceback" not in err
    for word in expected:
        assert word in err, (word, err[-2000:])
    assert not (tmp_path / "runs").exists()


def test_a_resnet_depth_the_net_rejects_is_caught_before_any_trial(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = write_sweep(
        tmp_path, "depth", base=str(ROOT / "configs/resnet_digits.yaml"),
        fixed={"model.net.channels": None, "model.net.hidden_dim": None},
        space={"model.net.depth": {"type": "categorical", "choices": [8, 9]}},
    )  # fmt: skip
    spec = yaml.safe_load(path.read_text())
    spec["fixed"] = {k: v for k, v in spec["fixed"].items() if not k.startswith("model.net.")}
    path.write_text(yaml.safe_dump(spec))
    assert archlab_main(["sweep", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "depth" in err and "9" in err and "6n+2" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("sweep_file", sorted((ROOT / "configs/sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_sweep_file_validates(sweep_file: Path, tmp_path: Path) -> None:
    numeric_strings = [
        f"{key}.{arg}"
        for key, spec in yaml.safe_load(sweep_file.read_text())["space"].items()
        for arg, value in spec.items()
        if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", value)
    ]
    assert numeric_strings == []  # 1e-3 without a dot is a string to PyYAML
    cfg = archlab_sweep.make_parser().parse_args(["-c", str(sweep_file), "--runs_root", str(tmp_path / "runs")])
    sweep = archlab_sweep.Sweep(cfg, [])  # parses the base config with every candidate value of the space
    assert sweep.metric and sweep.direction in ("maximize", "minimize")
    assert not (tmp_path / "runs").exists()
