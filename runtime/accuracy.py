"""Accuracy on an ImageFolder directory: top-1/top-5 of each runner and their top-1 agreement.

Images are read once with the model's own timm eval transform (resize, center crop, normalise) and
fed to every runner, so dense and pruned see identical inputs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Optional

import numpy as np

from PIL import Image

from vitshrink.compat import ensure_timm_importable
from vitshrink.errors import VitshrinkError

from .base import Runner

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".webp"}


def list_images(root: str | Path, num_classes: int) -> list[tuple[Path, int]]:
    """``(path, label)`` for every image under ``root/<class>/``, sorted.

    Class folders map to labels by ImageNet-1k wnid when every folder is a wnid and the model has
    1000 classes (so a subset of the classes still gets the right label), else by sorted position
    when there are exactly ``num_classes`` folders.

    Raises:
        VitshrinkError: missing directory, no images, or folders that cannot be mapped to labels.
    """
    root = Path(root)
    if not root.is_dir():
        raise VitshrinkError(f"data directory '{root}': no such directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise VitshrinkError(f"data directory '{root}': no class folders (ImageFolder layout: DIR/<class>/<image>)")
    label_of: dict[str, int]
    wnids = None
    if num_classes == 1000:
        ensure_timm_importable()
        from timm.data import ImageNetInfo  # lazy: timm is heavy and imports only after the compat shim

        wnids = {w: i for i, w in enumerate(ImageNetInfo().label_names())}
    if wnids is not None and all(c in wnids for c in classes):
        label_of = {c: wnids[c] for c in classes}
    elif len(classes) == num_classes:
        label_of = {c: i for i, c in enumerate(classes)}
    else:
        raise VitshrinkError(
            f"data directory '{root}': {len(classes)} class folders cannot be mapped to the model's "
            f"{num_classes} classes (use ImageNet wnids as folder names, or one folder per class)"
        )
    items = [(p, label_of[c]) for c in classes for p in sorted((root / c).iterdir())
             if p.suffix.lower() in IMAGE_SUFFIXES]
    if not items:
        raise VitshrinkError(f"data directory '{root}': no images found")
    return items


def evaluate(
    runners: Mapping[str, Runner],
    data: str | Path,
    transform: Callable,
    num_classes: int,
    batch: int = 50,
    limit: Optional[int] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    items: Optional[list[tuple[Path, int]]] = None,
) -> dict:
    """Top-1/top-5 per runner and top-1 agreement between the first two runners.

    Args:
        items: the (path, label) pairs to evaluate instead of :func:`list_images` of ``data`` (e.g. the
            images held out from calibration); ``limit`` applies to either.
    Returns:
        ``{"n", "<name>_top1", "<name>_top5" for each runner, "top1_agreement", "predictions": {name: [n]
        top-1 class per image}}``, fractions in [0, 1].
    Raises:
        VitshrinkError: see :func:`list_images`; an image that cannot be decoded is named.
    """
    items = (list_images(data, num_classes) if items is None else list(items))[:limit]
    names = list(runners)
    top1 = {n: 0 for n in names}
    top5 = {n: 0 for n in names}
    preds: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        xs = []
        for path, _ in chunk:
            try:
                with Image.open(path) as im:
                    xs.append(transform(im.convert("RGB")).numpy())
            except OSError as e:
                raise VitshrinkError(f"image '{path}': cannot be decoded ({e})") from e
        x = np.stack(xs).astype(np.float32)
        y = np.array([label for _, label in chunk])
        for n in names:
            logits = runners[n].run(x)
            order = np.argsort(-logits, axis=1)[:, :5]
            top1[n] += int((order[:, 0] == y).sum())
            top5[n] += int((order == y[:, None]).any(axis=1).sum())
            preds[n].append(order[:, 0])
        if progress:
            progress(min(start + batch, len(items)), len(items))
    total = len(items)
    out: dict = {"n": total}
    for n in names:
        out[f"{n}_top1"] = top1[n] / total
        out[f"{n}_top5"] = top5[n] / total
    out["predictions"] = {n: np.concatenate(preds[n]) for n in names}
    if len(names) >= 2:
        a, b = (out["predictions"][n] for n in names[:2])
        out["top1_agreement"] = float((a == b).mean())
    return out
