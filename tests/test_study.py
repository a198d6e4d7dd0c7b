"""`archlab study`: a tiny study end to end through the real command (report, table, plots), a re-run that skips
finished runs, a SIGKILLed study that resumes with only its missing run, every spec in experiments/ checked by the
CLI's parser without training, and bad specs stopped with one paragraph naming the key."""

import csv
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from archlab import study as archlab_study
from archlab.errors import ConfigError
from archlab.study import report, spec

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*/study.yaml"))
FAST = {
    "trainer.max_epochs": 2,
    "trainer.enable_progress_bar": False,
    "trainer.enable_model_summary": False,
    "model.net.hidden_dim": 32,
    "model.schedule": "constant",
    "data.batch_size": 128,
    "data.augment": False,
}


def write_spec(tmp_path: Path, **changes) -> Path:
    folder = tmp_path / "tiny"
    folder.mkdir(exist_ok=True)
    study = {
        "title": "Tiny",
        "claim": "A wider CNN is at least as accurate.",
        "base": str(ROOT / "configs/cnn_digits.yaml"),
        "fixed": FAST,
        "factors": {"width": {"narrow": {"model.net.channels": [4]}, "wide": {"model.net.channels": [16]}}},
        "budgets": {"quick": {}},
        "metrics": ["test/acc", "min:train/loss"],
        "probes": ["params"],
        "figures": [
            {"name": "loss", "kind": "curve", "metric": "train/loss"},
            {"name": "acc", "kind": "bar", "metric": "test/acc"},
        ],
        "verdict": [{"says": "wide >= narrow", "metric": "test/acc", "left": {"width": "wide"}, "op": ">=",
                     "right": {"width": "narrow"}}],
    }  # fmt: skip
    study.update(changes)
    (folder / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    return folder


def command(folder: Path, tmp_path: Path) -> list[str]:
    return [sys.executable, "-m", "archlab", "study", str(folder), "--budget", "quick", "--runs_root",
            str(tmp_path / "runs"), "--report_dir", str(tmp_path / "report")]  # fmt: skip


def run(folder: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ARCHLAB_THREADS": "1"}
    result = subprocess.run(command(folder, tmp_path), cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def trials(tmp_path: Path) -> list[optuna.trial.FrozenTrial]:
    journal = tmp_path / "runs/studies/tiny/quick/tiny/journal.log"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    return optuna.load_study(study_name="tiny-quick", storage=storage).get_trials()


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def logged(run_dir: Path, column: str) -> list[float]:
    with (run_dir / "metrics.csv").open() as f:
        return [float(row[column]) for row in csv.DictReader(f) if row[column]]


@pytest.mark.slow
def test_tiny_study_writes_its_report_and_a_rerun_skips_finished_runs(tmp_path: Path) -> None:
    folder = write_spec(tmp_path)
    first = run(folder, tmp_path)
    assert "part tiny: 2 run(s) to go" in first.stdout
    done = trials(tmp_path)
    assert [t.state for t in done] == [TrialState.COMPLETE] * 2
    text = (tmp_path / "report/report.md").read_text()
    assert "**Budget: quick.**" in text and "## Verdict on this budget: " in text
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in text.splitlines() if line.startswith("| ")}
    header = [c.strip("| ") for c in rows["width"]]
    for t in done:
        run_dir = Path(t.user_attrs["run_dir"])
        row = [c.strip("| ") for c in rows[t.params["width"]]]
        assert row[header.index("test/acc")] == report.fmt(logged(run_dir, "test/acc")[-1])
        assert row[header.index("min:train/loss")] == report.fmt(min(logged(run_dir, "train/loss_epoch")))
    params = {t.params["width"]: int(rows[t.params["width"]][header.index("params")].strip("| ")) for t in done}
    assert params["narrow"] < params["wide"]
    for name in ("loss", "acc"):
        assert f"![{name}]({name}.png)" in text
        assert png_size(tmp_path / "report" / f"{name}.png") == (640, 400)
    mtimes = {t.number: (Path(t.user_attrs["run_dir"]) / "metrics.csv").stat().st_mtime_ns for t in done}

    again = run(folder, tmp_path)
    assert "part tiny: 0 run(s) to go, 2 finished" in again.stdout
    assert len(trials(tmp_path)) == 2
    assert {t.number: (Path(t.user_attrs["run_dir"]) / "metrics.csv").stat().st_mtime_ns for t in done} == mtimes


@pytest.mark.slow
def test_a_killed_study_resumes_with_only_its_missing_run(tmp_path: Path) -> None:
    # The second run trains for seconds, so the kill lands while it runs.
    levels = {"short": {"model.net.channels": [4]},
              "long": {"model.net.channels": [16], "trainer.max_epochs": 8, "data.batch_size": 32}}  # fmt: skip
    folder = write_spec(tmp_path, factors={"length": levels}, verdict=[], figures=[])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ARCHLAB_THREADS": "1"}
    proc = subprocess.Popen(command(folder, tmp_path), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    second = tmp_path / "runs/studies/tiny/quick/tiny/trial-0001"
    try:
        deadline = time.monotonic() + 300
        while not second.exists():  # the first run's trial is complete before the second's directory exists
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = trials(tmp_path)
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.RUNNING]
    first_csv = Path(before[0].user_attrs["run_dir"]) / "metrics.csv"
    mtime = first_csv.stat().st_mtime_ns

    run(folder, tmp_path)
    after = trials(tmp_path)
    assert [t.state for t in after] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert [t.user_attrs["run"] for t in after] == ["tiny/length=short/seed=0", *["tiny/length=long/seed=0"] * 2]
    assert first_csv.stat().st_mtime_ns == mtime  # the finished run did not run again
    assert "| long | 1 |" in (tmp_path / "report/report.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.parent.name for p in EXPERIMENTS])
def test_every_study_spec_names_only_keys_the_cli_accepts(path: Path) -> None:
    loaded = spec.load(path.parent)
    for budget in loaded.get("budgets") or {"full": {}}:
        plan = spec.plan(loaded, budget)
        spec.check_spec(loaded, plan)
        spec.check_args(plan)  # the real `archlab fit` parser, nothing built or trained
        assert plan.runs


def test_experiments_hold_studies() -> None:
    assert len(EXPERIMENTS) >= 4


@pytest.mark.parametrize(
    "changes, named",
    [
        ({"factorz": {}}, "unknown key(s) factorz"),
        ({"fixed": {**FAST, "model.net.chanels": [4]}}, "chanels"),
        ({"figures": [{"name": "x", "kind": "pie", "metric": "test/acc"}]}, "figures[0].kind 'pie'"),
        ({"verdict": [{"says": "s", "metric": "test/acc", "left": {"depth": 2}, "op": "<", "right": 1.0}]}, "'depth'"),
        ({"probes": ["sharpnes"]}, "probe 'sharpnes' is unknown"),
        ({"fixed": {**FAST, "init_from": {"from_part": "pretrain", "path": "x.ckpt"}}}, "from_part 'pretrain'"),
        ({"budgets": {"quick": {"levels": {"width": ["huge"]}}}}, "levels.width: ['huge'] not among its levels"),
    ],
)
def test_a_bad_spec_is_one_paragraph_naming_the_key(tmp_path: Path, capsys, changes: dict, named: str) -> None:
    folder = write_spec(tmp_path, **changes)
    code = archlab_study.main([str(folder), "--budget", "quick", "--runs_root", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("archlab study: error: study") and named in err
    assert not (tmp_path / "runs").exists()  # stopped before any run or storage


def test_an_unknown_budget_lists_the_accepted_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="budget 'ful' is not in the spec; accepted: quick"):
        spec.plan(spec.load(write_spec(tmp_path)), "ful")
