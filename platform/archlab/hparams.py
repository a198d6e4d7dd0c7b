"""The command line against a checkpoint's hyperparameters.

With `--ckpt_path`, LightningCLI rebuilds the task from the hyperparameters stored in the checkpoint, laid over the
parsed config, so a `--model.*` option given on the command line would be dropped without a word. archlab compares
each one with the checkpoint's value instead:

    fit (a resumed run)         the command line applies (the net must still load the checkpoint's weights)
    validate, test, predict     an inference-time option (INFERENCE) applies; any other that differs is an error
"""

from jsonargparse import Namespace

from archlab.errors import ConfigError

# Task arguments that shape what an evaluation or predict produces, not the weights it loads: sampling and sample
# counts, image grids, compilation and memory layout.
INFERENCE = ("temperature", "top_k", "sample_len", "num_samples", "fid_samples", "overlay_images", "compile",
             "channels_last")  # fmt: skip


def model_options(args: list[str]) -> list[list[str]]:
    """The `--model...` options given on the command line, as key parts below `model` (`--model.net.depth 56` ->
    ["net", "depth"]; `--model X`, which picks the task class, -> [])."""
    options = []
    for arg in args:
        key = arg[2:].split("=", 1)[0] if arg.startswith("--model") else ""
        if key != "model" and not key.startswith("model."):
            continue
        parts = [part for part in key.split(".")[1:] if part not in ("init_args", "class_path", "dict_kwargs")]
        if parts[-1:] != ["help"] and parts not in options:
            options.append(parts)
    return options


def locate(model: Namespace, parts: list[str]) -> str | None:
    """The dotted key of `parts` in a `model` config (init_args inserted where a level is a class), or None."""
    key, node = "", model
    for part in parts:
        if isinstance(node, Namespace) and "init_args" in node:
            key, node = f"{key}init_args.", node.get("init_args")
        if not isinstance(node, Namespace) or part not in node:
            return None
        key, node = f"{key}{part}.", node.get(part)
    if isinstance(node, Namespace) and "class_path" in node:  # a class chosen by name: its class, not its arguments
        key += "class_path."
    return key.rstrip(".")


def reconcile(subcommand: str, given: Namespace, stored: Namespace, options: list[list[str]], ckpt_path: str) -> None:
    """Lay the command line's `--model.*` `options` (their values in `given`, the model config parsed before the
    checkpoint was read) over `stored` (the model config LightningCLI took from the checkpoint), or raise."""
    for parts in options:
        key = locate(given, parts)
        if key is None:
            continue
        value = given.get(key)
        if stored.get(key) == value:
            continue
        name = ".".join(["model", *parts])
        if subcommand == "fit" or (len(parts) == 1 and parts[0] in INFERENCE):
            stored[key] = value
            continue
        raise ConfigError(
            f"--{name} {value} differs from the checkpoint's {stored.get(key)} ({ckpt_path}): {subcommand} rebuilds "
            "the model from the hyperparameters stored in the checkpoint, whose weights were trained with them, so "
            f"this option cannot apply. Options that do apply at {subcommand} time: "
            f"{', '.join(f'--model.{option}' for option in INFERENCE)}, and every --data.* and --trainer.* option. "
            f"Drop --{name}, or train a model with it (archlab fit ... --{name} {value})."
        )
