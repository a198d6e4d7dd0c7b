"""Pruning vs none on the digits sweep: best validation accuracy and total epochs trained, same sampler and seed.

    .venv/bin/python benchmarks/sweep_pruning.py [--n_trials 16] [--max_epochs 12] [--pruners none median hyperband]

Each pruner gets its own study (same TPE seed, same space, same budget) under runs/bench-pruning/; the target
(issue 5) is a pruned sweep within 0.5 points of the unpruned best val/acc with at most half its total epochs.
Epochs are counted from what each trial reported (a pruned trial stops at the epoch it was pruned). Training is
seeded, so a pruned trial's curve is a prefix of the same trial's unpruned curve. Re-running resumes the studies:
delete runs/bench-pruning/digits-<pruner>/ to measure an arm again.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import optuna
import yaml

ROOT = Path(__file__).resolve().parents[1]


def sweep_file(folder: Path, pruner: str, args: argparse.Namespace) -> Path:
    spec = {
        "base": str(ROOT / "configs/cnn_digits.yaml"),
        "fixed": {
            "trainer.max_epochs": args.max_epochs,
            "trainer.enable_progress_bar": False,
            "trainer.enable_model_summary": False,
            "model.net.channels": [16, 32],
        },
        "space": {
            "model.lr": {"type": "float", "low": 1.0e-5, "high": 1.0e-1, "log": True},
            "model.weight_decay": {"type": "float", "low": 1.0e-4, "high": 3.0e-1, "log": True},
            "model.net.hidden_dim": {"type": "categorical", "choices": [32, 64, 128]},
        },
        "sampler": "tpe",
        "seed": args.seed,
        "pruner": pruner,
        # Median: compare from the third trial on, after 2 epochs. Hyperband: rungs from 1 epoch, reduction factor 3.
        "pruner_args": {"median": {"n_startup_trials": 2, "n_warmup_steps": 1}, "hyperband": {"min_resource": 1}}.get(
            pruner, {}
        ),
        "n_trials": args.n_trials,
        "tracker": "none",
        "runs_root": str(folder),
        "study_name": f"digits-{pruner}",
    }
    path = folder / f"{pruner}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n_trials", type=int, default=16)
    parser.add_argument("--max_epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pruners", nargs="+", default=["none", "median", "hyperband"])
    parser.add_argument("--out", type=Path, default=ROOT / "runs/bench-pruning")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for pruner in args.pruners:
        path = sweep_file(args.out, pruner, args)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "archlab", "sweep", "-c", str(path)], check=True, cwd=ROOT)
        wall = time.perf_counter() - start
        study = optuna.load_study(
            study_name=f"digits-{pruner}", storage=f"sqlite:///{args.out}/digits-{pruner}/study.db"
        )
        trials = study.get_trials(deepcopy=False)
        epochs = sum(len(t.intermediate_values) for t in trials)
        pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in trials)
        rows.append(
            {
                "pruner": pruner,
                "best_val_acc": study.best_value,
                "total_epochs": epochs,
                "pruned": pruned,
                "wall_s": wall,
            }
        )
    print(f"\ndigits sweep: {args.n_trials} trials x up to {args.max_epochs} epochs, TPE seed {args.seed}")
    print(f"{'pruner':<10} {'best val/acc':>12} {'total epochs':>12} {'pruned':>6} {'wall s':>7}")
    for r in rows:
        print(
            f"{r['pruner']:<10} {r['best_val_acc']:>12.4f} {r['total_epochs']:>12d} "
            f"{r['pruned']:>6d} {r['wall_s']:>7.0f}"
        )
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    base = next((r for r in rows if r["pruner"] == "none"), None)
    for r in rows:
        if base and r is not base:
            ok = base["best_val_acc"] - r["best_val_acc"] <= 0.005 and r["total_epochs"] <= base["total_epochs"] / 2
            gap = 100 * (base["best_val_acc"] - r["best_val_acc"])
            share = r["total_epochs"] / base["total_epochs"]
            print(
                f"{r['pruner']}: {gap:+.2f} points below none, {share:.0%} of its epochs "
                f"-> target {'met' if ok else 'MISSED'}"
            )


if __name__ == "__main__":
    main()
