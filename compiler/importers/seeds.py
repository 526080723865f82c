"""The seed methods' own checkpoint formats (../shared/docs/SEEDS.md, IMPORTERS.md; read from each
repository's source, no released checkpoint could be downloaded).

- ``s2vite`` (VITA-Group/SViTE, ``dst_utils/core.py``): ``{"model", "atten_mask", "other_mask", "mask"}``.
  Structured: ``atten_mask["blocks.i.attn.qkv.weight_mask"]`` [3D, D] zeroes q/k/v rows of whole heads,
  ``other_mask["blocks.i.mlp.fc{1,2}.weight_mask"]`` fc1 rows / fc2 columns; unstructured (SViTE):
  ``mask["<param>_<index>"]``. Masks multiply the weights; biases and proj are not masked (their
  constants are folded, :mod:`.zeroed`).
- ``savit`` (hikvision-research/SAViT, ``models/modules/vision_transformer.py``): the gated model,
  timm keys plus ``GateLayer`` weights -- ``res_gate.weight`` [D] on the residual stream,
  ``blocks.i.attn.attn_gate.weight`` [H] on each head's output, ``blocks.i.mlp.hidden_gate1.weight``
  [hidden] on fc1's output before GELU. Head and neuron gates fold into proj columns / fc1 rows; the
  residual gate becomes the ``embed`` mask with SAViT's *deployed* semantics (LayerNorm over kept
  channels; its gated training model normalises over all D, zeros counted).
- ``savit-deployed`` (``main_deploy.py``): a shrunk timm state dict, head_dim unchanged, original scale.
- ``wdpruning`` (andyrull/width-and-Depth-pruning-for-Vision-Transformer): ``{"model": ...}`` with
  ``attn.qkv.head_saliency_scores`` [H, 1] + ``threshold_head`` and ``saliency_scores`` [out, 1] +
  ``threshold_fc`` on ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``. Masks as its ``TopKBinarizer`` computes
  them (:func:`topk_binarize`); masked rows and biases (``bias_mask``: qkv/proj when qkv has a bias,
  fc1/fc2 always) become zeros. proj and fc2 masks zero *residual* rows (its partial residual writes):
  exact as zeros, not removable, reported. Depth: ``--import-option exit=K`` ends after K blocks with
  ``norm_classifier.j`` / ``head_classifier.j``, j = the index of K in ``classifiers`` (``args.classifiers``
  in the checkpoint, or ``--import-option classifiers=10,11``).
"""
from __future__ import annotations

import math
import re
from typing import Any, Optional

import torch
from torch import Tensor

from ..errors import CheckpointError, SpecError, VitshrinkError
from . import Format, ImportContext, ImportResult, as_state_dict
from .formats import from_zeroed
from .safe_pickle import Record
from .shrunk import place_shrunk


def _tensor_dict(obj: Any) -> Optional[dict]:
    return obj if isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()) else None


def _apply(sd: dict[str, Tensor], param: str, mask: Tensor, ctx: ImportContext, key: str) -> None:
    if param not in sd:
        raise CheckpointError(f"mask '{key}' in '{ctx.path}' names no parameter of the checkpoint ('{param}')")
    if tuple(mask.shape) != tuple(sd[param].shape):
        raise CheckpointError(f"mask '{key}' has shape {list(mask.shape)}, '{param}' is {list(sd[param].shape)}")
    sd[param] = sd[param] * mask.to(sd[param].dtype)


# ------------------------------------------------------------------------------------------ S2ViTE


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


# ------------------------------------------------------------------------------------------- SAViT


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
    sd = as_state_dict(obj)
    if sd is None or "cls_token" not in sd or any("gate" in k for k in sd) or (isinstance(obj, dict) and "dim_cfg" in obj):
        return None
    own = ctx.model.state_dict()
    if all(k in sd and sd[k].shape == v.shape for k, v in own.items()):
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
    from ..spec import Spec
    from .torch_pruning import EMBED_NOTE, NO_HISTORY

    full = "embed" not in masks
    return ImportResult("", "", folded, Spec(masks, {}, meta={"producer": "vitshrink import", "format": "savit-deployed"}),
                        reference_state_dict=placed if full else None,
                        reference_note="its shrunk tensors in the dense timm model, zeros elsewhere" if full else EMBED_NOTE,
                        notes={"index_history": NO_HISTORY, "shrunk_widths": widths, "removed": {}, "not_removed": [],
                               "unstructured": []})


# --------------------------------------------------------------------------------------- WDPruning


def topk_binarize(scores: Tensor, threshold: Tensor | float, base: int = 16) -> Tensor:
    """WDPruning's ``TopKBinarizer`` (head_split <= 1): keep the ``j = ceil(sigmoid(threshold) * n)``
    largest scores, j moved to the nearest multiple of ``base`` (the lower one on a tie; at least ``base``,
    at most n) when n is a multiple of ``base``. ``scores`` [n, 1] or [n] -> bool [n]."""
    s = scores.detach().flatten().float()
    n = s.numel()
    t = float(torch.sigmoid(torch.as_tensor(threshold, dtype=torch.float32)).reshape(-1)[0])
    j = math.ceil(t * n)
    if j % base and n % base == 0:
        if j > base:
            hi = base * math.ceil(j / base)
            j = hi - base if j - (hi - base) < hi - j else hi
            j = min(j, n)
        else:
            j = base
    order = s.sort(descending=True).indices
    keep = torch.zeros(n, dtype=torch.bool)
    keep[order[:j]] = True
    return keep


def _probe_wdpruning(obj: Any, ctx: ImportContext) -> Optional[str]:
    sd = as_state_dict(obj)
    if sd is None or not any(k.endswith("head_saliency_scores") for k in sd):
        return None
    return "WDPruning checkpoint (head_saliency_scores / saliency_scores with learned thresholds)"


def _classifiers(obj: Any, ctx: ImportContext) -> Optional[list[int]]:
    text = ctx.option("classifiers")
    if text is not None:
        try:
            return [int(v) for v in str(text).split(",") if v.strip()]
        except ValueError:
            raise VitshrinkError(f"--import-option classifiers={text!r}: expected comma-separated block counts") from None
    args = obj.get("args") if isinstance(obj, dict) else None
    value = args.state.get("classifiers") if isinstance(args, Record) else getattr(args, "classifiers", None)
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else None


def _convert_wdpruning(obj: Any, ctx: ImportContext) -> ImportResult:
    sd = dict(as_state_dict(obj))
    has_qkv_bias = "blocks.0.attn.qkv.bias" in sd
    partial = 0
    for i, (H, hd, _) in enumerate(ctx.dims()):
        p = f"blocks.{i}."
        if hd != 64:
            raise VitshrinkError(f"WDPruning fixes head_dim at 64; {ctx.model_name} has {hd}")
        scores, thr = sd.pop(p + "attn.qkv.head_saliency_scores", None), sd.pop(p + "attn.qkv.threshold_head", None)
        if scores is not None:
            if scores.numel() != H or thr is None:
                raise CheckpointError(f"'{p}attn.qkv.head_saliency_scores' has {scores.numel()} entries for {H} heads "
                                      f"(or its threshold_head is missing)")
            rows = topk_binarize(scores, thr).repeat_interleave(hd).repeat(3)
            sd[p + "attn.qkv.weight"] = sd[p + "attn.qkv.weight"] * rows[:, None]
            if has_qkv_bias:
                sd[p + "attn.qkv.bias"] = sd[p + "attn.qkv.bias"] * rows
        for layer, bias_masked in (("attn.proj", has_qkv_bias), ("mlp.fc1", True), ("mlp.fc2", True)):
            scores, thr = sd.pop(f"{p}{layer}.saliency_scores", None), sd.pop(f"{p}{layer}.threshold_fc", None)
            if scores is None:
                continue
            w = sd[f"{p}{layer}.weight"]
            if scores.numel() != w.shape[0] or thr is None:
                raise CheckpointError(f"'{p}{layer}.saliency_scores' has {scores.numel()} entries for {w.shape[0]} rows "
                                      f"(or its threshold_fc is missing)")
            keep = topk_binarize(scores, thr)
            sd[f"{p}{layer}.weight"] = w * keep[:, None]
            if bias_masked and f"{p}{layer}.bias" in sd:
                sd[f"{p}{layer}.bias"] = sd[f"{p}{layer}.bias"] * keep
            if layer != "mlp.fc1":
                partial += int((~keep).sum())
    result = from_zeroed(sd, ctx, {"method": "WDPruning masks from saliency scores and learned thresholds (TopKBinarizer)"})
    if partial:
        result.notes["not_removed"].append(
            f"{partial} residual rows of attn.proj / mlp.fc2 are masked (WDPruning's partial residual writes): exact as "
            "zero rows, not expressible as canonical masks, kept dense")
    exit_k = ctx.option("exit")
    classifiers = _classifiers(obj, ctx)
    result.notes["classifiers"] = classifiers
    if exit_k is not None:
        k = int(exit_k)
        L = len(ctx.dims())
        if k != L:
            if classifiers is None or k not in classifiers:
                raise SpecError("exit", f"--import-option exit={k}: the checkpoint's classifiers sit after blocks "
                                        f"{classifiers} (give --import-option classifiers=... if it does not record them)")
            j = classifiers.index(k)
            norm, head = f"norm_classifier.{j}", f"head_classifier.{j}"
            for key in (f"{norm}.weight", f"{head}.weight"):
                if key not in result.state_dict:
                    raise CheckpointError(f"checkpoint '{ctx.path}': exit after {k} blocks needs '{key}'")
            result.spec.settings["exit"] = {"block": k - 1, "head": head, "norm": norm}
            result.reference_exit = (k, norm, head)
    return result


FORMATS = [
    Format("s2vite", "SViTE / S2ViTE: {'model', 'atten_mask', 'other_mask', 'mask'}", _probe_s2vite, _convert_s2vite),
    Format("savit", "SAViT gated model: res_gate / attn_gate / hidden_gate1", _probe_savit, _convert_savit),
    Format("savit-deployed", "SAViT deployed (main_deploy.py): shrunk timm state dict, original head_dim",
           _probe_savit_deployed, _convert_savit_deployed),
    Format("wdpruning", "WDPruning: saliency scores + thresholds, optional early-exit classifier (exit=K)",
           _probe_wdpruning, _convert_wdpruning),
]
