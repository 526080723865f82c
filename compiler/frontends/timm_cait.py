"""timm frontend for ``Cait`` -> :class:`~vitshrink.ir.vit.ViTIR` (Touvron et al., Going deeper with Image
Transformers, ICCV 2021): self-attention blocks with talking-heads attention on the patch tokens alone,
then class-attention blocks in which only the class token -- joining there, without a position
embedding -- attends to every token and is updated; LayerScale everywhere (folded). The class-attention
blocks ``blocks_token_only.{j}`` are the IR's blocks ``depth + j`` (spec names ``blocks.{depth + j}.*``).
Options the IR cannot represent exactly are refused with a ModelError naming the option.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..ir.nodes import AttentionIR, BlockIR, ClassifierIR, MlpIR, TalkingHeadsIR
from ..ir.vit import PrefixTokenIR, ViTIR
from .timm_common import clone, is_identity, layer_norm, refuse, timm
from .timm_parts import activation, attention_ir, qkv_projection, scaled

TESTED_MODELS = ("cait_xxs24_224",)


def accepts(model: nn.Module) -> bool:
    """Whether ``model`` is a timm ``Cait``."""
    timm()
    from timm.models.cait import Cait  # timm: lazy, after the compat shim

    return isinstance(model, Cait)


def timm_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's blocks in IR order with their state-dict prefixes: ``blocks.{i}.``, then
    ``blocks_token_only.{j}.``."""
    return ([(f"blocks.{i}.", b) for i, b in enumerate(model.blocks)]
            + [(f"blocks_token_only.{j}.", b) for j, b in enumerate(model.blocks_token_only)])


def _check_supported(model: nn.Module) -> None:
    from timm.layers import PatchEmbed  # timm: lazy, after the compat shim
    from timm.models import cait  # timm: lazy, after the compat shim

    if model.global_pool != "token":
        refuse("global_pool", model.global_pool, "CaiT reads its class token")
    if not (isinstance(model.head, nn.Linear) or is_identity(model.head)):
        refuse("head", type(model.head).__name__)
    if not isinstance(model.norm, nn.LayerNorm):
        refuse("norm_layer", type(model.norm).__name__)
    pe = model.patch_embed
    if type(pe) is not PatchEmbed or not is_identity(pe.norm) or not pe.flatten or pe.dynamic_img_pad:
        refuse("embed_layer", type(pe).__name__, "a plain PatchEmbed (conv, flatten, no norm) is required")
    for blk in model.blocks:
        if type(blk) is not cait.LayerScaleBlock or type(blk.attn) is not cait.TalkingHeadAttn:
            refuse("block_layers", type(blk).__name__)
    for blk in model.blocks_token_only:
        if type(blk) is not cait.LayerScaleBlockClassAttn or type(blk.attn) is not cait.ClassAttn:
            refuse("block_layers_token", type(blk).__name__)
    for blk in [*model.blocks, *model.blocks_token_only]:
        if not (isinstance(blk.norm1, nn.LayerNorm) and isinstance(blk.norm2, nn.LayerNorm)):
            refuse("norm_layer", type(blk.norm1).__name__)
        activation(blk.mlp)


def _attention(a, gamma: torch.Tensor) -> AttentionIR:
    """TalkingHeadAttn (fused qkv and the two mixing matrices) or ClassAttn (q, k, v Linears) as IR."""
    talking = None
    if hasattr(a, "proj_l"):
        talking = TalkingHeadsIR(a.proj_l.weight.detach().clone(), clone(a.proj_l.bias),
                                 a.proj_w.weight.detach().clone(), clone(a.proj_w.bias))
    return attention_ir(*qkv_projection(a), a.num_heads, a.proj, gamma, a.scale, talking=talking)


def from_timm(model: nn.Module, name: Optional[str] = None) -> ViTIR:
    """Translate a timm CaiT into the IR (a copy of its weights; the model is not changed).

    Raises:
        ModelError: the model uses an option the IR cannot represent (the option is named).
    """
    _check_supported(model)
    D, L = model.embed_dim, len(model.blocks)
    blocks = []
    for i, blk in enumerate([*model.blocks, *model.blocks_token_only]):
        m = blk.mlp
        mlp = MlpIR(tuple(range(m.fc1.out_features)), m.fc1.weight.detach().clone(), clone(m.fc1.bias),
                    *scaled(m.fc2.weight, m.fc2.bias, blk.gamma_2.detach()), act=activation(m))
        blocks.append(BlockIR(i, layer_norm(blk.norm1), _attention(blk.attn, blk.gamma_1.detach()), layer_norm(blk.norm2),
                              mlp, class_attention=i >= L))
    heads = [] if is_identity(model.head) else [
        ClassifierIR("head", 0, model.head.weight.detach().clone(), clone(model.head.bias))]
    pe = model.patch_embed
    return ViTIR(
        name=name or getattr(model, "default_cfg", {}).get("architecture", type(model).__name__),
        img_size=tuple(pe.img_size), patch_size=tuple(pe.patch_size), in_chans=int(pe.proj.in_channels),
        embed_ids=tuple(range(D)), patch_weight=pe.proj.weight.detach().clone(), patch_bias=clone(pe.proj.bias),
        prefix=(PrefixTokenIR("cls", model.cls_token.detach().reshape(D).clone()),),
        pos_embed=model.pos_embed.detach().reshape(-1, D).clone(), blocks=tuple(blocks), norm=layer_norm(model.norm),
        heads=tuple(heads), meta={"frontend": "timm-cait", "family": "cait"}, pool="token", feature_dim=0 if heads else D, prefix_at=L,
    )
