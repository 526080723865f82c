"""The images a compile verifies on: seeded noise, flat-block images with exact score ties, real images;
and calibration images (``vitshrink masks --calib``)."""
from __future__ import annotations

from typing import Optional

import torch
from PIL import Image

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
