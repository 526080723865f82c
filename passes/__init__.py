"""Graph-rewriting passes.

- :mod:`.structural`: IR -> IR, remove structure named by masks from the blocks every family shares
  (heads, q/k/v channels, MLP neurons, whole blocks, a block's residual channels). Each exact.
- :mod:`.vit`: the ViT embedding channels and early exit, and every pass a ViT spec asks for;
  :mod:`.tokens`: ViT static and dynamic token pruning, and the prefix token layout.
- :mod:`.swin`: Swin's per-stage residual channels, and every pass a Swin spec asks for.
- :mod:`.layout`: IR -> IR, exact re-layouts that make irregular widths run fast (pad, group, fused buckets).
- :mod:`.onnx_cleanup`: ONNX -> ONNX cleanup before an engine is built.

Apply a resolved spec to any family with :func:`vitshrink.apply_spec` (the family registry picks
:func:`.vit.apply_spec` or :func:`.swin.apply_spec`).
"""
from __future__ import annotations

from .layout import bucket_heads, group_heads, pad_heads
from .structural import prune_head_channels, prune_heads, prune_mlp, remove_blocks, select_attention
from .tokens import dynamic_tokens, prefix_token_order, static_tokens
from .vit import early_exit, prune_embed

__all__ = [
    "bucket_heads", "dynamic_tokens", "early_exit", "group_heads", "pad_heads", "prefix_token_order", "prune_embed",
    "prune_head_channels", "prune_heads", "prune_mlp", "remove_blocks", "select_attention", "static_tokens",
]
