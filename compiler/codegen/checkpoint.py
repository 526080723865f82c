"""The pruned checkpoint on disk: ``arch.json`` + ``model.safetensors``, written by :func:`save` and
rebuilt by :func:`load` with the generated class its ``arch.json`` names -- no timm needed.

Checkpoint directory layout:

- ``model.safetensors``: the state dict of the generated model
- ``arch.json``: ``{"format": "vitshrink.arch/1", ...}`` (ViT/DeiT) or ``"vitshrink.swin-arch/1"`` (Swin)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import VitshrinkError
from .layers import PrunedModel


def save(model: nn.Module, directory: str | Path) -> Path:
    """Write a generated ``model`` (:class:`~vitshrink.codegen.layers.PrunedModel`) as ``arch.json`` +
    ``model.safetensors`` into ``directory`` (created)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "arch.json").write_text(json.dumps(model.arch, indent=1) + "\n")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"),
              metadata={"format": model.arch["format"]})
    return directory


def load(directory: str | Path, arch: Optional[dict] = None) -> PrunedModel:
    """Rebuild a pruned model saved by :func:`save` (or by ``vitshrink compile``: its ``DIR/model``).

    Needs only vitshrink and torch: no timm, no original model class.

    Raises:
        VitshrinkError: the directory lacks ``arch.json`` / ``model.safetensors`` or they disagree.
    """
    directory = Path(directory)
    if (directory / "model" / "arch.json").is_file():  # a `vitshrink compile` output directory
        directory = directory / "model"
    for f in ("arch.json", "model.safetensors"):
        if not (directory / f).is_file():
            raise VitshrinkError(f"'{directory / f}': no such file (not a vitshrink pruned checkpoint)")
    arch = arch or json.loads((directory / "arch.json").read_text())
    model = PrunedModel.class_for(arch)(arch)
    try:
        model.load_state_dict(load_file(str(directory / "model.safetensors")), strict=True)
    except RuntimeError as e:
        raise VitshrinkError(f"'{directory}': weights do not match arch.json ({str(e).splitlines()[0]})") from e
    return model.eval()
