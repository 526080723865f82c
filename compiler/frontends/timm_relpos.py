"""timm frontend for ViTs with a relative position bias -> :class:`~vitshrink.ir.vit.ViTIR`: BEiT / BEiT v2
(``Beit``: a bias table over the patch grid and the class token, q/v bias without k bias, LayerScale)
and ``VisionTransformerRelPos`` (``vit_relpos_*``, ``vit_srelpos_*``: a bias from a small MLP over grid
offsets -- a constant once evaluated --, per block or shared, pre- or post-norm blocks). The bias
becomes each block's ``AttentionIR.rel_bias`` [H, N, N] over all tokens. Every option the IR cannot
represent exactly is refused with a :class:`ModelError` naming it.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..ir.nodes import BlockIR, ClassifierIR, MlpIR
from ..ir.vit import PrefixTokenIR, ViTIR
from .timm_common import clone, is_identity, layer_norm, refuse, timm
from .timm_parts import activation, attention_ir, gamma, qkv_projection, scaled

#: The models the test suite covers (small image sizes); others pass if they use only supported options.
TESTED_MODELS = ("beit_base_patch16_224", "vit_relpos_small_patch16_224", "vit_relpos_medium_patch16_rpn_224",
                 "vit_srelpos_small_patch16_224")


def _classes():
    timm()
    from timm.models.beit import Beit  # timm: lazy, after the compat shim
    from timm.models.vision_transformer_relpos import VisionTransformerRelPos  # timm: lazy, after the compat shim

    return Beit, VisionTransformerRelPos


def accepts(model: nn.Module) -> bool:
    """Whether ``model`` is a timm ``Beit`` or ``VisionTransformerRelPos``."""
    return isinstance(model, _classes())


def timm_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's transformer blocks in IR order with their state-dict prefixes (``blocks.{i}.``)."""
    return [(f"blocks.{i}.", b) for i, b in enumerate(model.blocks)]


def _check_supported(model: nn.Module) -> None:
    from timm.layers import PatchEmbed  # timm: lazy, after the compat shim
    from timm.models import beit, vision_transformer_relpos as relpos  # timm: lazy, after the compat shim

    if model.global_pool not in ("token", "avg"):
        refuse("global_pool", model.global_pool)
    if model.global_pool == "token" and model.cls_token is None:
        refuse("class_token", False, "'token' pooling reads the class token")
    if isinstance(model, beit.Beit) and model.rel_pos_bias is not None:
        refuse("use_shared_rel_pos_bias", True)
    for name in ("norm", "fc_norm"):
        if not (is_identity(getattr(model, name)) or isinstance(getattr(model, name), nn.LayerNorm)):
            refuse(name, type(getattr(model, name)).__name__)
    if not (isinstance(model.head, nn.Linear) or is_identity(model.head)):
        refuse("head", type(model.head).__name__)
    pe = model.patch_embed
    if type(pe) is not PatchEmbed or not is_identity(pe.norm) or not pe.flatten or pe.dynamic_img_pad:
        refuse("embed_layer", type(pe).__name__, "a plain PatchEmbed (conv, flatten, no norm) is required")
    for blk in model.blocks:
        if type(blk) not in (beit.Block, relpos.RelPosBlock, relpos.ResPostRelPosBlock):
            refuse("block_fn", type(blk).__name__)
        if not (isinstance(blk.norm1, nn.LayerNorm) and isinstance(blk.norm2, nn.LayerNorm)):
            refuse("norm_layer", type(blk.norm1).__name__)
        a = blk.attn
        if not (is_identity(getattr(a, "q_norm", None)) and is_identity(getattr(a, "k_norm", None))):
            refuse("qk_norm", True)
        activation(blk.mlp)


def _bias(model: nn.Module, blk: nn.Module) -> Optional[torch.Tensor]:
    """The block's relative position bias [H, N, N] (evaluated once: a constant of the image size)."""
    a = blk.attn
    with torch.no_grad():
        if hasattr(a, "relative_position_bias_table"):  # BEiT
            b = a._get_rel_pos_bias() if a.relative_position_bias_table is not None else None
        elif getattr(a, "rel_pos", None) is not None:
            b = a.rel_pos.get_bias()
        else:
            b = model.shared_rel_pos.get_bias() if getattr(model, "shared_rel_pos", None) is not None else None
    return None if b is None else b.detach().float().reshape(b.shape[-3:]).clone()


def from_timm(model: nn.Module, name: Optional[str] = None) -> ViTIR:
    """Translate a timm BEiT or ``VisionTransformerRelPos`` into the IR (a copy of its weights).

    LayerScale (``gamma_1``/``gamma_2``, ``ls1``/``ls2``) is folded into proj and fc2; ResPost blocks are
    ``post_norm`` blocks; BEiT's absolute position embedding (when present) is the IR's, else zeros.

    Raises:
        ModelError: the model uses an option the IR cannot represent (the option is named).
    """
    _check_supported(model)
    from timm.models import vision_transformer_relpos as relpos  # timm: lazy, after the compat shim

    D = model.embed_dim
    blocks = []
    for i, blk in enumerate(model.blocks):
        a = blk.attn
        g1 = blk.gamma_1.detach() if getattr(blk, "gamma_1", None) is not None else gamma(getattr(blk, "ls1", None))
        g2 = blk.gamma_2.detach() if getattr(blk, "gamma_2", None) is not None else gamma(getattr(blk, "ls2", None))
        attn = attention_ir(*qkv_projection(a), a.num_heads, a.proj, g1, a.scale, rel_bias=_bias(model, blk))
        m = blk.mlp
        mlp = MlpIR(tuple(range(m.fc1.out_features)), m.fc1.weight.detach().clone(), clone(m.fc1.bias),
                    *scaled(m.fc2.weight, m.fc2.bias, g2), act=activation(m))
        blocks.append(BlockIR(i, layer_norm(blk.norm1), attn, layer_norm(blk.norm2), mlp,
                              post_norm=type(blk) is relpos.ResPostRelPosBlock))
    prefix = [] if model.cls_token is None else [PrefixTokenIR("cls", model.cls_token.detach().reshape(D).clone())]
    heads = [] if is_identity(model.head) else [
        ClassifierIR("head", -1 if model.global_pool == "avg" else 0, model.head.weight.detach().clone(), clone(model.head.bias))]
    pe = model.patch_embed
    N = len(prefix) + pe.num_patches
    pos = getattr(model, "pos_embed", None)
    return ViTIR(
        name=name or getattr(model, "default_cfg", {}).get("architecture", type(model).__name__),
        img_size=tuple(pe.img_size), patch_size=tuple(pe.patch_size), in_chans=int(pe.proj.in_channels),
        embed_ids=tuple(range(D)), patch_weight=pe.proj.weight.detach().clone(), patch_bias=clone(pe.proj.bias),
        prefix=tuple(prefix), pos_embed=torch.zeros(N, D) if pos is None else pos.detach().reshape(N, D).clone(),
        blocks=tuple(blocks), norm=None if is_identity(model.norm) else layer_norm(model.norm), heads=tuple(heads),
        meta={"frontend": "timm-relpos", "family": "relpos"}, pool=model.global_pool,
        fc_norm=None if is_identity(model.fc_norm) else layer_norm(model.fc_norm), feature_dim=0 if heads else D,
    )
