"""A study's results: every finished run's logged metrics (its CSV tracker's metrics.csv) and probes, the tables of
mean and spread over seeds, the figures (matplotlib PNGs), the verdict of the spec's rule, and report.md."""

import csv
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archlab.study.spec import Plan, Run, as_list, parse_metric

FIGSIZE, DPI = (6.4, 4.0), 100  # every figure is 640 x 400 pixels


@dataclass
class Result:
    """A finished run: its per-row logged values (oldest first, across a retry's run directories) and probes."""

    run: Run
    dirs: list[Path]
    rows: list[dict[str, float]] = field(default_factory=list)
    probes: dict[str, float] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)  # wall_s, s_per_epoch: shown when metrics: names them

    def column(self, name: str) -> str | None:
        """`train/loss` is logged per step and per epoch: the epoch-level column is the metric."""
        names = {k for row in self.rows for k in row}
        return next((c for c in (f"{name}_epoch", name) if c in names), None)

    def curve(self, name: str) -> dict[int, float]:
        """epoch -> the metric's last value logged in that epoch."""
        column, points = self.column(name), {}
        for row in self.rows:
            if column in row and "epoch" in row:
                points[int(row["epoch"])] = row[column]
        return points

    def value(self, metric: str) -> float | None:
        aggregate, name = parse_metric(metric, "metric")
        if name in self.probes or name in self.timing:
            return {**self.timing, **self.probes}[name]
        column = self.column(name)
        values = [row[column] for row in self.rows if column in row]
        if not values:
            return None
        return {"last": values[-1], "min": min(values), "max": max(values)}[aggregate]


def read_rows(dirs: list[Path]) -> list[dict[str, float]]:
    rows = []
    for directory in dirs:
        path = directory / "metrics.csv"
        if not path.is_file():
            continue
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                rows.append({k: float(v) for k, v in row.items() if v not in ("", None)})
    return rows


def summary(values: list[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation or 0 for one value, count)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values)


def fmt(value: float) -> str:
    if abs(value) >= 1e4 and float(value).is_integer():
        return f"{int(value):,}"  # parameter counts
    return f"{value:.4g}"


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    mean, spread, n = summary(values)
    return fmt(mean) if n == 1 or spread == 0 else f"{fmt(mean)} ± {spread:.2g}"


def groups(results: list[Result], part: str) -> dict[tuple, list[Result]]:
    """The part's level combinations in the spec's order -> the results of their seeds."""
    out: dict[tuple, list[Result]] = {}
    for r in results:
        if r.run.part == part:
            out.setdefault(tuple(r.run.levels.items()), []).append(r)
    return out


def label(combo: tuple) -> str:
    return ", ".join(f"{f}={v}" for f, v in combo)


def table(plan: Plan, results: list[Result], metrics: list[str]) -> list[str]:
    lines = []
    for part in plan.parts:
        combos = groups(results, part.name)
        present = [m for m in metrics if any(r.value(m) is not None for rs in combos.values() for r in rs)]
        if len(plan.parts) > 1:
            lines += [f"### {part.name}", ""]
        lines += ["| " + " | ".join([*part.factors, "seeds", *present]) + " |"]
        lines += ["|" + "---|" * (len(part.factors) + 1 + len(present))]
        for combo, rs in combos.items():
            values = [cell([v for r in rs if (v := r.value(m)) is not None]) for m in present]
            lines += ["| " + " | ".join([*(str(v) for _, v in combo), str(len(rs)), *values]) + " |"]
        lines += [""]
    return lines


def draw(figure: dict[str, Any], plan: Plan, results: list[Result], folder: Path) -> Path | None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [p for p in plan.parts if figure.get("part") in (None, p.name)]
    if figure["kind"] == "samples":
        return draw_samples(figure, parts, results, folder, plt)
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    drawn = False
    bars: list[tuple[str, float, float]] = []
    ticks: dict[float, Any] = {}  # a line figure's x positions -> the factor's levels
    kind, metric = figure["kind"], figure["metric"]
    for part in parts:
        prefix = f"{part.name}: " if len(parts) > 1 else ""
        combos = groups(results, part.name)
        if kind == "curve":
            for combo, rs in combos.items():
                curves = [r.curve(parse_metric(metric, "metric")[1]) for r in rs]
                epochs = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
                if epochs:
                    mean = [statistics.fmean(c[e] for c in curves) for e in epochs]
                    (line,) = ax.plot(epochs, mean, label=prefix + label(combo))
                    if len(curves) > 1:
                        low = [min(c[e] for c in curves) for e in epochs]
                        high = [max(c[e] for c in curves) for e in epochs]
                        ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2)
                    drawn = True
            ax.set_xlabel("epoch")
            ax.xaxis.get_major_locator().set_params(integer=True)
        elif kind == "bar":
            for combo, rs in combos.items():
                values = [v for r in rs if (v := r.value(metric)) is not None]
                if values:
                    bars.append((prefix + label(combo), *summary(values)[:2]))
        else:  # line: the metric against one factor, a line per level of the other
            x = figure["x"]
            if x not in part.factors:
                continue
            others = [f for f in part.factors if f != x]
            series: dict[tuple, list[tuple[Any, float, float]]] = {}
            for combo, rs in combos.items():
                values = [v for r in rs if (v := r.value(metric)) is not None]
                if values:
                    levels = dict(combo)
                    key = tuple((f, levels[f]) for f in others)
                    mean, spread, _ = summary(values)
                    series.setdefault(key, []).append((levels[x], mean, spread))
            for key, points in series.items():
                xs = [p[0] for p in points]
                numeric = all(isinstance(v, int | float) for v in xs)
                positions = xs if numeric else list(range(len(xs)))
                name = prefix + (label(key) or metric)
                if figure.get("fit") and numeric and len(xs) > 1:
                    name += f" (~ {x}^{exponent({float(p[0]): [p[1]] for p in points}):.2f})"
                ax.errorbar(positions, [p[1] for p in points], yerr=[p[2] for p in points], marker="o", capsize=3,
                            label=name)  # fmt: skip
                ticks.update(zip(positions, xs, strict=True))
                drawn = True
            ax.set_xlabel(x)
    if bars:
        drawn_bars = ax.bar(range(len(bars)), [b[1] for b in bars], yerr=[b[2] for b in bars], capsize=4)
        ax.bar_label(drawn_bars, fmt="%.4g", fontsize=8, label_type="center", color="white")
        ax.set_xticks(range(len(bars)), [b[0] for b in bars], rotation=20, ha="right", fontsize=8)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_ylabel(figure.get("ylabel", metric))
    ax.set_title(figure.get("title", f"{metric} ({plan.budget} budget)"), fontsize=10)
    if figure.get("logx"):
        ax.set_xscale("log")
    if figure.get("logy"):
        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    if ticks:  # after the scale, whose own tick labels would replace these
        ax.set_xticks(sorted(ticks), [str(ticks[t]) for t in sorted(ticks)])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    if kind != "bar":
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = folder / f"{figure['name']}.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def draw_samples(figure: dict[str, Any], parts: list, results: list[Result], folder: Path, plt: Any) -> Path | None:
    """The last image grid each level combination's first seed wrote (RUN/images/, the CSV tracker's), side by side."""
    shown = []
    for part in parts:
        for combo, rs in groups(results, part.name).items():
            images = sorted(p for d in rs[0].dirs for p in (d / "images").glob(figure.get("metric", "*") + "*.png"))
            if images:
                shown.append((label(combo), images[-1]))
    if not shown:
        return None
    cols = math.ceil(math.sqrt(len(shown)))
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), dpi=DPI, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, image) in zip(axes.flat, shown, strict=False):
        ax.imshow(plt.imread(image), cmap="gray")
        ax.set_title(name, fontsize=9)
    fig.suptitle(figure.get("title", "samples"), fontsize=10)
    fig.tight_layout()
    path = folder / f"{figure['name']}.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def matching(results: list[Result], selector: dict[str, Any]) -> list[Result]:
    return [
        r
        for r in results
        if all(
            (r.run.part == str(level)) if factor == "part" else str(r.run.levels.get(factor)) == str(level)
            for factor, level in selector.items()
        )
    ]


def side(results: list[Result], selector: Any, metric: str, x: str | None = None) -> list[float] | float:
    """The selected runs' values of the metric; with `x`, one value per level of that factor: the fitted exponent."""
    if isinstance(selector, int | float):
        return float(selector)
    chosen = [(r, v) for r in matching(results, selector) if (v := r.value(metric)) is not None]
    if x is None:
        return [v for _, v in chosen]
    points: dict[float, list[float]] = {}
    for r, v in chosen:
        points.setdefault(float(r.run.levels[x]), []).append(v)
    return [exponent(points)] if len(points) > 1 else []


def exponent(points: dict[float, list[float]]) -> float:
    """The slope of log(mean y) against log(x), least squares: y ~ x^slope."""
    import numpy as np

    xs = sorted(points)
    slope, _ = np.polyfit(np.log(xs), np.log([statistics.fmean(points[x]) for x in xs]), 1)
    return float(slope)


def verdict(plan: Plan, results: list[Result]) -> tuple[str, list[str]]:
    """("confirmed" | "not confirmed" | "mixed" | "not measured", a line per check)."""
    lines, held = [], []
    for check in plan.spec.get("verdict") or []:
        metric, op, statistic = check["metric"], check["op"], check.get("statistic", "mean")
        x = check.get("x") if statistic == "exponent" else None
        left, right = side(results, check["left"], metric, x), side(results, check["right"], metric, x)
        need = 2 if statistic == "std" else 1
        if len(left) < need or (isinstance(right, list) and len(right) < need):
            why = "no finished run on one side" if need == 1 else "needs two seeds on each side"
            lines.append(f"- not measured on this budget: {check['says']} ({statistic} of {metric}: {why})")
            continue
        reduce = statistics.stdev if statistic == "std" else statistics.fmean
        lv = reduce(left)
        rv = right if isinstance(right, float) else reduce(right)
        margin = float(check.get("margin", 0.0))
        holds = {"<": lv < rv - margin, ">": lv > rv + margin, "<=": lv <= rv - margin, ">=": lv >= rv + margin}[op]
        held.append(holds)
        what = f"{'' if statistic == 'mean' else f'{statistic} of '}{metric} {fmt(lv)} {op} {fmt(rv)}" + (
            f" (margin {margin:g})" if margin else ""
        )
        runs = f"{len(left)} vs {len(right)} runs" if isinstance(right, list) else f"{len(left)} runs vs a constant"
        over = f"fitted over {x}" if x else f"{statistic} of {runs}"
        lines.append(f"- {'holds' if holds else 'fails'}: {check['says']}: {what} is {str(holds).lower()} ({over})")
    if not held:
        return "not measured", lines
    if all(held):
        return "confirmed", lines
    return ("not confirmed" if not any(held) else "mixed"), lines


def write(plan: Plan, results: list[Result], folder: Path, *, command: str, failed: dict[str, str],
          facts: list[str]) -> Path:  # fmt: skip
    """report.md and its PNGs in `folder`; returns the report's path."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = plan.spec
    outcome, checks = verdict(plan, results)
    metrics = as_list(spec.get("metrics")) or sorted({k for r in results for row in r.rows for k in row} - {"epoch"})
    probe_metrics = sorted({k for r in results for k in r.probes} - {parse_metric(m, "")[1] for m in metrics})
    lines = [f"# {spec.get('title', plan.name)}", ""]
    if spec.get("question"):
        lines += [str(spec["question"]).strip(), ""]
    lines += [
        f"**Budget: {plan.budget}.** Command: `{command}`", "",
        *facts, "",
        "## Claim", "", str(spec.get("claim", "(none given)")).strip(), "",
        f"## Verdict on this budget: {outcome}", "", *checks, "",
        "## Results", "", "Mean ± sample standard deviation over seeds; `min:`/`max:` is the best epoch's value, "
        "otherwise the last value logged (test metrics: the best checkpoint's).", "",
        *table(plan, results, [*metrics, *probe_metrics]),
    ]  # fmt: skip
    for figure in spec.get("figures") or []:
        path = draw(figure, plan, results, folder)
        if path is not None:
            lines += [f"![{figure.get('title', figure['name'])}]({path.name})", ""]
    if spec.get("notes"):
        lines += ["## Notes", "", str(spec["notes"]).strip(), ""]
    if failed:
        lines += ["## Runs that did not finish", ""] + [f"- {key}: {why}" for key, why in failed.items()] + [""]
    missing = [run.key for run in plan.runs if run.key not in {r.run.key for r in results} and run.key not in failed]
    if missing:
        lines += ["## Runs not run", ""] + [f"- {key}" for key in missing] + [""]
    path = folder / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path
