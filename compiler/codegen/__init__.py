"""Codegen: IR -> ``nn.Module``, and the pruned checkpoint on disk.

- :mod:`.attention`: attention with per-head widths through fused kernels (SDPA; RoPE via :mod:`.rope`,
  cosine logits, talking heads); :mod:`.layers`: the MLP (plain or gated), the block state dict and
  :class:`~.layers.PrunedModel`, the base class; :mod:`.block`: the ViT block; :mod:`.pool`: the attention pool.
- :mod:`.vit` (:class:`PrunedViT`, with the token operations of :mod:`.tokens`), :mod:`.swin`
  (:class:`PrunedSwin`): one generated class per model family, built from a JSON architecture.
- :mod:`.checkpoint`: :func:`save` / :func:`load` (``arch.json`` + ``model.safetensors``; no timm).

Build the module of any family's IR with :func:`vitshrink.build_module`.
"""
from __future__ import annotations

from .checkpoint import load, save
from .attention import Attention, attention_form, head_groups
from .layers import Constant, Mlp, PrunedModel
from .swin import PrunedSwin
from .tokens import rank_keep
from .vit import PrunedViT, token_counts

__all__ = ["Attention", "attention_form", "Constant", "Mlp", "PrunedModel", "PrunedSwin", "PrunedViT", "head_groups", "load", "rank_keep",
           "save", "token_counts"]
