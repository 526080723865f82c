"""``nni``: NNI v3 ``pruner.get_masks()`` -- ``{module name: {"weight": mask, "bias": mask}}``, float 0/1 at
full parameter shape -- applied to the dense weights (``--dense-checkpoint``) as NNI applies them, by
multiplication -> :mod:`.zeroed`."""
from __future__ import annotations

from typing import Any, Optional

from torch import Tensor

from ..errors import CheckpointError, VitshrinkError
from ..families import SWIN, VIT
from .base import Format, ImportContext, ImportResult
from .load import dense_state
from .zeroed import from_zeroed


def _mask_dict(obj: Any) -> Optional[dict[str, dict[str, Tensor]]]:
    if not isinstance(obj, dict) or not obj:
        return None
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, dict) or not v or not set(v) <= {"weight", "bias"}:
            return None
        if not all(isinstance(t, Tensor) for t in v.values()):
            return None
    return obj


def _probe_nni(obj: Any, ctx: ImportContext) -> Optional[str]:
    masks = _mask_dict(obj)
    if masks is None:
        return None
    modules = dict(ctx.model.named_modules())
    known = [k for k in masks if k in modules]
    return f"mask dict over {len(known)} modules of {ctx.model_name} ({{module: {{weight, bias}}}}, NNI get_masks())" if known else None


def _convert_nni(obj: Any, ctx: ImportContext) -> ImportResult:
    if ctx.dense_checkpoint is None:
        raise VitshrinkError(f"'{ctx.path}' holds NNI masks but no weights: give the dense weights with --dense-checkpoint")
    masks = _mask_dict(obj)
    dense = dense_state(ctx)
    modules = dict(ctx.model.named_modules())
    out = dict(dense)
    for module, entry in masks.items():
        if module not in modules:
            raise CheckpointError(f"mask '{module}' in '{ctx.path}' names no module of {ctx.model_name}")
        for param, mask in entry.items():
            key = f"{module}.{param}"
            if key not in dense:
                raise CheckpointError(f"mask '{module}'/'{param}': the dense weights have no '{key}'")
            if tuple(mask.shape) != tuple(dense[key].shape):
                raise CheckpointError(f"mask '{module}'/'{param}' has shape {list(mask.shape)}, '{key}' is {list(dense[key].shape)}")
            out[key] = dense[key] * mask.to(dense[key].dtype)
    return from_zeroed(out, ctx, {"masks": len(masks)})


FORMAT = Format("nni", "NNI mask dict {module: {weight, bias}} + --dense-checkpoint", _probe_nni, _convert_nni,
                families=(VIT, SWIN))
