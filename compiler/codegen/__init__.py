"""Codegen: IR -> ``nn.Module``, and the pruned checkpoint on disk.

- :mod:`.layers`: what every generated model is made of (attention with per-head widths, MLP, the
  block state dict) and :class:`~.layers.PrunedModel`, their base class.
- :mod:`.vit` (:class:`PrunedViT`, with the token operations of :mod:`.tokens`), :mod:`.swin`
  (:class:`PrunedSwin`): one generated class per model family, built from a JSON architecture.
- :mod:`.checkpoint`: :func:`save` / :func:`load` (``arch.json`` + ``model.safetensors``; no timm).

Build the module of any family's IR with :func:`vitshrink.build_module`.
"""
from __future__ import annotations

from .checkpoint import load, save
from .layers import Attention, Constant, Mlp, PrunedModel, head_groups
from .swin import PrunedSwin
from .tokens import rank_keep
from .vit import PrunedViT, token_counts

__all__ = ["Attention", "Constant", "Mlp", "PrunedModel", "PrunedSwin", "PrunedViT", "head_groups", "load", "rank_keep",
           "save", "token_counts"]
