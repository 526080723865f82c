"""A compile's inputs: the images it verifies on (seeded noise, flat-block images with exact score ties, real
images), the spec's model check and the checkpoint tensors a spec reads. Calibration images: :mod:`.calibration`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ..errors import SpecError
from ..frontends.timm import label_names_of
from ..runtime.accuracy import read_labels
from .calibration import load_images


def tie_images(n: int, shape: tuple[int, int, int], patch: tuple[int, int], seed: int = 1) -> torch.Tensor:
    """``n`` images of flat patch-sized blocks from a 3-colour palette: many identical patches, so
    token scores tie exactly -- the case where a careless top-k differs between runtimes."""
    g = torch.Generator().manual_seed(seed)
    C, H, W = shape
    gh, gw = H // patch[0], W // patch[1]
    palette = torch.randn(3, C, generator=g)
    pick = torch.randint(0, 3, (n, gh, gw), generator=g)
    img = palette[pick].permute(0, 3, 1, 2)  # [n, C, gh, gw]
    return img.repeat_interleave(patch[0], 2).repeat_interleave(patch[1], 3)


def verification_images(n: int, shape: tuple[int, int, int], real: Optional[list[Path]], transform,
                        patch: tuple[int, int] = (16, 16)) -> tuple[torch.Tensor, int]:
    """``n`` seeded standard-normal images, 2 flat-block images (exact score ties), plus up to ``n``
    real images (the first of ``real``: ``--data``'s, else the calibration images) when given.

    Returns:
        (images [B, C, H, W], how many of the last rows are real images).
    """
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn((n, *shape), generator=g), tie_images(2, shape, patch)]
    k = 0
    if real:
        xs.append(load_images(list(real)[:n], transform))
        k = xs[-1].shape[0]
    return torch.cat(xs), k


def check_spec_model(spec, model_name: str, allowed: bool) -> None:
    """A spec that names the model it was written for (``meta.model``, as ``vitshrink masks`` records it)
    must be compiled for that model: its index lists would fit any larger one.

    Raises:
        ModelError: ``meta.model`` names another model and ``model_name`` is no timm model (a typo: checked
            first, with the closest names, so the hint below is not followed into "unknown model").
        SpecError: ``meta.model`` names another model and ``allowed`` is off (both are named).
    """
    named = spec.meta.get("model") if isinstance(spec.meta, dict) else None
    if named and named != model_name:
        from ..frontends.timm import check_model_name  # lazy: timm loads only here
        check_model_name(model_name)
    if named and named != model_name and not allowed:
        raise SpecError("meta.model", f"{spec.source} was written for {named}, not {model_name} "
                                      "(pass --allow-model-mismatch to compile it anyway)")


def referenced_tensors(resolved, tensors: dict) -> dict:
    """The checkpoint tensors a resolved spec reads: exit classifier and token predictor weights."""
    prefixes = [r.predictor.prefix for r in resolved.dynamic.values() if r.predictor is not None]
    e = resolved.exit
    if e is not None:
        prefixes += [p for p in (e.head, e.head_dist, e.norm) if p is not None]
    return {k: v for k, v in tensors.items() if any(k.startswith(p + ".") for p in prefixes)}


def label_names(labels_file: Optional[str], model) -> tuple[Optional[tuple[str, ...]], str]:
    """The label names ``--data``'s folders are matched to, and where they were read: ``--labels FILE``
    (:func:`vitshrink.runtime.accuracy.read_labels`), else the timm model's own (an HF ``id2label``, timm's
    ``label_names``: :func:`vitshrink.frontends.timm.label_names_of`), else (None, "").

    Raises:
        VitshrinkError: an unreadable ``--labels`` file (named).
    """
    return read_labels(labels_file) if labels_file else label_names_of(model)
