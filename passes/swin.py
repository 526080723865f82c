"""Swin passes: the per-stage residual channels (``layers.{s}.embed``), every pass a Swin spec asks
for (:func:`apply_spec`) and the head layout (:func:`lay_out`).

Heads, q/k/v channels, MLP neurons and block removal on Swin are the shared passes of
:mod:`.structural`, unchanged: a :class:`~vitshrink.ir.swin.SwinIR` keeps its blocks flattened, and
:func:`~.structural.select_attention` carries each head's relative-position bias with it.
"""
from __future__ import annotations

import sys
from typing import Mapping, Optional

from torch import Tensor

from vitshrink.ir.nodes import cols, replace, rows
from vitshrink.ir.swin import SwinIR
from vitshrink.spec.resolved import ResolvedSpec

from . import layout
from .steps import Step, run, width_steps
from .structural import embed_block, keep_positions, layer_norm_keep, prune_head_channels, prune_heads, prune_mlp, remove_blocks


def prune_stage_embed(ir: SwinIR, stage: int, embed: Tensor) -> SwinIR:
    """Remove residual channels of one Swin stage (SAViT's embedding mask, per stage).

    Shrinks the producer (the patch embedding conv and its LayerNorm for stage 0, the patch merging's
    ``reduction`` rows otherwise -- and its LayerNorm when it comes after the reduction, Swin V2), every
    block of the stage (as :func:`~.structural.embed_block`), and the consumer: the next patch merging's
    ``reduction`` columns at the four copies of each channel (c, C+c, 2C+c, 3C+c) and its LayerNorm when
    it comes first (Swin V1), or the final LayerNorm and the classifier. LayerNorms then
    normalise over the kept channels only (the reference semantics, docs/architecture.md).

    Args:
        stage: stage index s; ``embed``: [C_s] bool in original channel coordinates.
    """
    st = ir.stages[stage]
    keep = keep_positions(st.embed_ids, embed)
    C = st.dim
    changes: dict = {}
    if stage == 0:
        changes.update(patch_weight=rows(ir.patch_weight, keep), patch_bias=rows(ir.patch_bias, keep),
                       patch_norm=layer_norm_keep(ir.patch_norm, keep))
    stages = list(ir.stages)
    if st.merge is not None:
        m = st.merge
        st = replace(st, merge=replace(m, reduction_weight=rows(m.reduction_weight, keep),
                                       reduction_bias=rows(m.reduction_bias, keep),
                                       norm=layer_norm_keep(m.norm, keep) if m.norm_after else m.norm))
    stages[stage] = replace(st, embed_ids=tuple(st.embed_ids[p] for p in keep))
    if stage + 1 < len(stages):
        nxt = stages[stage + 1]
        keep4 = [k * C + p for k in range(4) for p in keep]
        m = nxt.merge
        stages[stage + 1] = replace(nxt, merge=replace(m, norm=m.norm if m.norm_after else layer_norm_keep(m.norm, keep4),
                                                       reduction_weight=cols(m.reduction_weight, keep4)))
    else:
        changes.update(norm=None if ir.norm is None else layer_norm_keep(ir.norm, keep),
                       head=replace(ir.head, weight=cols(ir.head.weight, keep)))
    ids = set(st.block_ids)
    blocks = tuple(embed_block(b, keep) if b.source_index in ids else b for b in ir.blocks)
    return replace(ir, stages=tuple(stages), blocks=blocks, **changes)


def steps(spec: ResolvedSpec, tensors: Optional[Mapping[str, Tensor]] = None) -> list[Step]:
    """The passes a resolved Swin ``spec`` asks for, in the order they run (only those with something
    to do): q/k and v channels, heads, MLP neurons, blocks, each stage's residual channels.
    ``tensors`` is unused (Swin specs read nothing else from the checkpoint)."""
    out = width_steps(spec, sys.modules[__name__])
    if spec.removed_blocks:
        out.append(Step("remove_blocks", "whole blocks", ("removed_blocks",), lambda ir: remove_blocks(ir, spec.removed_blocks)))
    if spec.stage_embed:
        out.append(Step("prune_stage_embed", "stage residual channels", ("stage_embed",), lambda ir: _stage_embeds(ir, spec.stage_embed)))
    return out


def _stage_embeds(ir: SwinIR, masks: Mapping[int, Tensor]) -> SwinIR:
    for s, mask in sorted(masks.items()):
        ir = prune_stage_embed(ir, s, mask)
    return ir


def apply_spec(ir: SwinIR, spec: ResolvedSpec, tensors: Optional[Mapping[str, Tensor]] = None) -> SwinIR:
    """Every pass a resolved Swin spec asks for (the :func:`steps`, in order)."""
    return run(ir, steps(spec, tensors))


def layout_steps(heads: str = "pad", token_layout: str = "prefix") -> list[Step]:
    """The exact head layout before codegen as one step (:func:`~.layout.lay_out_heads`);
    ``token_layout`` has nothing to lay out (Swin keeps every token)."""
    return [Step("lay_out_heads", f"head layout ({heads})", (), lambda ir: layout.lay_out_heads(ir, heads))]


def lay_out(ir: SwinIR, heads: str = "pad", token_layout: str = "prefix") -> SwinIR:
    """The exact head layout before codegen: irregular heads padded (``"pad"``), grouped by width
    (``"group"``) or in fused-kernel buckets (``"fused"``) -- :func:`~.layout.lay_out_heads`;
    ``token_layout`` has nothing to lay out (Swin keeps every token)."""
    return run(ir, layout_steps(heads, token_layout))
