"""Any timm image model as an archlab classifier, with pretrained weights read only from local disk.

Wightman. "PyTorch Image Models" (timm). https://github.com/huggingface/pytorch-image-models

`pretrained=True` looks for timm's default weights for the name in the local Hugging Face hub cache and the torch hub
cache, and fails with a ConfigError if they are not there: it never downloads and never falls back to a random init.
`pretrained="/path/to/weights.safetensors"` (or .pth / .bin / original .npz) loads that file; a checkpoint whose
classifier matches num_classes keeps it, any other gets a new classifier (timm's fine-tuning rule).
"""

import difflib
import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from timm.models import PretrainedCfg

from archlab.errors import ConfigError
from archlab.loading import unreadable

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class TimmNet(nn.Module):
    """image -> timm.create_model(name) -> logits."""

    def __init__(
        self,
        name: str,
        *,
        pretrained: bool | str = False,
        in_channels: int = 3,
        num_classes: int = 10,
        image_size: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        # timm (and huggingface_hub) load here, not at import: importing them costs about 1.1 s, which every
        # `archlab` command paid, `fit --help` included, though only a TimmNet uses them.
        import timm
        from timm.models import get_pretrained_cfg, split_model_name_tag

        if not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.5)
            hint = f" Close matches: {', '.join(close)}." if close else ""
            raise ConfigError(
                f"Unknown timm model name {name!r}.{hint} timm.list_models('pattern*') lists the valid names."
            )
        try:
            cfg = get_pretrained_cfg(name)
        except RuntimeError as e:  # a known architecture with an unknown ".tag"
            arch, tag = split_model_name_tag(name)
            tags = ", ".join(timm.list_pretrained(f"{arch}.*")) or "none"
            raise ConfigError(f"timm model {arch!r} has no pretrained tag {tag!r}; its tagged names: {tags}.") from e
        if min(in_channels, num_classes) < 1:
            raise ConfigError(
                f"TimmNet in_channels and num_classes must be >= 1; got in_channels={in_channels}, "
                f"num_classes={num_classes}."
            )
        self.num_classes = num_classes

        kwargs = {"in_chans": in_channels, "num_classes": num_classes, "drop_rate": dropout}
        # timm marks the models that take img_size (ViT, Swin, ...) with fixed_input_size; CNNs take any size
        if image_size is not None and cfg is not None and cfg.fixed_input_size:
            kwargs["img_size"] = image_size
        overlay = None
        if pretrained is True:
            overlay = _cached_weights(name, cfg)
        elif isinstance(pretrained, str | os.PathLike):
            overlay = _file_weights(name, Path(pretrained), cfg)
        try:
            self.model = timm.create_model(
                name, pretrained=overlay is not None, pretrained_cfg_overlay=overlay, **kwargs
            )
        except Exception as e:  # weights that do not fit the architecture, or an unreadable cached file
            if overlay is None:
                raise
            if "file" in overlay and not isinstance(e, RuntimeError | KeyError | ValueError):
                raise unreadable(e, Path(overlay["file"]), what=f"model.net.pretrained ({name})") from None
            source = f"from the local cache ({overlay.get('file')})" if pretrained is True else f"from {pretrained!r}"
            raise ConfigError(
                f"Could not load the pretrained weights {source} into timm model {name!r}: {type(e).__name__}: {e}"
            ) from e
        self.model.pretrained_cfg.pop("state_dict", None)  # timm keeps the loaded state dict there: a second copy

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)  # (B, in_channels, H, W) -> (B, num_classes)


def _cached_weights(name: str, cfg: "PretrainedCfg | None") -> dict:
    """Return a pretrained_cfg overlay that points timm at its default weights for `name` in a local cache."""
    import huggingface_hub

    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise ConfigError(
            f"timm has no pretrained weights for {name!r} (see timm.list_pretrained()); set "
            f"`pretrained: /path/to/weights.safetensors` to load your own, or `pretrained: false`."
        )
    searched = []
    if cfg.hf_hub_id:
        repo_id, _, revision = cfg.hf_hub_id.partition("@")
        for filename in (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HF_WEIGHT_FILES:
            path = huggingface_hub.try_to_load_from_cache(repo_id, filename, revision=revision or None)
            if isinstance(path, str):
                return {"file": path}
        searched.append(f"the Hugging Face cache ({huggingface_hub.constants.HF_HUB_CACHE}, repo {repo_id})")
    if cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name
        if path.is_file():
            return {"file": str(path), "custom_load": cfg.custom_load}
        searched.append(f"the torch hub cache ({path})")
    raise ConfigError(
        f"No local pretrained weights were found for timm model {name!r}; searched {' and '.join(searched)}. "
        f"Downloads are off: fetch them where there is a network (timm.create_model({name!r}, pretrained=True)) "
        f"and copy the cache over, or set `pretrained: /path/to/weights.safetensors` (or .pth)."
    )


def _file_weights(name: str, path: Path, cfg: "PretrainedCfg | None") -> dict:
    """Return a pretrained_cfg overlay that loads `path`, keeping its classifier when its class count matches."""
    from timm.models import load_state_dict

    if not path.is_file():
        raise ConfigError(
            f"Pretrained weights file {path.resolve()} for timm model {name!r} does not exist; `pretrained` takes "
            f"true (timm's weights from the local cache), false, or the path of a .safetensors / .pth file."
        )
    if path.suffix == ".npz":  # original JAX / big_vision checkpoints, read by the model's own loader
        return {"file": str(path), "custom_load": True}
    try:
        # safetensors never unpickles; any other file goes through torch.load(weights_only=True) inside timm.
        state_dict = load_state_dict(str(path), weights_only=True)
    except Exception as e:
        raise unreadable(e, path, what=f"model.net.pretrained ({name})") from None
    overlay = {"state_dict": state_dict}
    classifier = cfg.classifier if cfg is not None else None
    classifier = classifier[0] if isinstance(classifier, tuple | list) else classifier
    if classifier and f"{classifier}.weight" in state_dict:
        # timm replaces the classifier when num_classes differs from the checkpoint's class count
        overlay["num_classes"] = state_dict[f"{classifier}.weight"].shape[0]
    return overlay
