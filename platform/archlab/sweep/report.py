"""The end of a sweep: a table of the best trials, why trials failed, best.yaml, the HTML plots, the dashboard hint."""

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.table import Table

from archlab import tracking
from archlab.rundir import RunDir
from archlab.sweep.settings import Settings
from archlab.sweep.storage import retry_history, sqlalchemy_url

STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)
STATE_WORDS = {s: s.name.lower() for s in TrialState} | {TrialState.FAIL: "failed"}


def summarize(study: optuna.Study, settings: Settings, console: Console) -> bool:
    """Print the study's outcome and write best.yaml and the plots; True when at least one trial completed."""
    trials = study.get_trials(deepcopy=False)
    counts = {state: sum(t.state == state for t in trials) for state in TrialState}
    done = sorted(
        (t for t in trials if t.state == TrialState.COMPLETE),
        key=lambda t: t.value,
        reverse=settings.direction == "maximize",
    )
    table = Table(
        title=f"{settings.study_name}: best trials ({settings.metric}, {settings.direction})", title_justify="left"
    )
    for column in ("trial", settings.metric, "epochs", *short_names(list(settings.distributions))):
        table.add_column(column, justify="right", no_wrap=True)
    for t in done[: settings.cfg.top]:
        table.add_row(
            str(t.number), f"{t.value:.4f}", str(t.user_attrs.get("epochs", "")),
            *(format_param(t.params.get(key)) for key in settings.distributions),
        )  # fmt: skip
    console.print(table)
    console.print("trials:     " + ", ".join(f"{counts[s]} {STATE_WORDS[s]}" for s in STATES))
    retried_as = {retry_history(t)[-1]: t.number for t in trials if retry_history(t)}
    for t in trials:
        if t.state != TrialState.FAIL:
            continue
        if t.number in retried_as:
            reason = f"its worker was lost; retried as trial {retried_as[t.number]}"
        else:
            reason = t.user_attrs.get("fail_reason") or "its worker was lost (no retries left)"
        console.print(f"  trial {t.number} failed: {reason}")
    if done:
        best = done[0]
        console.print(f"best:       trial {best.number}, {settings.metric} = {best.value:.4f}")
        console.print(f"params:     {json.dumps(best.params)}")
        path = write_best_config(best, settings)
        if path:
            console.print(f"config:     {path}  -> reproduce with: archlab fit -c {path}")
        for path in write_plots(study, settings.study_dir):
            console.print(f"plot:       {path}")
    else:
        console.print("best:       none: no trial completed")
    url = settings.storage.url
    console.print(f"storage:    {tracking.mask_url(url)}  (study {settings.study_name})")
    if not url.startswith("journal:"):
        console.print(f"dashboard:  optuna-dashboard {tracking.mask_url(sqlalchemy_url(url))}")
    if any(settings.study_dir.glob("trial-*/wandb/offline-run-*")):
        # One command for every trial's offline W&B run (each trial's run id is in its user attribute "wandb").
        runs = f"{settings.study_dir}/trial-*/wandb/offline-run-*"
        console.print(f"W&B:        upload the trials' offline runs with: wandb sync {runs}")
    return bool(done)


def write_best_config(best: FrozenTrial, settings: Settings) -> Path | None:
    source = RunDir(best.user_attrs.get("run_dir", "")).config
    if not source.is_file():
        return None
    config = yaml.safe_load(source.read_text())
    # A fresh run of exactly the trial's resolved config: its own new run directory, from scratch, then tested.
    config.update(run_dir=None, ckpt_path=None, test_after_fit=True)
    path = settings.study_dir / "best.yaml"
    header = (
        f"# Best trial of study {settings.study_name}: trial {best.number}, {settings.metric} = {best.value:.6g}\n"
        f"# params: {json.dumps(best.params)}\n# Reproduce: archlab fit -c {path}\n"
    )
    path.write_text(header + yaml.safe_dump(tracking.redact(config), sort_keys=False))
    return path


def write_plots(study: optuna.Study, folder: Path) -> list[Path]:
    import optuna.visualization as vis

    written = []
    plots = {
        "history": vis.plot_optimization_history,
        "importance": vis.plot_param_importances,
        "parallel_coordinate": vis.plot_parallel_coordinate,
    }
    for name, plot in plots.items():
        path = folder / f"{name}.html"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # "directory": one plotly.min.js beside the pages, so they open offline without three copies.
                plot(study).write_html(str(path), include_plotlyjs="directory")
        except (ValueError, RuntimeError, ZeroDivisionError) as error:
            # Importance needs two finished trials that differ; with fewer there is nothing to plot.
            print(f"archlab sweep: no {name} plot: {error}", file=sys.stderr)
            continue
        written.append(path)
    return written


def format_param(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else json.dumps(value)


def short_names(keys: list[str]) -> list[str]:
    """The shortest dotted suffix of each key that no other key shares: model.net.dropout -> dropout."""
    names = []
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            name = ".".join(parts[-n:])
            if not any(other != key and (other == name or other.endswith("." + name)) for other in keys):
                break
        names.append(name)
    return names
