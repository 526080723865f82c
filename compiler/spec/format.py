"""Spec v1 files: the two file forms of a mask spec and the JSON index form.

- JSON ``{"format": "vitshrink.spec/1", "masks": {...}, "settings": {...}, "meta": {...}}``: a 1-D mask
  is the list of kept indices, a 2-D mask one such list per row, a 0-D mask (``keep``) a boolean.
- safetensors: one bool tensor per name at full shape (true = keep); settings as a JSON object string
  under the metadata key ``settings`` (and ``meta`` likewise).

What the names mean is the family's (:mod:`vitshrink.spec.vit`, :mod:`vitshrink.spec.swin`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from ..errors import SpecError, VitshrinkError

FORMAT = "vitshrink.spec/1"


@dataclass
class Spec:
    """A mask spec as written: ``masks`` maps canonical names to bool tensors (any shape) or to the
    JSON form (index lists, bool); ``settings`` is a JSON object. Validate with :func:`resolve_spec`."""

    masks: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"
    meta: dict[str, Any] = field(default_factory=dict)


def load_spec(path: str | Path) -> Spec:
    """Read a spec file (``.json`` or ``.safetensors``).

    Raises:
        VitshrinkError: the file is missing or unreadable.
        SpecError: the content is not a v1 spec (the key is named).
    """
    path = Path(path)
    if not path.is_file():
        raise VitshrinkError(f"spec '{path}': no such file")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VitshrinkError(f"spec '{path}': cannot be read as JSON ({e})") from e
    if not isinstance(doc, dict):
        raise SpecError("format", f"{path}: the top level must be a JSON object")
    if doc.get("format") != FORMAT:
        raise SpecError("format", f"{path}: expected \"{FORMAT}\", found {doc.get('format')!r}")
    unknown = set(doc) - {"format", "masks", "settings", "meta"}
    if unknown:
        raise SpecError(sorted(unknown)[0], f"{path}: unknown top-level key")
    masks, settings = doc.get("masks", {}), doc.get("settings", {})
    if not isinstance(masks, dict):
        raise SpecError("masks", f"{path}: must be a JSON object")
    if not isinstance(settings, dict):
        raise SpecError("settings", f"{path}: must be a JSON object")
    meta = doc.get("meta", {})
    return Spec(dict(masks), dict(settings), str(path), meta if isinstance(meta, dict) else {})


def _load_safetensors(path: Path) -> Spec:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            masks = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001
        raise VitshrinkError(f"spec '{path}': cannot be read as safetensors ({type(e).__name__}: {e})") from e
    for k, t in masks.items():
        if t.dtype != torch.bool:
            raise SpecError(k, f"{path}: safetensors masks must be bool tensors, found {t.dtype}")
    if meta.get("format", FORMAT) != FORMAT:
        raise SpecError("format", f"{path}: expected \"{FORMAT}\", found {meta.get('format')!r}")
    try:
        settings = json.loads(meta.get("settings", "{}"))
    except json.JSONDecodeError as e:
        raise SpecError("settings", f"{path}: metadata 'settings' is not JSON ({e})") from e
    if not isinstance(settings, dict):
        raise SpecError("settings", f"{path}: metadata 'settings' must be a JSON object")
    try:
        meta = json.loads(meta.get("meta", "{}"))
    except json.JSONDecodeError as e:
        raise SpecError("meta", f"{path}: metadata 'meta' is not JSON ({e})") from e
    return Spec(masks, settings, str(path), meta if isinstance(meta, dict) else {})


def to_index_form(value: Any) -> Any:
    """A bool mask tensor -> its JSON form (kept indices; per row for 2-D; a boolean for 0-D)."""
    if isinstance(value, Tensor):
        if value.dim() == 0:
            return bool(value)
        if value.dim() == 1:
            return torch.nonzero(value, as_tuple=False).flatten().tolist()
        return [to_index_form(r) for r in value]
    return value


def save_spec(spec: Spec, path: str | Path, *, resolved_shapes: Optional[dict[str, tuple]] = None,
              form: Optional[str] = None) -> Path:
    """Write ``spec`` as JSON (index lists) or safetensors (bool tensors): ``form`` ``"json"`` or
    ``"safetensors"``, by default chosen by the suffix of ``path``.

    The safetensors form needs full-shape bool tensors: masks given as index lists are expanded
    with ``resolved_shapes[name]``.

    Raises:
        SpecError: an index-list mask without its shape in ``resolved_shapes`` (safetensors form).
    """
    path = Path(path)
    form = form or ("safetensors" if path.suffix == ".safetensors" else "json")
    if form == "safetensors":
        tensors = {}
        for k, v in spec.masks.items():
            if not isinstance(v, Tensor):
                if resolved_shapes is None or k not in resolved_shapes:
                    raise SpecError(k, "needs its full shape to be written as safetensors")
                v = from_index_form(k, v, resolved_shapes[k])
            tensors[k] = v.to(torch.bool).contiguous()
        save_file(tensors, str(path), metadata={"format": FORMAT, "settings": json.dumps(spec.settings),
                                                "meta": json.dumps(spec.meta)})
    else:
        doc = {"format": FORMAT, "masks": {k: to_index_form(v) for k, v in spec.masks.items()}, "settings": spec.settings}
        if spec.meta:
            doc["meta"] = spec.meta
        path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


# ------------------------------------------------------------------------------ index form


def from_index_form(key: str, value: Any, shape: tuple) -> Tensor:
    """A mask as written (JSON index form or a bool tensor) -> bool tensor of ``shape``.

    1-D: the list of kept indices; 2-D: one such list per row (per head); 0-D: a boolean.

    Raises:
        SpecError: wrong type, shape, an index out of range or repeated -- naming ``key``.
    """
    if isinstance(value, Tensor):
        if value.dtype != torch.bool:
            raise SpecError(key, f"mask tensors must be bool, found {value.dtype}")
        if tuple(value.shape) != tuple(shape):
            raise SpecError(key, f"has shape {list(value.shape)}, the model needs {list(shape)}")
        return value.clone()
    if len(shape) == 0:
        if not isinstance(value, bool):
            raise SpecError(key, f"must be true or false, found {value!r}")
        return torch.tensor(value)
    if len(shape) == 1:
        if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
            raise SpecError(key, f"must be a list of kept indices (integers), found {_short(value)}")
        bad = [i for i in value if not 0 <= i < shape[0]]
        if bad:
            raise SpecError(key, f"index {bad[0]} out of range for size {shape[0]}")
        if len(set(value)) != len(value):
            raise SpecError(key, "repeats an index")
        m = torch.zeros(shape, dtype=torch.bool)
        m[value] = True
        return m
    if not isinstance(value, list) or len(value) != shape[0]:
        n = len(value) if isinstance(value, list) else _short(value)
        raise SpecError(key, f"must be {shape[0]} lists of kept indices (one per head), found {n}")
    return torch.stack([from_index_form(f"{key}[{r}]", row, shape[1:]) for r, row in enumerate(value)])


def _short(v: Any) -> str:
    s = json.dumps(v) if not isinstance(v, Tensor) else f"tensor{list(v.shape)}"
    return s if len(s) < 40 else s[:37] + "..."
