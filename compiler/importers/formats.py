"""Dense-shaped formats: masks applied to (or stored beside) full-size weights -> :mod:`.zeroed`.

- ``torch-prune``: ``torch.nn.utils.prune`` while active -- ``{name}_orig`` parameter and
  ``{name}_mask`` buffer, the module computing ``orig * mask`` (torch/nn/utils/prune.py).
- ``nni``: NNI v3 ``pruner.get_masks()`` -- ``{module name: {"weight": mask, "bias": mask}}``, float 0/1
  at full parameter shape -- applied to the dense weights (``--dense-checkpoint``) as NNI applies them,
  by multiplication.
- ``zeroed``: a timm state dict at the dense shapes whose pruned structure is zeros.
"""
from __future__ import annotations

from typing import Any, Optional

from torch import Tensor

from ..errors import CheckpointError, VitshrinkError
from ..spec import Spec
from . import Format, ImportContext, ImportResult, as_state_dict
from .zeroed import analyse


def check_shapes(sd: dict[str, Tensor], ctx: ImportContext, what: str) -> None:
    """Every key of the dense model present in ``sd`` at its shape (CheckpointError naming the key)."""
    own = ctx.model.state_dict()
    for k, v in own.items():
        if k not in sd:
            raise CheckpointError(f"{what} '{ctx.path}' does not fit {ctx.model_name}: key '{k}' missing")
        if tuple(sd[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{what} '{ctx.path}' does not fit {ctx.model_name}: '{k}' has shape "
                                  f"{list(sd[k].shape)}, the model needs {list(v.shape)}")


def from_zeroed(masked: dict[str, Tensor], ctx: ImportContext, notes: Optional[dict] = None) -> ImportResult:
    """The structure :func:`.zeroed.analyse` finds in ``masked`` (dense shapes, masks applied); the
    reference is ``masked`` itself run by timm -- exactly what the source computes. Tensors the model
    does not have (exit classifiers) travel along in the state dict."""
    check_shapes(masked, ctx, "checkpoint")
    own = ctx.model.state_dict()
    extras = {k: v.float() for k, v in masked.items() if k not in own and v.is_floating_point()}
    masked = {k: masked[k].float() if masked[k].is_floating_point() else masked[k] for k in own}
    D = ctx.model.embed_dim if isinstance(ctx.model.embed_dim, int) else ctx.model.embed_dim[0]
    folded, masks, found = analyse(masked, ctx.dims(), D, ctx.prefixes())
    spec = Spec(masks, {}, meta={"producer": "vitshrink import", "source": str(ctx.path)})
    return ImportResult("", "", {**folded, **extras}, spec, reference_state_dict={**masked, **extras},
                        reference_note="the checkpoint's masked weights run by timm (what the source computes)",
                        notes={**found, "index_history": "original indices (dense shapes)", **(notes or {})})


# ------------------------------------------------------------------------------ torch.nn.utils.prune


def _probe_torch_prune(obj: Any, ctx: ImportContext) -> Optional[str]:
    sd = as_state_dict(obj)
    if sd is None:
        return None
    pairs = [k[: -len("_mask")] for k in sd if k.endswith("_mask") and k[: -len("_mask")] + "_orig" in sd]
    return f"{len(pairs)} parameters stored as *_orig + *_mask (torch.nn.utils.prune, active)" if pairs else None


def _convert_torch_prune(obj: Any, ctx: ImportContext) -> ImportResult:
    sd = as_state_dict(obj)
    out = {}
    for k, v in sd.items():
        if k.endswith("_mask") and k[: -len("_mask")] + "_orig" in sd:
            continue
        if k.endswith("_orig") and k[: -len("_orig")] + "_mask" in sd:
            name, mask = k[: -len("_orig")], sd[k[: -len("_orig")] + "_mask"]
            if mask.shape != v.shape:
                raise CheckpointError(f"checkpoint '{ctx.path}': '{name}_mask' has shape {list(mask.shape)}, "
                                      f"'{name}_orig' {list(v.shape)}")
            out[name] = v * mask
        else:
            out[k] = v
    return from_zeroed(out, ctx)


# ------------------------------------------------------------------------------------------ NNI


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
    dense = ctx.dense_state()
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


# -------------------------------------------------------------------------------------- zeroed


def _probe_zeroed(obj: Any, ctx: ImportContext) -> Optional[str]:
    sd = as_state_dict(obj)
    if sd is None or any(k.endswith("_orig") for k in sd):
        return None
    own = ctx.model.state_dict()
    if not all(k in sd and tuple(sd[k].shape) == tuple(v.shape) for k, v in own.items()):
        return None
    zero_rows = sum(int((sd[k] == 0).all(-1).sum()) for k in own if k.endswith(".weight") and sd[k].ndim == 2)
    return f"state dict at the dense shapes of {ctx.model_name}; {zero_rows} all-zero weight rows"


def _convert_zeroed(obj: Any, ctx: ImportContext) -> ImportResult:
    return from_zeroed(as_state_dict(obj), ctx)


FORMATS = [
    Format("torch-prune", "torch.nn.utils.prune state dict (*_orig + *_mask)", _probe_torch_prune, _convert_torch_prune,
           swin=True),
    Format("nni", "NNI mask dict {module: {weight, bias}} + --dense-checkpoint", _probe_nni, _convert_nni, swin=True),
    Format("zeroed", "dense-shaped timm state dict with zeroed structure (prune.remove, S2ViTE, applied gates)",
           _probe_zeroed, _convert_zeroed, fallback=True, swin=True),
]

