"""Runs that survive kills, proven with real processes.

`archlab fit` runs in a subprocess that kills itself at a chosen moment (tests/kill_points.py: SIGKILL mid-epoch, at
an epoch's last batch, during validation, in the middle of a checkpoint write; SIGTERM and Ctrl-C), is continued with
`archlab fit --resume RUN`, and must end with weights and optimizer states bitwise equal to a run that was never
interrupted, with shuffling, augmentation and dropout on. Plus: the run directory's lock, the status record, atomic
checkpoint writes, and `last` skipping a truncated checkpoint.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import wandb_records
from archlab import checkpoints
from archlab.data.base import ResumableLoader, TensorBatchDataset, whole_batch
from archlab.errors import DivergedError
from archlab.rundir import RunDir, new_run_dir, write_atomic
from kill_points import max_difference

ROOT = Path(__file__).resolve().parents[1]
KILL_POINTS = ROOT / "tests" / "kill_points.py"
COMMON = ["--tracker", "csv", "--test_after_fit", "false", "--trainer.max_epochs", "3"]
# Each case: a config shrunk to seconds (shuffling, augmentation and dropout on), and its kill points (ARCHLAB_KILL
# values, see tests/kill_points.py) in the order they happen; each kill's process is resumed by the next one's.
CASES = {
    # 8 batches an epoch (steps 0-7, 8-15, 16-23), a checkpoint every 3 steps: killed mid-epoch (step 5, two steps
    # after a save), at the start of epoch 1's last batch, during epoch 1's validation, half-way through a write.
    "classification": (
        [
            *("-c", "configs/cnn_digits.yaml", "--model.net.channels", "[8, 16]", "--model.net.dropout", "0.3"),
            *("--trainer.limit_train_batches", "8", "--trainer.limit_val_batches", "2"),
            *("--checkpoint_every_n_steps", "3"),
        ],
        ["train:5", "train:15", "val:16", "save:20"],
    ),
    # A two-layer LSTM with dropout on the adding problem: 5 batches an epoch, a checkpoint every 2 steps.
    "sequence": (
        [
            *("-c", "configs/lstm_adding.yaml", "--model.net.hidden_dim", "16", "--model.net.num_layers", "2"),
            *("--model.net.dropout", "0.2", "--data.seq_len", "20"),
            *("--data.num_train", "320", "--data.num_val", "64", "--data.num_test", "64"),
            *("--checkpoint_every_n_steps", "2"),
        ],
        ["train:3", "val:5"],
    ),
    # The GAN: two optimizers, manual optimization, two optimizer steps a batch (10 an epoch), noise for the FID
    # drawn in validation.
    "gan": (
        [
            *("-c", "configs/dcgan_digits.yaml", "--model.net.width", "8", "--model.fid_samples", "32"),
            *("--model.num_samples", "4", "--trainer.limit_train_batches", "5", "--trainer.limit_val_batches", "1"),
            *("--checkpoint_every_n_steps", "4"),
        ],
        ["train:6", "val:10", "save:14"],
    ),
}


def case_args(case: str) -> list[str]:
    return [str(ROOT / arg) if arg.startswith("configs/") else arg for arg in CASES[case][0]]


def archlab(*args: str, cwd: Path, kill: str | None = None) -> subprocess.CompletedProcess:
    """`archlab ARGS`, or the same through tests/kill_points.py with ARCHLAB_KILL=kill."""
    command = [sys.executable, str(KILL_POINTS)] if kill else [sys.executable, "-m", "archlab"]
    # Tiny nets train several times faster with one intra-op thread on a busy 2-core machine.
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    if kill:
        env["ARCHLAB_KILL"] = kill
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory):
    """The uninterrupted run of a case (run once per module, when first asked for)."""
    cwd = tmp_path_factory.mktemp("references")
    runs: dict[str, Path] = {}

    def get(case: str) -> Path:
        if case not in runs:
            result = archlab("fit", *case_args(case), *COMMON, "--run_dir", str(cwd / case), cwd=cwd)
            assert result.returncode == 0, result.stderr[-3000:]
            runs[case] = cwd / case
        return runs[case]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_killed_runs_resume_bitwise_equal(case: str, tmp_path: Path, reference) -> None:
    run = tmp_path / "run"
    for i, kill in enumerate(CASES[case][1]):
        start = ["fit", *case_args(case), *COMMON, "--run_dir", str(run)] if i == 0 else ["fit", "--resume", str(run)]
        killed = archlab(*start, cwd=tmp_path, kill=kill)
        assert killed.returncode == -signal.SIGKILL, (kill, killed.stderr[-3000:])
        for path in (run / "checkpoints").glob("*.ckpt"):
            torch.load(path, weights_only=True)  # whatever the kill interrupted, every checkpoint stays loadable
        assert status(run)["status"] == "running"  # what a SIGKILL leaves; the free lock tells that it is dead
        if kill.startswith("save:"):
            assert list((run / "checkpoints").glob(".last.ckpt.partial-*"))  # the kill came mid-write
    resumed = archlab("fit", "--resume", str(run), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {run} from {run}/checkpoints/last.ckpt" in resumed.stderr
    assert "it was killed while running" in resumed.stderr
    assert not list(run.rglob(".*.partial-*"))  # the interrupted write was cleaned up
    assert status(run)["status"] == "finished"
    for name in ("last.ckpt", "best.ckpt"):  # the final state, and the best epoch's: the same validation history
        assert max_difference(reference(case) / "checkpoints" / name, run / "checkpoints" / name) == 0.0, name


def test_validation_leaves_the_training_random_stream_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Validating or not trains the same weights (the GAN's validation draws FID noise): it draws from a copy."""
    from archlab import cli

    monkeypatch.chdir(tmp_path)
    base = ["fit", *case_args("gan"), *COMMON, "--trainer.max_epochs", "2", "--trainer.enable_checkpointing", "false"]
    validated = cli.run(base).model.state_dict()
    unvalidated = cli.run([*base, "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0"])
    assert all(torch.equal(value, unvalidated.model.state_dict()[key]) for key, value in validated.items())


def wandb_history_steps(run_file: Path) -> tuple[list[str], list[int]]:
    """The run ids and the trainer/global_step values at which an offline W&B run file logged a training step's loss
    (the learning-rate monitor logs rows of its own, at the start of each step)."""
    ids = [run.run_id for run in wandb_records.of_type(run_file, "run")]
    rows = wandb_records.history(run_file)
    return ids, [int(row["trainer/global_step"]) for row in rows if "train/loss_step" in row]


@pytest.mark.slow
def test_sigterm_saves_at_a_batch_boundary_then_last_skips_a_truncated_checkpoint(tmp_path: Path, reference) -> None:
    """SIGTERM -> 143 with a checkpoint at the batch boundary and the command that continues; the resumed run is the
    same W&B run; a truncated last.ckpt is skipped for the newest valid one, and the result is still exact."""
    args = case_args("classification")
    run = tmp_path / "run"
    wandb = [a for a in COMMON if a not in ("--tracker", "csv")] + ["--trainer.log_every_n_steps", "1"]
    stopped = archlab("fit", *args, *wandb, "--run_dir", str(run), cwd=tmp_path, kill="sigterm:5")
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert f"stopped by SIGTERM at epoch 0, step 6; saved {run}/checkpoints/last.ckpt (step 6)" in stopped.stderr
    assert f"Continue with: archlab fit --resume {run}" in stopped.stderr
    record = status(run)
    assert (record["status"], record["exit_code"], record["step"]) == ("interrupted", 143, 6)
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 6
    shutil.copy(run / "checkpoints/last.ckpt", run / "checkpoints/step6.ckpt")  # an older valid checkpoint

    killed = archlab("fit", "--resume", str(run), cwd=tmp_path, kill="train:13")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = run / "checkpoints/last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 11  # saves: 8 (epoch end), then every 3 steps
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # as a copy cut short, say
    (run / "checkpoints/.best.ckpt.partial-0000").write_bytes(b"half")
    resumed = archlab("fit", "--resume", str(run), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "warning: skipping a checkpoint" in resumed.stderr and "last.ckpt" in resumed.stderr
    # best.ckpt (epoch 0's validation, step 8) is the newest valid one: newer than step6.ckpt.
    assert f"resuming {run} from {run}/checkpoints/best.ckpt (step 8)" in resumed.stderr
    assert "removed" in resumed.stderr and not (run / "checkpoints/.best.ckpt.partial-0000").exists()
    assert max_difference(reference("classification") / "checkpoints/last.ckpt", last) == 0.0

    # One W&B run continued across the three processes: one id, and steps that go on where they stopped.
    run_id = (run / "wandb_id").read_text().strip()
    files = sorted(run.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 3 and len(list(run.glob("wandb/offline-run-*"))) == 3
    first_ids, first_steps = wandb_history_steps(files[0])
    last_ids, last_steps = wandb_history_steps(files[-1])
    assert set(first_ids) == set(last_ids) == {run_id}
    assert first_steps == list(range(6))  # stopped cleanly after step 5's log (global step 6 is the next batch's)
    assert last_steps[0] == 8 and last_steps[-1] == 23  # resumed from step 8 (a SIGKILLed session keeps no log)


@pytest.mark.slow
def test_ctrl_c_saves_then_stops_and_a_second_one_stops_at_once(tmp_path: Path) -> None:
    args = case_args("classification")
    once = archlab("fit", *args, *COMMON, "--run_dir", str(tmp_path / "once"), cwd=tmp_path, kill="sigint:5")
    assert once.returncode == 130, once.stderr[-3000:]
    assert "Ctrl-C: saving a checkpoint at the next batch boundary" in once.stderr
    assert "stopped by Ctrl-C (SIGINT) at epoch 0, step 6; saved" in once.stderr
    twice = archlab("fit", *args, *COMMON, "--run_dir", str(tmp_path / "twice"), cwd=tmp_path, kill="sigint2:5")
    assert twice.returncode == 130, twice.stderr[-3000:]
    assert "stopped by Ctrl-C (SIGINT) at epoch 0, step 5; it continues from its latest checkpoint" in twice.stderr
    assert torch.load(tmp_path / "twice/checkpoints/last.ckpt", weights_only=True)["global_step"] == 3  # no new save
    assert status(tmp_path / "twice")["status"] == "interrupted"


@pytest.mark.slow
def test_sigterm_under_two_process_ddp_stops_every_rank(tmp_path: Path) -> None:
    """SIGTERM to the launching process only: both gloo ranks save one checkpoint together and exit; none hangs."""
    args = case_args("classification")
    ddp = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    run = tmp_path / "run"
    stopped = archlab("fit", *args, *COMMON, *ddp, "--run_dir", str(run), cwd=tmp_path, kill="sigterm0:5")
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 6
    resumed = archlab("fit", "--resume", str(run), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 24


@pytest.mark.slow
def test_one_live_command_per_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from archlab import cli

    args = case_args("classification")
    run = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "ARCHLAB_KILL": "slow:3"}
    first = subprocess.Popen(  # every checkpoint write from step 3 on takes 3 s longer: it stays alive a while
        [sys.executable, str(KILL_POINTS), "fit", *args, *COMMON, "--trainer.max_epochs", "20", "--run_dir", str(run)],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoints/last.ckpt").exists():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        # The second command (here in this process) stops before it builds anything.
        for second in (["fit", *args, *COMMON, "--run_dir", str(run)], ["fit", "--resume", str(run)]):
            assert cli.main(second) == 2
            assert f"{run} is in use by another archlab command (pid {first.pid}" in capsys.readouterr().err
        assert first.poll() is None
    finally:
        first.kill()
        first.wait()
    # Dead, the first gives the directory up: it can be resumed, but a new run may not write into it.
    assert cli.main(["fit", *args, *COMMON, "--run_dir", str(run)]) == 2
    refused = capsys.readouterr().err
    assert "already holds a run (running at step" in refused and f"archlab fit --resume {run}" in refused
    # A job that SLURM requeued runs the same command again: that one continues the run (here: from nothing valid).
    for path in (run / "checkpoints").glob("*.ckpt"):
        path.write_bytes(b"not a checkpoint")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert cli.main(["fit", *args, *COMMON, "--run_dir", str(run)]) == 2
    assert f"checkpoint(s) of {run} can be read (listed above)" in capsys.readouterr().err


def test_checkpoints_by_time_wait_for_validation_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A save that falls due right before a validation waits until after it (resuming would skip that validation);
    the epoch's end always saves."""
    from archlab import cli

    saved = []
    real_save = checkpoints.LastCheckpoint.save

    def save(self, trainer):
        saved.append(trainer.global_step)
        real_save(self, trainer)

    monkeypatch.setattr(checkpoints.LastCheckpoint, "save", save)
    monkeypatch.chdir(tmp_path)
    cli.run(
        [
            *("fit", *case_args("classification")[:6], *COMMON, "--trainer.max_epochs", "1"),
            *("--trainer.limit_train_batches", "6", "--trainer.val_check_interval", "3"),
            *("--trainer.limit_val_batches", "1", "--checkpoint_every_minutes", "1.0e-9"),
        ]
    )
    # Due after every batch; batches 3 and 6 (steps 3, 6) are followed by validation; 6 ends the epoch.
    assert saved == [1, 2, 4, 5, 6]


def test_two_runs_started_in_the_same_second_get_their_own_directories(tmp_path: Path) -> None:
    first, second = new_run_dir(tmp_path, "exp"), new_run_dir(tmp_path, "exp")
    assert first.root != second.root and first.root.is_dir() and second.root.is_dir()
    assert second.root.name.startswith(first.root.name)  # <time>-1 when the second is the same second


def test_bad_resume_and_checkpoint_options_stop_before_a_run_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from archlab import cli

    assert cli.main(["fit", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "nowhere/config.yaml does not exist" in capsys.readouterr().err
    assert cli.main(["fit", "-c", str(ROOT / "configs/cnn_digits.yaml"), "--ckpt_path", "last"]) == 2
    assert "--ckpt_path last continues the run in --run_dir" in capsys.readouterr().err
    assert cli.main(["fit", "-c", str(ROOT / "configs/cnn_digits.yaml"), "--checkpoint_every_n_steps", "0"]) == 2
    assert "--checkpoint_every_n_steps must be a positive number of optimizer steps" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_checkpoint_write_is_atomic_and_refuses_non_finite_weights(tmp_path: Path) -> None:
    io = checkpoints.AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)

    def dies_half_way(f):
        f.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, dies_half_way)
    assert io.load_checkpoint(path)["global_step"] == 1  # the previous file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # and no temporary file
    with pytest.raises(DivergedError, match=r"1 weight tensor\(s\) hold NaN or Inf at epoch None, step 2 \(w\)"):
        io.save_checkpoint({"state_dict": {"w": torch.tensor([1.0, float("nan")])}, "global_step": 2}, path)
    assert io.load_checkpoint(path)["global_step"] == 1
    run = RunDir(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    (run.checkpoints / ".last.ckpt.partial-1234").write_bytes(b"x")
    assert [p.name for p in run.remove_partial_writes()] == [".last.ckpt.partial-1234"]


def test_the_training_loader_resumes_inside_its_epoch_without_repeating_or_skipping() -> None:
    dataset = TensorBatchDataset(torch.arange(50), torch.arange(50))

    def loader() -> ResumableLoader:
        return ResumableLoader(dataset, batch_size=8, shuffle=True, seed=3, collate_fn=whole_batch)

    full = loader()
    full.sampler.set_epoch(2)
    epoch = [x for x, _y in full]
    first = loader()
    first.sampler.set_epoch(2)
    it = iter(first)
    seen = [next(it)[0] for _ in range(3)]
    state = first.state_dict()
    assert state == {"epoch": 2, "batches": 3}
    second = loader()  # a new process: a new loader, given the state
    second.load_state_dict(state)
    second.sampler.set_epoch(2)
    rest = [x for x, _y in second]
    assert len(second) == len(epoch) == 7 and len(rest) == 4
    assert torch.equal(torch.cat(seen + rest), torch.cat(epoch))  # the same order, each sample once
    assert second.state_dict() == {"epoch": 2, "batches": 7}
    second.sampler.set_epoch(3)  # the next epoch starts at its beginning, in its own order
    assert len([x for x, _y in second]) == 7
    other = loader()
    other.sampler.set_epoch(3)
    assert not torch.equal(torch.cat([x for x, _y in other]), torch.cat(epoch))
