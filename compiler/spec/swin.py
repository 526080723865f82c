"""Mask format v1 for Swin: canonical names after timm's module names (original coordinates).

=================================  ===================  =============================================
name                               shape                meaning
=================================  ===================  =============================================
``layers.{s}.embed``               [C_s]                residual channels of stage s (producer, every
                                                        LayerNorm/Linear of the stage, consumer)
``layers.{s}.blocks.{j}.heads``    [H]                  whole heads (q/k/v rows, proj columns, the
                                                        head's column of the relative bias table)
``layers.{s}.blocks.{j}.qk``       [H, head_dim]        q and k channels per head (scale kept)
``layers.{s}.blocks.{j}.v``        [H, head_dim]        v channels per head
``layers.{s}.blocks.{j}.mlp``      [hidden]             MLP hidden neurons
``layers.{s}.blocks.{j}.keep``     []                   false: the block is removed (identity)
=================================  ===================  =============================================

Token masks, dynamic token rules and early exits do not apply to Swin (every window needs all of
its tokens) and are refused by name. Block masks resolve to the global block index of
:class:`~vitshrink.ir.swin.SwinIR`, so the shared block passes apply unchanged.
"""
from __future__ import annotations

import re
from typing import Optional

from torch import Tensor

from ..errors import SpecError
from ..ir.swin import SwinIR
from .format import Spec, from_index_form
from .resolved import ResolvedSpec, check_heads

_KEY = re.compile(r"^layers\.(\d+)\.(?:embed|blocks\.(\d+)\.(heads|qk|v|mlp|keep|tokens))$")
_VIT_ONLY_SETTINGS = ("exit", "token_mode", "dynamic_tokens", "token_merge")


def block_name(ir: SwinIR, source_index: int) -> str:
    """``layers.{s}.blocks.{j}``: the canonical (timm) name of a block."""
    return ir.block_key(source_index)


def mask_shapes(ir: SwinIR) -> dict[str, tuple]:
    """Canonical mask name -> full shape, for a dense Swin import."""
    shapes: dict[str, tuple] = {}
    for s in ir.stages:
        shapes[f"layers.{s.index}.embed"] = (s.dim,)
        for j, g in enumerate(s.block_ids):
            b, key = ir.block(g), f"layers.{s.index}.blocks.{j}"
            H = b.attn.num_heads
            shapes[f"{key}.heads"] = (H,)
            shapes[f"{key}.qk"] = (H, max(b.attn.qk_dims) if H else 0)
            shapes[f"{key}.v"] = (H, max(b.attn.v_dims) if H else 0)
            shapes[f"{key}.mlp"] = (b.mlp.hidden,)
            shapes[f"{key}.keep"] = ()
    return shapes


def resolve(spec: Spec, ir: SwinIR, tensors: Optional[dict[str, Tensor]] = None) -> ResolvedSpec:
    """Validate ``spec`` against the dense Swin ``ir`` and expand it to full-shape bool masks
    (``tensors`` is unused: Swin specs read nothing else from the checkpoint).

    Raises:
        SpecError: a ViT-only key or setting (tokens, exit), an unknown name, a stage or block that
            does not exist, a wrong shape, or masks that leave a kept block or stage empty (named).
    """
    out = ResolvedSpec()
    for key in sorted(spec.settings):
        if key in _VIT_ONLY_SETTINGS:
            raise SpecError(key, "does not apply to Swin (token rules and early exits are for ViT/DeiT models; a merged "
                                 "token would leave its window)" if key == "token_merge" else
                            "does not apply to Swin (token rules and early exits are for ViT/DeiT models)")
        raise SpecError(key, "unknown setting (Swin specs take masks only)")
    shapes = mask_shapes(ir)
    S = len(ir.stages)
    removed = set()
    for key in sorted(spec.masks):
        m = _KEY.match(key)
        if not m:
            hint = " (Swin names are layers.{s}.embed and layers.{s}.blocks.{j}.{heads,qk,v,mlp,keep})"
            raise SpecError(key, "unknown mask name" + hint)
        s, j, kind = int(m.group(1)), m.group(2), m.group(3)
        if s >= S:
            raise SpecError(key, f"stage {s} does not exist: the model has stages 0..{S - 1}")
        if kind == "tokens":
            raise SpecError(key, "token masks do not apply to Swin: window attention needs every token of a window")
        if j is not None and int(j) >= len(ir.stages[s].block_ids):
            n = len(ir.stages[s].block_ids)
            raise SpecError(key, f"block {j} does not exist: stage {s} has blocks 0..{n - 1}")
        mask = from_index_form(key, spec.masks[key], shapes[key])
        if j is None:
            if not mask.any():
                raise SpecError(key, "keeps no channel")
            out.stage_embed[s] = mask
            continue
        g = ir.block_index(s, int(j))
        if kind == "keep":
            if not bool(mask):
                removed.add(g)
        else:
            getattr(out, kind)[g] = mask
    out.removed_blocks = frozenset(removed)
    check_heads(out, ir.block_key)
    return out
