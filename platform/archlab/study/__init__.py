"""`archlab study`: one command runs a study (several runs that answer one question) and writes its report.

    archlab study experiments/skip-connections --budget quick        # the reduced version, minutes
    archlab study experiments/skip-connections --workers 2           # the full budget, two worker processes
    archlab study experiments/skip-connections --check               # check the spec and every run's arguments

The spec (`study.yaml`, archlab.study.spec) names the base configs, the factors, the seeds, the budgets, the
figures, the claim and the verdict rule. Every run is a trial of an Optuna study in the sweep's storage, run through
`archlab fit` by the sweep's own machinery (archlab.study.runner): `--workers`, a killed run's retry from its last
checkpoint, and a re-run that skips finished runs come from there. The runs live in
`<runs_root>/studies/<name>/<budget>/<part>/trial-NNNN/`; the report (report.md and its PNGs) is written beside
them and into `--report_dir` (default: the study's folder, where the reference report is committed).

Exit codes: 0 every run finished; 2 a bad spec or argument; 3 the storage cannot be reached; 4 some run failed (the
report says which); 128 + N stopped by signal N.
"""

import os
import shlex
import shutil
import sys
from argparse import ArgumentError
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

from jsonargparse import ArgumentParser
from rich.console import Console

from archlab.errors import ArchlabError, ConfigError
from archlab.study import report, spec

EXIT_RUN_FAILED = 4


def main(argv: list[str]) -> int:
    from archlab import tracking
    from archlab.sweep.storage import StorageUnreachable

    argv_before = sys.argv[:]
    # As in `archlab sweep`: trackers record sys.argv with every run; a password typed into --storage stays out.
    sys.argv[:] = [tracking.mask_url(arg) for arg in sys.argv]
    try:
        return study(argv)
    except StorageUnreachable as error:
        print(f"archlab study: error: {error}", file=sys.stderr)
        return 3
    except ArchlabError as error:
        if os.environ.get("ARCHLAB_DEBUG"):
            raise
        print(f"archlab study: error: {error}", file=sys.stderr)
        return error.exit_code
    finally:
        sys.argv[:] = argv_before


def study(argv: list[str]) -> int:
    console = Console(soft_wrap=True)
    options = parse(argv)
    plan = spec.plan(spec.load(options.path), options.budget)
    spec.check_spec(plan.spec, plan)
    spec.check_args(plan)
    if options.check:
        console.print(f"study {plan.name} ({plan.budget}): {len(plan.runs)} runs in {len(plan.parts)} part(s); "
                      "every run's arguments parse")  # fmt: skip
        return 0

    from archlab.study import probes, runner

    results, failed, sources = [], {}, {}
    for part in plan.parts:
        settings = runner.settings_for(plan, part, options)
        settings.sources = dict(sources)
        if options.study_name and settings.study_name != options.study_name:  # a worker of another part
            if len(part.runs) == 1 and part.runs[0].key in (done := runner.finished_runs(runner.open_study(settings))):
                sources[part.name] = done[part.runs[0].key][0][-1]
            continue
        study_, code = runner.run_part(settings, argv, console.print)
        if code is not None:
            return code
        if options.worker_index is not None:
            continue
        failed.update(runner.failed_runs(study_))
        finished = runner.finished_runs(study_)
        if len(part.runs) == 1 and part.runs[0].key in finished:
            sources[part.name] = finished[part.runs[0].key][0][-1]
        for run in part.runs:
            if run.key in finished:
                dirs, timing = finished[run.key]
                measured = probes.measure(part.probes, dirs)
                results.append(report.Result(run, dirs, report.read_rows(dirs), measured, timing))
    if options.worker_index is not None:
        return 0
    command = shlex.join(["archlab", "study", *argv])
    ended = max((r.timing.get("completed", 0.0) for r in results), default=0.0)
    threads = os.environ.get("ARCHLAB_THREADS") or os.environ.get("OMP_NUM_THREADS") or "default"
    facts = [
        f"{len(results)} of {len(plan.runs)} runs finished, the last at "
        f"{datetime.fromtimestamp(ended, timezone.utc):%Y-%m-%d %H:%M} UTC, on {os.cpu_count()} CPU core(s) "
        f"({threads} intra-op thread(s) per run); the runs took "
        f"{sum(r.timing.get('wall_s', 0.0) for r in results):.0f} s in all (start-up, training, validation, test).",
    ]
    out = plan.path if options.report_dir is None else Path(options.report_dir)
    study_dir = Path(options.runs_root).absolute() / "studies" / plan.name / plan.budget
    path = report.write(plan, results, study_dir, command=command, failed=failed, facts=facts)
    if out.absolute() != study_dir:
        out.mkdir(parents=True, exist_ok=True)
        for produced in [path, *study_dir.glob("*.png")]:
            shutil.copyfile(produced, out / produced.name)
        path = out / "report.md"
    outcome, _ = report.verdict(plan, results)
    console.print(f"study {plan.name} ({plan.budget}): verdict {outcome}; report: {path}")
    if failed:
        console.print(f"study {plan.name}: {len(failed)} run(s) failed: {', '.join(failed)}")
        return EXIT_RUN_FAILED
    return 0


def parse(argv: list[str]) -> SimpleNamespace:
    parser = ArgumentParser(prog="archlab study", description="Run a study and write its report.", exit_on_error=False)
    parser.add_argument("path", type=str, help="The study's folder (experiments/<name>) or its study.yaml.")
    parser.add_argument("--budget", type=str, default="full", help="A budget the spec defines (quick, full).")
    parser.add_argument("--workers", type=int, default=1, help="Worker processes on this machine.")
    parser.add_argument("--runs_root", type=str, default="runs", help="Runs go to <runs_root>/studies/<name>/.")
    parser.add_argument("--report_dir", type=str | None, default=None, help="Default: the study's folder.")
    parser.add_argument("--check", type=bool, default=False, help="Check the spec and every run's arguments; no run.")
    parser.add_argument("--storage", type=str | None, default=None, help="Default: a journal file beside the runs.")
    parser.add_argument("--study_name", type=str | None, default=None, help="Set by --workers; not for users.")
    parser.add_argument("--worker_index", type=int | None, default=None, help="Set by --workers; not for users.")
    try:
        cfg = parser.parse_args(argv)
    except ArgumentError as error:
        raise ConfigError(f"study: {error}") from None
    if cfg.workers < 1:
        raise ConfigError(f"study: --workers must be >= 1, got {cfg.workers}")
    return SimpleNamespace(**vars(cfg))
