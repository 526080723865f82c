"""Torch-Pruning 1.6.x (VainF/Torch-Pruning): a timm ViT (or Swin, :mod:`.shrunk_swin`) whose tensors
physically shrank.

Reads ``torch.save(model)`` pickles, ``{"model": module, ...}`` training checkpoints and the
``tp.state_dict(model)`` form (``{"full_state_dict": {name: module.__dict__}, "attributions": {...}}``),
all through the restricted unpickler (no code from the file runs). Widths come from the shapes and
the recorded attributes -- embed = ``cls_token.shape[-1]``, heads = ``attn.num_heads``, head_dim =
``qkv.out_features / 3 / num_heads``, MLP = ``fc1.out_features`` -- and the shrunk tensors are placed
into the original architecture with zeros (kept units first: without a pruning history the original
indices are unknown, and any placement computes the same function).

The softmax scale the source really uses: Torch-Pruning's ViT example sets ``num_heads`` and
``head_dim`` but not ``scale``; its patched forward calls SDPA without ``scale=``, so with
``fused_attn`` on the effective scale is the *pruned* ``head_dim ** -0.5``, off it is the recorded
``scale``. The importer folds the ratio to the original scale into the q rows and biases, so the
compiled model (which keeps the original scale, as every pass does) computes what the source did.
"""
from __future__ import annotations

from typing import Any, Optional

from torch import Tensor, nn

from ..errors import CheckpointError
from ..families import SWIN, VIT
from ..spec.format import Spec
from .base import Format, ImportContext, ImportResult
from .safe_pickle import Record, find, is_module_record, module_tree
from .shrunk import EMBED_NOTE, NO_HISTORY, group_blocks, place_shrunk
from .shrunk_swin import convert_torch_pruning_swin

#: the pickled root classes read, per family
_CLASSES = {VIT: ("timm.models.vision_transformer.VisionTransformer", "timm.models.deit.VisionTransformerDistilled"),
            SWIN: ("timm.models.swin_transformer.SwinTransformer",)}


def _tp_state(obj: Any) -> Optional[tuple[dict, dict, dict]]:
    """(tensors, attributes per module, class per module) of any supported form, or None."""
    if isinstance(obj, dict) and "full_state_dict" in obj and "attributions" in obj:
        tensors, classes = {}, {}
        for name, state in obj["full_state_dict"].items():
            if not isinstance(state, dict):
                return None
            for kind in ("_parameters", "_buffers"):
                for k, v in (state.get(kind) or {}).items():
                    if isinstance(v, Tensor):
                        tensors[f"{name}.{k}" if name else k] = v.detach()
            mods = state.get("_modules") or {}
            for k, child in mods.items():
                if isinstance(child, Record):
                    classes[f"{name}.{k}" if name else k] = child.path
        root = ("timm.models.vision_transformer.VisionTransformer" if "cls_token" in tensors else
                "timm.models.swin_transformer.SwinTransformer"
                if "layers.0.blocks.0.attn.relative_position_bias_table" in tensors else "?")
        classes.setdefault("", root)
        return tensors, {k: dict(v) for k, v in obj["attributions"].items()}, classes
    mod = find(obj, lambda o: is_module_record(o) or isinstance(o, nn.Module))
    return module_tree(mod) if mod is not None else None


def _probe(obj: Any, ctx: ImportContext) -> Optional[str]:
    st = _tp_state(obj)
    if st is None:
        return None
    cls = st[2].get("")
    if cls not in _CLASSES[ctx.family]:
        return None
    form = "tp.state_dict form" if isinstance(obj, dict) and "full_state_dict" in obj else \
        "torch.save(model)" if not isinstance(obj, dict) else "training checkpoint {'model': module}"
    return f"pickled {cls.rsplit('.', 1)[-1]} module ({form}); widths from its shapes and attributes"


def _convert(obj: Any, ctx: ImportContext) -> ImportResult:
    state = _tp_state(obj)
    if state is None:
        raise CheckpointError(f"checkpoint '{ctx.path}' holds no pickled module and no tp.state_dict: "
                              "not a Torch-Pruning checkpoint")
    tensors, attrs, classes = state
    num_heads, scales, notes_scale = [], [], []
    for i, ((H, hd, _), prefix) in enumerate(zip(ctx.dims(), ctx.prefixes())):
        a = attrs.get(f"{prefix}attn", {})
        H2 = int(a.get("num_heads", H))
        qkv = tensors.get(f"{prefix}attn.qkv.weight")
        hd2 = qkv.shape[0] // (3 * H2) if qkv is not None and H2 > 0 else hd
        fused = bool(a.get("fused_attn", False))
        eff = hd2 ** -0.5 if fused else float(a.get("scale", hd ** -0.5))
        num_heads.append(H2)
        scales.append(eff)
        if abs(eff - hd ** -0.5) > 1e-12:
            notes_scale.append((i, f"{eff:.6g} (head_dim {hd2}, {'fused SDPA default' if fused else 'recorded scale'})"))
    if ctx.family is SWIN:
        return convert_torch_pruning_swin(tensors, attrs, classes, ctx, num_heads, scales, notes_scale)
    placed, folded, masks, widths = place_shrunk(tensors, ctx, num_heads, scales)
    D, D2 = ctx.model.embed_dim, int(tensors["cls_token"].shape[-1])
    spec = Spec(masks, {}, meta={"producer": "vitshrink import", "source": str(ctx.path), "format": "torch-pruning"})
    ref = placed if D2 == D else None
    note = ("the source's computation: its shrunk tensors in the dense timm model (zeros elsewhere) with the "
            "softmax scale it really used" if ref is not None else EMBED_NOTE)
    patched = sorted({k for k, v in attrs.items() if v.get("forward_patched")})
    return ImportResult("", "", folded, spec, reference_state_dict=ref,
                        reference_scales=dict(enumerate(scales)) if ref is not None else {},
                        reference_note=note, notes={
                            "index_history": NO_HISTORY, "embed": [D, D2], "shrunk_widths": widths,
                            "softmax_scale": group_blocks(notes_scale) or "original head_dim ** -0.5 in every block",
                            "patched_forward": f"{len(patched)} attention modules had a patched forward (recorded, not run)",
                            "removed": {}, "not_removed": [], "unstructured": [],
                            "classes": sorted(set(classes.values())),
                        })


FORMAT = Format("torch-pruning", "Torch-Pruning: torch.save(model), {'model': module}, tp.state_dict (shrunk timm ViT or Swin)",
                _probe, _convert, families=(VIT, SWIN))
