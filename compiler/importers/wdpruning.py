"""``wdpruning`` (andyrull/width-and-Depth-pruning-for-Vision-Transformer; read from its source):
``{"model": ...}`` with ``attn.qkv.head_saliency_scores`` [H, 1] + ``threshold_head`` and
``saliency_scores`` [out, 1] + ``threshold_fc`` on ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``.

Masks as its ``TopKBinarizer`` computes them (:func:`topk_binarize`); masked rows and biases
(``bias_mask``: qkv/proj when qkv has a bias, fc1/fc2 always) become zeros. proj and fc2 masks zero
*residual* rows (its partial residual writes): exact as zeros, not removable, reported. Depth:
``--import-option exit=K`` ends after K blocks with ``norm_classifier.j`` / ``head_classifier.j``, j = the
index of K in ``classifiers`` (``args.classifiers`` in the checkpoint, or ``--import-option classifiers=10,11``).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor

from ..errors import CheckpointError, SpecError, VitshrinkError
from .base import Format, ImportContext, ImportResult
from .load import as_state_dict
from .safe_pickle import Record
from .zeroed import from_zeroed


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


FORMAT = Format("wdpruning", "WDPruning: saliency scores + thresholds, optional early-exit classifier (exit=K)",
                _probe_wdpruning, _convert_wdpruning)
