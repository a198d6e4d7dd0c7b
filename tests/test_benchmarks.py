"""The performance benchmark (benchmarks/perf.py, issue 13): every family measured, and its equal-work check able
to fail. Timing targets are the benchmark's, not the tests'."""

import argparse
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("perf", ROOT / "benchmarks/perf.py")
perf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(perf)

pytestmark = pytest.mark.slow


def smoke_args(**changes) -> argparse.Namespace:
    # In this process (no fork: other tests may have started OpenMP threads here), two steps per run.
    args = {"family": None, "steps": 2, "warmup": 0, "check_steps": 2, "rounds": 1, "tracker": "wandb", "fork": False}
    return argparse.Namespace(**{**args, **changes})


def test_every_family_is_measured_and_reported(tmp_path):
    args = smoke_args()
    rows = perf.families_section(args, tmp_path)
    assert [row["family"] for row in rows] == [family.name for family in perf.FAMILIES]
    for row in rows:
        assert "error" not in row, row["error"]
        assert row["equal_work"], (row["family"], row["check"])
        assert len(row["archlab_losses"]) == len(row["plain_losses"]) == 2
        for arm in ("archlab", "plain"):
            assert row[arm]["steps_timed"] == 1 and row[arm]["step_ms"] > 0
        assert row["ratio"] > 0
    report = {
        "command": "benchmarks/perf.py --sections families",
        "machine": perf.machine(),
        "args": vars(args),
        "sections": {"families": rows},
        "load_after": (0.0, 0.0, 0.0),
    }
    table = perf.markdown(report)
    for family in perf.FAMILIES:
        line = next(line for line in table.splitlines() if line.startswith(f"| {family.name} "))
        assert "| yes:" in line


def test_equal_work_check_fails_when_the_plain_loop_computes_something_else(tmp_path):
    def smoothed(net, task, batch):  # cross-entropy with label smoothing: a different loss from the first step
        from torch.nn import functional as F

        x, y = batch
        return F.cross_entropy(net(x), y, label_smoothing=0.1)

    (family,) = [f for f in perf.FAMILIES if f.config == "configs/resnet_digits.yaml"]
    row = perf.measure_family(
        family,
        steps=2,
        warmup=0,
        check_steps=2,
        rounds=1,
        workdir=tmp_path,
        tracker="csv",
        fork=False,
        plain_loss=smoothed,
    )
    assert not row["equal_work"]
    assert "step 0" in row["check"]


def test_equal_work_compares_every_loss():
    assert perf.check_equal_work([[1.0, 2.0]], [[1.0, 2.0]])[0]
    assert not perf.check_equal_work([[1.0, 2.0]], [[1.0, 2.1]])[0]  # the GAN's second loss differs
    assert not perf.check_equal_work([[1.0]], [[1.0], [1.0]])[0]
    assert not perf.check_equal_work([], [])[0]
    assert not perf.check_equal_work([[float("nan")]], [[float("nan")]])[0]


# archlab.threads and the `archlab --help` fast path, which the benchmark's thread and start-up sections measure.


def test_archlab_threads_sets_the_threads_before_torch_loads():
    import subprocess
    import sys

    from archlab import threads

    code = (
        "import os; from archlab import threads; n = threads.configure(); import torch; "
        "print(n, torch.get_num_threads(), os.environ.get('OMP_WAIT_POLICY', 'default'))"
    )
    for n in (1, threads.cores()):
        env = {"PATH": "/usr/bin:/bin", "ARCHLAB_THREADS": str(n)}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        # Passive waits when the process leaves cores to others; OpenMP's default when it takes them all.
        assert out.stdout.split() == [str(n), str(n), "PASSIVE" if n < threads.cores() else "default"]


def test_archlab_threads_leaves_the_busy_cores(monkeypatch):
    from archlab import threads

    monkeypatch.setattr(threads, "cores", lambda: 8)
    for running, expected in [(0, 8), (1, 7), (3, 5), (7, 1), (40, 1)]:
        monkeypatch.setattr(threads, "running_now", lambda running=running: running)
        assert threads.default_threads() == expected, running


def test_archlab_threads_rejects_a_bad_value():
    from archlab import threads

    with pytest.raises(ValueError, match="ARCHLAB_THREADS must be a whole number of threads >= 1; got '0'"):
        threads.configure({"ARCHLAB_THREADS": "0"})
    assert 1 <= threads.default_threads() <= threads.cores()


def test_help_lists_the_subcommands_without_importing_lightning():
    import subprocess
    import sys

    code = "import sys; from archlab.__main__ import main; main(['--help']); print('lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "fit,validate,test,predict,sweep" in out.stdout
    assert out.stdout.strip().endswith("False")
