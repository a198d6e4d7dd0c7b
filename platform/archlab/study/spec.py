"""A study's spec file (`experiments/<name>/study.yaml`), checked as plain data, and the runs it plans for a budget.

    title: Skip connections
    claim: A plain net degrades with depth; a ResNet of the same depth does not.
    seeds: [0, 1, 2]
    base: ../../configs/resnet_digits.yaml          # experiment config(s) of every run, relative to this file
    fixed: {trainer.max_epochs: 40}                 # fit options of every run
    factors:                                        # one or two; every combination runs once per seed
      net: {plain: {model.net.shortcut: none}, resnet: {model.net.shortcut: A}}     # named levels: options
      depth: {key: model.net.depth, levels: [20, 56]}                              # one key's values
    budgets: {quick: {seeds: [0], fixed: {trainer.max_epochs: 5}, levels: {depth: [20]}}, full: {}}
    metrics: [test/acc, min:train/loss]             # table columns: last (default), min or max of a logged metric
    probes: [params]                                # measurements of finished runs (archlab.study.probes)
    figures: [{name: loss, kind: curve, metric: train/loss}]    # curve | bar | line | samples (report)
    verdict: [{says: ..., metric: test/acc, left: {net: plain, depth: 56}, op: "<", right: {net: plain, depth: 20}}]

Several experiments with different tasks or factors go under `parts: {name: {base, fixed, factors, budgets, metric,
probes}}` instead of the top-level `base`, `fixed` and `factors`. A named level may add configs with `config:`.
Metrics are the CSV tracker's columns (`train/loss` reads `train/loss_epoch`), the probes' names, and `wall_s` /
`s_per_epoch` (the run's trial duration). Figures: `curve` (per epoch, one line per level combination, the band
spans the seeds), `bar`, `line` (against a factor `x`, a line per level of the other; `fit: true` adds the fitted
power-law exponent), `samples` (the last image grid `<metric>*.png` of each combination's first run, side by side).
A verdict check compares the mean (or `statistic: std`, or `statistic: exponent` over a factor `x`) of a metric over
the runs its `left` selector matches with the `right` selector's or a number, beyond an optional `margin`; the study
is confirmed when every measured check holds, not confirmed when none does, mixed otherwise.
"""

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from archlab.errors import ConfigError
from archlab.sweep.space import option_args

TOP_KEYS = {"title", "question", "claim", "notes", "seeds", "budgets", "parts", "metrics", "probes", "figures",
            "verdict", "base", "fixed", "factors", "metric", "direction"}  # fmt: skip
PART_KEYS = {"base", "fixed", "factors", "budgets", "metric", "direction", "probes"}
BUDGET_KEYS = {"seeds", "fixed", "levels"}
FIGURE_KEYS = {"name", "kind", "metric", "part", "x", "title", "logx", "logy", "ylabel", "fit"}
FIGURE_KINDS = ("curve", "bar", "line", "samples")
CHECK_KEYS = {"says", "metric", "left", "op", "right", "margin", "statistic", "x"}
STATISTICS = ("mean", "std", "exponent")
OPS = ("<", ">", "<=", ">=")
AGGREGATES = ("last", "min", "max")


@dataclass
class Run:
    """One training run: a part, one level of each factor, a seed, and its `archlab fit` arguments."""

    part: str
    levels: dict[str, Any]
    seed: int
    args: list[str]

    @property
    def key(self) -> str:
        return f"{self.part}/{','.join(f'{f}={v}' for f, v in self.levels.items())}/seed={self.seed}"

    @property
    def params(self) -> dict[str, Any]:
        """The run as an Optuna trial's parameters."""
        return {**self.levels, "seed": self.seed}


@dataclass
class Part:
    name: str
    factors: dict[str, list[Any]]
    runs: list[Run]
    metric: str | None
    direction: str | None
    probes: list[str]


@dataclass
class Plan:
    """What one budget of a study runs, and what its report shows."""

    name: str
    path: Path
    budget: str
    spec: dict[str, Any]
    parts: list[Part] = field(default_factory=list)

    @property
    def runs(self) -> list[Run]:
        return [run for part in self.parts for run in part.runs]


def load(path: str | Path) -> dict[str, Any]:
    """The spec of a study folder (or its study.yaml), with its structure checked."""
    path = Path(path)
    file = path / "study.yaml" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"study: no spec at {file}; a study is a folder with a study.yaml (see experiments/)")
    try:
        spec = yaml.safe_load(file.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"study: {file} is not valid YAML: {error}") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"study: {file} must hold a mapping of keys ({', '.join(sorted(TOP_KEYS))})")
    check_keys(spec, TOP_KEYS, "the spec")
    if "parts" in spec and any(k in spec for k in ("base", "factors")):
        raise ConfigError("study: give either parts: {name: {base, factors, ...}} or top-level base and factors")
    spec["_file"] = str(file.absolute())
    return spec


def plan(spec: dict[str, Any], budget: str) -> Plan:
    """Every run of this budget, with its fit arguments (not yet checked by the CLI's parser: `check_args`)."""
    file = Path(spec["_file"])
    budgets = spec.get("budgets") or {"full": {}}
    check_type(budgets, dict, "budgets", "a mapping of budget name -> {seeds, fixed, levels}")
    if budget not in budgets:
        raise ConfigError(f"study: budget {budget!r} is not in the spec; accepted: {', '.join(budgets)}")
    top = budgets[budget] or {}
    check_keys(top, BUDGET_KEYS, f"budgets.{budget}")
    parts = spec.get("parts") or {file.parent.name: {k: spec[k] for k in PART_KEYS if k in spec}}
    check_type(parts, dict, "parts", "a mapping of part name -> {base, fixed, factors, ...}")
    result = Plan(name=file.parent.name, path=file.parent, budget=budget, spec=spec)
    for name, part in parts.items():
        where = f"parts.{name}" if "parts" in spec else "the spec"
        check_type(part, dict, where, "a mapping with base, fixed, factors")
        check_keys(part, PART_KEYS, where)
        own = (part.get("budgets") or {}).get(budget) or {}
        check_keys(own, BUDGET_KEYS, f"{where}.budgets.{budget}")
        merged = {**top, **own, "fixed": {**(top.get("fixed") or {}), **(own.get("fixed") or {})}}
        result.parts.append(plan_part(name, part, spec, merged, file, result.parts))
    return result


def plan_part(
    name: str, part: dict[str, Any], spec: dict[str, Any], budget: dict[str, Any], file: Path, earlier: list[Part]
) -> Part:
    base = [resolve(p, file, "base") for p in as_list(part.get("base"))]
    factors = part.get("factors") or {}
    check_type(factors, dict, f"{name}.factors", "a mapping of factor -> levels")
    if not 1 <= len(factors) <= 2:
        raise ConfigError(f"study: part {name!r} needs one or two factors, got {len(factors)} ({', '.join(factors)})")
    levels = {factor: factor_levels(name, factor, spec_, file) for factor, spec_ in factors.items()}
    if not base and not any(all(lvl["config"] for lvl in f.values()) for f in levels.values()):
        raise ConfigError(
            f"study: part {name!r} names no experiment config: give base: ../../configs/x.yaml, or config: in "
            "every level of a factor"
        )
    for factor, keep in (budget.get("levels") or {}).items():
        if factor not in levels:
            continue  # another part's factor
        unknown = [v for v in as_list(keep) if str(v) not in map(str, levels[factor])]
        if unknown:
            accepted = ", ".join(map(str, levels[factor]))
            raise ConfigError(f"study: budget levels.{factor}: {unknown} not among its levels ({accepted})")
        levels[factor] = {k: v for k, v in levels[factor].items() if str(k) in map(str, as_list(keep))}
    seeds = budget.get("seeds", spec.get("seeds", [0]))
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"study: seeds must be a non-empty list of integers, got {seeds!r}")
    fixed = {**(part.get("fixed") or {}), **budget.get("fixed", {})}
    runs = []
    for combo in itertools.product(*(levels[f].items() for f in levels)):
        configs = [c for _, level in combo for c in level["config"]]
        options = {k: v for _, level in combo for k, v in level["options"].items()}
        values = {k: reference(v, name, k, earlier) for k, v in {**fixed, **options}.items()}
        args = [*(a for c in [*base, *configs] for a in ("-c", c)), *option_args(values)]
        for seed in seeds:
            chosen = {f: lvl for f, (lvl, _) in zip(levels, combo, strict=True)}
            runs.append(Run(name, chosen, seed, [*args, "--seed_everything", str(seed)]))
    probes = as_list(part.get("probes", spec.get("probes", [])))
    return Part(name, {f: list(v) for f, v in levels.items()}, runs, part.get("metric"), part.get("direction"), probes)


def factor_levels(part: str, factor: str, spec: Any, file: Path) -> dict[Any, dict[str, Any]]:
    """level -> {"config": [paths], "options": {dotted key: value}}."""
    where = f"factors.{factor} of part {part!r}"
    if factor == "seed":
        raise ConfigError(f"study: {where}: 'seed' is reserved (seeds: [...] sets the seeds)")
    check_type(spec, dict, where, "{key: dotted.key, levels: [...]} or {level: {dotted.key: value, config: ...}}")
    if set(spec) == {"key", "levels"}:
        if not isinstance(spec["levels"], list) or not spec["levels"]:
            raise ConfigError(f"study: {where}: levels must be a non-empty list, got {spec['levels']!r}")
        return {v: {"config": [], "options": {spec["key"]: v}} for v in spec["levels"]}
    levels = {}
    for level, options in spec.items():
        check_type(options, dict, f"{where}.{level}", "a mapping of dotted config keys (and config:) -> values")
        options = dict(options)
        configs = [resolve(p, file, f"{where}.{level}.config") for p in as_list(options.pop("config", None))]
        levels[level] = {"config": configs, "options": options}
    return levels


def reference(value: Any, part: str, key: str, earlier: list[Part]) -> Any:
    """`{from_part: P, path: F}` -> the placeholder `<P>/F`, which the runner replaces by the file F of part P's
    finished run (its one run: e.g. the checkpoint and vocabulary of a pre-training run)."""
    if not (isinstance(value, dict) and set(value) == {"from_part", "path"}):
        return value
    source = next((p for p in earlier if p.name == value["from_part"]), None)
    if source is None or len(source.runs) != 1:
        names = [p.name for p in earlier if len(p.runs) == 1]
        raise ConfigError(
            f"study: part {part!r}, {key}: from_part {value['from_part']!r} must name an earlier part with exactly "
            f"one run (one level, one seed); accepted: {', '.join(names) or 'none'}"
        )
    return f"{PLACEHOLDER.format(part=source.name)}/{value['path']}"


PLACEHOLDER = "<{part}>"


def check_spec(spec: dict[str, Any], plan_: Plan) -> None:
    """Metrics, figures and the verdict name metrics, factors and levels that exist; probes are known."""
    from archlab.study.probes import PROBES

    for part in plan_.parts:
        for probe in part.probes:
            if probe not in PROBES:
                raise ConfigError(f"study: probe {probe!r} is unknown; accepted: {', '.join(PROBES)}")
    for i, metric in enumerate(as_list(spec.get("metrics"))):
        parse_metric(metric, f"metrics[{i}]")
    factors = {f for part in plan_.parts for f in part.factors}
    parts = [p.name for p in plan_.parts]
    for i, figure in enumerate(spec.get("figures") or []):
        where = f"figures[{i}]"
        check_type(figure, dict, where, f"a mapping with {', '.join(sorted(FIGURE_KEYS))}")
        check_keys(figure, FIGURE_KEYS, where)
        for key in ("name", "kind", "metric") if figure.get("kind") != "samples" else ("name",):
            if key not in figure:
                raise ConfigError(f"study: {where} needs {key}:")
        if figure["kind"] not in FIGURE_KINDS:
            raise ConfigError(f"study: {where}.kind {figure['kind']!r} is unknown; accepted: {', '.join(FIGURE_KINDS)}")
        if figure["kind"] != "samples":
            parse_metric(figure["metric"], f"{where}.metric")
        if figure.get("part") is not None and figure["part"] not in parts:
            raise ConfigError(f"study: {where}.part {figure['part']!r} is not a part; accepted: {', '.join(parts)}")
        if figure["kind"] == "line" and figure.get("x") not in factors:
            raise ConfigError(f"study: {where}: a line figure needs x: one of the factors ({', '.join(factors)})")
    for i, check in enumerate(spec.get("verdict") or []):
        where = f"verdict[{i}]"
        check_type(check, dict, where, f"a mapping with {', '.join(sorted(CHECK_KEYS))}")
        check_keys(check, CHECK_KEYS, where)
        for key in ("says", "metric", "left", "op", "right"):
            if key not in check:
                raise ConfigError(f"study: {where} needs {key}:")
        if check.get("statistic", "mean") not in STATISTICS:
            raise ConfigError(f"study: {where}.statistic {check['statistic']!r} is unknown; accepted: {STATISTICS}")
        if check.get("statistic") == "exponent" and check.get("x") not in factors:
            raise ConfigError(f"study: {where}: statistic exponent needs x: a numeric factor ({', '.join(factors)})")
        if check["op"] not in OPS:
            raise ConfigError(f"study: {where}.op {check['op']!r} is unknown; accepted: {', '.join(OPS)}")
        parse_metric(check["metric"], f"{where}.metric")
        for side in ("left", "right"):
            selector = check[side]
            if isinstance(selector, int | float) and side == "right":
                continue
            check_type(selector, dict, f"{where}.{side}", "a mapping of factor -> level (right: also a number)")
            for factor in selector:
                if factor != "part" and factor not in factors:
                    raise ConfigError(f"study: {where}.{side}: {factor!r} is not a factor; accepted: part, "
                                      f"{', '.join(sorted(factors))}")  # fmt: skip


def check_args(plan_: Plan) -> None:
    """Parse every distinct run's `archlab fit` arguments with the real parser (nothing built or trained)."""
    from archlab import cli

    seen = set()
    for run in plan_.runs:
        args = tuple(run.args[:-2])  # the seed does not change what parses
        if args in seen:
            continue
        seen.add(args)
        try:
            cli.parse_fit(list(args))
        except ConfigError as error:
            raise ConfigError(f"study {plan_.name}, run {run.key}: {error}") from None


def parse_metric(metric: Any, where: str) -> tuple[str, str]:
    """`train/loss` (its last value), `min:train/loss`, `max:val/acc` -> (aggregate, name)."""
    if not isinstance(metric, str) or not metric:
        raise ConfigError(f"study: {where} must be a metric name like test/acc or min:train/loss, got {metric!r}")
    aggregate, sep, name = metric.partition(":")
    if not sep:
        return "last", metric
    if aggregate not in AGGREGATES:
        raise ConfigError(f"study: {where} {metric!r}: {aggregate!r} is not one of {', '.join(AGGREGATES)}")
    return aggregate, name


def resolve(path: str, file: Path, where: str) -> str:
    candidate = Path(path) if Path(path).is_absolute() else file.parent / path
    if not candidate.is_file():
        raise ConfigError(f"study: {where}: config {path!r} not found (looked for {candidate})")
    return str(candidate.resolve())


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def check_keys(mapping: dict[str, Any], accepted: set[str], where: str) -> None:
    unknown = sorted(set(mapping) - accepted - {"_file"})
    if unknown:
        raise ConfigError(
            f"study: {where} has unknown key(s) {', '.join(unknown)}; accepted: {', '.join(sorted(accepted))}"
        )


def check_type(value: Any, kind: type, where: str, expected: str) -> None:
    if not isinstance(value, kind):
        raise ConfigError(f"study: {where} must be {expected}, got {value!r}")
