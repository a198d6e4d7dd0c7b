"""archlab against plain PyTorch: what the platform costs, per family and where small experiments spend their time.

    .venv/bin/python benchmarks/perf.py [--quick] [--out benchmarks/results] [--sections families startup ...]

Writes <out>/perf.md (the tables) and <out>/perf.json (every figure, with the per-step samples). Issue 13.

families    For each family's default config, the same net on the same data, batch size and optimizer trained twice,
            interleaved (archlab, plain, archlab, plain ... for --rounds rounds): through the real `archlab fit` path
            (archlab.cli.run in a forked process: W&B offline, checkpointing and the progress bar on, as a user runs
            it) and through a plain PyTorch loop written below, over the same net, the same DataModule loader and a
            loss written out here from the paper, not the task's `step`. The plain loop starts from the weights and
            the random-number state that archlab's run had at its first training step (Lightning's sanity-check
            validation draws random numbers for the generative tasks' FID samples), so equal work is checked, not
            assumed: the losses of the first --check_steps steps must agree within a tolerance, or the row says
            MISMATCH and the command exits 1. Step time = the time between the starts of consecutive training steps
            (a Lightning callback; the same marks in the plain loop), median after --warmup steps, epoch boundaries
            (validation, checkpoints) excluded. Peak memory = the forked process's peak RSS.
attribution archlab's step time for three short-step families with the progress bar, the tracker or checkpointing
            turned off, one at a time and all together: where a step's overhead goes (not in --quick).
e2e         `archlab fit -c configs/resnet_digits.yaml` end to end (a fresh process) beside a plain script doing the
            same epochs, validation every epoch, best-weights file and a test of the best weights.
startup     `archlab --help`, `archlab fit --help`, `python -m archlab --help` against `python -c "import lightning"`.
loader      batches/s of the in-memory loader (ResumableLoader over TensorBatchDataset, as every DataModule builds
            it) against plain tensor slicing and DataLoader(TensorDataset).
trackers    milliseconds per `log_metrics` call of each tracker (Lightning logs every 50 steps by default).
checkpoint  milliseconds per checkpoint of ResNet-20 with its AdamW state: archlab's atomic save against torch.save.
sweep       sweep trials that train one step each: their duration (Optuna's start to complete) and the gap between
            one trial's end and the next one's start (the worker's bookkeeping, garbage collection), together the
            per-trial cost beyond training; then trials per hour of a sweep of 8 trials of the default experiment
            (40 epochs, ~15-18 s each on one core; --quick: 4 of 10 epochs) with --workers 1 and 2, each worker
            process with the same threads (half the cores).
threads     a ResNet-20 training step under each thread setting, idle and beside two CPU-bound processes.
"""

import argparse
import contextlib
import copy
import datetime
import itertools
import json
import math
import os
import platform as host
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
ARCHLAB = str(Path(PYTHON).with_name("archlab"))
# The step clock. PERF_CLOCK=thread measures the CPU time of the training thread, not wall time: for comparing changes
# on a machine other jobs share (with one intra-op thread, its CPU time moves far less with load than wall time).
STEP_CLOCK = time.thread_time if os.environ.get("PERF_CLOCK") == "thread" else time.perf_counter

if __name__ == "__main__" and "--thread-probe" not in sys.argv and "--plain-job" not in sys.argv:
    # The benchmark runs with archlab's own thread choice (ARCHLAB_THREADS, or the free cores), archlab and plain
    # alike, set before torch loads OpenMP.
    from archlab import threads

    threads.configure()

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

SECTIONS = ("families", "attribution", "e2e", "startup", "loader", "trackers", "checkpoint", "sweep", "threads")


class EqualWorkError(AssertionError):
    """The plain loop and archlab did not compute the same losses: their times do not compare."""


# ---------------------------------------------------------------------------------------------------------------------
# The plain loop's losses, written out (not the task's `step`): (net, task, batch) -> loss. The task is read for its
# hyperparameters only (label smoothing, special-token ids, loss weights).


def classification_loss(net, task, batch):
    from torch.nn import functional as F

    x, y = batch
    return F.cross_entropy(net(x), y, label_smoothing=task.label_smoothing)


def regression_loss(net, task, batch):
    from torch.nn import functional as F

    x, y = batch
    return F.mse_loss(net(x), y)


def next_token_loss(net, task, batch):
    from torch.nn import functional as F

    x, y = batch
    return F.cross_entropy(net(x).flatten(0, 1), y.flatten())


def seq2seq_loss(net, task, batch):
    from torch.nn import functional as F

    src, tgt = batch
    logits = net(src, tgt[:, :-1])
    return F.cross_entropy(
        logits.flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=task.pad_id, label_smoothing=task.label_smoothing
    )


def masked_lm_loss(net, task, batch):
    from torch.nn import functional as F

    from archlab.tasks.masked_lm import IGNORE, mask_tokens

    ids = batch[0]
    inputs, labels = mask_tokens(
        ids, mask_id=task.mask_id, vocab_size=task.vocab_size, num_specials=task.num_specials, mask_prob=task.mask_prob
    )
    logits = net(inputs)
    nll = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum")
    return nll / (labels != IGNORE).sum().clamp_min(1)


def segmentation_loss(net, task, batch):
    from torch.nn import functional as F

    from archlab.tasks.segmentation import soft_dice_loss

    x, y = batch
    logits = net(x)
    return task.ce_weight * F.cross_entropy(logits, y) + task.dice_weight * soft_dice_loss(logits, y)


def reconstruction_loss(net, task, batch):
    import torch
    from torch.nn import functional as F

    x = batch[0]
    out = net(x)  # the default configs corrupt nothing and add no sparsity penalty
    loss = F.binary_cross_entropy_with_logits(out.logits, x, reduction="sum") / len(x)
    if out.mean is not None:
        loss = loss + task.beta * -0.5 * torch.sum(1 + out.logvar - out.mean.square() - out.logvar.exp()) / len(x)
    return loss


@dataclass
class Family:
    name: str
    config: str
    loss: Callable | None  # None: the GAN's two-player step (plain_gan_step)
    keys: tuple[str, ...] = ("train/loss_step",)  # archlab's logged per-step losses, in the plain step's order
    optimizers: int = 1  # Lightning's global step counts optimizer steps: the GAN makes two per batch


FAMILIES = [
    Family("classification (ResNet-20, digits)", "configs/resnet_digits.yaml", classification_loss),
    Family("sequence regression (LSTM, adding T=100)", "configs/lstm_adding.yaml", regression_loss),
    Family("language modeling (GPT, char-LM)", "configs/gpt_charlm.yaml", next_token_loss),
    Family("seq2seq (Transformer, dates)", "configs/transformer_dates.yaml", seq2seq_loss),
    Family("masked LM (BERT, WordPiece)", "configs/bert_mlm.yaml", masked_lm_loss),
    Family("segmentation (U-Net, cells)", "configs/unet_cells.yaml", segmentation_loss),
    Family(
        "adversarial (DCGAN, digits)",
        "configs/dcgan_digits.yaml",
        None,
        ("train/d_loss_step", "train/g_loss_step"),
        optimizers=2,
    ),
    Family("reconstruction (VAE, digits)", "configs/vae_digits.yaml", reconstruction_loss),
]


# ---------------------------------------------------------------------------------------------------------------------
# Helpers


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def in_child(fn: Callable[..., Any], *args: Any, log: Path, fork: bool = True, **kwargs: Any) -> Any:
    """fn(*args, **kwargs) in a forked process (its own peak RSS, nothing left behind), its output in `log`; the
    result travels back as JSON. Without `fork`, in this process."""
    if not fork:
        return fn(*args, **kwargs)
    result = log.with_suffix(".result.json")
    result.unlink(missing_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            with open(log, "w") as out:
                os.dup2(out.fileno(), 1)
                os.dup2(out.fileno(), 2)
                value = fn(*args, **kwargs)
                result.write_text(json.dumps({"ok": value}))
        except BaseException:
            traceback.print_exc()
            result.write_text(json.dumps({"error": traceback.format_exc()[-3000:]}))
            code = 1
        finally:
            with contextlib.suppress(Exception):
                if "wandb" in sys.modules:
                    sys.modules["wandb"].teardown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.waitpid(pid, 0)
    if not result.is_file():
        raise RuntimeError(f"{fn.__name__} died without a result; its log: {log}")
    answer = json.loads(result.read_text())
    if "error" in answer:
        raise RuntimeError(f"{fn.__name__} failed (log: {log}):\n{answer['error']}")
    return answer["ok"]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def intervals(marks: list[tuple[int, float]], warmup: int) -> list[float]:
    """Seconds between the starts of consecutive steps of one epoch, after the first `warmup` steps."""
    out = []
    for i, ((epoch, t), (next_epoch, next_t)) in enumerate(itertools.pairwise(marks)):
        if i >= warmup and epoch == next_epoch:
            out.append(next_t - t)
    return out


def check_equal_work(
    archlab: list[list[float]], plain: list[list[float]], *, rtol: float = 1e-3, atol: float = 1e-5
) -> tuple[bool, str]:
    """The per-step losses of the two loops agree within rtol / atol at every compared step."""
    if not archlab or len(archlab) != len(plain):
        return False, f"compared {len(archlab)} archlab steps with {len(plain)} plain steps"
    worst = 0.0
    for step, (a, p) in enumerate(zip(archlab, plain, strict=True)):
        for x, y in zip(a, p, strict=True):
            if not (math.isfinite(x) and math.isfinite(y)) or abs(x - y) > atol + rtol * abs(y):
                return False, f"step {step}: archlab loss {x:.6g} vs plain {y:.6g}"
            worst = max(worst, abs(x - y) / max(abs(y), 1e-12))
    return True, f"{len(archlab)} steps agree (largest relative difference {worst:.1e})"


# ---------------------------------------------------------------------------------------------------------------------
# Families: archlab's run


def archlab_run(
    family: Family,
    *,
    steps: int,
    check_steps: int,
    workdir: str,
    snapshot: str | None,
    tracker: str = "wandb",
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    import lightning as L
    import numpy as np
    import torch

    from archlab.cli import run

    class StepTimer(L.Callback):
        """Marks the start of every training step; the first losses; the state at the first step."""

        def __init__(self) -> None:
            self.marks: list[tuple[int, float]] = []
            self.losses: list[list[float]] = []
            self.start = 0.0

        def on_train_start(self, trainer, pl_module) -> None:
            if snapshot is not None:
                state = {
                    "net": copy.deepcopy(pl_module.net.state_dict()),
                    "torch": torch.get_rng_state(),
                    "numpy": np.random.get_state(),
                    "python": random.getstate(),
                }
                torch.save(state, snapshot)
            self.start = time.perf_counter()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.marks.append((trainer.current_epoch, STEP_CLOCK()))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if len(self.losses) < check_steps:
                metrics = trainer.callback_metrics
                self.losses.append([float(metrics[key]) for key in family.keys])

    timer = StepTimer()
    max_steps = str(steps * family.optimizers)
    args = ["fit", "-c", str(ROOT / family.config), "--trainer.max_steps", max_steps, "--tracker", tracker]
    args += ["--runs_root", workdir, "--test_after_fit", "false", *extra]
    start = time.perf_counter()
    cli = run(args, callbacks=[timer])
    return {
        "marks": timer.marks,
        "losses": timer.losses,
        "run_dir": str(cli.run_dir),
        "batch_size": cli.datamodule.batch_size,
        "threads": torch.get_num_threads(),
        "command_s": time.perf_counter() - start,
        "setup_s": timer.start - start,
        "peak_rss_mb": peak_rss_mb(),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Families: the plain loop


def plain_optimizers(net, task, total_steps: int):
    """AdamW with decay on weights only and a one-cycle cosine schedule per step (archlab's default), or the GAN's
    two Adams; written out, not taken from the task."""
    import torch

    hp = task.hparams
    if family_is_gan(task):
        return [
            torch.optim.Adam(net.discriminator.parameters(), lr=hp.lr, betas=task.betas),
            torch.optim.Adam(net.generator.parameters(), lr=hp.lr, betas=task.betas),
        ], None
    decay = [p for p in net.parameters() if p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=hp.lr)
    if hp.schedule == "constant":
        return [optimizer], None
    warmup = 0.0 if hp.warmup * total_steps == 1 else hp.warmup
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=hp.lr, total_steps=total_steps, pct_start=warmup, anneal_strategy="cos"
    )
    return [optimizer], scheduler


def family_is_gan(task) -> bool:
    return hasattr(task.net, "discriminator")


def plain_gan_step(net, task, batch, optimizers):
    import torch
    from torch.nn import functional as F

    real = batch[0]
    opt_d, opt_g = optimizers
    fake = net.generator(torch.randn((len(real), net.latent_dim)))
    real_logits, fake_logits = net.discriminator(real), net.discriminator(fake.detach())
    d_loss = F.binary_cross_entropy_with_logits(
        real_logits, torch.full_like(real_logits, 1 - task.label_smoothing)
    ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    opt_d.zero_grad()
    d_loss.backward()
    opt_d.step()
    g_logits = net.discriminator(fake)
    g_loss = F.binary_cross_entropy_with_logits(g_logits, torch.ones_like(g_logits))
    opt_g.zero_grad()
    g_loss.backward()
    opt_g.step()
    return [d_loss.detach(), g_loss.detach()]


def plain_run(
    family: Family,
    *,
    steps: int,
    check_steps: int,
    snapshot: str,
    vocab: str | None = None,
    loss: Callable | None = None,
) -> dict[str, Any]:
    import numpy as np
    import torch

    from archlab.cli import build, parse_fit

    loss = loss or family.loss
    # A text run's vocabulary is trained on its data, not always to the same ids (parallel WordPiece training): the
    # plain loop reads the one archlab's run saved.
    cfg = parse_fit(["-c", str(ROOT / family.config), *(["--data.vocab_path", vocab] if vocab else [])])
    built = build(cfg)  # the config's DataModule, net and (for its hyperparameters) task
    data, net, task = built.data, built.net, built.model
    data.prepare_data()
    data.setup("fit")
    loader = data.train_dataloader()
    state = torch.load(snapshot, weights_only=False)
    net.load_state_dict(state["net"])
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    total = min(steps, len(loader) * cfg.trainer.max_epochs)
    optimizers, scheduler = plain_optimizers(net, task, total)
    clip = cfg.trainer.gradient_clip_val
    transform = getattr(data, "transform", None)
    net.train()
    marks, losses, step, start = [], [], 0, time.perf_counter()
    for epoch in range(cfg.trainer.max_epochs):
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            if transform is not None:
                batch = transform(*batch, train=True)
            marks.append((epoch, STEP_CLOCK()))
            if loss is None:
                values = plain_gan_step(net, task, batch, optimizers)
            else:
                (optimizer,) = optimizers
                value = loss(net, task, batch)
                optimizer.zero_grad()
                value.backward()
                if clip:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                values = [value.detach()]
            if len(losses) < check_steps:
                losses.append(values)
            step += 1
            if step >= steps:
                break
        if step >= steps:
            break
    return {
        "marks": marks,
        "losses": [[float(v) for v in values] for values in losses],
        "batch_size": data.batch_size,
        "threads": torch.get_num_threads(),
        "command_s": time.perf_counter() - start,
        "peak_rss_mb": peak_rss_mb(),
    }


def measure_family(
    family: Family,
    *,
    steps: int,
    warmup: int,
    check_steps: int,
    rounds: int,
    workdir: Path,
    fork: bool = True,
    tracker: str = "wandb",
    plain_loss: Callable | None = None,
) -> dict[str, Any]:
    """archlab and plain, interleaved for `rounds` rounds; equal work checked on the first round's losses."""
    slug = family.config.split("/")[-1].removesuffix(".yaml")
    snapshot = workdir / f"{slug}.start.pt"
    check_steps = min(check_steps, steps)
    runs: dict[str, list[dict]] = {"archlab": [], "plain": []}
    for r in range(rounds):
        common = {"steps": steps, "check_steps": check_steps}
        runs["archlab"].append(
            in_child(
                archlab_run,
                family,
                workdir=str(workdir / f"runs-{r}"),
                snapshot=str(snapshot) if r == 0 else None,
                tracker=tracker,
                log=workdir / f"{slug}-archlab-{r}.log",
                fork=fork,
                **common,
            )
        )
        vocab = Path(runs["archlab"][0]["run_dir"]) / "tokenizer.json"
        runs["plain"].append(
            in_child(
                plain_run,
                family,
                snapshot=str(snapshot),
                vocab=str(vocab) if vocab.is_file() else None,
                loss=plain_loss,
                log=workdir / f"{slug}-plain-{r}.log",
                fork=fork,
                **common,
            )
        )
    equal, detail = check_equal_work(runs["archlab"][0]["losses"], runs["plain"][0]["losses"])
    row: dict[str, Any] = {"family": family.name, "config": family.config, "equal_work": equal, "check": detail}
    for arm, results in runs.items():
        times = [t for result in results for t in intervals([tuple(m) for m in result["marks"]], warmup)]
        row[arm] = {
            "step_ms": 1000 * median(times),
            "samples_per_s": results[0]["batch_size"] / median(times) if times else float("nan"),
            "peak_rss_mb": max(result["peak_rss_mb"] for result in results),
            "steps_timed": len(times),
            "threads": results[0]["threads"],
            "command_s": [result["command_s"] for result in results],
            "step_ms_samples": [round(1000 * t, 3) for t in times],
        }
    row["batch_size"] = runs["archlab"][0]["batch_size"]
    row["ratio"] = row["archlab"]["step_ms"] / row["plain"]["step_ms"]
    row["overhead_ms"] = row["archlab"]["step_ms"] - row["plain"]["step_ms"]
    row["archlab_losses"] = runs["archlab"][0]["losses"]
    row["plain_losses"] = runs["plain"][0]["losses"]
    return row


def families_section(args: argparse.Namespace, workdir: Path) -> list[dict]:
    rows = []
    for family in FAMILIES:
        if args.family and not any(name in family.config for name in args.family):
            continue
        started = time.perf_counter()
        try:
            row = measure_family(
                family,
                steps=args.steps,
                warmup=args.warmup,
                check_steps=args.check_steps,
                rounds=args.rounds,
                workdir=workdir,
                tracker=args.tracker,
                fork=args.fork,
            )
        except Exception as error:  # one family's failure is a row, not the end of the benchmark
            row = {"family": family.name, "config": family.config, "error": str(error)[-2000:]}
        row["bench_s"] = time.perf_counter() - started
        say(
            f"{family.name}: "
            + (
                f"{row['archlab']['step_ms']:.1f} vs {row['plain']['step_ms']:.1f} ms ({row['ratio']:.2f}); "
                f"{row['check']}"
                if "error" not in row
                else f"ERROR {row['error'][-300:]}"
            )
        )
        rows.append(row)
    return rows


ATTRIBUTION = {
    "as a user runs it (W&B, checkpoints, progress bar)": (),
    "progress bar off": ("--trainer.enable_progress_bar", "false"),
    "tracker none": ("--tracker", "none"),
    "checkpointing off": ("--trainer.enable_checkpointing", "false"),
    "all three off": (
        "--trainer.enable_progress_bar",
        "false",
        "--tracker",
        "none",
        "--trainer.enable_checkpointing",
        "false",
    ),
}


def attribution_section(args: argparse.Namespace, workdir: Path) -> list[dict]:
    """Where a short step's overhead goes: archlab's step time with each user-facing feature turned off."""
    rows = []
    for family in FAMILIES:
        if not any(name in family.config for name in ("lstm_adding", "vae_digits", "resnet_digits")):
            continue
        slug = family.config.split("/")[-1].removesuffix(".yaml")
        for name, extra in ATTRIBUTION.items():
            result = in_child(
                archlab_run,
                family,
                steps=max(args.steps, 100),
                check_steps=0,
                workdir=str(workdir / "attribution"),
                snapshot=None,
                tracker=args.tracker,
                extra=extra,
                log=workdir / f"attribution-{slug}.log",
                fork=args.fork,
            )
            step = 1000 * median(intervals([tuple(m) for m in result["marks"]], args.warmup))
            rows.append({"family": family.name, "variant": name, "step_ms": step})
            say(f"attribution {family.name} / {name}: {step:.2f} ms")
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# End to end: the default job against a plain script


def plain_default_job(epochs: int, out: Path) -> dict[str, float]:
    """ResNet-20 on the digits: the default job's epochs, validation every epoch, the best weights saved and tested.

    Plain PyTorch and scikit-learn; the net is archlab's (a plain nn.Module), the data the same split sizes
    (1258 / 180 / 359, stratified), augmentation (random 1-pixel shifts) and optimizer (AdamW, one-cycle cosine).
    """
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch.nn import functional as F

    from archlab.models.resnet import ResNet

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16  # (N, 1, 8, 8)
    y = torch.tensor(digits.target)
    rest, test = train_test_split(range(len(y)), test_size=359, random_state=0, stratify=y)
    train, val = train_test_split(rest, test_size=180, random_state=0, stratify=y[rest])
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    net = ResNet(depth=20, in_channels=1, num_classes=10)
    batches = math.ceil(len(train) / 64)
    optimizer = torch.optim.AdamW(net.parameters(), lr=3.0e-3, weight_decay=5.0e-2)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3.0e-3, total_steps=epochs * batches)
    train, val, test = (torch.tensor(split) for split in (train, val, test))

    def accuracy(split):
        net.eval()
        with torch.no_grad():
            return (net(x[split]).argmax(-1) == y[split]).float().mean().item()

    best, path = -1.0, out / "plain-best.pt"
    for _ in range(epochs):
        net.train()
        for idx in train[torch.randperm(len(train))].split(64):
            xb = F.pad(x[idx], (1, 1, 1, 1))  # a random 1-pixel shift per sample
            dx, dy = torch.randint(0, 3, (2, len(idx)))
            rows = (dy[:, None] + torch.arange(8))[:, :, None]
            cols = (dx[:, None] + torch.arange(8))[:, None, :]
            xb = xb[torch.arange(len(idx))[:, None, None], 0, rows, cols].unsqueeze(1)
            loss = F.cross_entropy(net(xb), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        acc = accuracy(val)
        if acc > best:
            best = acc
            torch.save({"net": net.state_dict(), "optimizer": optimizer.state_dict()}, path)
    net.load_state_dict(torch.load(path)["net"])
    return {"best_val_acc": best, "test_acc": accuracy(test)}


def timed(
    command: list[str], *, env: dict | None = None, log: Path | None = None, timeout: float | None = None
) -> float:
    """Wall seconds of `command`; inf when it ran past `timeout` (it is stopped then)."""
    start = time.perf_counter()
    with open(log or os.devnull, "w") as out:
        try:
            subprocess.run(
                command, check=True, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return math.inf
    return time.perf_counter() - start


def e2e_section(args: argparse.Namespace, workdir: Path) -> list[dict]:
    epochs = 3 if args.quick else 40
    extra = [] if epochs == 40 else ["--trainer.max_epochs", str(epochs)]
    fit = ["fit", "-c", "configs/resnet_digits.yaml", "--runs_root", str(workdir / "e2e"), *extra]
    rows = []
    commands = {
        "archlab fit (python -m archlab: threads set first)": [PYTHON, "-m", "archlab", *fit],
        "plain script (same epochs, validation, best weights, test)": [
            PYTHON,
            __file__,
            "--plain-job",
            str(epochs),
            "--out",
            str(workdir),
        ],
    }
    if not args.quick:
        commands["archlab fit (the installed `archlab` script)"] = [ARCHLAB, *fit]
    for name, command in commands.items():
        # torch's default threads can take minutes here when other jobs share the cores: stopped at 4 minutes.
        seconds = timed(command, log=workdir / f"e2e-{len(rows)}.log", timeout=240)
        rows.append({"what": name, "epochs": epochs, "wall_s": seconds, "load": os.getloadavg()[0]})
        say(f"e2e {name}: {seconds:.1f} s")
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# Start-up, loader, trackers, checkpoints


def startup_section(args: argparse.Namespace, workdir: Path) -> list[dict]:
    repeats = 1 if args.quick else 3
    commands = {
        'python -c "import lightning"': [PYTHON, "-c", "import lightning"],
        "archlab --help (installed script)": [ARCHLAB, "--help"],
        "python -m archlab --help": [PYTHON, "-m", "archlab", "--help"],
        "archlab fit --help": [ARCHLAB, "fit", "--help"],
    }
    rows = []
    for name, command in commands.items():
        times = [timed(command) for _ in range(repeats)]
        rows.append({"what": name, "seconds": median(times), "samples": times})
        say(f"startup {name}: {median(times):.2f} s")
    imports = subprocess.run(
        [PYTHON, "-c", "import sys, archlab.__main__; print('lightning' in sys.modules)"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    rows.append({"what": "python -m archlab --help imports lightning", "value": imports.stdout.strip()})
    return rows


def loader_section(args: argparse.Namespace, workdir: Path) -> list[dict]:
    return in_child(loader_bench, 10_000 if args.quick else 50_000, log=workdir / "loader.log")


def loader_bench(n: int) -> list[dict]:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from archlab.data.base import ResumableLoader, TensorBatchDataset, whole_batch

    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)  # CIFAR-sized images, as the DataModules hold them
    y = torch.randint(0, 10, (n,))
    b = 128

    def archlab_loader():
        loader = ResumableLoader(TensorBatchDataset(x, y), batch_size=b, shuffle=True, seed=0, collate_fn=whole_batch)
        return iter(loader)

    def slicing():
        order = torch.randperm(n)
        return ((x[i], y[i]) for i in order.split(b))

    def tensor_dataset():
        return iter(DataLoader(TensorDataset(x, y), batch_size=b, shuffle=True))

    rows = []
    for name, make in (
        ("in-memory loader (ResumableLoader over TensorBatchDataset)", archlab_loader),
        ("plain tensor slicing (randperm, index)", slicing),
        ("DataLoader(TensorDataset), shuffled", tensor_dataset),
    ):
        rates = []
        for _ in range(3):
            start, count = time.perf_counter(), 0
            for _batch in make():
                count += 1
            rates.append(count / (time.perf_counter() - start))
        rows.append({"what": name, "batches_per_s": median(rates), "batch_size": b, "samples": n})
    return rows


def trackers_section(args: argparse.Namespace, workdir: Path) -> list[dict]:
    rows = []
    for tracker in ("csv", "wandb", "tensorboard"):
        try:
            rows.append(
                in_child(
                    tracker_bench,
                    tracker,
                    str(workdir / f"tracker-{tracker}"),
                    50 if args.quick else 300,
                    log=workdir / f"tracker-{tracker}.log",
                )
            )
        except Exception as error:
            rows.append({"tracker": tracker, "error": str(error)[-500:]})
        say(f"tracker {rows[-1]}")
    return rows


def tracker_bench(tracker: str, folder: str, calls: int) -> dict:
    from archlab import tracking

    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    logger = tracking.make_logger(tracker, path, experiment="perf", project="archlab-perf")
    logger.log_hyperparams({"model": {"lr": 1.0e-3}})
    started = time.perf_counter() - start
    times = []
    for step in range(calls):
        t = time.perf_counter()
        logger.log_metrics({"train/loss_step": 1.0 / (step + 1), "epoch": 0, "lr-AdamW": 1.0e-3}, step=step)
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    logger.save()
    tracking.finish(logger)
    logger.finalize("success")
    return {
        "tracker": tracker,
        "ms_per_log": 1000 * median(times),
        "ms_per_log_mean": 1000 * statistics.mean(times),
        "start_s": started,
        "finish_s": time.perf_counter() - t,
        "calls": calls,
    }


def checkpoint_section(args: argparse.Namespace, workdir: Path) -> list[dict]:
    return in_child(checkpoint_bench, str(workdir / "ckpt"), 5 if args.quick else 20, log=workdir / "ckpt.log")


def checkpoint_bench(folder: str, repeats: int) -> list[dict]:
    import torch
    from torch.nn import functional as F

    from archlab.checkpoints import AtomicCheckpointIO
    from archlab.models import ResNet

    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    net = ResNet(depth=20, in_channels=1, num_classes=10)
    optimizer = torch.optim.AdamW(net.parameters())
    F.cross_entropy(net(torch.randn(8, 1, 8, 8)), torch.zeros(8, dtype=torch.long)).backward()
    optimizer.step()
    checkpoint = {
        "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
        "optimizer_states": [optimizer.state_dict()],
        "epoch": 1,
        "global_step": 20,
    }
    rows = []
    io = AtomicCheckpointIO()
    for name, save in (
        ("archlab AtomicCheckpointIO (temp file, fsync, rename)", lambda p: io.save_checkpoint(checkpoint, p)),
        ("torch.save", lambda p: torch.save(checkpoint, p)),
    ):
        times = []
        for i in range(repeats):
            t = time.perf_counter()
            save(path / f"{len(rows)}-{i}.ckpt")
            times.append(time.perf_counter() - t)
        size = (path / f"{len(rows)}-0.ckpt").stat().st_size
        rows.append({"what": name, "ms": 1000 * median(times), "mb": size / 1e6})
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# Sweeps


def sweep_file(folder: Path, name: str, n_trials: int, fixed: dict) -> Path:
    import yaml

    spec = {
        "base": str(ROOT / "configs/resnet_digits.yaml"),
        "space": {"model.lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True}},
        "fixed": fixed,
        "pruner": "none",
        "n_trials": n_trials,
        "study_name": name,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def study_trials(folder: Path, name: str) -> list[dict]:
    import optuna

    study_dir = folder / name
    journal, sqlite = study_dir / "journal.log", study_dir / "study.db"
    if journal.exists():
        from optuna.storages.journal import JournalFileBackend

        storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    else:
        storage = f"sqlite:///{sqlite}"
    study = optuna.load_study(study_name=name, storage=storage)
    return [
        {
            "number": t.number,
            "state": t.state.name,
            "start": t.datetime_start.timestamp(),
            "complete": t.datetime_complete.timestamp(),
            "seconds": (t.datetime_complete - t.datetime_start).total_seconds(),
        }
        for t in sorted(study.trials, key=lambda t: t.number)
        if t.datetime_complete is not None
    ]


def sweep_section(args: argparse.Namespace, workdir: Path) -> list[dict]:
    folder = workdir / "sweeps"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    n = 4 if args.quick else 8
    one_step = {"trainer.max_epochs": 1, "trainer.limit_train_batches": 1, "trainer.limit_val_batches": 1}
    path = sweep_file(folder, "overhead", n, one_step)
    command = [PYTHON, "-m", "archlab", "sweep", "-c", str(path), "--runs_root", str(folder), "--seed", "0"]
    wall = timed(command, log=folder / "overhead.log")
    trials = study_trials(folder, "overhead")
    # The first trial of a process pays for the imports that trials need (W&B, Lightning's loops): left out.
    seconds = [t["seconds"] for t in trials[1:]]
    gaps = [b["start"] - a["complete"] for a, b in itertools.pairwise(trials[1:])]
    rows.append(
        {
            "what": "a trial of one training step (W&B offline, checkpoints)",
            "median_s": median(seconds),
            "gap_s": median(gaps),
            "per_trial_s": median(seconds) + median(gaps),
            "first_s": trials[0]["seconds"] if trials else math.nan,
            "trials": len(trials),
            "command_s": wall,
        }
    )
    say(f"sweep overhead: {rows[-1]}")
    # Trials of the default experiment, 40 epochs (~15-18 s on one core): long enough that each worker process's
    # start (Python, the imports, the study: ~4 s on an idle machine, ~10 s on a loaded one) is not most of it.
    n, epochs = (4, 10) if args.quick else (8, 40)
    fixed = {"trainer.max_epochs": epochs}
    from archlab import threads

    for workers in (1, 2):
        name = f"workers{workers}"
        path = sweep_file(folder, name, n, fixed)
        command = [PYTHON, "-m", "archlab", "sweep", "-c", str(path), "--runs_root", str(folder), "--seed", "0"]
        # The same threads per worker process in both runs, the share that --workers 2 gives each worker (on 2 cores,
        # one): only the number of workers differs. On the 2-core machine one thread is also the faster choice for a
        # single worker: with two, these trials took 35.5 s instead of 15.1 s (one worker, idle machine).
        per_worker = max(1, threads.cores() // 2)
        env = {**os.environ, threads.VARIABLE: str(per_worker)}
        started = time.time()
        wall = timed([*command, "--workers", str(workers)], env=env, log=folder / f"{name}.log")
        trials = study_trials(folder, name)
        done = sum(t["state"] == "COMPLETE" for t in trials)
        rows.append(
            {
                "what": f"--workers {workers} (threads per worker: {per_worker}): {n} trials of {epochs} epochs",
                "workers": workers,
                "wall_s": wall,
                "completed": done,
                "trials_per_hour": 3600 * done / wall,
                "median_trial_s": median([t["seconds"] for t in trials]),
                "first_trial_start_s": min(t["start"] for t in trials) - started if trials else math.nan,
                "load": os.getloadavg()[0],
            }
        )
        say(f"sweep workers: {rows[-1]}")
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# Threads


def thread_probe(seconds: float = 5.0, max_steps: int = 30) -> None:
    """A ResNet-20 training step on digit-sized batches; prints the threads and the median step in ms."""
    if os.environ.get("PROBE_ARCHLAB"):
        from archlab import threads

        threads.configure()
    import torch
    from torch.nn import functional as F

    from archlab.models import ResNet

    if os.environ.get("PROBE_THREADS"):
        torch.set_num_threads(int(os.environ["PROBE_THREADS"]))
    torch.manual_seed(0)
    net = ResNet(depth=20, in_channels=1, num_classes=10)
    optimizer = torch.optim.AdamW(net.parameters(), 1e-3)
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    times, start = [], time.perf_counter()
    while len(times) < max_steps and (time.perf_counter() - start < seconds or len(times) < 6):
        t = time.perf_counter()
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - t)
    print(json.dumps({"threads": torch.get_num_threads(), "step_ms": 1000 * median(times[3:]), "steps": len(times)}))


THREAD_SETTINGS = {
    "torch default (all cores, OpenMP spin-waits)": {},
    "1 thread": {"PROBE_THREADS": "1"},
    "all cores, OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "1 thread, OMP_WAIT_POLICY=PASSIVE": {"PROBE_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"},
    "archlab default (archlab.threads)": {"PROBE_ARCHLAB": "1"},
}


def threads_section(args: argparse.Namespace, workdir: Path) -> list[dict]:
    """Each setting in a fresh process (OpenMP reads its settings when torch loads it), the settings interleaved over
    --rounds rounds, the median of their medians reported."""
    rows = []
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")}
    base.pop("ARCHLAB_THREADS", None)
    settings = {name: env for name, env in THREAD_SETTINGS.items() if not (args.quick and "PASSIVE" in name)}
    for extra in ("none", "two busy processes"):
        busy = []
        if extra != "none":
            busy = [subprocess.Popen([PYTHON, "-c", "while True: pass"]) for _ in range(2)]
            time.sleep(2)
        results: dict[str, list[dict]] = {name: [] for name in settings}
        loads = []
        try:
            for _ in range(args.rounds):
                for name, env in settings.items():
                    out = subprocess.run(
                        [PYTHON, __file__, "--thread-probe"],
                        env={**base, **env},
                        capture_output=True,
                        text=True,
                        cwd=ROOT,
                        check=True,
                    )
                    results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
                    loads.append(os.getloadavg()[0])
                    say(f"threads {extra} / {name}: {results[name][-1]}")
        finally:
            for p in busy:
                p.kill()
                p.wait()
        for name, runs in results.items():
            rows.append(
                {
                    "load": f"{extra} (load avg {min(loads):.1f}-{max(loads):.1f})",
                    "setting": name,
                    "threads": runs[0]["threads"],
                    "step_ms": median([run["step_ms"] for run in runs]),
                    "samples_ms": [round(run["step_ms"], 1) for run in runs],
                }
            )
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# Report


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def machine() -> dict[str, Any]:
    import lightning
    import torch

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "cpu": next(
            (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), ""
        ),
        "python": host.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "threads": torch.get_num_threads(),
        "load_before": os.getloadavg(),
    }


def fmt(value: Any, digits: int = 1) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:,.{digits}f}"
    return str(value)


def table(title: str, columns: list[str], body: list[str]) -> list[str]:
    """A report section: its heading, a markdown table of `columns` holding the rows `body`, a blank line."""
    return [f"## {title}", "", f"| {' | '.join(columns)} |", "|" + "---|" * len(columns), *body, ""]


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# archlab performance against plain PyTorch",
        "",
        f"`{report['command']}` on {m['date']}: {m['cores']} cores ({m['cpu']}), no GPU; Python {m['python']}, "
        f"torch {m['torch']}, Lightning {m['lightning']}; {m['threads']} intra-op thread(s) (archlab.threads). "
        f"Load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in m['load_before'])}; after: "
        f"{', '.join(f'{x:.2f}' for x in report.get('load_after', ()))}. Medians.",
        "",
    ]
    rows = report["sections"].get("families")
    if rows:
        lines += [
            "## Per training step: archlab / plain PyTorch, same net, data, batch size, optimizer, seed and init",
            "",
            "archlab: `archlab fit` with W&B (offline), checkpointing and the progress bar on. Step time: start of a "
            f"step to the start of the next, median after {report['args']['warmup']} warm-up steps, "
            f"{report['args']['steps']} steps x {report['args']['rounds']} round(s) per arm, interleaved. Peak RSS of "
            "the process (imports included).",
            "",
            "| family (config) | batch | archlab ms/step | plain ms/step | archlab / plain | overhead ms | "
            "archlab samples/s | plain samples/s | peak RSS MB archlab / plain | equal work |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        short = []
        for row in rows:
            if "error" in row:
                lines.append(f"| {row['family']} (`{row['config']}`) | error: {row['error'][-200:]!r} |||||||||")
                continue
            a, p = row["archlab"], row["plain"]
            if p["step_ms"] < 20:
                short.append(row)
            lines.append(
                f"| {row['family']} (`{row['config'].split('/')[-1]}`) | {row['batch_size']} | {fmt(a['step_ms'], 2)} "
                f"| {fmt(p['step_ms'], 2)} | **{fmt(row['ratio'], 3)}**{' (< 20 ms)' if p['step_ms'] < 20 else ''} | "
                f"{fmt(row['overhead_ms'], 2)} | {fmt(a['samples_per_s'], 0)} | {fmt(p['samples_per_s'], 0)} | "
                f"{fmt(a['peak_rss_mb'], 0)} / {fmt(p['peak_rss_mb'], 0)} | "
                f"{'yes' if row['equal_work'] else 'MISMATCH'}: {row['check']} |"
            )
        if short:
            lines += ["", "Steps under 20 ms (the ratio target applies to steps of 20 ms or more): absolute overhead"]
            lines += [""] + [
                f"- {row['family']}: {fmt(row['overhead_ms'], 2)} ms per step "
                f"({fmt(row['archlab']['step_ms'], 2)} vs {fmt(row['plain']['step_ms'], 2)} ms)"
                for row in short
            ]
        lines.append("")
    rows = report["sections"].get("attribution")
    if rows:
        lines += table(
            "Where a step's overhead goes: archlab's step with each feature off (same runs as above otherwise)",
            ["family", "variant", "ms/step"],
            [f"| {r['family']} | {r['variant']} | {fmt(r['step_ms'], 2)} |" for r in rows],
        )
    rows = report["sections"].get("e2e")
    if rows:
        lines += table(
            "The default job end to end (a fresh process each)",
            ["command", "epochs", "wall s"],
            [
                f"| {r['what']} | {r['epochs']} | "
                f"{'> 240 (stopped)' if math.isinf(r['wall_s']) else fmt(r['wall_s'])} |"
                for r in rows
            ],
        )
    rows = report["sections"].get("startup")
    if rows:
        lines += table(
            "Start-up",
            ["command", "seconds"],
            [f"| `{r['what']}` | {fmt(r['seconds'], 2)} |" for r in rows if "seconds" in r]
            + [f"\n{r['what']}: {r['value']}" for r in rows if "value" in r],
        )
    rows = report["sections"].get("loader")
    if rows:
        plain = rows[1]["batches_per_s"]
        lines += table(
            f"Loading in-memory batches ({rows[0]['samples']:,} uint8 images 3x32x32, batch {rows[0]['batch_size']})",
            ["loader", "batches/s", "vs plain slicing"],
            [f"| {r['what']} | {fmt(r['batches_per_s'], 0)} | {fmt(r['batches_per_s'] / plain, 2)} |" for r in rows],
        )
    rows = report["sections"].get("trackers")
    if rows:
        lines += table(
            "Trackers: cost of one logged step (`log_metrics`; Lightning logs every 50 steps by default)",
            ["tracker", "ms per logged step", "mean ms", "start s", "finish s"],
            [
                f"| {r['tracker']} | error: {r['error'][-150:]!r} ||||"
                if "error" in r
                else f"| {r['tracker']} | {fmt(r['ms_per_log'], 3)} | {fmt(r['ms_per_log_mean'], 3)} | "
                f"{fmt(r['start_s'], 2)} | {fmt(r['finish_s'], 2)} |"
                for r in rows
            ],
        )
    rows = report["sections"].get("checkpoint")
    if rows:
        lines += table(
            "Checkpoint save (ResNet-20 with its AdamW state)",
            ["how", "ms", "MB"],
            [f"| {r['what']} | {fmt(r['ms'], 2)} | {fmt(r['mb'], 2)} |" for r in rows],
        )
    rows = report["sections"].get("sweep")
    if rows:
        lines += ["## Sweeps", ""]
        for r in rows:
            if "median_s" in r:
                lines.append(
                    f"- Cost of {r['what']} beyond its training: {fmt(r.get('per_trial_s', math.nan), 2)} s per trial, "
                    f"the trial {fmt(r['median_s'], 2)} s and the gap to the next trial {fmt(r.get('gap_s'), 2)} s "
                    f"(medians after the first trial, which took {fmt(r['first_s'], 2)} s; {r['trials']} trials, whole "
                    f"command {fmt(r['command_s'])} s)."
                )
        lines += [
            "",
            "| sweep | wall s | completed | trials / hour | median trial s | first trial began after s | load after |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['what']} | {fmt(r['wall_s'])} | {r['completed']} | {fmt(r['trials_per_hour'], 0)} | "
            f"{fmt(r['median_trial_s'], 1)} | {fmt(r.get('first_trial_start_s'))} | {fmt(r.get('load'), 2)} |"
            for r in rows
            if "workers" in r
        ]
        lines.append("")
    rows = report["sections"].get("threads")
    if rows:
        lines += table(
            "Threads: a ResNet-20 training step (batch 64 of 8x8 digits)",
            [
                "other processes started (1-min load average during the probes)",
                "setting",
                "threads",
                "ms/step (median of rounds)",
                "per round",
            ],
            [
                f"| {r['load']} | {r['setting']} | {r['threads']} | {fmt(r['step_ms'])} | "
                f"{', '.join(str(x) for x in r.get('samples_ms', []))} |"
                for r in rows
            ],
        )
    errors = {name: rows for name, rows in report.get("errors", {}).items()}
    for name, error in errors.items():
        lines += [f"Section {name} failed: {error[-500:]!r}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="Fewer steps and repeats (under ~3 minutes).")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results", help="Where perf.md and perf.json go.")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--family", nargs="+", help="Only the families whose config path contains one of these.")
    parser.add_argument("--steps", type=int, help="Training steps per run (default 40, --quick 12).")
    parser.add_argument("--warmup", type=int, help="Steps left out of the medians (default 5, --quick 3).")
    parser.add_argument("--rounds", type=int, help="archlab / plain rounds per family (default 2, --quick 1).")
    parser.add_argument("--check_steps", type=int, default=5, help="Steps whose losses must agree.")
    parser.add_argument("--tracker", default="wandb", help="The archlab runs' tracker (default wandb, offline).")
    parser.add_argument(
        "--no-fork", dest="fork", action="store_false", help="Measure in this process (peak memory is then shared)."
    )
    parser.add_argument("--plain-job", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--thread-probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick and args.sections == list(SECTIONS):
        args.sections.remove("attribution")
    if args.thread_probe:
        thread_probe()
        return 0
    if args.plain_job is not None:
        print(plain_default_job(args.plain_job, args.out))
        return 0
    args.steps = args.steps or (12 if args.quick else 40)
    args.warmup = args.warmup if args.warmup is not None else (3 if args.quick else 5)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="archlab-perf-"))
    report: dict[str, Any] = {
        "command": " ".join(["benchmarks/perf.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(),
        "args": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "sections": {},
        "errors": {},
    }
    say(f"machine {report['machine']}; scratch {workdir}")
    import archlab.cli  # noqa: F401 - imported once here, before the forks: the measured processes inherit it

    functions = {
        "families": families_section,
        "attribution": attribution_section,
        "e2e": e2e_section,
        "startup": startup_section,
        "loader": loader_section,
        "trackers": trackers_section,
        "checkpoint": checkpoint_section,
        "sweep": sweep_section,
        "threads": threads_section,
    }
    for name in args.sections:
        started = time.perf_counter()
        try:
            report["sections"][name] = functions[name](args, workdir)
        except Exception:
            report["errors"][name] = traceback.format_exc()
            say(f"section {name} failed:\n{report['errors'][name]}")
        say(f"section {name}: {time.perf_counter() - started:.0f} s")
    report["load_after"] = os.getloadavg()
    (args.out / "perf.json").write_text(json.dumps(report, indent=1, default=str))
    (args.out / "perf.md").write_text(markdown(report))
    say(f"wrote {args.out / 'perf.md'} and {args.out / 'perf.json'}")
    shutil.rmtree(workdir, ignore_errors=True)
    mismatched = [r["family"] for r in report["sections"].get("families", []) if r.get("equal_work") is False]
    failed = [r["family"] for r in report["sections"].get("families", []) if "error" in r]
    if mismatched or failed or report["errors"]:
        say(f"equal-work mismatch: {mismatched}; failed families: {failed}; failed sections: {list(report['errors'])}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
