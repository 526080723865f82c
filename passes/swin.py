"""Swin passes: the per-stage residual channels (``layers.{s}.embed``); and :func:`apply_swin_spec`.

Heads, q/k/v channels, MLP neurons and block removal on Swin are the ViT passes of
:mod:`.structural`, unchanged: a :class:`~vitshrink.ir_swin.SwinIR` keeps its blocks flattened, and
:func:`~.structural.select_attention` carries each head's relative-position bias with it.
"""
from __future__ import annotations

from torch import Tensor

from vitshrink.ir import cols, replace, rows
from vitshrink.ir_swin import SwinIR

from .structural import _keep, _ln, embed_block, prune_head_channels, prune_heads, prune_mlp, remove_blocks


def prune_stage_embed(ir: SwinIR, stage: int, embed: Tensor) -> SwinIR:
    """Remove residual channels of one Swin stage (SAViT's embedding mask, per stage).

    Shrinks the producer (the patch embedding conv and its LayerNorm for stage 0, the patch merging's
    ``reduction`` rows otherwise), every block of the stage (as :func:`~.structural.embed_block`), and
    the consumer: the next patch merging's LayerNorm and ``reduction`` columns at the four copies of
    each channel (c, C+c, 2C+c, 3C+c), or the final LayerNorm and the classifier. LayerNorms then
    normalise over the kept channels only (the reference semantics, DESIGN.md).

    Args:
        stage: stage index s; ``embed``: [C_s] bool in original channel coordinates.
    """
    st = ir.stages[stage]
    keep = _keep(st.embed_ids, embed)
    C = st.dim
    changes: dict = {}
    if stage == 0:
        changes.update(patch_weight=rows(ir.patch_weight, keep), patch_bias=rows(ir.patch_bias, keep),
                       patch_norm=_ln(ir.patch_norm, keep))
    stages = list(ir.stages)
    if st.merge is not None:
        m = st.merge
        st = replace(st, merge=replace(m, reduction_weight=rows(m.reduction_weight, keep),
                                       reduction_bias=rows(m.reduction_bias, keep)))
    stages[stage] = replace(st, embed_ids=tuple(st.embed_ids[p] for p in keep))
    if stage + 1 < len(stages):
        nxt = stages[stage + 1]
        keep4 = [k * C + p for k in range(4) for p in keep]
        m = nxt.merge
        stages[stage + 1] = replace(nxt, merge=replace(m, norm=_ln(m.norm, keep4), reduction_weight=cols(m.reduction_weight, keep4)))
    else:
        changes.update(norm=_ln(ir.norm, keep), head=replace(ir.head, weight=cols(ir.head.weight, keep)))
    ids = set(st.block_ids)
    blocks = tuple(embed_block(b, keep) if b.source_index in ids else b for b in ir.blocks)
    return replace(ir, stages=tuple(stages), blocks=blocks, **changes)


def apply_swin_spec(ir: SwinIR, spec) -> SwinIR:
    """Every pass a resolved Swin spec asks for (heads, q/k/v channels, MLP, blocks, stage channels)."""
    ir = prune_head_channels(ir, spec.qk, spec.v)
    ir = prune_heads(ir, spec.heads)
    ir = prune_mlp(ir, spec.mlp)
    ir = remove_blocks(ir, spec.removed_blocks)
    for s, mask in sorted(spec.stage_embed.items()):
        ir = prune_stage_embed(ir, s, mask)
    return ir
