"""What the `archlab` parser says about a command line: help limited to archlab's own classes, and one paragraph for
a command line it rejects, naming the key and the closest valid ones, instead of jsonargparse's nested report of
every union member it tried.
"""

import difflib
import importlib
import inspect
import re
from argparse import Action
from pathlib import Path

from jsonargparse import DefaultHelpFormatter

from archlab import catalog

KNOWN = ", known subclasses: "
# Lines of jsonargparse's report that say how it searched, not what is wrong.
NOISE = ("Parser key", "Problem with given class_path", "Subtypes:", "Errors:", "Given value", "Does not validate")


class HelpFormatter(DefaultHelpFormatter):
    """`--model.net NET (... known subclasses: <every nn.Module in torch, torchvision and timm>)` -> archlab's nets and
    a hint for any other class; the same for --model (tasks) and --data (DataModules)."""

    def _get_help_string(self, action: Action) -> str:
        text = super()._get_help_string(action)
        head, known, _ = text.partition(KNOWN)
        package = catalog.CLASS_OPTIONS.get(f"--{action.dest}")
        if not known or package is None:
            return text
        ours = ", ".join(entry.name for entry in catalog.entries(package))
        return f"{head}; archlab's: {ours} (`archlab list`); any other class by its full path, package.module.Class)"


def import_class(class_path: str) -> type | None:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def options_of(cls: type) -> list[str]:
    """The keyword arguments a class takes, its bases' included where it passes **kwargs on."""
    names = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return list(dict.fromkeys(names))


def one_paragraph(message: str, prog: str = "archlab fit", options: list[str] | None = None) -> str:
    """jsonargparse's error `message` as one paragraph: the full key, what is wrong with it, what would be accepted
    (`options`: the parser's option strings, for a top-level option it does not know)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    keys, cls = [], None
    for line in lines:
        if found := re.match(r'(?:- )?Parser key "([^"]+)":', line):
            keys.append(found.group(1))  # and on the same line, maybe: File does not exist: '...'
        if found := re.search(r"File does not exist: '(.+)'", line):
            return missing_file(".".join(keys), found.group(1))
        elif found := re.match(r"(?:- )?Problem with given class_path '([^']+)':", line):
            cls = found.group(1)
        elif found := re.match(r"(?:- )?Option '([^']+)' is not accepted", line):
            return unknown_option(".".join(keys), found.group(1), cls, prog)
        elif found := re.match(r"(?:- )?Multiple subclasses with name (\w+)", line):
            return (
                f"--{'.'.join(keys)} {found.group(1)}: several installed classes are named {found.group(1)} and "
                f"none of them is archlab's; give the full class path ({line.split(': ', 1)[-1].rstrip('.')})."
            )
        elif found := re.search(r"Import path (\S+) does not correspond to a subclass of (\w+)", line):
            return not_a_subclass(".".join(keys), found.group(1), found.group(2))
        elif found := re.match(r"(?:- )?Expected a dot import path string: (\S+)", line):
            return unknown_class(".".join(keys), found.group(1))
        elif found := re.match(r"(?:- )?Expected a (.+?)\. Got value: (.*)", line):
            return f"--{'.'.join(keys)} {found.group(2)}: expected {type_name(found.group(1))}."
        elif found := re.match(r"(?:- )?the following arguments are required: (.*)", line):
            owner = cls.rsplit(".", 1)[-1] if cls else ".".join(keys)
            needed = ", ".join(f"--{'.'.join(keys)}.{name.strip()}" for name in found.group(1).split(","))
            return f"--{'.'.join(keys)}: {owner} needs {needed}."
    if found := re.match(r"unrecognized arguments: (.*)", lines[0] if lines else ""):
        return unrecognized(found.group(1), prog, options or [])
    details = [line.removeprefix("- ") for line in lines if not line.startswith(NOISE) and "NoneType" not in line]
    given = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Given value:")), "")
    if keys and details and all(line.startswith("Expected a ") for line in details):
        expected = [type_name(line.removeprefix("- ")[len("Expected a ") :]) for line in lines if "Expected a " in line]
        return f"--{'.'.join(keys)} {given}: expected {' or '.join(expected)}."
    where = f"--{'.'.join(keys)}: " if keys else ""
    return where + " ".join(details or lines)


def missing_file(key: str, path: str) -> str:
    option = "-c" if key == "config" else f"--{key}"
    configs = [str(p.relative_to(catalog.root())) for p in (catalog.root() / "configs").rglob("*.yaml")]
    close = difflib.get_close_matches(Path(path).name, [Path(c).name for c in configs], n=2, cutoff=0.75)
    close = [c for c in configs if Path(c).name in close]
    guess = f" Did you mean {' or '.join(close)}? (`archlab list` shows every config.)" if close else ""
    return f"{option} {path}: no such file.{guess}"


def type_name(text: str) -> str:
    text = re.sub(r"<class '(?:builtins\.)?([\w.]+)'>", r"\1", text)
    return "null" if text == "NoneType" else text


def unknown_option(parent: str, option: str, class_path: str | None, prog: str) -> str:
    valid = options_of(cls) if class_path and (cls := import_class(class_path)) else []
    close = difflib.get_close_matches(option, valid, n=3, cutoff=0.5)
    guess = f"; did you mean {' or '.join(f'--{parent}.{name}' for name in close)}?" if close else "."
    owner = class_path.rsplit(".", 1)[-1] if class_path else parent
    listed = f" It takes: {', '.join(valid)}." if valid else ""
    helped = f" `{prog} --{parent}.help {owner}` describes them." if valid else ""
    return f"--{parent}.{option}: {owner} has no option {option!r}{guess}{listed}{helped}"


def unknown_class(key: str, name: str) -> str:
    package = catalog.CLASS_OPTIONS.get(f"--{key}")
    if package is None:
        return f"--{key} {name}: no class of that name; give the full class path (package.module.Class)."
    names = [entry.name for entry in catalog.entries(package)]
    close = catalog.closest(name, package)
    guess = f"did you mean {' or '.join(close)}? " if close else ""
    return (
        f"--{key} {name}: archlab has no class of that name; {guess}archlab's: {', '.join(names)} (`archlab list`). "
        "Any other class by its full import path."
    )


def not_a_subclass(key: str, class_path: str, base: str) -> str:
    package = catalog.CLASS_OPTIONS.get(f"--{key}")
    ours = f" archlab's: {', '.join(entry.name for entry in catalog.entries(package))}." if package else ""
    return f"--{key}: {class_path} is not a {base}, so it is refused and never called.{ours}"


def unrecognized(given: str, prog: str, options: list[str]) -> str:
    option = given.split()[0].split("=", 1)[0]
    close = difflib.get_close_matches(option, options, n=3, cutoff=0.6)
    guess = f"; did you mean {' or '.join(close)}?" if close else "."
    return f"{option} is not an option of `{prog}`{guess} `{prog} --help` lists every option."
