"""timm frontend for ``VisionTransformer`` / ``VisionTransformerDistilled`` -> :class:`~vitshrink.ir.vit.ViTIR`.

Covers the DeiT/ViT family (``deit_{tiny,small,base}_patch16_224``, their ``_distilled`` variants,
``vit_{tiny,small,base}_patch16_224``) and any timm model built from the same options. Every option
the IR cannot represent exactly is refused with a :class:`ModelError` naming the option.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

from ..errors import ModelError
from ..ir.nodes import BlockIR, ClassifierIR, MlpIR
from ..ir.vit import PrefixTokenIR, StemIR, ViTIR
from .timm_common import clone, is_identity, layer_norm, refuse, timm
from .timm_parts import activation, attention_ir, attn_pool, check_attn_pool, gamma, qkv_projection, scaled

#: The models the test suite covers. Other timm models pass if they use only supported options.
TESTED_MODELS = (
    "deit_tiny_patch16_224",
    "deit_small_patch16_224",
    "deit_base_patch16_224",
    "deit_tiny_distilled_patch16_224",
    "deit_small_distilled_patch16_224",
    "deit_base_distilled_patch16_224",
    "deit3_small_patch16_224",
    "deit3_base_patch16_224",
    "vit_tiny_patch16_224",
    "vit_small_patch16_224",
    "vit_base_patch16_224",
)


def accepts(model: nn.Module) -> bool:
    """Whether ``model`` is a timm ViT/DeiT (``VisionTransformer`` or a subclass); :func:`from_timm`
    may still refuse one of its options by name."""
    timm()
    from timm.models.vision_transformer import VisionTransformer  # timm: lazy, after the compat shim

    return isinstance(model, VisionTransformer)


def timm_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's transformer blocks in IR order with their state-dict prefixes (``blocks.{i}.``)."""
    return [(f"blocks.{i}.", b) for i, b in enumerate(model.blocks)]


def _check_supported(model: nn.Module) -> None:
    timm_ = timm()
    from timm.layers import HybridEmbed, PatchEmbed  # timm: lazy, after the compat shim
    from timm.layers.attention import Attention  # lazy: after the compat shim
    from timm.models.vision_transformer import (  # lazy: after the compat shim
        Block, LayerScale, ResPostBlock, VisionTransformer)

    if not isinstance(model, VisionTransformer):
        raise ModelError(
            f"unsupported model class {type(model).__name__}: the timm frontend handles VisionTransformer "
            f"(DeiT/ViT) models only (timm {timm_.__version__})"
        )
    if model.global_pool not in ("token", "avg", "map"):
        refuse("global_pool", model.global_pool, "'token' (class token), 'avg' and 'map' pooling are supported")
    if model.global_pool == "avg" and getattr(model, "pool_include_prefix", False):
        refuse("pool_include_prefix", True, "average pooling over the patch tokens only is supported")
    if model.global_pool == "token" and (not getattr(model, "has_class_token", True) or model.cls_token is None):
        refuse("class_token", False, "'token' pooling reads the class token")
    if getattr(model, "num_reg_tokens", 0) and type(model) is not VisionTransformer:
        refuse("reg_tokens", model.num_reg_tokens, f"register tokens in {type(model).__name__}")
    if getattr(model, "dynamic_img_size", False):
        refuse("dynamic_img_size", True)
    if model.pos_embed is None:
        refuse("pos_embed", "none")
    if not (is_identity(model.norm_pre) or isinstance(model.norm_pre, nn.LayerNorm)):
        refuse("pre_norm", type(model.norm_pre).__name__, "a LayerNorm (or none) after the position embedding")
    if not (is_identity(getattr(model, "fc_norm", None)) or isinstance(model.fc_norm, nn.LayerNorm)):
        refuse("fc_norm", type(model.fc_norm).__name__)
    if model.global_pool == "map":
        check_attn_pool(model)
    if not is_identity(model.patch_drop):
        refuse("patch_drop_rate", model.patch_drop.prob)
    if not (isinstance(model.head, nn.Linear) or is_identity(model.head)):
        refuse("head", type(model.head).__name__, "a Linear classifier or none (num_classes=0) is required")
    if not (isinstance(model.norm, nn.LayerNorm) or is_identity(model.norm)):
        refuse("final_norm", type(model.norm).__name__)
    pe = model.patch_embed
    if type(pe) is HybridEmbed:  # a CNN trunk, then the patch projection: the trunk is carried opaque
        if not isinstance(pe.proj, nn.Conv2d) or not pe.flatten or pe.dynamic_img_pad:
            refuse("embed_layer", "HybridEmbed", "a convolutional projection after the stem is required")
    elif type(pe) is not PatchEmbed or not is_identity(pe.norm) or not pe.flatten or pe.dynamic_img_pad:
        refuse("embed_layer", type(pe).__name__, "a plain PatchEmbed (conv, flatten, no norm) is required")
    if tuple(pe.proj.kernel_size) != tuple(pe.proj.stride) or pe.proj.padding not in ((0, 0), 0, "valid"):
        refuse("patch_embed.proj", f"kernel={pe.proj.kernel_size} stride={pe.proj.stride}")
    for i, blk in enumerate(model.blocks):
        where = f"blocks.{i}"
        if type(blk) not in (Block, ResPostBlock):
            refuse("block_fn", type(blk).__name__)
        for ls in (getattr(blk, "ls1", None), getattr(blk, "ls2", None)):  # LayerScale (DeiT-III) is folded into proj / fc2 (from_timm)
            if not (is_identity(ls) or type(ls) is LayerScale):
                refuse("init_values", type(ls).__name__, f"{where}: only timm's LayerScale is folded")
        if not (isinstance(blk.norm1, nn.LayerNorm) and isinstance(blk.norm2, nn.LayerNorm)):
            refuse("norm_layer", type(blk.norm1).__name__)
        a = blk.attn
        if type(a) is not Attention:
            refuse("attn_layer", type(a).__name__)
        if not (is_identity(a.q_norm) and is_identity(a.k_norm)):
            refuse("qk_norm", True)
        if not is_identity(getattr(a, "norm", None)):
            refuse("scale_attn_norm", True)
        if getattr(a, "gate", None) is not None:
            refuse("gated", True)
        activation(blk.mlp)


def from_timm(model: nn.Module, name: Optional[str] = None) -> ViTIR:
    """Translate a timm ViT/DeiT into the IR (a copy of its weights; the model is not changed).

    LayerScale (DeiT-III, DINOv2, ``init_values``) is folded exactly into attn.proj and mlp.fc2 (rows
    scaled by gamma); register tokens (``reg_tokens``) become prefix tokens after the class token, never
    pruned; ``no_embed_class`` position embeddings become zero rows for the prefix tokens;
    ``global_pool='avg'`` (with or without a class token, with ``fc_norm`` or a final norm) pools the
    patch tokens, ``'map'`` (SigLIP) through the attention pool; ``pre_norm`` (CLIP) is the IR's
    ``norm_pre``; QuickGELU MLPs keep their activation; ``num_classes=0`` (DINOv2, CLIP/SigLIP towers)
    gives a feature extractor (no heads; ``feature_dim`` is the output width).

    Raises:
        ModelError: the model uses an option the IR cannot represent (the option is named).
    """
    _check_supported(model)
    from timm.models.deit import VisionTransformerDistilled  # timm: lazy, after the compat shim

    D = model.embed_dim
    blocks = []
    for i, blk in enumerate(model.blocks):
        a = blk.attn
        attn = attention_ir(*qkv_projection(a), a.num_heads, a.proj, gamma(getattr(blk, "ls1", None)), a.scale)
        m = blk.mlp
        mlp = MlpIR(
            hidden_ids=tuple(range(m.fc1.out_features)),
            fc1_weight=m.fc1.weight.detach().clone(), fc1_bias=clone(m.fc1.bias),
            **dict(zip(("fc2_weight", "fc2_bias"), scaled(m.fc2.weight, m.fc2.bias, gamma(getattr(blk, "ls2", None))))),
            act=activation(m),
        )
        blocks.append(BlockIR(i, layer_norm(blk.norm1), attn, layer_norm(blk.norm2), mlp,
                              post_norm=type(blk).__name__ == "ResPostBlock"))

    prefix = [] if model.cls_token is None else [PrefixTokenIR("cls", model.cls_token.detach().reshape(D).clone())]
    reg = getattr(model, "reg_token", None)
    if reg is not None:  # timm's order: class token, register tokens, patches
        prefix += [PrefixTokenIR(f"reg{j}", t.clone()) for j, t in enumerate(reg.detach().reshape(-1, D))]
    avg = model.global_pool in ("avg", "map")  # the one head reads the pooled feature
    heads = [] if is_identity(model.head) else [
        ClassifierIR("head", -1 if avg else 0, model.head.weight.detach().clone(), clone(model.head.bias))]
    pool_ir = attn_pool(model.attn_pool) if model.global_pool == "map" else None
    if isinstance(model, VisionTransformerDistilled):
        prefix.append(PrefixTokenIR("dist", model.dist_token.detach().reshape(D).clone()))
        heads.append(ClassifierIR("head_dist", 1, model.head_dist.weight.detach().clone(), clone(model.head_dist.bias)))
    pe = model.patch_embed
    ir = ViTIR(
        name=name or getattr(model, "default_cfg", {}).get("architecture", type(model).__name__),
        img_size=tuple(pe.img_size),
        patch_size=tuple(pe.patch_size),
        in_chans=int(pe.proj.in_channels) if not hasattr(pe, "backbone") else _image_channels(pe.backbone),
        embed_ids=tuple(range(D)),
        patch_weight=pe.proj.weight.detach().clone(),
        patch_bias=clone(pe.proj.bias),
        prefix=tuple(prefix),
        pos_embed=_pos_embed(model, len(prefix), D),
        blocks=tuple(blocks),
        norm=None if is_identity(model.norm) else layer_norm(model.norm),
        heads=tuple(heads),
        meta={"frontend": "timm", "family": "vit"},
        pool=model.global_pool,
        fc_norm=None if is_identity(getattr(model, "fc_norm", None)) else layer_norm(model.fc_norm),
        norm_pre=None if is_identity(model.norm_pre) else layer_norm(model.norm_pre),
        attn_pool=pool_ir,
        feature_dim=0 if heads else (pool_ir.out_features if pool_ir is not None else D),
        stem=_stem(pe),
    )
    if ir.pos_embed.shape[0] != ir.num_tokens:
        refuse("pos_embed", f"{ir.pos_embed.shape[0]} rows for {ir.num_tokens} tokens")
    return ir


def _image_channels(trunk: nn.Module) -> int:
    """The image channels a CNN trunk reads: its first convolution's input channels."""
    conv = next((m for m in trunk.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        refuse("embed_layer", "HybridEmbed", "the stem has no convolution to read the image channels from")
    return int(conv.in_channels)


def _stem(pe) -> Optional[StemIR]:
    """A HybridEmbed's trunk as an opaque :class:`StemIR` (a frozen copy), or None for a plain PatchEmbed."""
    if not hasattr(pe, "backbone"):
        return None
    module = copy.deepcopy(pe.backbone).eval().requires_grad_(False)
    C, H, W = pe.proj.in_channels, pe.grid_size[0] * pe.patch_size[0], pe.grid_size[1] * pe.patch_size[1]
    return StemIR(module, int(C), (int(H), int(W)))


def _pos_embed(model: nn.Module, num_prefix: int, D: int) -> torch.Tensor:
    """[N, D] added after the prefix tokens are prepended; ``no_embed_class`` (DeiT-III): zero rows
    for the prefix tokens (timm adds its position embeddings to the patches only)."""
    pos = model.pos_embed.detach().reshape(-1, D)
    if getattr(model, "no_embed_class", False):
        pos = torch.cat([torch.zeros(num_prefix, D, dtype=pos.dtype), pos])
    return pos.clone()
