"""The search space: Optuna distributions from the sweep file's plain data, and its check before the first trial.

The check parses the base command once per probe, through the real CLI, and builds the net and the task of each
probe on the meta device (no weights allocated); the DataModule is built once, for the base command, and again only
for a probe that changes a `data.*` key. The probes cover every range end and every categorical choice: probe i sets
each key to its i-th candidate value, cycling through the shorter lists.
"""

import json
from difflib import get_close_matches
from typing import Any

import lightning as L
import optuna
from jsonargparse import Namespace
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from archlab import cli
from archlab.errors import ArchlabError, ConfigError

DISTRIBUTIONS = {"float": FloatDistribution, "int": IntDistribution, "categorical": CategoricalDistribution}


def make_distribution(key: str, spec: dict[str, Any]) -> BaseDistribution:
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"space.{key}: type must be one of {', '.join(DISTRIBUTIONS)} (got {kind!r})")
    if kind == "categorical" and not isinstance(spec.get("choices"), list | tuple):
        raise ConfigError(f"space.{key}: categorical needs choices: [a, b, ...] (got {spec})")
    try:
        return DISTRIBUTIONS[kind](**spec)
    except (TypeError, ValueError) as error:
        given = ", ".join(f"{k}: {v}" for k, v in spec.items())
        raise ConfigError(f"space.{key}: Optuna rejects {{type: {kind}, {given}}}: {error}") from None


def candidate_values(d: BaseDistribution) -> list[Any]:
    """The values a probe must try: every choice, or both ends of a range."""
    if isinstance(d, CategoricalDistribution):
        return list(d.choices)
    return [d.low, d.high] if d.low != d.high else [d.low]


def probes(distributions: dict[str, BaseDistribution]) -> list[dict[str, Any]]:
    """Points that together try every candidate value of every key: as many as the longest list of candidates."""
    candidates = {key: candidate_values(d) for key, d in distributions.items()}
    n = max(len(values) for values in candidates.values())
    return [{key: values[i % len(values)] for key, values in candidates.items()} for i in range(n)]


def grid_values(key: str, d: BaseDistribution) -> list[Any]:
    if isinstance(d, CategoricalDistribution):
        return list(d.choices)
    if isinstance(d, IntDistribution):
        return list(range(d.low, d.high + 1, d.step))
    if d.step is None:
        raise ConfigError(f"space.{key}: the grid sampler needs a finite set: give step, or use categorical choices")
    n = round((d.high - d.low) / d.step)
    return [d.low + i * d.step for i in range(n + 1)]


def suggest(trial: optuna.Trial, key: str, d: BaseDistribution) -> Any:
    if isinstance(d, CategoricalDistribution):
        return trial.suggest_categorical(key, d.choices)
    if isinstance(d, IntDistribution):
        return trial.suggest_int(key, d.low, d.high, step=d.step, log=d.log)
    return trial.suggest_float(key, d.low, d.high, step=d.step, log=d.log)


def option_args(values: dict[str, Any]) -> list[str]:
    """{"model.lr": 0.001, "model.net.channels": [8, 16]} -> --model.lr 0.001 --model.net.channels "[8, 16]"."""
    return [
        arg
        for key, value in values.items()
        for arg in (f"--{key}", value if isinstance(value, str) else json.dumps(value))
    ]


def resolve_key(config: Namespace, key: str, base: list[str]) -> str:
    """The full config path of a dotted key, accepting the CLI's shorthand (model.lr for model.init_args.lr)."""
    node, path = config, []
    for part in key.split("."):
        if isinstance(node, Namespace) and part in vars(node):
            node, path = node[part], [*path, part]
        elif (
            isinstance(node, Namespace)
            and isinstance(node.get("init_args"), Namespace)
            and part in vars(node.init_args)
        ):
            node, path = node.init_args[part], [*path, "init_args", part]
        else:
            here = node.init_args if isinstance(node, Namespace) and "init_args" in node else node
            keys = list(vars(here)) if isinstance(here, Namespace) else []
            close = get_close_matches(part, keys, n=3)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            where = ".".join(path) or "the top level"
            raise ConfigError(
                f"space key {key!r} is not in the base config ({', '.join(base)}): {where} has no {part!r}{hint} "
                f"Keys there: {', '.join(keys) or 'none'}"
            )
    return ".".join(path)


def check(
    fit_args: list[str], distributions: dict[str, BaseDistribution], *, keys: list[str], base: list[str], probe: bool
) -> Namespace:
    """The base command's resolved config, after checking that every key exists and, with `probe`, that every probe
    of the space parses and builds. A rejected value raises a ConfigError naming its key."""
    config = cli.parse_fit(fit_args)
    for key in keys:
        resolve_key(config, key, base)
    if probe:
        data = cli.build(config, meta=True).data
        for point in probes(distributions):
            error = rejection(fit_args, point, data)
            if error is not None:
                raise culprit(fit_args, point, data, error)
    return config


def rejection(fit_args: list[str], point: dict[str, Any], data: L.LightningDataModule) -> ArchlabError | None:
    """What the CLI says against this point of the space, or None: parsed, then net and task built on meta."""
    changes_data = any(key.split(".")[0] == "data" for key in point)
    try:
        config = cli.parse_fit([*fit_args, *option_args(point)])
        cli.build(config, data=None if changes_data else data, meta=True)
    except ArchlabError as error:
        return error
    return None


def culprit(
    fit_args: list[str], point: dict[str, Any], data: L.LightningDataModule, error: ArchlabError
) -> ConfigError:
    """The error for a rejected point, naming the key whose value alone is rejected, when one is."""
    for key, value in point.items():
        alone = error if len(point) == 1 else rejection(fit_args, {key: value}, data)
        if alone is not None:
            return ConfigError(f"space.{key}: the value {value!r} is rejected: {alone}")
    return ConfigError(f"space: the combination {point} is rejected: {error}")
