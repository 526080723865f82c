"""``s2vite`` (VITA-Group/SViTE, ``dst_utils/core.py``; read from its source, no released checkpoint could be
downloaded): ``{"model", "atten_mask", "other_mask", "mask"}``.

Structured (S2ViTE): ``atten_mask["blocks.i.attn.qkv.weight_mask"]`` [3D, D] zeroes q/k/v rows of whole
heads, ``other_mask["blocks.i.mlp.fc{1,2}.weight_mask"]`` fc1 rows / fc2 columns; unstructured (SViTE):
``mask["<param>_<index>"]``. Masks multiply the weights; biases and proj are not masked (their constants
are folded, :mod:`.zeroed`).
"""
from __future__ import annotations

import re
from typing import Any, Optional

from torch import Tensor

from ..errors import CheckpointError
from .base import Format, ImportContext, ImportResult
from .load import as_state_dict
from .zeroed import from_zeroed


def _tensor_dict(obj: Any) -> Optional[dict]:
    return obj if isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()) else None


def _apply(sd: dict[str, Tensor], param: str, mask: Tensor, ctx: ImportContext, key: str) -> None:
    if param not in sd:
        raise CheckpointError(f"mask '{key}' in '{ctx.path}' names no parameter of the checkpoint ('{param}')")
    if tuple(mask.shape) != tuple(sd[param].shape):
        raise CheckpointError(f"mask '{key}' has shape {list(mask.shape)}, '{param}' is {list(sd[param].shape)}")
    sd[param] = sd[param] * mask.to(sd[param].dtype)


def _probe_s2vite(obj: Any, ctx: ImportContext) -> Optional[str]:
    if not (isinstance(obj, dict) and "model" in obj):
        return None
    found = [k for k in ("atten_mask", "other_mask", "mask") if _tensor_dict(obj.get(k)) is not None]
    return f"SViTE/S2ViTE checkpoint with {', '.join(found)}" if found else None


def _convert_s2vite(obj: Any, ctx: ImportContext) -> ImportResult:
    sd = as_state_dict(obj["model"])
    if sd is None:
        raise CheckpointError(f"checkpoint '{ctx.path}': 'model' holds no state dict")
    for group in ("atten_mask", "other_mask", "mask"):
        for key, mask in (_tensor_dict(obj.get(group)) or {}).items():
            name = key.removeprefix("module.")
            param = name[: -len("_mask")] if name.endswith("_mask") else re.sub(r"_\d+$", "", name)
            _apply(sd, param, mask, ctx, f"{group}/{key}")
    return from_zeroed(sd, ctx, {"method": "S2ViTE structured masks (and SViTE unstructured ones)"})


FORMAT = Format("s2vite", "SViTE / S2ViTE: {'model', 'atten_mask', 'other_mask', 'mask'}", _probe_s2vite, _convert_s2vite,
                reads=("atten_mask", "other_mask", "mask"))
