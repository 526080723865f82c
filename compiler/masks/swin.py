"""The reference mask producer for Swin: L1 width criteria per block (``layers.{s}.blocks.{j}.heads|mlp``)
and per stage (``layers.{s}.embed``)."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from ..ir.swin import SwinIR
from ..spec.format import Spec
from .common import block_channel_l1, check_ratio, l1_meta, topk_mask, width_masks


def stage_embed_scores(ir: SwinIR, stage: int) -> Tensor:
    """[C_s] L1 norm of every weight that writes or reads each channel of stage s -- the producer
    (patch embedding rows, or the merging's reduction rows), the stage's blocks, and the consumer (the
    next merging's reduction columns at the four copies, or the classifier columns)."""
    st = ir.stages[stage]
    s = ir.patch_weight.abs().flatten(1).sum(1) if st.merge is None else st.merge.reduction_weight.abs().sum(1)
    for b in ir.stage_blocks(stage):
        s = s + block_channel_l1(b)
    if stage + 1 < len(ir.stages):
        s = s + ir.stages[stage + 1].merge.reduction_weight.abs().sum(0).reshape(4, -1).sum(0)
    else:
        s = s + ir.head.weight.abs().sum(0)
    return s


def l1_spec(ir: SwinIR, heads: Optional[float] = None, mlp: Optional[float] = None,
            embed: Optional[float] = None) -> Spec:
    """A Swin spec keeping the largest-L1 heads and MLP neurons per block and, per stage, the
    ``round(embed * C_s)`` channels with the largest :func:`stage_embed_scores`.

    Raises:
        VitshrinkError: a ratio outside (0, 1].
    """
    for name, r in (("heads", heads), ("mlp", mlp), ("embed", embed)):
        check_ratio(name, r)
    masks = width_masks(ir, heads, mlp, ir.block_key)
    if embed is not None:
        for st in ir.stages:
            masks[f"layers.{st.index}.embed"] = topk_mask(stage_embed_scores(ir, st.index), embed)
    return Spec(masks=masks, settings={}, source="<l1_spec>", meta=l1_meta(ir, heads, mlp, embed))
