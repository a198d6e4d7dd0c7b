"""What archlab offers, by name: its nets, tasks, DataModules, configs and sweep files (`archlab list`), and the short
names that stand for their class paths on the command line (`--data Digits`, `--model.net ResNet`).

The names are read from the packages' sources (their `__init__` exports and class docstrings) rather than imported,
so `archlab list` answers without loading torch or Lightning.
"""

import ast
import difflib
import functools
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
# Options that take a class path, and the package whose classes their short names stand for.
CLASS_OPTIONS = {
    "--model": "tasks",
    "--model.help": "tasks",
    "--model.net": "models",
    "--model.init_args.net": "models",
    "--model.net.help": "models",
    "--data": "data",
    "--data.help": "data",
}
# The shared bases a config never names by themselves (CIFAR10 and MNIST are bases too, and usable).
BASES = ("Task", "DataModule", "ImageDataModule", "VisionDataModule", "SegmentationDataModule", "TextClassification")
LINE = 118
KINDS = {"models": "nets (--model.net)", "tasks": "tasks (--model)", "data": "DataModules (--data)"}


@dataclass(frozen=True)
class Entry:
    name: str
    class_path: str
    summary: str


@functools.cache
def entries(package: str) -> tuple[Entry, ...]:
    """The classes `archlab.<package>` exports that a config can name: not the shared bases, not the parts of a net
    (a DCGAN's Generator) that no config names alone."""
    init = ast.parse((PACKAGE / package / "__init__.py").read_text())
    exported = {}
    for node in init.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(f"archlab.{package}."):
            for alias in node.names:
                exported[alias.asname or alias.name] = node.module
    classes = {}
    for module in set(exported.values()):
        tree = ast.parse((PACKAGE / Path(*module.split(".")[1:])).with_suffix(".py").read_text())
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and exported.get(node.name) == module:
                classes[node.name] = node
    registered = registry_names(init) if package == "models" else None
    found = []
    for name, node in sorted(classes.items()):
        if name in BASES or (registered is not None and name not in registered) or not ast.get_docstring(node):
            continue
        summary = ast.get_docstring(node).strip().splitlines()[0]
        found.append(Entry(name, f"archlab.{package}.{name}", summary))
    return tuple(found)


def registry_names(init: ast.Module) -> set[str]:
    """The names in `archlab.models.MODELS`, the registry of nets the configs and tests use."""
    for node in init.body:
        if isinstance(node, ast.AnnAssign | ast.Assign) and isinstance(node.value, ast.Dict):
            return {value.id for value in node.value.values if isinstance(value, ast.Name)}
    return set()


def class_path(option: str, value: str) -> str:
    """`--data Digits` -> archlab.data.Digits: archlab's own classes first, since torchvision and timm export a
    `ResNet` too (jsonargparse refuses a short name that several imported classes share)."""
    package = CLASS_OPTIONS.get(option)
    if package is None or "." in value:
        return value
    return next((entry.class_path for entry in entries(package) if entry.name == value), value)


def expand_short_names(args: list[str]) -> list[str]:
    """Every `--data NAME` / `--model.net NAME` / `--data.help NAME` ... with its archlab class path."""
    out = []
    for i, arg in enumerate(args):
        option, eq, value = arg.partition("=")
        if eq and option in CLASS_OPTIONS:
            arg = f"{option}={class_path(option, value)}"
        elif i > 0 and args[i - 1] in CLASS_OPTIONS and not arg.startswith("-"):
            arg = class_path(args[i - 1], arg)
        out.append(arg)
    return out


def closest(name: str, package: str) -> list[str]:
    return difflib.get_close_matches(name, [entry.name for entry in entries(package)], n=3, cutoff=0.5)


def root() -> Path:
    """The checkout that holds configs/ (the working directory's, else the one archlab was installed from)."""
    for candidate in (Path.cwd(), PACKAGE.parents[1]):
        if (candidate / "configs").is_dir():
            return candidate
    return Path.cwd()


def config_summary(path: Path) -> str:
    """A config's first comment line, else the classes it names."""
    lines = path.read_text().splitlines()
    comment = next((line.lstrip("# ").strip() for line in lines if line.startswith("#") and line.strip("# ")), "")
    if comment:
        return comment
    named = [line.split(":", 1)[1].strip().rsplit(".", 1)[-1] for line in lines if "class_path:" in line]
    return ", ".join(named)


def listing() -> str:
    sections = []
    for package, title in KINDS.items():
        rows = [(entry.name, entry.summary) for entry in entries(package)]
        sections.append((title, rows))
    base = root()
    for title, folder in (("configs (-c)", "configs"), ("hardware presets (-c, after a config)", "configs/trainer"),
                          ("sweep files (archlab sweep -c)", "configs/sweeps")):  # fmt: skip
        paths = sorted((base / folder).glob("*.yaml"))
        sections.append((title, [(str(path.relative_to(base)), config_summary(path)) for path in paths]))
    text = []
    for title, rows in sections:
        text.append(f"{title}:")
        width = max((len(name) for name, _ in rows), default=0)
        for name, summary in rows:
            line = f"  {name:<{width}}  {summary}".rstrip()
            text.append(line if len(line) <= LINE else line[: LINE - 3].rstrip() + "...")
        text.append("")
    text.append("Short names work wherever a class path is expected: --data Digits, --model.net ResNet,")
    text.append("--data.help Digits, --model.net.help ResNet. Any other class by its full path (torchvision.models.")
    text.append("ResNet, a class of your own package); `archlab fit --model.net.help <path>` shows its options.")
    return "\n".join(text) + "\n"
