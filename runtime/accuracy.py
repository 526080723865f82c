"""Accuracy on an ImageFolder directory: top-1/top-5 of each runner and their top-1 agreement.

Images are read once with the model's own timm eval transform (resize, center crop, normalise) and
fed to every runner, so dense and pruned see identical inputs.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from PIL import Image

from vitshrink.compat import ensure_timm_importable
from vitshrink.errors import VitshrinkError

from .base import Runner

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".webp"}


def read_labels(path: str | Path) -> tuple[tuple[str, ...], str]:
    """``--labels FILE``: one label name per output in output order -- a ``.json`` list or ``{index: name}``
    (an ``id2label``), or text with one name per line -- and where they were read.

    Raises:
        VitshrinkError: a missing or unreadable file, an empty one, or an ``{index: name}`` map with holes (named).
    """
    path = Path(path)
    try:
        text = path.read_text()
        raw = json.loads(text) if path.suffix == ".json" else [ln.strip() for ln in text.splitlines() if ln.strip()]
    except (OSError, ValueError) as e:
        raise VitshrinkError(f"--labels '{path}': cannot be read ({type(e).__name__}: {e})".splitlines()[0]) from None
    if isinstance(raw, dict):
        try:
            by_index = {int(k): str(v) for k, v in raw.items()}
        except ValueError:
            raise VitshrinkError(f"--labels '{path}': the keys of an {{index: name}} map must be integers") from None
        raw = [by_index.get(i) for i in range(len(by_index))]
        if None in raw:
            raise VitshrinkError(f"--labels '{path}': indices must run 0..{len(raw) - 1} without holes")
    if not isinstance(raw, list) or not raw or not all(isinstance(n, (str, int)) for n in raw):
        raise VitshrinkError(f"--labels '{path}': expected a list of names (JSON list, {{index: name}}, or one per line)")
    return tuple(str(n) for n in raw), f"--labels {path}"


def _norm(name: str) -> str:
    """A label name as a folder may spell it: case, spaces, hyphens and underscores ignored."""
    return re.sub(r"[\s_\-]+", "", str(name)).casefold()


def map_folders(classes: list[str], num_classes: int, label_names: Optional[Sequence[str]] = None,
                names_from: str = "the model's label names") -> tuple[dict[str, int], str]:
    """Which model output each class folder is: ``({folder: output index}, how)``.

    In this order: ImageNet-1k wnids when the model has 1000 outputs and every folder is a wnid (a subset of
    the classes scores those classes); else the model's own label names (Hugging Face ``config.id2label``, timm's
    ``label_names``, ``--labels``) matched by name (case, spaces, ``-`` and ``_`` ignored), every folder
    required; else sorted position when there are exactly ``num_classes`` folders.

    Args:
        classes: the folder names; num_classes: the classifier's outputs; label_names: [num_classes] names or None.
    Raises:
        VitshrinkError: folders the label names do not cover (named), or folders that cannot be mapped at all.
    """
    if num_classes == 1000:
        ensure_timm_importable()
        from timm.data import ImageNetInfo  # lazy: timm is heavy and imports only after the compat shim

        wnids = {w: i for i, w in enumerate(ImageNetInfo().label_names())}
        if all(c in wnids for c in classes):
            return {c: wnids[c] for c in classes}, "ImageNet-1k wnids (folder name = wnid)"
    if label_names is not None and len(label_names) == num_classes:
        index: dict[str, int] = {}
        for i, n in enumerate(label_names):
            index.setdefault(_norm(n), i)
        missing = [c for c in classes if _norm(c) not in index]
        if missing:
            shown = ", ".join(f"'{c}'" for c in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise VitshrinkError(
                f"{len(missing)} of {len(classes)} class folders are not among {names_from} ({shown}; the model's: "
                + ", ".join(f"'{n}'" for n in list(label_names)[:4]) + (", ..." if num_classes > 4 else "")
                + "): rename the folders, or give --labels FILE (one name per output, in output order)")
        return {c: index[_norm(c)] for c in classes}, f"folder name = label name ({names_from})"
    if len(classes) == num_classes:
        return {c: i for i, c in enumerate(sorted(classes))}, "sorted folder order (the model has no label names)"
    raise VitshrinkError(
        f"{len(classes)} class folders cannot be mapped to the model's {num_classes} classes (it has no label "
        "names: use ImageNet wnids as folder names, one folder per class, or --labels FILE)")


def list_images(root: str | Path, num_classes: int, label_names: Optional[Sequence[str]] = None,
                names_from: str = "the model's label names") -> tuple[list[tuple[Path, int]], str]:
    """``([(path, label)] for every image under root/<class>/, sorted; how folders map to labels)``: the
    rules of :func:`map_folders`.

    Raises:
        VitshrinkError: missing directory, no images, or folders that cannot be mapped to labels (named).
    """
    root = Path(root)
    if not root.is_dir():
        raise VitshrinkError(f"data directory '{root}': no such directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise VitshrinkError(f"data directory '{root}': no class folders (ImageFolder layout: DIR/<class>/<image>)")
    try:
        label_of, how = map_folders(classes, num_classes, label_names, names_from)
    except VitshrinkError as e:
        raise VitshrinkError(f"data directory '{root}': {e}") from None
    items = [(p, label_of[c]) for c in classes for p in sorted((root / c).iterdir())
             if p.suffix.lower() in IMAGE_SUFFIXES]
    if not items:
        raise VitshrinkError(f"data directory '{root}': no images found")
    return items, how


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
    items = (list_images(data, num_classes)[0] if items is None else list(items))[:limit]
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
