"""timm frontends for Swin V2 -> :class:`~vitshrink.ir.swin.SwinIR` (Liu et al., Swin Transformer V2,
CVPR 2022): the Swin IR with cosine attention (a learned per-head logit scale, clamped and exponentiated
once), the continuous position bias (its MLP evaluated once becomes the block's constant bias) and
res-post-norm blocks. Two timm implementations: ``SwinTransformerV2`` (``16 sigmoid(cpb_mlp)``, patch
merging that normalises after the reduction, a final norm) and ``SwinTransformerV2Cr`` (``meta_mlp``,
merging that normalises first, a main-branch ``norm3`` after some blocks, no final norm). Options the IR
cannot represent exactly are refused with a ModelError naming the option.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..ir.nodes import AttentionIR, BlockIR, ClassifierIR, MlpIR
from ..ir.swin import MergeIR, StageIR, SwinIR
from .timm_common import clone, is_identity, layer_norm, refuse, timm
from .timm_parts import activation, attention_ir, qkv_projection

TESTED_MODELS = ("swinv2_tiny_window8_256", "swinv2_cr_tiny_ns_224")


def _is_cr(model: nn.Module) -> bool:
    from timm.models.swin_transformer_v2_cr import SwinTransformerV2Cr  # timm: lazy, after the compat shim

    return isinstance(model, SwinTransformerV2Cr)


def accepts(model: nn.Module) -> bool:
    """Whether ``model`` is a timm SwinTransformerV2 or SwinTransformerV2Cr; :func:`from_timm` may still
    refuse an option."""
    timm()
    from timm.models.swin_transformer_v2 import SwinTransformerV2  # timm: lazy, after the compat shim

    return isinstance(model, SwinTransformerV2) or _is_cr(model)


def _stages(model: nn.Module):
    return model.stages if _is_cr(model) else model.layers


def timm_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's blocks in IR order (stage after stage) with their state-dict prefixes."""
    top = "stages" if _is_cr(model) else "layers"
    return [(f"{top}.{s}.blocks.{j}.", b) for s, st in enumerate(_stages(model)) for j, b in enumerate(st.blocks)]


def _check_supported(model: nn.Module) -> None:
    from timm.layers import PatchEmbed  # timm: lazy, after the compat shim
    from timm.models import swin_transformer_v2 as v2, swin_transformer_v2_cr as cr  # timm: lazy, after the shim

    is_cr = _is_cr(model)
    embed_cls, merge_cls = (cr.PatchEmbed, cr.PatchMerging) if is_cr else (PatchEmbed, v2.PatchMerging)
    block_cls, attn_cls = ((cr.SwinTransformerV2CrBlock, cr.WindowMultiHeadAttention) if is_cr
                           else (v2.SwinTransformerV2Block, v2.WindowAttention))

    if getattr(model.head, "global_pool", None) is None or model.head.global_pool.pool_type != "avg":
        refuse("global_pool", getattr(model, "global_pool", None), "Swin is supported with average pooling")
    if not isinstance(getattr(model.head, "fc", None), nn.Linear):
        refuse("num_classes", 0, "a classifier head is required")
    if not (isinstance(getattr(model, "norm", None), nn.LayerNorm) or (is_cr and is_identity(getattr(model, "norm", None)))):
        refuse("norm_layer", type(model.norm).__name__)
    pe = model.patch_embed
    if type(pe) is not embed_cls or not isinstance(pe.norm, nn.LayerNorm) or getattr(pe, "strict_img_size", True) is False:
        refuse("embed_layer", type(pe).__name__, "a PatchEmbed with a LayerNorm and a fixed image size is required")
    for s, stage in enumerate(_stages(model)):
        ds = stage.downsample
        if (s == 0) != is_identity(ds) or (s and (type(ds) is not merge_cls or not isinstance(ds.norm, nn.LayerNorm))):
            refuse(f"layers.{s}.downsample", type(ds).__name__)
        for j, blk in enumerate(stage.blocks):
            where = f"layers.{s}.blocks.{j}"
            if type(blk) is not block_cls or type(blk.attn) is not attn_cls:
                refuse("block", type(blk).__name__, where)
            if not (is_identity(getattr(blk, "norm3", None)) or isinstance(blk.norm3, nn.LayerNorm)):
                refuse("norm3", type(blk.norm3).__name__, where)
            H, W = blk.feat_size if is_cr else blk.input_resolution
            wh, ww = blk.window_size
            if H % wh or W % ww:
                refuse("img_size", pe.img_size, f"{where}: grid {H}x{W} is not a multiple of window {wh}x{ww}")
            if getattr(blk, "dynamic_mask", False) or getattr(blk, "always_partition", False):
                refuse("always_partition", True, where)
            if not (isinstance(blk.norm1, nn.LayerNorm) and isinstance(blk.norm2, nn.LayerNorm)):
                refuse("norm_layer", type(blk.norm1).__name__, where)
            if activation(blk.mlp) != "gelu":
                refuse("act_layer", type(blk.mlp.act).__name__, where)


def _attention(blk) -> AttentionIR:
    a = blk.attn
    H = a.num_heads
    A = a.window_size[0] * a.window_size[1]
    with torch.no_grad():
        if hasattr(a, "meta_mlp"):  # V2 Cr
            rel = a._relative_positional_encodings().reshape(H, A, A)
        else:
            table = a.cpb_mlp(a.relative_coords_table).view(-1, H)
            rel = 16 * torch.sigmoid(table[a.relative_position_index.view(-1)].view(A, A, H).permute(2, 0, 1))
        logit_scale = torch.clamp(a.logit_scale, max=math.log(1.0 / 0.01)).exp().reshape(H)
    return attention_ir(*qkv_projection(a), H, a.proj, None, 1.0, rel_bias=rel.contiguous().clone(),
                        logit_scale=logit_scale.detach().clone())


def from_timm(model: nn.Module, name: Optional[str] = None) -> SwinIR:
    """Translate a timm SwinTransformerV2 into the Swin IR (a copy of its weights; the model is unchanged).

    Raises:
        ModelError: the model uses an option the IR cannot represent (named).
    """
    _check_supported(model)
    is_cr = _is_cr(model)
    stages, blocks, g = [], [], 0
    for s, stage in enumerate(_stages(model)):
        first = stage.blocks[0]
        shift = next((tuple(b.shift_size) for b in stage.blocks if any(b.shift_size)), (0, 0))
        merge = None
        if s > 0:
            ds = stage.downsample
            merge = MergeIR(layer_norm(ds.norm), ds.reduction.weight.detach().clone(), clone(ds.reduction.bias),
                            norm_after=not is_cr)
        ids = tuple(range(g, g + len(stage.blocks)))
        dim = first.norm1.normalized_shape[0]
        stages.append(StageIR(s, tuple(range(dim)), tuple(first.feat_size if is_cr else first.input_resolution),
                              tuple(first.window_size), shift, ids, merge))
        for blk in stage.blocks:
            m = blk.mlp
            mlp = MlpIR(tuple(range(m.fc1.out_features)), m.fc1.weight.detach().clone(), clone(m.fc1.bias),
                        m.fc2.weight.detach().clone(), clone(m.fc2.bias))
            norm3 = None if is_identity(getattr(blk, "norm3", None)) else layer_norm(blk.norm3)
            blocks.append(BlockIR(g, layer_norm(blk.norm1), _attention(blk), layer_norm(blk.norm2), mlp, post_norm=True,
                                  norm_out=norm3))
            g += 1
    pe, fc = model.patch_embed, model.head.fc
    return SwinIR(
        name=name or getattr(model, "default_cfg", {}).get("architecture", type(model).__name__),
        img_size=tuple(pe.img_size), patch_size=tuple(pe.patch_size), in_chans=int(pe.proj.in_channels),
        patch_weight=pe.proj.weight.detach().clone(), patch_bias=clone(pe.proj.bias), patch_norm=layer_norm(pe.norm),
        stages=tuple(stages), blocks=tuple(blocks),
        norm=None if is_identity(getattr(model, "norm", None)) else layer_norm(model.norm),
        head=ClassifierIR("head", -1, fc.weight.detach().clone(), clone(fc.bias)),
        meta={"frontend": "timm", "family": "swinv2"},
    )
