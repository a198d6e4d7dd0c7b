"""Kill real `archlab fit` processes at many moments, resume them, and compare with runs never interrupted.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/kill_resume.py [--cases classification sequence gan] [--jobs 2]

For each case (the shrunk configs of tests/test_resume.py) one uninterrupted reference run, then for each kill point
a fresh run that tests/kill_points.py SIGKILLs at that moment (mid-epoch at every other step, each epoch's last
batch, each validation, in the middle of checkpoint writes), resumed with `archlab fit --resume RUN` to the end.
$TMPDIR points at /dev/shm (another filesystem than the runs) to show that the writes do not depend on it.
Prints, per case and in total: kills attempted / survived (the resumed run ends bitwise equal: weights, buffers and
optimizer states, and the process really died of SIGKILL at the point), the maximum weight difference after
resume, and the checkpoints left unloadable by a kill (every *.ckpt of the run loaded with weights_only=True right
after the kill). Writes runs/bench-kill-resume/results.json.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
KILL_POINTS = ROOT / "tests" / "kill_points.py"
sys.path.insert(0, str(KILL_POINTS.parent))
from kill_points import max_difference  # noqa: E402 - the tests' own comparison, shared

COMMON = ["--tracker", "csv", "--test_after_fit", "false", "--trainer.max_epochs", "3"]
CASES = {
    # name: (arguments, optimizer steps per epoch, per batch, checkpoint every N steps)
    "classification": (
        [
            *("-c", "configs/cnn_digits.yaml", "--model.net.channels", "[8, 16]", "--model.net.dropout", "0.3"),
            *("--trainer.limit_train_batches", "8", "--trainer.limit_val_batches", "2"),
        ],
        8,
        1,
        3,
    ),
    "sequence": (
        [
            *("-c", "configs/lstm_adding.yaml", "--model.net.hidden_dim", "16", "--model.net.num_layers", "2"),
            *("--model.net.dropout", "0.2", "--data.seq_len", "20"),
            *("--data.num_train", "320", "--data.num_val", "64", "--data.num_test", "64"),
        ],
        5,
        1,
        2,
    ),
    "gan": (
        [
            *("-c", "configs/dcgan_digits.yaml", "--model.net.width", "8", "--model.fid_samples", "32"),
            *("--model.num_samples", "4", "--trainer.limit_train_batches", "5", "--trainer.limit_val_batches", "1"),
        ],
        10,
        2,
        4,
    ),
}


def kill_points(per_epoch: int, per_batch: int, every: int, epochs: int = 3) -> list[str]:
    total = per_epoch * epochs
    points = [f"train:{k}" for k in range(per_batch, total, 2 * per_batch)]  # mid-epoch, every other batch
    points += [f"train:{per_epoch * e - per_batch}" for e in range(1, epochs + 1)]  # each epoch's last batch
    points += [f"val:{per_epoch * e}" for e in range(1, epochs + 1)]  # each epoch's validation
    points += [f"save:{k}" for k in range(every, total + 1, 2 * every)]  # half-way through checkpoint writes
    points += [f"save:{per_epoch * e}" for e in range(1, epochs)]  # the epoch-end writes
    return sorted(set(points), key=lambda p: (int(p.split(":")[1]), p))


def archlab(args: list[str], cwd: Path, kill: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, str(KILL_POINTS)] if kill else [sys.executable, "-m", "archlab"]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    if Path("/dev/shm").is_dir():
        env["TMPDIR"] = "/dev/shm"
    if kill:
        env["ARCHLAB_KILL"] = kill
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def one_kill(case: str, point: str, folder: Path, reference: Path) -> dict:
    args, _per_epoch, _per_batch, every = CASES[case]
    args = [str(ROOT / a) if a.startswith("configs/") else a for a in args]
    run = folder / f"{case}-{point.replace(':', '-')}"
    start = ["fit", *args, *COMMON, "--checkpoint_every_n_steps", str(every), "--run_dir", str(run)]
    killed = archlab(start, folder, kill=point)
    died = killed.returncode == -signal.SIGKILL
    unloadable = 0
    for path in (run / "checkpoints").glob("*.ckpt"):
        try:
            torch.load(path, weights_only=True)
        except Exception:
            unloadable += 1
    resumed = archlab(["fit", "--resume", str(run)], folder)
    difference = max_difference(reference, run / "checkpoints/last.ckpt") if resumed.returncode == 0 else None
    return {
        "case": case,
        "kill": point,
        "died_by_sigkill": died,
        "unloadable_checkpoints": unloadable,
        "resume_exit": resumed.returncode,
        "max_difference": difference,
        "survived": died and resumed.returncode == 0 and difference == 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--jobs", type=int, default=2, help="runs at once")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-kill-resume")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="kills-", dir=args.out))
    references = {}
    for case in args.cases:
        case_args, _per_epoch, _per_batch, every = CASES[case]
        case_args = [str(ROOT / a) if a.startswith("configs/") else a for a in case_args]
        reference = folder / f"{case}-reference"
        result = archlab(
            ["fit", *case_args, *COMMON, "--checkpoint_every_n_steps", str(every), "--run_dir", str(reference)], folder
        )
        if result.returncode != 0:
            sys.exit(f"the reference run of {case} failed:\n{result.stderr[-3000:]}")
        references[case] = reference / "checkpoints/last.ckpt"
    jobs = [(case, point) for case in args.cases for point in kill_points(*CASES[case][1:])]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: one_kill(*job, folder, references[job[0]]), jobs))
    print(f"{'case':<16}{'kills survived / attempted':>28}{'max weight difference':>24}{'unloadable checkpoints':>24}")
    for case in [*args.cases, "total"]:
        rows = [r for r in results if case in ("total", r["case"])]
        differences = [r["max_difference"] for r in rows if r["max_difference"] is not None]
        survived = sum(r["survived"] for r in rows)
        worst = max(differences) if differences else float("nan")
        unloadable = sum(r["unloadable_checkpoints"] for r in rows)
        print(f"{case:<16}{f'{survived} / {len(rows)}':>28}{worst:>24}{unloadable:>24}")
    for r in results:
        if not r["survived"]:
            print("not survived:", r)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"details: {args.out / 'results.json'}; runs: {folder}")


if __name__ == "__main__":
    main()
