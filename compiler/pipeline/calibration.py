"""Which images calibrate and which measure accuracy: two disjoint sets, both recorded.

Calibration images tune something to the data -- the INT8 quantizers' activation ranges (``compile
--engines ...-int8``), the data-aware masks of ``vitshrink masks --data`` -- so accuracy measured on
them would flatter the result. The rules (:func:`plan`):

1. ``--calib DIR``: ``--calib-images N`` images of DIR (in class folders or not; labels unused);
2. else the images the spec's masks were chosen on (``meta.calibration``, written by ``vitshrink masks
   --data``), when those files are still there;
3. else, with ``--data``, N images of it: the held-out rest is what accuracy is measured on;
4. else the verification inputs (random and flat-block images) -- with a warning: INT8 ranges from
   noise time correctly, but accuracy is then not meaningful.

Whatever calibrated (here or in ``vitshrink masks``) is left out of ``--data``'s accuracy images, and the
report says which images were which: ``calibration`` (source, directory, count, the files and a
SHA-256 over their names and contents) and ``accuracy.images``. Images are chosen by a seeded
permutation (:data:`SEED`), so ``masks`` and ``compile`` pick the same ones from the same folder.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from ..errors import VitshrinkError
from ..runtime.accuracy import IMAGE_SUFFIXES, list_images

SEED = 0
#: calibration images of a compile's INT8 engines (NNCF's own default subset is 300: fewer keep the compile short)
DEFAULT_IMAGES = 128


def find_images(root: str | Path, flag: str = "--calib") -> list[Path]:
    """Every image file under ``root`` (any depth, sorted): a folder of images, in class folders or not.

    Raises:
        VitshrinkError: ``root`` is not a directory, or holds no image (named, with ``flag``).
    """
    root = Path(root)
    if not root.is_dir():
        raise VitshrinkError(f"{flag} '{root}': no such directory")
    found = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise VitshrinkError(f"{flag} '{root}': no images found (expected {', '.join(sorted(IMAGE_SUFFIXES))} files)")
    return found


def choose(paths: list[Path], n: int) -> list[Path]:
    """``n`` of ``paths`` (all when fewer), by a permutation seeded with :data:`SEED`; in sorted order."""
    if n >= len(paths):
        return sorted(paths)
    pick = np.random.default_rng(SEED).permutation(len(paths))[:n]
    return sorted(paths[i] for i in pick)


def record(paths: list[Path], root: str | Path, source: str) -> dict:
    """The report's (and a spec's ``meta.calibration``) description of a set of images: ``source``,
    ``dir``, ``n``, ``files`` (relative to ``root``), ``sha256`` over names and contents, ``seed``."""
    root = Path(root)
    h = hashlib.sha256()
    rel = []
    for p in paths:
        # as found under root: a linked image (a folder of symlinks) resolves elsewhere
        name = (p.relative_to(root) if p.is_relative_to(root) else p.resolve().relative_to(root.resolve())).as_posix()
        rel.append(name)
        h.update(name.encode() + b"\0" + p.read_bytes())
    return {"source": source, "dir": str(root), "n": len(paths), "sha256": h.hexdigest(), "seed": SEED, "files": rel}


def load_images(paths: list[Path], transform) -> torch.Tensor:
    """The images through the model's eval ``transform``: [N, C, H, W] float32.

    Raises:
        VitshrinkError: an image that cannot be decoded (named).
    """
    xs = []
    for p in paths:
        try:
            with Image.open(p) as im:
                xs.append(transform(im.convert("RGB")))
        except OSError as e:
            raise VitshrinkError(f"image '{p}': cannot be decoded ({e})") from e
    return torch.stack(xs)


@dataclass
class ImageSets:
    """The outcome of :func:`plan`: ``calib_paths`` (None: calibrate on the verification inputs), the
    report's ``calibration`` section, the accuracy images ``accuracy_items`` ((path, label), None without
    ``--data``) and what the report says of them (``accuracy_images``)."""

    calib_paths: Optional[list[Path]]
    calibration: dict
    accuracy_items: Optional[list] = None
    accuracy_images: dict = field(default_factory=dict)
    warning: Optional[str] = None


def _spec_files(meta: dict) -> Optional[list[Path]]:
    """The files a spec's masks were chosen on, when the spec records them and they are all still there."""
    cal = (meta or {}).get("calibration") if isinstance(meta, dict) else None
    if not isinstance(cal, dict) or not cal.get("files") or not cal.get("dir"):
        return None
    files = [Path(cal["dir"]) / f for f in cal["files"]]
    return files if all(f.is_file() for f in files) else None


def plan(calib: Optional[str], n: int, data: Optional[str], num_classes: int, spec_meta: Optional[dict],
         needed: bool, limit: Optional[int] = None, labels: tuple = (None, "")) -> ImageSets:
    """Choose the calibration images and the accuracy images (the rules of this module).

    Args:
        calib: ``--calib`` directory or None; n: ``--calib-images`` (> 0).
        data: ``--data`` ImageFolder directory or None (accuracy); num_classes: the classifier's.
        spec_meta: the spec's ``meta`` (its ``calibration``: the images its masks were chosen on).
        needed: a requested engine calibrates (INT8); without it only the exclusion applies.
        limit: ``--limit``: accuracy on the first ``limit`` held-out images.
        labels: (one name per output or None, where they were read): how ``data``'s folders map to outputs
            (:func:`vitshrink.runtime.accuracy.map_folders`).
    Raises:
        VitshrinkError: ``--calib`` missing or without images, ``--calib-images`` < 1, ``--data`` unusable, label
            names that are not one per output or do not cover the folders.
    """
    if n < 1:
        raise VitshrinkError(f"--calib-images {n}: give a positive number of images")
    names, names_from = labels
    if names is not None and len(names) != num_classes:
        raise VitshrinkError(f"{names_from}: {len(names)} label names, the model has {num_classes} outputs")
    items, mapped = list_images(data, num_classes, names, names_from or "the model's label names") if data else (None, None)
    mask_files = _spec_files(spec_meta)
    calib_paths, cal = None, {"source": "none", "n": 0}
    if calib:
        calib_paths = choose(find_images(calib), n)
        cal = record(calib_paths, calib, "--calib")
    elif needed and mask_files is not None:
        calib_paths = mask_files
        cal = {**spec_meta["calibration"], "source": "the spec's mask calibration images (vitshrink masks --data)"}
    elif needed and items is not None:
        calib_paths = choose([p for p, _ in items], n)
        cal = record(calib_paths, data, "--data, held out from accuracy")
    warning = None
    if needed and calib_paths is None:
        cal = {"source": "verification inputs (random and flat-block images)", "n": None}
        warning = ("no calibration images (--calib DIR or --data DIR): INT8 engines are calibrated on the verification "
                   "inputs -- latency is meaningful, accuracy is not")
    if not needed:
        cal["used_by"] = []
    sets = ImageSets(calib_paths, cal, warning=warning)
    if items is None:
        return sets
    seen = {p.resolve() for p in (calib_paths or [])} | {p.resolve() for p in (mask_files or [])}
    held = [(p, y) for p, y in items if p.resolve() not in seen]
    if not held:
        raise VitshrinkError(f"--data '{data}': every image was used for calibration; nothing is left to measure accuracy on")
    excluded = len(items) - len(held)
    sets.accuracy_items = held[:limit]
    why = []
    if calib_paths is not None and needed:
        why.append("calibrated the INT8 engines")
    if mask_files is not None:
        why.append("chose the spec's masks")
    sets.accuracy_images = {"dir": str(data), "n": len(sets.accuracy_items), "excluded": excluded, "labels": mapped,
                            "excluded_because": " and ".join(why) if excluded else None,
                            "what": (f"the {len(sets.accuracy_items)} images of {data} not used for calibration"
                                     if excluded else f"the first {len(sets.accuracy_items)} images of {data}")}
    return sets
