"""timm frontend for ``Eva`` -> :class:`~vitshrink.ir.vit.ViTIR` with rotary position embedding.

timm's ``Eva`` class carries EVA-02, DINOv3, Perception Encoder (``vit_pe_*``), the ``vit_*_rope_*``
models and others: a ViT whose attention rotates q and k of the patch tokens (RoPE; one table for all
blocks, or one per block and head: RoPE-Mixed), with q/v bias and no k bias, plain or gated (SwiGLU,
GluMlp) MLPs with an optional LayerNorm over the hidden units, LayerScale, register tokens, and an
optional absolute position embedding. Every option the IR cannot represent exactly is refused with a
:class:`ModelError` naming it.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..ir.nodes import BlockIR, ClassifierIR, MlpIR, RopeIR
from ..ir.vit import PrefixTokenIR, ViTIR
from .timm_common import clone, is_identity, layer_norm, refuse, timm
from .timm_parts import activation, attention_ir, attn_pool, check_attn_pool, qkv_projection, scaled

#: The models the test suite covers (small image sizes); others pass if they use only supported options.
TESTED_MODELS = ("eva02_tiny_patch14_224", "eva02_small_patch14_224", "vit_small_patch16_rope_224",
                 "vit_small_patch16_rope_mixed_224", "vit_small_patch16_dinov3", "vit_pe_core_tiny_patch16_384")


def accepts(model: nn.Module) -> bool:
    """Whether ``model`` is a timm ``Eva``; :func:`from_timm` may still refuse one of its options by name."""
    timm()
    from timm.models.eva import Eva  # timm: lazy, after the compat shim

    return isinstance(model, Eva)


def timm_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's transformer blocks in IR order with their state-dict prefixes (``blocks.{i}.``)."""
    return [(f"blocks.{i}.", b) for i, b in enumerate(model.blocks)]


def _mlp(m) -> MlpIR:
    """timm ``Mlp`` / ``GluMlp`` / ``SwiGLU`` (optional hidden LayerNorm) as IR, LayerScale not yet folded."""
    from timm.layers import GluMlp, Mlp, SwiGLU  # timm: lazy, after the compat shim

    norm = None if is_identity(getattr(m, "norm", None)) else m.norm
    if norm is not None and not isinstance(norm, nn.LayerNorm):
        refuse("mlp.norm", type(norm).__name__)
    act = activation(m, allowed=(Mlp, GluMlp, SwiGLU))
    w = lambda lin: lin.weight.detach().clone()  # noqa: E731
    if type(m) is SwiGLU:
        value, gate = (w(m.fc1_x), clone(m.fc1_x.bias)), (w(m.fc1_g), clone(m.fc1_g.bias))
    elif type(m) is GluMlp:
        if m.chunk_dim != -1:
            refuse("mlp.chunk_dim", m.chunk_dim)
        hw, hb = m.fc1.weight.detach().chunk(2), None if m.fc1.bias is None else m.fc1.bias.detach().chunk(2)
        first, second = (hw[0].clone(), None if hb is None else hb[0].clone()), (hw[1].clone(), None if hb is None else hb[1].clone())
        value, gate = (first, second) if m.gate_last else (second, first)  # gate_last: x1 * act(x2)
    else:
        value, gate = (w(m.fc1), clone(m.fc1.bias)), (None, None)
    return MlpIR(tuple(range(value[0].shape[0])), value[0], value[1], w(m.fc2), clone(m.fc2.bias), act=act,
                 gate_weight=gate[0], gate_bias=gate[1], norm=None if norm is None else layer_norm(norm))


def _check_supported(model: nn.Module) -> None:
    timm()
    from timm.layers import PatchEmbed  # timm: lazy, after the compat shim
    from timm.models.eva import EvaBlock  # timm: lazy, after the compat shim

    if model.global_pool not in ("token", "avg", "map"):
        refuse("global_pool", model.global_pool)
    if model.global_pool == "token" and model.cls_token is None:
        refuse("class_token", False, "'token' pooling reads the class token")
    if model.patch_drop is not None and not is_identity(model.patch_drop):
        refuse("patch_drop_rate", model.patch_drop.prob)
    for name in ("norm_pre", "norm", "fc_norm"):
        if not (is_identity(getattr(model, name, None)) or isinstance(getattr(model, name), nn.LayerNorm)):
            refuse(name, type(getattr(model, name)).__name__)
    if getattr(model, "attn_pool", None) is not None:
        check_attn_pool(model)
    if not (isinstance(model.head, nn.Linear) or is_identity(model.head)):
        refuse("head", type(model.head).__name__)
    pe = model.patch_embed
    dynamic = getattr(model, "dynamic_img_size", False)  # tokens as NHWC, then flattened by the model: the same
    padded = pe.dynamic_img_pad and any(s % p for s, p in zip(pe.img_size, pe.patch_size))
    if type(pe) is not PatchEmbed or not is_identity(pe.norm) or not (pe.flatten or dynamic) or padded:
        refuse("embed_layer", type(pe).__name__, "a plain PatchEmbed (conv, flatten, no norm) is required")
    if tuple(pe.proj.kernel_size) != tuple(pe.proj.stride) or pe.proj.padding not in ((0, 0), 0, "valid"):
        refuse("patch_embed.proj", f"kernel={pe.proj.kernel_size} stride={pe.proj.stride}")
    for i, blk in enumerate(model.blocks):
        if type(blk) is not EvaBlock:
            refuse("block_fn", type(blk).__name__, "post-norm EVA blocks are not supported")
        if not (isinstance(blk.norm1, nn.LayerNorm) and isinstance(blk.norm2, nn.LayerNorm)):
            refuse("norm_layer", type(blk.norm1).__name__)
        a = blk.attn
        if not (is_identity(a.q_norm) and is_identity(a.k_norm)):
            refuse("qk_norm", True)
        if not is_identity(getattr(a, "norm", None)):
            refuse("scale_attn_inner", True, "a LayerNorm over the heads' outputs before proj")
        if getattr(a, "gate", None) is not None:
            refuse("gated_attn", True)
        if getattr(a, "num_kv_groups", 1) != 1:
            refuse("num_kv_heads", a.num_kv_heads, "grouped-query attention")
        if model.rope is not None and getattr(a, "num_prefix_tokens", model.num_prefix_tokens) != model.num_prefix_tokens:
            refuse("num_prefix_tokens", a.num_prefix_tokens, f"blocks.{i}: differs from the model's")


def _rope(model: nn.Module) -> Optional[list[RopeIR]]:
    """One :class:`RopeIR` per block (RoPE-Mixed: each block its own per-head table), or None."""
    rope = model.rope
    if rope is None:
        return None
    with torch.no_grad():
        emb = rope.get_embed() if getattr(rope, "feat_shape", None) is not None else rope.get_embed(shape=model.patch_embed.grid_size)
    emb = emb.detach().float()
    if emb.dim() not in (2, 4) or (emb.dim() == 4 and emb.shape[0] != len(model.blocks)):
        refuse("rope", f"{type(rope).__name__} with embedding shape {list(emb.shape)}")
    per_block = [emb[i] for i in range(emb.shape[0])] if emb.dim() == 4 else [emb[None]] * len(model.blocks)
    out = []
    for blk, e in zip(model.blocks, per_block):
        sin, cos = e.chunk(2, -1)  # timm's apply_rot_embed_cat: [sin | cos]
        out.append(RopeIR(sin.contiguous(), cos.contiguous(), bool(getattr(blk.attn, "rotate_half", False)),
                          int(model.num_prefix_tokens)))
    return out


def from_timm(model: nn.Module, name: Optional[str] = None) -> ViTIR:
    """Translate a timm ``Eva`` into the IR (a copy of its weights; the model is not changed).

    The IR is compiled for the model's image size (``patch_embed.img_size``); a model built with
    ``dynamic_img_size`` (DINOv3) is translated at that size, where timm's resampling is the identity.
    RoPE becomes each block's :class:`~vitshrink.ir.nodes.RopeIR` (the tables of that image size);
    LayerScale (``gamma_1``/``gamma_2``) is folded into proj and fc2; a missing absolute position
    embedding is a zero one; the attention pool (``global_pool='map'``) reads every token, prefix ones
    included, as timm's Eva does.

    Raises:
        ModelError: the model uses an option the IR cannot represent (the option is named).
    """
    _check_supported(model)
    D, P = model.embed_dim, model.num_prefix_tokens
    ropes = _rope(model) or [None] * len(model.blocks)
    blocks = []
    for i, (blk, rope) in enumerate(zip(model.blocks, ropes)):
        a = blk.attn
        w, b = qkv_projection(a)
        hd = w.shape[0] // (3 * a.num_heads)
        if rope is not None and rope.head_dim != hd:
            refuse("rope", f"blocks.{i}: rotary dim {rope.head_dim} != head_dim {hd}")
        g1 = None if blk.gamma_1 is None else blk.gamma_1.detach()
        attn = attention_ir(w, b, a.num_heads, a.proj, g1, a.scale, rope=rope)
        mlp = _mlp(blk.mlp)
        g2 = None if blk.gamma_2 is None else blk.gamma_2.detach()
        fc2_w, fc2_b = scaled(mlp.fc2_weight, mlp.fc2_bias, g2)
        blocks.append(BlockIR(i, layer_norm(blk.norm1), attn, layer_norm(blk.norm2),
                              MlpIR(mlp.hidden_ids, mlp.fc1_weight, mlp.fc1_bias, fc2_w, fc2_b, mlp.act,
                                    mlp.gate_weight, mlp.gate_bias, mlp.norm)))
    prefix = [] if model.cls_token is None else [PrefixTokenIR("cls", model.cls_token.detach().reshape(D).clone())]
    if model.reg_token is not None:
        prefix += [PrefixTokenIR(f"reg{j}", t.clone()) for j, t in enumerate(model.reg_token.detach().reshape(-1, D))]
    pooled = model.global_pool in ("avg", "map")
    heads = [] if is_identity(model.head) else [
        ClassifierIR("head", -1 if pooled else 0, model.head.weight.detach().clone(), clone(model.head.bias))]
    pool_ir = attn_pool(model.attn_pool, include_prefix=True) if getattr(model, "attn_pool", None) is not None else None
    pe = model.patch_embed
    ir = ViTIR(
        name=name or getattr(model, "default_cfg", {}).get("architecture", type(model).__name__),
        img_size=tuple(pe.img_size), patch_size=tuple(pe.patch_size), in_chans=int(pe.proj.in_channels),
        embed_ids=tuple(range(D)), patch_weight=pe.proj.weight.detach().clone(), patch_bias=clone(pe.proj.bias),
        prefix=tuple(prefix), pos_embed=_pos_embed(model, P, D), blocks=tuple(blocks),
        norm=None if is_identity(model.norm) else layer_norm(model.norm), heads=tuple(heads),
        meta={"frontend": "timm-eva", "family": "eva"}, pool="map" if pool_ir is not None else model.global_pool,
        fc_norm=None if is_identity(model.fc_norm) else layer_norm(model.fc_norm),
        norm_pre=None if is_identity(model.norm_pre) else layer_norm(model.norm_pre), attn_pool=pool_ir,
        feature_dim=0 if heads else (pool_ir.out_features if pool_ir is not None else D),
    )
    if ir.pos_embed.shape[0] != ir.num_tokens:
        refuse("pos_embed", f"{ir.pos_embed.shape[0]} rows for {ir.num_tokens} tokens")
    return ir


def _pos_embed(model: nn.Module, num_prefix: int, D: int) -> torch.Tensor:
    """[N, D] added after the prefix tokens are prepended: zeros without an absolute position embedding,
    zero prefix rows with ``no_embed_class``."""
    n = model.patch_embed.num_patches
    if model.pos_embed is None:
        return torch.zeros(num_prefix + n, D)
    pos = model.pos_embed.detach().reshape(-1, D)
    if model.no_embed_class or pos.shape[0] == n:
        pos = torch.cat([torch.zeros(num_prefix, D, dtype=pos.dtype), pos])
    return pos.clone()
