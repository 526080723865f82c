"""Graph-rewriting passes.

- :mod:`.structural`: IR -> IR, remove structure named by masks (heads, q/k/v channels, MLP neurons,
  embedding channels, blocks, early exit). Each exact.
- :mod:`.tokens`: IR -> IR, static and dynamic token pruning, and the prefix token layout.
- :mod:`.layout`: IR -> IR, exact re-layouts that make irregular widths run fast (group, pad).
- :mod:`.swin`: Swin's per-stage residual channels (the block passes above apply to Swin unchanged).
- :mod:`.onnx_cleanup`: ONNX -> ONNX cleanup before an engine is built.

:func:`apply_spec` runs the structural passes a validated spec asks for.
"""
from __future__ import annotations

from typing import Mapping, Optional

from torch import Tensor

from vitshrink.ir import LayerNormIR, ViTIR
from vitshrink.spec import ResolvedSpec

from .layout import group_heads, pad_heads
from .tokens import dynamic_tokens, prefix_token_order, static_tokens
from .structural import (
    early_exit,
    prune_embed,
    prune_head_channels,
    prune_heads,
    prune_mlp,
    remove_blocks,
)

__all__ = [
    "apply_spec", "dynamic_tokens", "early_exit", "group_heads", "pad_heads", "prefix_token_order", "prune_embed",
    "prune_head_channels", "prune_heads", "prune_mlp", "remove_blocks", "static_tokens",
]


def apply_spec(ir: ViTIR, spec: ResolvedSpec, tensors: Optional[Mapping[str, Tensor]] = None) -> ViTIR:
    """Apply every structural pass ``spec`` asks for to the dense ``ir``.

    Args:
        ir: dense import of the model the spec was resolved against.
        spec: output of :func:`vitshrink.spec.resolve_spec` (validated; masks in original coordinates).
        tensors: checkpoint tensors (keys of the model and extra ones) for the exit classifier.
    Returns:
        The pruned IR (structure physically removed, token rules attached; not yet re-laid-out).
    """
    if getattr(ir, "family", "vit") == "swin":
        from .swin import apply_swin_spec

        return apply_swin_spec(ir, spec)
    tensors = tensors or {}
    ir = prune_head_channels(ir, spec.qk, spec.v)
    ir = prune_heads(ir, spec.heads)
    ir = prune_mlp(ir, spec.mlp)
    if spec.exit is not None:
        e = spec.exit
        norm = None
        if e.norm is not None:
            norm = LayerNormIR(tensors[f"{e.norm}.weight"], tensors[f"{e.norm}.bias"], ir.norm.eps if ir.norm is not None else 1e-6)
        heads = {}
        for name, prefix in (("head", e.head), ("head_dist", e.head_dist)):
            if prefix is not None:
                heads[name] = (tensors[f"{prefix}.weight"], tensors.get(f"{prefix}.bias"))
        ir = early_exit(ir, e.block, norm=norm, heads=heads)
    ir = static_tokens(ir, spec.tokens, spec.token_mode)
    ir = dynamic_tokens(ir, spec.dynamic, tensors)
    ir = remove_blocks(ir, spec.removed_blocks)
    if spec.embed is not None:
        ir = prune_embed(ir, spec.embed)
    return ir
