"""``nni``: NNI v3 ``pruner.get_masks()`` -- ``{module name: {"weight": mask, "bias": mask}}``, float 0/1 at
full parameter shape -- applied to the dense weights (``--dense-checkpoint``) as NNI applies them, by
multiplication -> :mod:`.zeroed`."""
from __future__ import annotations

from typing import Any, Optional

from torch import Tensor

from ..errors import CheckpointError, VitshrinkError
from ..families import SWIN, VIT
from .base import Format, ImportContext, ImportResult
from .load import as_state_dict, dense_state
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


def _split(obj: Any) -> tuple[Optional[dict], Optional[dict]]:
    """(the NNI mask dict, the weights saved beside it): ``get_masks()`` itself, or a checkpoint
    ``{"masks": <mask dict>, "state_dict" | "model": <weights>}``."""
    if isinstance(obj, dict) and "masks" in obj:
        return _mask_dict(obj["masks"]), as_state_dict({k: v for k, v in obj.items() if k != "masks"})
    return _mask_dict(obj), None


def _probe_nni(obj: Any, ctx: ImportContext) -> Optional[str]:
    masks, weights = _split(obj)
    if masks is None:
        return None
    modules = dict(ctx.model.named_modules())
    known = [k for k in masks if k in modules]
    if weights is not None:  # an entry named "masks" in NNI's layout: NNI's, even where a mask fits no layer
        return f"NNI masks over {len(masks)} modules beside the weights ({{'masks': {{module: {{weight, bias}}}}, 'state_dict'}})"
    return f"mask dict over {len(known)} modules of {ctx.model_name} ({{module: {{weight, bias}}}}, NNI get_masks())" if known else None


def _dense_from(weights: dict) -> dict:
    """Weights saved beside the masks; torch.nn.utils.prune pairs among them count as their ``*_orig``."""
    out = {k: v for k, v in weights.items() if not k.endswith(("_orig", "_mask"))}
    for k, v in weights.items():
        if k.endswith("_orig") and k[: -len("_orig")] + "_mask" in weights:
            out[k[: -len("_orig")]] = v
    return out


def _convert_nni(obj: Any, ctx: ImportContext) -> ImportResult:
    masks, weights = _split(obj)
    if ctx.dense_checkpoint is None and weights is None:
        raise VitshrinkError(f"'{ctx.path}' holds NNI masks but no weights: give the dense weights with --dense-checkpoint")
    dense = dense_state(ctx) if ctx.dense_checkpoint is not None else _dense_from(weights)
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
                raise CheckpointError(f"mask '{module}'/'{param}' has shape {list(mask.shape)}, '{key}' of {ctx.model_name} "
                                      f"is {list(dense[key].shape)} (NNI masks in '{ctx.path}': of another model?)")
            out[key] = dense[key] * mask.to(dense[key].dtype)
    return from_zeroed(out, ctx, {"masks": len(masks)})


FORMAT = Format("nni", "NNI mask dict {module: {weight, bias}} + --dense-checkpoint (or beside the weights)", _probe_nni,
                _convert_nni, families=(VIT, SWIN), reads=("masks",))
