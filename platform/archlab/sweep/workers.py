"""The trial loop of one worker, and the worker processes of `--workers N` on this machine.

Trial cap: before each trial a worker counts the study's trials (`storage.counted`: every state, a retry of a lost
trial taking that trial's place) and starts one only while the count is below n_trials, or when a retry is waiting.
Trials that workers start at the same instant can take the study past n_trials (by at most one per other worker);
no trial is ever created that does not run.
"""

import contextlib
import gc
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import optuna
from optuna.trial import TrialState

from archlab import threads
from archlab.sweep.settings import Settings
from archlab.sweep.storage import alive_locally, counted, strip_password
from archlab.sweep.trial import EXPECTED, Interrupted, run_trial

# Exit codes of a worker that a signal stopped: its trial is FAIL, and the sweep goes on without it.
INTERRUPTED = (128 + signal.SIGTERM, 128 + signal.SIGINT)


class Worker:
    """One process's share of the study: runs trials until the cap, fails and re-queues the trials of dead workers."""

    def __init__(self, settings: Settings, study: optuna.Study) -> None:
        self.settings = settings
        self.study = study
        self.signal: int | None = None
        self.in_trial = False
        self.interrupted: int | None = None  # the number of the trial a signal stopped

    def work(self) -> None:
        with frozen_heap():
            self.loop()
        if self.interrupted is not None:
            self.requeue(self.interrupted)

    def loop(self) -> None:
        start, timeout = time.monotonic(), self.settings.cfg.timeout
        storage = self.settings.storage
        while self.signal is None:
            if timeout is not None and time.monotonic() - start > timeout:
                break
            storage.fail_lost_trials(self.study)
            trials = self.study.get_trials(deepcopy=False)
            waiting = any(t.state == TrialState.WAITING for t in trials)
            if not waiting and counted(trials) >= self.settings.n_trials:
                running = [t for t in trials if t.state == TrialState.RUNNING]
                # A running trial may yet be lost with its worker and come back as a retry: wait for it to end.
                if running and (storage.heartbeat or any(alive_locally(t) for t in running)):
                    time.sleep(min(self.settings.cfg.heartbeat_interval, 2))
                    continue
                break
            # gc_after_trial: a trial's Trainer, net and optimizer hold reference cycles; they go before the next trial
            # starts, so that its memory (GPU memory too) is never held twice.
            self.study.optimize(self.objective, n_trials=1, catch=EXPECTED, gc_after_trial=True)

    def requeue(self, number: int) -> None:
        """Queue a retry of a trial that a signal stopped: the next run resumes it from its last checkpoint, in its
        place in the budget, as it does for a trial whose worker died."""
        (stopped,) = [t for t in self.study.get_trials(deepcopy=True) if t.number == number]
        if stopped.state == TrialState.FAIL:
            self.settings.storage.retry(self.study, stopped)

    def objective(self, trial: optuna.Trial) -> float:
        self.in_trial = True
        try:
            return run_trial(trial, self.settings)
        except Interrupted:
            self.interrupted = trial.number
            raise
        except (KeyboardInterrupt, SystemExit) as error:
            self.signal = self.signal or signal.SIGINT
            self.interrupted = trial.number
            trial.set_user_attr("fail_reason", f"interrupted ({type(error).__name__})")
            raise Interrupted(f"trial {trial.number} interrupted") from error
        finally:
            self.in_trial = False

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """SIGTERM and SIGINT stop the loop; inside a trial they fail it at once. Optuna's report of the trial that
        a signal failed (its traceback) is left out: archlab's own message says what happened and how to resume."""
        previous = {s: signal.signal(s, self.on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        handlers = logging.getLogger("optuna").handlers
        for handler in handlers:
            handler.addFilter(self.not_interrupted)
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            for handler in handlers:
                handler.removeFilter(self.not_interrupted)

    def not_interrupted(self, record: logging.LogRecord) -> bool:
        """False for Optuna's warnings about a trial a signal stopped."""
        if record.exc_info and isinstance(record.exc_info[1], Interrupted | KeyboardInterrupt):
            return False
        return not (self.signal is not None and record.getMessage().endswith("failed with value None."))

    def on_signal(self, signum: int, frame: Any) -> None:
        self.signal = signum
        # Raised only inside a trial: there it becomes the trial's FAIL; elsewhere it could land in the middle of
        # Optuna writing a trial's final state, so the loop just stops before the next trial.
        if self.in_trial:
            raise Interrupted(f"{signal.Signals(signum).name} received")


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Leave what is alive before the first trial (the modules imported, the study, the settings) out of the garbage
    collections after each trial (`gc.freeze`): a full collection over it took 0.4-0.5 s per trial, frozen 0.04 s
    (benchmarks/perf.py, sweep section). Objects made by the trials are collected as before."""
    if gc.get_freeze_count():  # frozen by someone else: theirs to undo
        yield
        return
    gc.collect()  # garbage that exists now is freed, not frozen
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def spawn(settings: Settings, argv: list[str], count: int, *, command: str = "sweep") -> list[subprocess.Popen]:
    """`count` copies of this command (`archlab sweep` or `archlab study`), one worker each, sharing the study; their
    logs beside the study."""
    own, passthrough = split_passthrough(argv)
    own = drop_option(drop_option(own, "--storage"), "--workers")
    url, password = strip_password(settings.storage.url)
    # The password travels in the environment (libpq reads PGPASSWORD), never on a command line.
    env = {**os.environ, "PGPASSWORD": password} if password else dict(os.environ)
    # Each worker gets its share of the cores (archlab.threads), unless ARCHLAB_THREADS sets the threads per worker.
    env.setdefault(threads.VARIABLE, str(max(1, threads.cores() // count)))
    procs = []
    for i in range(count):
        args = [sys.executable, "-m", "archlab", command, *own, "--workers", "1", "--worker_index", str(i)]
        args += ["--storage", url, "--study_name", settings.study_name]
        args += ["--", *passthrough] if passthrough else []
        with (settings.study_dir / f"worker-{i}.log").open("w") as log:
            procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env))
    return procs


def supervise(procs: list[subprocess.Popen], worker: Worker, settings: Settings) -> int | None:
    """Wait for the workers. One killed by a signal is lost: the others go on and its trial is retried. One that exits
    with an error (a traceback, the storage gone) stops the others, and its exit code is returned."""
    stopped = []
    while None in [p.poll() for p in procs]:  # a list, not any(): every worker polled, every exit seen
        if worker.signal is not None or any(crashed(p) for p in procs):
            stopped = [p for p in procs if p.poll() is None]
            for p in stopped:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait()
            break
        time.sleep(0.5)
    code = None
    for i, p in enumerate(procs):
        log = settings.study_dir / f"worker-{i}.log"
        if p.returncode < 0 and p not in stopped:
            name = signal.Signals(-p.returncode).name
            print(f"archlab sweep: worker {i} was killed by {name}; its trial is retried. Log: {log}", file=sys.stderr)
        elif crashed(p) and code is None:
            code = p.returncode
            tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-40:])
            print(f"archlab sweep: worker {i} exited with code {code}; the end of {log}:\n{tail}", file=sys.stderr)
    return code


def crashed(proc: subprocess.Popen) -> bool:
    return proc.returncode is not None and proc.returncode > 0 and proc.returncode not in INTERRUPTED


def split_passthrough(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def drop_option(argv: list[str], name: str) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(f"{name}="):
            out.append(arg)
    return out
