"""The GPU check (issue 10): every experiment config for a few hundred steps under configs/trainer/gpu.yaml (one GPU,
bf16-mixed), eager and with `--model.compile true`, through the one training path (`archlab.cli.run`). One table:
per config and arm, samples/s, peak GPU memory, the training loss after N steps, and whether compiling moved that
loss beyond the tolerance.

    benchmarks/gpu_check                          # on a CUDA machine: every config, 300 steps (under 8 minutes)
    benchmarks/gpu_check --configs gpt_charlm --steps 500
    benchmarks/gpu_check --cpu --steps 3          # the same code path on CPU (cpu + bf16 presets), a few steps

Each run is its own process (`--jobs` at a time; compilation, the slow part, overlaps), and only the timed window
(after `--warmup` steps, and after the first epoch when that is shorter than half the run, so that the recompile for
a short last batch falls outside it) holds the GPU lock: one run is measured at a time. Throughput is samples over
the timed window's wall time, synchronised at both ends. CIFAR-10 and Oxford-IIIT Pet are read from `--data_root`
when given, else from small files generated in their real formats (their rows then time the loader on 40 images).
"""

import argparse
import fcntl
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
NEEDS_FILES = ("cifar", "pets")
ARMS = ("eager", "compiled")


def run_one(args: argparse.Namespace) -> dict:
    """One training run in this process: the record the table is made of."""
    import lightning as L
    import torch

    from archlab.cli import run

    cuda = not args.cpu
    lock_path = Path(args.lock)

    class Measure(L.Callback):
        def __init__(self) -> None:
            self.losses: list = []
            self.samples = 0
            self.start: float | None = None
            self.elapsed = 0.0
            self.lock = None
            self.warmup = args.warmup
            self.batches = 0  # not global_step: the GAN steps two optimizers per batch

        def on_train_start(self, trainer, pl_module) -> None:
            if trainer.num_training_batches < args.steps:
                # The first epoch's short last batch recompiles (as a dynamic shape): keep it out of the window.
                self.warmup = max(self.warmup, trainer.num_training_batches + 1)
            self.warmup = min(self.warmup, args.steps - 1)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if self.batches == self.warmup:
                self.lock = open(lock_path, "w")  # noqa: SIM115 (held across hooks)
                fcntl.flock(self.lock, fcntl.LOCK_EX)
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                self.start = time.perf_counter()
            if self.start is not None:
                self.samples += len(batch[0])
            self.batches += 1

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if isinstance(outputs, dict) and "loss" in outputs:
                loss = outputs["loss"]
            else:  # manual optimization (the GAN) returns nothing: its discriminator loss, as logged
                loss = trainer.callback_metrics["train/d_loss_step"]
            self.losses.append(loss.detach())  # read after the run: no host sync per step

        def on_train_end(self, trainer, pl_module) -> None:
            if cuda:
                torch.cuda.synchronize()
            if self.start is not None:
                self.elapsed = time.perf_counter() - self.start
            if self.lock is not None:
                self.lock.close()

    measure = Measure()
    presets = ["gpu.yaml"] if cuda else ["cpu.yaml", "bf16.yaml"]
    command = [
        *("fit", "-c", str(ROOT / f"configs/{args.one}.yaml")),
        *(arg for preset in presets for arg in ("-c", str(ROOT / "configs/trainer" / preset))),
        *("--trainer.max_steps", str(args.steps), "--trainer.max_epochs", "100000", "--trainer.limit_val_batches", "0"),
        *("--trainer.logger", "false", "--trainer.enable_checkpointing", "false", "--test_after_fit", "false"),
        *("--trainer.enable_progress_bar", "false", "--model.compile", str(args.compile).lower()),
        *("--run_dir", args.run_dir),
        *(["--model.channels_last", "true"] if args.channels_last else []),
        *(["--data.root", args.data_root] if any(key in args.one for key in NEEDS_FILES) else []),
    ]
    wall = time.perf_counter()
    run(command, callbacks=[measure])
    wall = time.perf_counter() - wall
    losses = [float(loss) for loss in measure.losses]
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        "config": args.one,
        "timed_from": measure.warmup,
        "arm": "compiled" if args.compile else "eager",
        "steps": len(losses),
        "first_loss": losses[0],
        "final_loss": sum(tail) / len(tail),  # the mean of the last tenth of the steps
        "samples_per_s": measure.samples / measure.elapsed if measure.elapsed else float("nan"),
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
        "wall_s": wall,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
    }


def launch(args: argparse.Namespace, config: str, arm: str, workdir: Path) -> dict:
    out = workdir / f"{config}-{arm}.json"
    command = [
        *(sys.executable, __file__, "--one", config, "--steps", str(args.steps), "--warmup", str(args.warmup)),
        *("--lock", str(workdir / "gpu.lock"), "--run_dir", str(workdir / "runs" / f"{config}-{arm}")),
        *("--data_root", str(args.data_root), "--out", str(out)),
        *(["--compile"] if arm == "compiled" else []),
        *(["--cpu"] if args.cpu else []),
        *(["--channels_last"] if args.channels_last else []),
    ]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    if args.cpu:
        env.setdefault("OMP_NUM_THREADS", "1")
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0 or not out.is_file():
        return {"config": config, "arm": arm, "error": done.stderr.strip().splitlines()[-1:] or ["no output"]}
    return json.loads(out.read_text())


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-8)


def table(
    rows: list[dict], *, steps: int, tolerance: float, first_tolerance: float, channels_last: bool = False
) -> tuple[str, bool]:
    """The report, and whether every run finished and compiling moved no loss beyond the tolerances (relative): the
    first step's (the same weights and batch: numerics only) and the last tenth's mean (training is chaotic, looser)."""
    device = next((row["device"] for row in rows if "device" in row), "?")
    layout = ", channels-last" if channels_last else ""
    lines = [
        f"gpu_check: {steps} steps per run, bf16-mixed{layout}, on {device}; loss: mean training loss over the last "
        f"tenth of the steps; compile changed it: relative difference of the first step's loss > {first_tolerance:g} "
        f"or of the last tenth's > {tolerance:g} (the two differences in brackets)",
        "",
        "| config | samples/s eager | samples/s compiled | speed-up | peak GiB eager | peak GiB compiled "
        "| loss eager | loss compiled | compile changed loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ok = True
    for config in dict.fromkeys(row["config"] for row in rows):
        eager, compiled = ({row["arm"]: row for row in rows if row["config"] == config}.get(arm) for arm in ARMS)
        if eager is None or compiled is None or "error" in eager or "error" in compiled:
            errors = [f"{r['arm']}: {r['error'][0]}" for r in (eager, compiled) if r and "error" in r]
            lines.append(f"| {config} | FAILED: {'; '.join(errors)[:300]} |")
            ok = False
            continue
        first = relative(compiled["first_loss"], eager["first_loss"])
        final = relative(compiled["final_loss"], eager["final_loss"])
        changed = not first <= first_tolerance or not final <= tolerance  # NaN counts as changed
        ok = ok and not changed
        lines.append(
            f"| {config} | {eager['samples_per_s']:,.0f} | {compiled['samples_per_s']:,.0f} "
            f"| {compiled['samples_per_s'] / eager['samples_per_s']:.2f}x | {eager['peak_mem_gib']:.2f} "
            f"| {compiled['peak_mem_gib']:.2f} | {eager['final_loss']:.4f} | {compiled['final_loss']:.4f} "
            f"| {'YES' if changed else 'no'} ({first:.0e} / {final:.0e}) |"
        )
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=CONFIGS, choices=CONFIGS)
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run (the GAN: two per batch)")
    parser.add_argument("--warmup", type=int, default=50, help="steps before the timed window (compilation)")
    parser.add_argument("--jobs", type=int, default=None, help="runs at a time (default: 4 on GPU, 1 on CPU)")
    parser.add_argument("--first_tolerance", type=float, default=0.01, help="relative change of the first loss")
    parser.add_argument("--tolerance", type=float, default=0.1, help="relative change of the final loss")
    parser.add_argument("--cpu", action="store_true", help="the same code path on CPU (cpu + bf16 presets)")
    parser.add_argument("--channels_last", action="store_true", help="both arms in channels-last (conv nets only)")
    parser.add_argument("--data_root", type=Path, help="CIFAR-10 and Oxford-IIIT Pet on disk (else generated)")
    parser.add_argument("--out", type=Path, help="with --one: the record; else: also write the table here")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--lock", help=argparse.SUPPRESS)
    parser.add_argument("--run_dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2")
    if args.one:
        args.out.write_text(json.dumps(run_one(args)))
        return 0

    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU on this machine; --cpu runs the same code path on CPU", file=sys.stderr)
        return 2
    args.warmup = min(args.warmup, args.steps - 1)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        workdir = Path(tmp)
        if args.data_root is None:
            sys.path.insert(0, str(ROOT / "tests"))
            from formats import write_cifar, write_oxford_pets

            args.data_root = workdir / "data"
            write_cifar(args.data_root, "cifar10", n_train=40, n_test=20)
            write_oxford_pets(args.data_root, n_trainval=10, n_test=4)
        jobs = args.jobs or (1 if args.cpu else 4)
        # Compiled arms first: they take longest, so the pool ends with short eager runs.
        work = [(config, arm) for arm in reversed(ARMS) for config in args.configs]
        with ThreadPoolExecutor(jobs) as pool:
            rows = list(pool.map(lambda item: launch(args, *item, workdir), work))
    report, ok = table(
        rows,
        steps=args.steps,
        tolerance=args.tolerance,
        first_tolerance=args.first_tolerance,
        channels_last=args.channels_last,
    )
    report += f"\n\nwall time: {time.perf_counter() - start:.0f} s with {args.jobs or (1 if args.cpu else 4)} jobs"
    print(report)
    if args.out:
        args.out.write_text(report + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
