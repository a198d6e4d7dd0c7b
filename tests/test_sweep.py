"""`archlab sweep`: trials through the real CLI, pruning, failures and exit codes, lost workers, the trial cap, the
space check before trial 0, and nothing leaking between in-process trials."""

import contextlib
import gc
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
import weakref
from pathlib import Path

import lightning as L
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from archlab import cli as archlab_cli
from archlab import sweep as archlab_sweep
from archlab.cli import main as archlab_main
from archlab.sweep import settings as sweep_settings
from archlab.sweep import space as sweep_space
from archlab.sweep import storage as sweep_storage
from archlab.sweep import workers as sweep_workers

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


def journal_study(path: Path, name: str) -> optuna.Study:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    return optuna.load_study(study_name=name, storage=storage)


def states(study: optuna.Study) -> dict[str, int]:
    trials = study.get_trials(deepcopy=False)
    return {s.name: n for s in TrialState if (n := sum(t.state == s for t in trials))}


def wait_for(predicate, *, timeout: float = 240, proc: subprocess.Popen | None = None, interval: float = 0.3) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            stderr = proc.stderr.read().decode()[-3000:] if proc.stderr else ""
            raise AssertionError(f"the sweep exited early ({proc.returncode}): {stderr}")
        with contextlib.suppress(Exception):
            if predicate():
                return
        time.sleep(interval)
    raise AssertionError("timed out")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_every_trial_ran(study: optuna.Study) -> None:
    """Each trial of the study trained: it has a run directory with its resolved config and reported epochs."""
    for trial in study.trials:
        assert (Path(trial.user_attrs["run_dir"]) / "config.yaml").is_file(), trial
        assert trial.intermediate_values, trial


@pytest.mark.slow
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
        # The trial's value is its run's best val/acc, the best of the values it reported per epoch.
        assert trial.value == pytest.approx(max(trial.intermediate_values.values()), abs=1e-6)
    assert len(run_ids) == 2

    best_config = tmp_path / "runs/e2e/best.yaml"
    assert f"archlab fit -c {best_config}" in result.stdout
    saved = yaml.safe_load(best_config.read_text())
    assert saved["model"]["init_args"]["lr"] == best.params["model.lr"]
    assert saved["run_dir"] is None and saved["ckpt_path"] is None
    monkeypatch.chdir(tmp_path)
    fit = archlab_cli.run(["fit", "-c", str(best_config), "--tracker", "csv"])  # the same seed, config and run
    assert fit.best_score == pytest.approx(best.value, abs=1e-6)


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
    # The NaN guard stops the trial at the step its gradients went non-finite, whatever metric the sweep monitors.
    assert failed.user_attrs["fail_reason"].startswith("DivergedError: training diverged at step ")


def test_a_sweep_whose_every_trial_fails_exits_with_code_4(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_sweep(
        tmp_path, "allfail", space={"model.lr": {"type": "categorical", "choices": [1.0e30, 1.0e31]}},
        sampler="grid", metric="val/loss", direction="minimize",
    )  # fmt: skip
    assert archlab_main(["sweep", "-c", str(path)]) == archlab_sweep.EXIT_NO_TRIAL_COMPLETED == 4
    out, err = capsys.readouterr()
    assert states(sqlite_study(tmp_path, "allfail")) == {"FAIL": 2}
    assert "best:       none: no trial completed" in out
    assert "no trial of study allfail completed" in err
    assert out.count("training diverged at step") == 2  # each trial's reason in the summary


def test_a_programming_error_in_a_trial_stops_the_sweep_with_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Bug(L.Callback):
        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            raise ZeroDivisionError("a bug in a callback")

    real_run = archlab_cli.run
    monkeypatch.setattr(archlab_cli, "run", lambda args, *, callbacks: real_run(args, callbacks=[*callbacks, Bug()]))
    path = write_sweep(tmp_path, "bug", n_trials=3)
    argv = sys.argv[:]
    handlers = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)]
    # Not a usage error (exit 2) and not a failed trial the sweep skips: the exception itself, out of `archlab`.
    with pytest.raises(ZeroDivisionError, match="a bug in a callback"):
        archlab_main(["sweep", "-c", str(path)])
    study = sqlite_study(tmp_path, "bug")
    assert states(study) == {"FAIL": 1}  # recorded, and no further trial started
    assert study.trials[0].user_attrs["fail_reason"] == "ZeroDivisionError: a bug in a callback"
    assert sys.argv == argv
    assert [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)] == handlers


def test_in_process_trials_leak_no_environment_variables_warnings_filters_or_argv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = []
    real_run = archlab_cli.run

    def polluting_run(args: list[str], *, callbacks: list[L.Callback]) -> archlab_cli.ArchlabCLI:
        seen.append((dict(os.environ), list(warnings.filters)))
        os.environ["ARCHLAB_LEAK"] = args[args.index("--run_dir") + 1]
        os.environ["WANDB_MODE"] = "disabled"
        os.environ.pop("WANDB_SILENT", None)
        warnings.filterwarnings("ignore", message="leaked filter")
        return real_run(args, callbacks=callbacks)

    monkeypatch.setattr(archlab_cli, "run", polluting_run)
    monkeypatch.setenv("WANDB_SILENT", "true")
    path = write_sweep(tmp_path, "leak", n_trials=2)
    environ, filters = dict(os.environ), list(warnings.filters)
    # The password is masked in sys.argv while the sweep runs (W&B records it) and sys.argv is restored after.
    argv = [*sys.argv, "--storage", "postgresql://u:hunter2@h/db"]
    monkeypatch.setattr(sys, "argv", list(argv))
    assert archlab_sweep.main(["-c", str(path)]) == 0
    assert states(sqlite_study(tmp_path, "leak")) == {"COMPLETE": 2}
    assert len(seen) == 2
    assert seen[1] == seen[0]  # the second trial starts where the first did
    assert dict(os.environ) == environ
    assert warnings.filters == filters
    assert sys.argv == argv


def test_a_trials_objects_are_collected_before_the_next_trial_and_the_heap_is_unfrozen_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker leaves the objects alive before the first trial out of the collections between trials (gc.freeze);
    # what a trial makes (its Trainer, task and net, which hold reference cycles) must still go before the next one.
    previous, frozen = [], []
    real_run = archlab_cli.run

    def recording_run(args: list[str], *, callbacks: list[L.Callback]) -> archlab_cli.ArchlabCLI:
        frozen.append(gc.get_freeze_count())
        assert [ref() for ref in previous] == [None] * len(previous), "an earlier trial's objects are still alive"
        result = real_run(args, callbacks=callbacks)
        previous.extend(weakref.ref(obj) for obj in (result.trainer, result.model, result.model.net))
        return result

    monkeypatch.setattr(archlab_cli, "run", recording_run)
    path = write_sweep(tmp_path, "heap", n_trials=3)
    assert archlab_sweep.main(["-c", str(path)]) == 0
    assert states(sqlite_study(tmp_path, "heap")) == {"COMPLETE": 3}
    assert len(frozen) == 3 and min(frozen) > 0
    assert gc.get_freeze_count() == 0


def test_a_heap_frozen_by_the_caller_stays_frozen() -> None:
    gc.freeze()
    try:
        count = gc.get_freeze_count()
        with sweep_workers.frozen_heap():
            assert gc.get_freeze_count() == count
        assert gc.get_freeze_count() == count
    finally:
        gc.unfreeze()


@pytest.mark.slow
def test_sigkill_mid_trial_then_rerun_resumes_the_retry_from_its_checkpoint(tmp_path: Path) -> None:
    path = write_sweep(
        tmp_path,
        "kill",
        n_trials=1,
        heartbeat_interval=1,
        grace_period=3,
        fixed={"trainer.max_epochs": 24, "data.batch_size": 16},  # seconds of training left after the first checkpoint
    )
    proc = subprocess.Popen(
        sweep_command("-c", str(path)), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        # The first epoch's last.ckpt is on disk (written atomically). The wait looks at the file, not the study:
        # opening the SQLite study while the sweep still creates its tables races with that creation.
        wait_for((tmp_path / "runs/kill/trial-0000/checkpoints/last.ckpt").exists, proc=proc, interval=0.1)
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
    assert sweep_storage.retried_number(retry) == killed.number
    assert retry.params == killed.params
    assert retry.user_attrs["resumed_from"] == str(tmp_path / "runs/kill/trial-0000/checkpoints/last.ckpt")
    assert retry.user_attrs["restored_global_step"] > 0
    assert retry.user_attrs["run_dir"] == str(tmp_path / "runs/kill/trial-0001")
    assert "trial 0 failed: its worker was lost; retried as trial 1" in result.stdout


@pytest.mark.slow
def test_sigkill_of_one_journal_worker_mid_trial_the_others_retry_its_trial(tmp_path: Path) -> None:
    path = write_sweep(
        tmp_path, "jkill", n_trials=3, workers=2, fixed={"trainer.max_epochs": 12, "data.batch_size": 32}
    )  # small batches: the victim's trial is still training when the kill lands, even on a loaded machine
    journal = tmp_path / "runs/jkill/journal.log"
    proc = subprocess.Popen(
        sweep_command("-c", str(path)), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    victim = {}

    def reported_twice() -> bool:
        for trial in journal_study(journal, "jkill").get_trials(states=(TrialState.RUNNING,)):
            if len(trial.intermediate_values) >= 2:  # its last.ckpt is on disk
                victim.update(number=trial.number, pid=trial.user_attrs["worker"]["pid"])
                return True
        return False

    try:
        wait_for(reported_twice, proc=proc)
        os.kill(victim["pid"], signal.SIGKILL)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:].decode()
    assert b"was killed by SIGKILL; its trial is retried" in err
    study = journal_study(journal, "jkill")
    trials = study.trials
    assert "RUNNING" not in states(study) and "WAITING" not in states(study)
    killed = trials[victim["number"]]
    assert killed.state == TrialState.FAIL
    (retry,) = [t for t in trials if sweep_storage.retried_number(t) == killed.number]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    assert retry.user_attrs["resumed_from"] == str(Path(killed.user_attrs["run_dir"]) / "checkpoints/last.ckpt")
    assert retry.user_attrs["worker"]["pid"] != victim["pid"]
    # The retry takes the lost trial's place: three trials count, all of them ran, and only the lost one failed.
    assert sweep_storage.counted(trials) == 3 and states(study) == {"COMPLETE": 3, "FAIL": 1}
    assert f"trial {killed.number} failed: its worker was lost; retried as trial {retry.number}".encode() in out


def test_a_journal_trial_whose_process_died_is_failed_and_retried_once(tmp_path: Path) -> None:
    storage = sweep_storage.Storage(
        f"journal:{tmp_path}/lost.log", workers=1, heartbeat_interval=10, grace_period=None, max_retry=3
    )
    # A grid of one point: failing its trial completes the grid, and GridSampler then asks the study to stop.
    sampler = optuna.samplers.GridSampler({"x": [1.0]})
    study = storage.open("lost", sampler=sampler, pruner=optuna.pruners.NopPruner(), direction="maximize")
    trial = study.ask()
    trial.suggest_float("x", 0.0, 2.0)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": int(dead.stdout), "trial": trial.number})
    alive = study.ask()
    alive.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getppid(), "trial": alive.number})
    for _ in range(2):  # a second look finds nothing more to do
        storage.fail_lost_trials(study)
    lost, running, retry = study.trials
    assert (lost.state, running.state, retry.state) == (TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)
    assert sweep_storage.retried_number(retry) == lost.number and retry.params == {"x": 1.0}


@pytest.mark.slow
def test_sigterm_fails_the_running_trial_and_the_next_run_resumes_it_within_the_budget(tmp_path: Path) -> None:
    # Small batches and 16 epochs keep the trial training for seconds after its first checkpoint, so the signal lands
    # mid-trial even when a loaded machine starves this test's polling (with 128-sample batches a trial took about a
    # second and CI once saw it finish first). The wait looks for that checkpoint on disk, not in the study (slow).
    path = write_sweep(tmp_path, "term", n_trials=2, fixed={"trainer.max_epochs": 16, "data.batch_size": 16})
    proc = subprocess.Popen(
        sweep_command("-c", str(path)), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    last = tmp_path / "runs/term/trial-0000/checkpoints/last.ckpt"
    try:
        wait_for(last.exists, proc=proc, interval=0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    study = sqlite_study(tmp_path, "term")
    assert states(study) == {"FAIL": 1, "WAITING": 1}  # stopped at once, and queued again
    assert "SIGTERM" in study.trials[0].user_attrs["fail_reason"]
    # archlab's message with the command that continues, not Optuna's report of the failed trial and its traceback.
    assert b"interrupted" in out and f"Continue with: archlab sweep -c {path}".encode() in out
    assert b"Traceback" not in out + err and b"failed with" not in out + err

    rerun = run("-c", str(path), cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    study = sqlite_study(tmp_path, "term")
    # The retry took the interrupted trial's place: two trials of the budget of two ran to the end.
    assert states(study) == {"FAIL": 1, "COMPLETE": 2}
    retry = study.trials[1]
    assert retry.params == study.trials[0].params
    assert retry.user_attrs["resumed_from"] == str(tmp_path / "runs/term/trial-0000/checkpoints/last.ckpt")
    assert retry.user_attrs["restored_global_step"] > 0  # continued, not started over


def test_a_sqlite_study_continued_with_several_workers_moves_into_a_journal_file(tmp_path: Path) -> None:
    study_dir = tmp_path / "runs/grow"
    study_dir.mkdir(parents=True)
    study = optuna.create_study(study_name="grow", storage=f"sqlite:///{study_dir}/study.db", direction="maximize")
    study.set_user_attr("sweep", {"metric": "val/acc"})
    for value in (0.5, None):
        trial = study.ask({"model.lr": optuna.distributions.FloatDistribution(1.0e-3, 1.0e-1, log=True)})
        trial.set_user_attr("run_dir", str(study_dir / f"trial-{trial.number:04d}"))
        trial.report(0.25, step=0)
        study.tell(trial, value, state=TrialState.COMPLETE if value else TrialState.FAIL)
    settings = type("Settings", (), {"study_dir": study_dir, "workers": 2, "study_name": "grow"})()

    url = sweep_settings.Settings.default_storage(settings)  # what `archlab sweep ... --workers 2` opens

    assert url == f"journal:{study_dir}/journal.log"
    assert not (study_dir / "study.db").exists() and (study_dir / "study.db.migrated").is_file()
    moved = journal_study(study_dir / "journal.log", "grow")
    assert moved.user_attrs == {"sweep": {"metric": "val/acc"}}
    assert [(t.number, t.state, t.params, t.user_attrs, t.intermediate_values) for t in moved.trials] == [
        (t.number, t.state, t.params, t.user_attrs, t.intermediate_values) for t in study.trials
    ]
    settings.workers = 1  # and stays there when continued with one worker again
    assert sweep_settings.Settings.default_storage(settings) == url


@pytest.mark.slow
def test_three_local_workers_share_a_journal_file_and_leave_no_trial_that_never_ran(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, "local", n_trials=4, workers=3)
    proc = subprocess.Popen(sweep_command("-c", str(path)), cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    stdout, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0
    study = journal_study(tmp_path / "runs/local/journal.log", "local")
    trials = study.trials
    # Workers that check the cap at the same instant may each start one more trial, never a trial that does not run.
    assert set(states(study)) == {"COMPLETE"} and 4 <= len(trials) <= 6
    assert_every_trial_ran(study)
    assert proc.pid not in {t.user_attrs["worker"]["pid"] for t in trials}  # run by the worker processes
    assert len({t.user_attrs["worker"]["pid"] for t in trials}) >= 2
    assert len({t.params["model.lr"] for t in trials}) == len(trials)  # distinct seeds per worker
    assert f"trials:     {len(trials)} complete, 0 pruned, 0 failed, 0 running, 0 waiting" in stdout
    logs = sorted(p.name for p in (tmp_path / "runs/local").glob("worker-*.log"))
    assert logs == ["worker-0.log", "worker-1.log", "worker-2.log"]


def test_workers_that_pass_the_cap_check_together_create_no_trial_that_never_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tightest race: three workers count the study's trials at the same instant, all below the cap.
    path = write_sweep(tmp_path, "race", n_trials=2, storage=f"journal:{tmp_path}/race.log")
    barrier, first = threading.Barrier(3), threading.local()
    counted = sweep_workers.counted

    def counted_together(trials: list) -> int:
        n = counted(trials)
        if not getattr(first, "done", False):
            first.done = True
            barrier.wait(timeout=60)
        return n

    ran = []
    monkeypatch.setattr(sweep_workers, "counted", counted_together)
    monkeypatch.setattr(sweep_workers, "run_trial", lambda trial, settings: ran.append(trial.number) or 0.5)
    sweeps = [sweep_settings.parse(["-c", str(path), "--worker_index", str(i)], []) for i in range(3)]
    studies = [s.storage.open(s.study_name, sampler=s.sampler, pruner=s.pruner, direction=s.direction) for s in sweeps]
    threads = [
        threading.Thread(target=sweep_workers.Worker(s, study).work) for s, study in zip(sweeps, studies, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    trials = journal_study(tmp_path / "race.log", "race").trials
    assert sorted(ran) == [t.number for t in trials]  # every trial in the study ran
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    assert 2 <= len(trials) <= 4


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
        study = optuna.load_study(study_name="pg", storage=sweep_storage.sqlalchemy_url(with_password))
        trials = study.trials
        assert set(states(study)) == {"COMPLETE"} and 4 <= len(trials) <= 6  # no trial that never ran
        assert_every_trial_ran(study)
        assert len({t.user_attrs["worker"]["pid"] for t in trials}) >= 2  # the workers shared the study
        params = [t.params["model.lr"] for t in trials]
        assert len(params) == len(set(params))
        assert b"***@" in outputs[2][0]  # the summary shows the URL, masked
        for file in (tmp_path / "runs").rglob("*"):
            if file.is_file():
                assert db.password.encode() not in file.read_bytes(), file


@pytest.mark.parametrize("password_in", ["url", "PGPASSWORD"])
def test_an_unreachable_postgresql_exits_with_code_3_and_never_shows_the_password(
    password_in: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    password = "canary5f3a9e"
    url = f"postgresql://sweeper@127.0.0.1:{closed_port()}/studies"
    if password_in == "url":
        url = url.replace("sweeper@", f"sweeper:{password}@")
    else:
        monkeypatch.setenv("PGPASSWORD", password)
    path = write_sweep(tmp_path, "down")
    code = archlab_main(["sweep", "-c", str(path), "--storage", url])
    out, err = capsys.readouterr()
    assert code == archlab_sweep.EXIT_STORAGE_UNREACHABLE == 3
    assert "archlab sweep: error: cannot reach the storage postgresql://sweeper" in err
    assert "127.0.0.1" in err and "OperationalError" in err
    assert password not in out + err
    assert not list((tmp_path / "runs").rglob("trial-*"))


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
        # A task argument, checked by building the task: only the range's upper end is out of range.
        (
            {"space": {"model.lr": LR, "model.warmup": {"type": "float", "low": 0.0, "high": 1.5}}},
            ["space.model.warmup: the value 1.5 is rejected", "model.warmup", "[0, 1)"],
        ),
        # The net's own check, on the eighth of eight choices: every choice is probed, however many.
        (
            {"space": {"model.net.hidden_dim": {"type": "categorical", "choices": [8, 16, 24, 32, 40, 48, 56, 0]}}},
            ["space.model.net.hidden_dim: the value 0 is rejected", "hidden_dim must be >= 1"],
        ),
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
        space={"model.net.depth": {"type": "categorical", "choices": [8, 14, 20, 26, 32, 38, 44, 45]}},
    )  # fmt: skip
    spec = yaml.safe_load(path.read_text())
    spec["fixed"] = {k: v for k, v in spec["fixed"].items() if not k.startswith("model.net.")}
    path.write_text(yaml.safe_dump(spec))
    assert archlab_main(["sweep", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "space.model.net.depth: the value 45 is rejected" in err and "6n+2" in err
    assert not (tmp_path / "runs").exists()


def test_the_probes_try_every_range_end_and_every_choice() -> None:
    distributions = {
        "model.lr": sweep_space.make_distribution("model.lr", LR),
        "model.net.depth": sweep_space.make_distribution(
            "model.net.depth", {"type": "categorical", "choices": [8, 14, 20, 26, 32]}
        ),
        "model.warmup": sweep_space.make_distribution("model.warmup", {"type": "float", "low": 0.1, "high": 0.1}),
    }
    probes = sweep_space.probes(distributions)
    assert len(probes) == 5
    assert {p["model.lr"] for p in probes} == {1.0e-3, 3.0e-2}
    assert [p["model.net.depth"] for p in probes] == [8, 14, 20, 26, 32]
    assert {p["model.warmup"] for p in probes} == {0.1}


def test_the_space_check_builds_the_data_once_and_each_probe_on_the_meta_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds = []
    real_build = archlab_cli.build

    def counting_build(cfg, *, data=None, **kwargs):
        built = real_build(cfg, data=data, **kwargs)
        builds.append((data is None, kwargs.get("meta"), next(built.model.parameters()).device.type))
        return built

    monkeypatch.setattr(archlab_cli, "build", counting_build)
    choices = [8, 16, 24, 32, 40, 48]
    path = write_sweep(tmp_path, "probe", space={"model.net.hidden_dim": {"type": "categorical", "choices": choices}})
    cfg = sweep_settings.make_parser().parse_args(["-c", str(path)])
    sweep_settings.Settings(cfg, [])
    # The base command builds the DataModule; each of the six probes reuses it and builds net and task on meta.
    assert builds == [(True, True, "meta")] + [(False, True, "meta")] * len(choices)


def test_each_trial_builds_its_data_and_net_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import functools

    import torch

    from archlab.data import Digits
    from archlab.models import CNN

    counts = {"data": 0, "loads": 0, "nets": 0, "meta_nets": 0}

    def counting(fn, count):
        @functools.wraps(fn)  # keeps the signature that jsonargparse reads
        def wrapper(*args, **kwargs):
            count()
            return fn(*args, **kwargs)

        return wrapper

    def count_net() -> None:
        counts["meta_nets" if torch.empty(0).is_meta else "nets"] += 1

    monkeypatch.setattr(
        Digits, "__init__", counting(Digits.__init__, lambda: counts.__setitem__("data", counts["data"] + 1))
    )
    monkeypatch.setattr(
        Digits, "_load", counting(Digits._load, lambda: counts.__setitem__("loads", counts["loads"] + 1))
    )
    monkeypatch.setattr(CNN, "__init__", counting(CNN.__init__, count_net))
    monkeypatch.chdir(tmp_path)
    path = write_sweep(tmp_path, "once", n_trials=2, test_after_fit=False)
    assert archlab_main(["sweep", "-c", str(path)]) == 0
    # The space check: one DataModule for the base config (never set up, so never loaded) and a meta net for the base
    # config and for each probe (the two ends of model.lr). Each of the two trials: one DataModule, loaded once, and
    # one real net.
    assert counts == {"data": 1 + 2, "loads": 2, "nets": 2, "meta_nets": 1 + 2}


@pytest.mark.parametrize("sweep_file", sorted((ROOT / "configs/sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_sweep_file_validates(sweep_file: Path, tmp_path: Path) -> None:
    numeric_strings = [
        f"{key}.{arg}"
        for key, spec in yaml.safe_load(sweep_file.read_text())["space"].items()
        for arg, value in spec.items()
        if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", value)
    ]
    assert numeric_strings == []  # 1e-3 without a dot is a string to PyYAML
    cfg = sweep_settings.make_parser().parse_args(["-c", str(sweep_file), "--runs_root", str(tmp_path / "runs")])
    sweep = sweep_settings.Settings(cfg, [])  # parses and builds every probe of the space
    assert sweep.metric and sweep.direction in ("maximize", "minimize")
    assert not (tmp_path / "runs").exists()
