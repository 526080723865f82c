"""ViT/DeiT passes: the residual (embedding) channels and the early exit, every pass a ViT spec asks
for (:func:`apply_spec`), and the layouts that make the result fast (:func:`lay_out`)."""
from __future__ import annotations

import sys
from typing import Mapping, Optional

from torch import Tensor

from vitshrink.ir.nodes import ClassifierIR, LayerNormIR, cols, replace, rows
from vitshrink.ir.vit import ViTIR
from vitshrink.spec.resolved import ResolvedSpec

from . import layout, tokens
from .steps import Step, run, width_steps
from .structural import embed_block, keep_positions, layer_norm_keep, prune_head_channels, prune_heads, prune_mlp, remove_blocks


def prune_embed(ir: ViTIR, embed: Tensor) -> ViTIR:
    """Remove residual-stream channels everywhere (SAViT, Zheng et al. NeurIPS 2022, embedding mask).

    Shrinks the patch embedding, prefix tokens, position embedding, every LayerNorm (which then
    normalises over the kept channels only -- the reference semantics of SAViT), the inputs of
    q/k/v and fc1, the outputs of proj and fc2, the classifier inputs, and the key/value inputs of an
    attention pool (whose own output width, and the classifier after it, stay). ``embed``: [D] bool.
    """
    keep = keep_positions(ir.embed_ids, embed)
    return replace(
        ir,
        embed_ids=tuple(ir.embed_ids[p] for p in keep),
        patch_weight=rows(ir.patch_weight, keep), patch_bias=rows(ir.patch_bias, keep),
        prefix=tuple(replace(t, value=rows(t.value, keep)) for t in ir.prefix),
        pos_embed=cols(ir.pos_embed, keep),
        blocks=tuple(embed_block(b, keep) for b in ir.blocks),
        norm=None if ir.norm is None else layer_norm_keep(ir.norm, keep),
        fc_norm=None if ir.fc_norm is None else layer_norm_keep(ir.fc_norm, keep),
        norm_pre=None if ir.norm_pre is None else layer_norm_keep(ir.norm_pre, keep),
        attn_pool=None if ir.attn_pool is None else replace(
            ir.attn_pool, k_weight=cols(ir.attn_pool.k_weight, keep), v_weight=cols(ir.attn_pool.v_weight, keep)),
        heads=ir.heads if ir.attn_pool is not None else tuple(replace(h, weight=cols(h.weight, keep)) for h in ir.heads),
    )


def early_exit(
    ir: ViTIR,
    block: int,
    norm: Optional[LayerNormIR] = None,
    heads: Optional[Mapping[str, tuple[Tensor, Optional[Tensor]]]] = None,
) -> ViTIR:
    """End the model after source block ``block`` (WDPruning, Yu et al. AAAI 2022: shallow classifier).

    Every later block is dropped; the class (and distillation) token is normalised with ``norm`` and
    classified with ``heads[name] = (weight [C, D_orig], bias [C])``. Both are given in original
    coordinates (full embed_dim) and mapped through ``ir.embed_ids``; None keeps the current ones.
    """
    blocks = tuple(b for b in ir.blocks if b.source_index <= block)
    ids = list(ir.embed_ids)
    new_norm = ir.norm if norm is None else replace(norm, weight=rows(norm.weight, ids), bias=rows(norm.bias, ids))
    new_heads = []
    for h in ir.heads:
        if heads and h.name in heads:
            w, b = heads[h.name]
            h = ClassifierIR(h.name, h.token, cols(w, ids), None if b is None else b.clone())
        new_heads.append(h)
    return replace(ir, blocks=blocks, norm=new_norm, heads=tuple(new_heads), exit_after=block)


def _exit(ir: ViTIR, e, tensors: Mapping[str, Tensor]) -> ViTIR:
    """:func:`early_exit` with the exit classifier (and its norm) read from the checkpoint ``tensors``."""
    norm = None
    if e.norm is not None:
        norm = LayerNormIR(tensors[f"{e.norm}.weight"], tensors[f"{e.norm}.bias"], ir.norm.eps if ir.norm is not None else 1e-6)
    heads = {}
    for name, prefix in (("head", e.head), ("head_dist", e.head_dist)):
        if prefix is not None:
            heads[name] = (tensors[f"{prefix}.weight"], tensors.get(f"{prefix}.bias"))
    return early_exit(ir, e.block, norm=norm, heads=heads)


def steps(spec: ResolvedSpec, tensors: Optional[Mapping[str, Tensor]] = None) -> list[Step]:
    """The passes a resolved ViT ``spec`` asks for, in the order they run (only those with something
    to do): q/k and v channels, heads, MLP neurons, early exit, static tokens, dynamic token rules,
    token merging, blocks, embedding channels. ``tensors``: checkpoint tensors for the exit classifier and predictors."""
    tensors = tensors or {}
    out = width_steps(spec, sys.modules[__name__])
    if spec.exit is not None:
        out.append(Step("early_exit", "blocks after the exit, with its classifier", ("exit",), lambda ir: _exit(ir, spec.exit, tensors)))
    if spec.tokens:
        out.append(Step("static_tokens", "tokens (static masks)", ("tokens", "token_mode"),
                        lambda ir: tokens.static_tokens(ir, spec.tokens, spec.token_mode)))
    if spec.dynamic:
        out.append(Step("dynamic_tokens", "tokens (dynamic rules)", ("dynamic",), lambda ir: tokens.dynamic_tokens(ir, spec.dynamic, tensors)))
    if spec.merge:
        out.append(Step("merge_tokens", "tokens (merged, ToMe)", ("merge",), lambda ir: tokens.merge_tokens(ir, spec.merge)))
    if spec.removed_blocks:
        out.append(Step("remove_blocks", "whole blocks", ("removed_blocks",), lambda ir: remove_blocks(ir, spec.removed_blocks)))
    if spec.embed is not None:
        out.append(Step("prune_embed", "embedding (residual) channels", ("embed",), lambda ir: prune_embed(ir, spec.embed)))
    return out


def apply_spec(ir: ViTIR, spec: ResolvedSpec, tensors: Optional[Mapping[str, Tensor]] = None) -> ViTIR:
    """Apply every structural and token pass a resolved ViT ``spec`` asks for to the dense ``ir``
    (the :func:`steps`, in order).

    Args:
        ir: dense import of the model the spec was resolved against.
        spec: output of :func:`vitshrink.resolve_spec` (validated; masks in original coordinates).
        tensors: checkpoint tensors (keys of the model and extra ones) for the exit classifier and predictors.
    Returns:
        The pruned IR (structure physically removed, token rules attached; not yet laid out: :func:`lay_out`).
    """
    return run(ir, steps(spec, tensors))


def layout_steps(heads: str = "pad", token_layout: str = "prefix") -> list[Step]:
    """The exact re-layouts before codegen, as steps (they apply no masks): the head layout
    (:func:`~.layout.lay_out_heads`), then -- with ``token_layout="prefix"`` -- the static token
    permutation (:func:`~.tokens.prefix_token_order`)."""
    out = [Step("lay_out_heads", f"head layout ({heads})", (), lambda ir: layout.lay_out_heads(ir, heads))]
    if token_layout == "prefix":
        out.append(Step("prefix_token_order", "token layout (prefix)", (), lambda ir: tokens.prefix_token_order(ir)))
    return out


def lay_out(ir: ViTIR, heads: str = "pad", token_layout: str = "prefix") -> ViTIR:
    """The exact re-layouts before codegen: irregular heads padded (``heads="pad"``), grouped by width
    (``"group"``) or in fused-kernel buckets (``"fused"``) -- :func:`~.layout.lay_out_heads` --, and
    static token masks as one permutation after the position embedding (``token_layout="prefix"``,
    :func:`~.tokens.prefix_token_order`) or as gathers per block (``"gather"``)."""
    return run(ir, layout_steps(heads, token_layout))
