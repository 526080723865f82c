"""SAViT (hikvision-research/SAViT; read from its source): two formats.

- ``savit`` (``models/modules/vision_transformer.py``): the gated model, timm keys plus ``GateLayer``
  weights -- ``res_gate.weight`` [D] on the residual stream, ``blocks.i.attn.attn_gate.weight`` [H] on
  each head's output, ``blocks.i.mlp.hidden_gate1.weight`` [hidden] on fc1's output before GELU. Head and
  neuron gates fold into proj columns / fc1 rows; the residual gate becomes the ``embed`` mask with
  SAViT's *deployed* semantics (LayerNorm over kept channels; its gated training model normalises over
  all D, zeros counted).
- ``savit-deployed`` (``main_deploy.py``): a shrunk timm state dict, head_dim unchanged, original scale.
"""
from __future__ import annotations

from typing import Any, Optional

from ..errors import CheckpointError
from ..spec.format import Spec
from .base import Format, ImportContext, ImportResult
from .load import as_state_dict
from .shrunk import EMBED_NOTE, NO_HISTORY, place_shrunk
from .zeroed import from_zeroed


def _probe_savit(obj: Any, ctx: ImportContext) -> Optional[str]:
    sd = as_state_dict(obj)
    if sd is None:
        return None
    gates = [k for k in sd if k == "res_gate.weight" or k.endswith(("attn.attn_gate.weight", "mlp.hidden_gate1.weight"))]
    return f"SAViT gated model ({len(gates)} gate tensors: res_gate, attn_gate, hidden_gate1)" if gates else None


def _convert_savit(obj: Any, ctx: ImportContext) -> ImportResult:
    sd = dict(as_state_dict(obj))
    for i, (H, hd, _) in enumerate(ctx.dims()):
        p = f"blocks.{i}."
        g = sd.pop(p + "attn.attn_gate.weight", None)
        if g is not None:  # gate on each head's attention output: proj columns
            if g.numel() != H:
                raise CheckpointError(f"'{p}attn.attn_gate.weight' has {g.numel()} entries, the block has {H} heads")
            sd[p + "attn.proj.weight"] = sd[p + "attn.proj.weight"] * g.repeat_interleave(hd)[None, :]
        g = sd.pop(p + "mlp.hidden_gate1.weight", None)
        if g is not None:  # gate on fc1's output, before GELU: fc1 rows and bias
            sd[p + "mlp.fc1.weight"] = sd[p + "mlp.fc1.weight"] * g[:, None]
            sd[p + "mlp.fc1.bias"] = sd[p + "mlp.fc1.bias"] * g
    res = sd.pop("res_gate.weight", None)
    for k in [k for k in sd if k.endswith(".res_gate.weight")]:  # each Block holds the shared gate too
        sd.pop(k)
    if res is not None and not ((res == 0) | (res == 1)).all():
        raise CheckpointError("'res_gate.weight' holds values other than 0 and 1: a soft residual gate is not a pruning mask")
    result = from_zeroed(sd, ctx, {"method": "SAViT gates folded (heads into proj columns, neurons into fc1 rows)"})
    if res is not None and (res == 0).any():
        result.spec.masks["embed"] = res != 0
        result.reference_state_dict = None
        result.reference_note = ("SAViT's deployed model (LayerNorm over the kept embed channels), which the masked dense "
                                 "reference implements; its gated training model normalises over all channels")
        result.notes["embed"] = [int(res.numel()), int((res != 0).sum())]
    return result


def _probe_savit_deployed(obj: Any, ctx: ImportContext) -> Optional[str]:
    """Its own signature: every key of the dense model present, none wider, some narrower (a key that is
    missing -- ``weight`` stored as ``weight_orig`` + ``weight_mask`` -- is not a shrunk one)."""
    sd = as_state_dict(obj)
    if sd is None or "cls_token" not in sd or any("gate" in k for k in sd) or (isinstance(obj, dict) and "dim_cfg" in obj):
        return None
    own = ctx.model.state_dict()
    if any(k not in sd or sd[k].dim() != v.dim() or any(a > b for a, b in zip(sd[k].shape, v.shape)) for k, v in own.items()):
        return None  # a key missing or wider: not the dense model shrunk
    if all(sd[k].shape == v.shape for k, v in own.items()):
        return None  # dense shapes: not shrunk
    hd = ctx.dims()[0][1]
    qkv = [sd[k].shape[0] for k in sd if k.endswith("attn.qkv.weight")]
    if qkv and all(r % (3 * hd) == 0 for r in qkv):
        return f"shrunk timm state dict, whole heads of head_dim {hd} (SAViT main_deploy.py)"
    return None


def _convert_savit_deployed(obj: Any, ctx: ImportContext) -> ImportResult:
    sd = as_state_dict(obj)
    heads = [sd[f"blocks.{i}.attn.qkv.weight"].shape[0] // (3 * hd) if f"blocks.{i}.attn.qkv.weight" in sd else H
             for i, (H, hd, _) in enumerate(ctx.dims())]
    placed, folded, masks, widths = place_shrunk(sd, ctx, heads)
    full = "embed" not in masks
    return ImportResult("", "", folded, Spec(masks, {}, meta={"producer": "vitshrink import", "format": "savit-deployed"}),
                        reference_state_dict=placed if full else None,
                        reference_note="its shrunk tensors in the dense timm model, zeros elsewhere" if full else EMBED_NOTE,
                        notes={"index_history": NO_HISTORY, "shrunk_widths": widths, "removed": {}, "not_removed": [],
                               "unstructured": []})


FORMAT = Format("savit", "SAViT gated model: res_gate / attn_gate / hidden_gate1", _probe_savit, _convert_savit)
DEPLOYED_FORMAT = Format("savit-deployed", "SAViT deployed (main_deploy.py): shrunk timm state dict, original head_dim",
                         _probe_savit_deployed, _convert_savit_deployed)
