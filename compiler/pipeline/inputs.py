"""A compile's inputs: the images it verifies on (seeded noise, flat-block images with exact score ties, real
images), calibration images (``vitshrink masks --calib``), the spec's model check and the checkpoint
tensors a spec reads."""
from __future__ import annotations

from typing import Optional

import torch
from PIL import Image

from ..errors import SpecError
from ..runtime.accuracy import list_images


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


def verification_images(n: int, shape: tuple[int, int, int], data: Optional[str], transform, num_classes: int,
                        patch: tuple[int, int] = (16, 16)) -> torch.Tensor:
    """``n`` seeded standard-normal images, 2 flat-block images (exact score ties), plus up to ``n``
    real images from ``data`` when given."""
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn((n, *shape), generator=g), tie_images(2, shape, patch)]
    if data:
        real = []
        for path, _ in list_images(data, num_classes)[:n]:
            with Image.open(path) as im:
                real.append(transform(im.convert("RGB")))
        xs.append(torch.stack(real))
    return torch.cat(xs)


def calibration_images(directory: str, n: int, transform, num_classes: int) -> torch.Tensor:
    """``n`` images evenly spaced over an ImageFolder directory, transformed: [n, C, H, W]."""
    items = list_images(directory, num_classes)
    step = max(1, len(items) // n)
    xs = []
    for path, _ in items[::step][:n]:
        with Image.open(path) as im:
            xs.append(transform(im.convert("RGB")))
    return torch.stack(xs)


def check_spec_model(spec, model_name: str, allowed: bool) -> None:
    """A spec that names the model it was written for (``meta.model``, as ``vitshrink masks`` records it)
    must be compiled for that model: its index lists would fit any larger one.

    Raises:
        SpecError: ``meta.model`` names another model and ``allowed`` is off (both are named).
    """
    named = spec.meta.get("model") if isinstance(spec.meta, dict) else None
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
