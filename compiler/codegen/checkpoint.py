"""The pruned checkpoint on disk: ``arch.json`` + ``model.safetensors``, written by :func:`save` and
rebuilt by :func:`load` with the generated class its ``arch.json`` names -- no timm needed.

Checkpoint directory layout:

- ``model.safetensors``: the state dict of the generated model
- ``arch.json``: ``{"format": "vitshrink.arch/1", ...}`` (ViT/DeiT) or ``"vitshrink.swin-arch/1"`` (Swin)
- ``stem.pt2`` (hybrid ViTs only): the opaque convolutional stem as a ``torch.export`` program -- its
  structure; its weights are in ``model.safetensors`` under ``stem.``
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import VitshrinkError
from .layers import PrunedModel


STEM = "stem.pt2"


def save(model: nn.Module, directory: str | Path) -> Path:
    """Write a generated ``model`` (:class:`~vitshrink.codegen.layers.PrunedModel`) as ``arch.json`` +
    ``model.safetensors`` (+ ``stem.pt2`` for a hybrid ViT) into ``directory`` (created)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = getattr(model, "stem", None)
    if stem is not None:  # the trunk's structure, so that loading needs neither timm nor its class
        shape = (2, model.arch["in_chans"], *model.arch["img_size"])
        program = torch.export.export(stem.eval(), (torch.zeros(shape),),
                                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
        torch.export.save(program, str(directory / STEM))
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
    if arch.get("stem") is not None:
        if not (directory / STEM).is_file():
            raise VitshrinkError(f"'{directory / STEM}': no such file (arch.json names a convolutional stem)")
        stem = torch.export.load(str(directory / STEM)).module()
        model = PrunedModel.class_for(arch)(arch, stem=stem)  # its parameters keep their names: stem.* loads
    else:
        model = PrunedModel.class_for(arch)(arch)
    try:
        model.load_state_dict(load_file(str(directory / "model.safetensors")), strict=True)
    except RuntimeError as e:
        raise VitshrinkError(f"'{directory}': weights do not match arch.json ({str(e).splitlines()[0]})") from e
    return model.eval()
