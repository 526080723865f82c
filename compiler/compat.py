"""Let timm import on a CPU-only torch next to a CUDA build of torchvision.

The only torchvision for torch 2.13 (0.28.0) on the package index is a CUDA build. With the CPU
build of torch its compiled ops fail to register and ``import torchvision`` dies with
``operator torchvision::nms does not exist`` -- and timm imports torchvision. Defining the two op
schemas that torchvision's Python side looks up (``nms`` and ``qnms``) before the import lets it
finish. ViT, DeiT and Swin never call these ops; calling one would raise "no kernel".

The schemas are defined only when torchvision's compiled extension cannot be loaded into this torch
(tried first): where torch and torchvision match, torchvision registers its own ops and this is a no-op.
Everything in vitshrink that imports timm calls :func:`ensure_timm_importable` first; a script that imports
timm or transformers itself calls it before those imports (it is ``vitshrink.ensure_timm_importable``)::

    import vitshrink
    vitshrink.ensure_timm_importable()
    import timm
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

_LIBRARY = None  # keep the Library object alive: dropping it would un-define the schemas


def _schema_exists() -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw("torchvision::nms", "")
        return True
    except RuntimeError:
        return False


def _needs_shim() -> bool:
    """True when torchvision is installed but its compiled ops cannot register with this torch."""
    if "torchvision" in sys.modules or _schema_exists():
        return False
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    for folder in spec.submodule_search_locations:
        for lib in Path(folder).glob("_C*.so"):
            try:
                torch.ops.load_library(str(lib))
            except OSError:
                continue
            if _schema_exists():
                return False
    return True


def ensure_timm_importable() -> None:
    """Define ``torchvision::nms``/``qnms`` schemas when (and only when) torchvision needs them: after this,
    ``import timm`` (and ``import torchvision``) work on a CPU torch beside a CUDA torchvision. Idempotent;
    a no-op where torch and torchvision match or torchvision is absent, or once torchvision is imported."""
    global _LIBRARY
    if _LIBRARY is not None or not _needs_shim():
        return
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY = lib
