"""The reference mask producer for ViT/DeiT: L1 width criteria (heads, MLP neurons per block; the
embedding channels globally)."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from ..ir.vit import ViTIR
from ..spec.format import Spec
from ..spec.vit import block_name
from .common import block_channel_l1, check_ratio, l1_meta, topk_mask, width_masks


def embed_scores(ir: ViTIR) -> Tensor:
    """[D] L1 norm of every weight that writes or reads each residual channel."""
    s = ir.patch_weight.abs().flatten(1).sum(1)
    for b in ir.blocks:
        s = s + block_channel_l1(b)
    if ir.attn_pool is not None:  # the pool's keys and values read the residual channels; its head does not
        s = s + ir.attn_pool.k_weight.abs().sum(0) + ir.attn_pool.v_weight.abs().sum(0)
    else:
        for h in ir.heads:
            s = s + h.weight.abs().sum(0)
    return s


def l1_spec(ir: ViTIR, heads: Optional[float] = None, mlp: Optional[float] = None,
            embed: Optional[float] = None) -> Spec:
    """A spec keeping the largest-L1 heads and MLP neurons per block (:func:`~.common.width_masks`) and
    the ``round(embed * D)`` embedding channels with the largest :func:`embed_scores`.

    Args:
        ir: the dense model (its weights are the scores' input).
        heads, mlp, embed: keep ratios in (0, 1]; None leaves that kind unpruned.
    Raises:
        VitshrinkError: a ratio outside (0, 1].
    """
    for name, r in (("heads", heads), ("mlp", mlp), ("embed", embed)):
        check_ratio(name, r)
    masks = width_masks(ir, heads, mlp, lambda i: block_name(ir, i))
    if embed is not None:
        masks["embed"] = topk_mask(embed_scores(ir), embed)
    return Spec(masks=masks, settings={}, source="<l1_spec>", meta=l1_meta(ir, heads, mlp, embed))
