"""The import's own checks: what the source computes (logits), and the import section of the report."""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import Tensor

from ..families import family_of
from ..frontends.timm import create_model
from .base import ImportResult


def source_model(result: ImportResult, model_name: str | torch.nn.Module) -> Optional[torch.nn.Module]:
    """The source's computation as a timm model (``model_name``: a timm name, or a timm model to copy):
    the original architecture with
    ``result.reference_state_dict`` and, per block, the softmax scale the source really used (timm's
    explicit ``q * scale`` path, ``fused_attn`` off). None when the source cannot be expressed so
    (then the masked dense reference is the only anchor; ``result.reference_note`` says why)."""
    if result.reference_state_dict is None:
        return None
    model = copy.deepcopy(model_name) if isinstance(model_name, torch.nn.Module) else create_model(model_name, **result.model_kwargs)
    own = set(model.state_dict())
    model.load_state_dict({k: v for k, v in result.reference_state_dict.items() if k in own}, strict=True)
    result.configure(model)
    if result.reference_exit is not None:  # the source ends early: timm's model cut by hand
        n, norm, head = result.reference_exit
        sd = result.reference_state_dict
        model.blocks = model.blocks[:n]
        with torch.no_grad():
            model.norm.weight.copy_(sd[f"{norm}.weight"])
            model.norm.bias.copy_(sd[f"{norm}.bias"])
            model.head.weight.copy_(sd[f"{head}.weight"])
            model.head.bias.copy_(sd[f"{head}.bias"])
    blocks = [b for _, b in family_of(model).frontend.timm_blocks(model)]
    for i, scale in result.reference_scales.items():
        attn = blocks[i].attn
        attn.scale, attn.fused_attn = scale, False
    return model.eval()


def source_logits(result: ImportResult, model_name: str, x: Tensor) -> tuple[Optional[Tensor], str]:
    """(logits [B, classes] of the source on images ``x`` [B, C, H, W] or None, what the reference is)."""
    model = source_model(result, model_name)
    if model is None:
        return None, result.reference_note
    with torch.no_grad():
        return model(x), result.reference_note


def import_report(result: ImportResult) -> dict:
    """The ``import`` section of report.json and the content of import.json (JSON-ready)."""
    return {"format": result.format, "detected_because": result.reason, **result.notes}
