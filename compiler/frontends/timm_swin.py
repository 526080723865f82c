"""timm frontend for ``SwinTransformer`` -> :class:`~vitshrink.ir.swin.SwinIR`.

Covers ``swin_{tiny,small,base}_patch4_window7_224`` and any timm Swin built from the same options
(what is refused: ``docs/limits.md``). Options the IR cannot represent exactly are refused with
a :class:`~vitshrink.errors.ModelError` naming the option.
"""
from __future__ import annotations

from typing import Optional

from torch import nn

from ..errors import ModelError
from ..ir.nodes import AttentionIR, BlockIR, ClassifierIR, MlpIR
from ..ir.swin import MergeIR, StageIR, SwinIR
from .timm_common import clone, is_identity, layer_norm, refuse, timm

TESTED_MODELS = ("swin_tiny_patch4_window7_224", "swin_small_patch4_window7_224", "swin_base_patch4_window7_224")


def accepts(model: nn.Module) -> bool:
    """Whether ``model`` is a timm SwinTransformer (v1); :func:`from_timm` may still refuse an option."""
    timm()
    from timm.models.swin_transformer import SwinTransformer  # timm: lazy, after the compat shim

    return isinstance(model, SwinTransformer)


def timm_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's blocks in IR order (stage after stage) with their state-dict prefixes
    (``layers.{s}.blocks.{j}.``)."""
    return [(f"layers.{s}.blocks.{j}.", b) for s, st in enumerate(model.layers) for j, b in enumerate(st.blocks)]


def _check_supported(model: nn.Module) -> None:
    timm()
    from timm.layers import Mlp, PatchEmbed  # timm: lazy, after the compat shim
    from timm.models.swin_transformer import (  # lazy: after the compat shim
        PatchMerging, SwinTransformerBlock, SwinTransformerStage, WindowAttention)

    if type(model).__name__ != "SwinTransformer":
        raise ModelError(f"unsupported model class {type(model).__name__}: the Swin frontend handles timm's SwinTransformer")
    if model.global_pool != "avg":
        refuse("global_pool", model.global_pool, "Swin is supported with average pooling")
    if model.dynamic_img_size:
        refuse("strict_img_size", False, "window masks must be fixed at export")
    if not isinstance(model.norm, nn.LayerNorm):
        refuse("norm_layer", type(model.norm).__name__)
    head = model.head
    if not isinstance(getattr(head, "fc", None), nn.Linear):
        refuse("num_classes", 0, "a classifier head is required")
    pe = model.patch_embed
    if type(pe) is not PatchEmbed or not isinstance(pe.norm, nn.LayerNorm):
        refuse("embed_layer", type(pe).__name__, "a PatchEmbed with a LayerNorm is required")
    if tuple(pe.proj.kernel_size) != tuple(pe.proj.stride) or pe.proj.padding not in ((0, 0), 0, "valid"):
        refuse("patch_embed.proj", f"kernel={pe.proj.kernel_size} stride={pe.proj.stride}")
    for s, stage in enumerate(model.layers):
        if type(stage) is not SwinTransformerStage:
            refuse("layers", type(stage).__name__)
        ds = stage.downsample
        if s == 0 and not is_identity(ds):
            refuse(f"layers.{s}.downsample", type(ds).__name__, "stage 0 starts at the patch embedding")
        if s > 0 and (type(ds) is not PatchMerging or not isinstance(ds.norm, nn.LayerNorm)):
            refuse(f"layers.{s}.downsample", type(ds).__name__, "a PatchMerging with a LayerNorm is required")
        for j, blk in enumerate(stage.blocks):
            where = f"layers.{s}.blocks.{j}"
            if type(blk) is not SwinTransformerBlock or type(blk.attn) is not WindowAttention:
                refuse("block", type(blk).__name__, where)
            H, W = blk.input_resolution
            wh, ww = blk.window_size
            if H % wh or W % ww:
                refuse("img_size", model.patch_embed.img_size, f"{where}: grid {H}x{W} is not a multiple of window {wh}x{ww}")
            if getattr(blk, "always_partition", False) or getattr(blk, "dynamic_mask", False):
                refuse("always_partition", True, where)
            if not (isinstance(blk.norm1, nn.LayerNorm) and isinstance(blk.norm2, nn.LayerNorm)):
                refuse("norm_layer", type(blk.norm1).__name__, where)
            m = blk.mlp
            if type(m) is not Mlp or not is_identity(getattr(m, "norm", None)) or not isinstance(m.fc1, nn.Linear):
                refuse("mlp_layer", type(m).__name__, where)
            if not (isinstance(m.act, nn.GELU) and m.act.approximate == "none"):
                refuse("act_layer", type(m.act).__name__, "only exact (erf) GELU is supported")


def _attention(blk) -> AttentionIR:
    a = blk.attn
    H = a.num_heads
    hd = a.qkv.weight.shape[0] // (3 * H)
    w, b = a.qkv.weight.detach(), None if a.qkv.bias is None else a.qkv.bias.detach()
    part = lambda t, j: None if t is None else t[j * H * hd:(j + 1) * H * hd].clone()  # noqa: E731
    A = a.window_area
    rel = a.relative_position_bias_table.detach()[a.relative_position_index.view(-1)].view(A, A, H)
    return AttentionIR(
        head_ids=tuple(range(H)),
        qk_ids=tuple(tuple(range(hd)) for _ in range(H)),
        v_ids=tuple(tuple(range(hd)) for _ in range(H)),
        q_weight=part(w, 0), q_bias=part(b, 0), k_weight=part(w, 1), k_bias=part(b, 1),
        v_weight=part(w, 2), v_bias=part(b, 2),
        proj_weight=a.proj.weight.detach().clone(), proj_bias=clone(a.proj.bias),
        scale=float(a.scale),
        rel_bias=rel.permute(2, 0, 1).contiguous().clone(),
    )


def from_timm(model: nn.Module, name: Optional[str] = None) -> SwinIR:
    """Translate a timm SwinTransformer into the IR (a copy of its weights; the model is unchanged).

    The relative position bias of every block is looked up once ([heads, A, A] per block); the
    shifted-window mask is not stored (codegen and the reference derive it from the geometry).

    Raises:
        ModelError: the model uses an option the IR cannot represent (named).
    """
    _check_supported(model)
    stages, blocks, g = [], [], 0
    for s, stage in enumerate(model.layers):
        first = stage.blocks[0]
        shifts = [tuple(b.shift_size) for b in stage.blocks]
        shift = next((sh for sh in shifts if any(sh)), (0, 0))
        merge = None
        if s > 0:
            ds = stage.downsample
            merge = MergeIR(layer_norm(ds.norm), ds.reduction.weight.detach().clone(), clone(ds.reduction.bias))
        ids = tuple(range(g, g + len(stage.blocks)))
        stages.append(StageIR(s, tuple(range(first.dim)), tuple(first.input_resolution), tuple(first.window_size),
                              tuple(shift), ids, merge))
        for blk in stage.blocks:
            m = blk.mlp
            mlp = MlpIR(tuple(range(m.fc1.out_features)), m.fc1.weight.detach().clone(), clone(m.fc1.bias),
                        m.fc2.weight.detach().clone(), clone(m.fc2.bias))
            blocks.append(BlockIR(g, layer_norm(blk.norm1), _attention(blk), layer_norm(blk.norm2), mlp))
            g += 1
    pe = model.patch_embed
    fc = model.head.fc
    return SwinIR(
        name=name or getattr(model, "default_cfg", {}).get("architecture", type(model).__name__),
        img_size=tuple(pe.img_size), patch_size=tuple(pe.patch_size), in_chans=int(pe.proj.in_channels),
        patch_weight=pe.proj.weight.detach().clone(), patch_bias=clone(pe.proj.bias), patch_norm=layer_norm(pe.norm),
        stages=tuple(stages), blocks=tuple(blocks), norm=layer_norm(model.norm),
        head=ClassifierIR("head", -1, fc.weight.detach().clone(), clone(fc.bias)),
        meta={"frontend": "timm", "family": "swin"},
    )
