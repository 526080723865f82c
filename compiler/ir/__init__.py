"""The IR: one explicit, typed description of a (possibly irregular) vision transformer.

- :mod:`.nodes`: what every family shares -- LayerNorm, attention with per-head q/k and v widths (and
  RoPE, a positional bias, cosine logits, talking heads), MLP (plain or gated), token rules, blocks (pre- or
  post-norm, class attention), classifiers, and the helpers passes use (:func:`replace`, :func:`rows`, :func:`cols`).
- :mod:`.vit`: :class:`ViTIR` (ViT/DeiT and the families translated into it: prefix tokens, position
  embedding, a flat block sequence, the attention pool, an opaque CNN stem).
- :mod:`.swin`: :class:`SwinIR` (stages, windows, patch merging; its blocks are the shared ones).

Every prunable axis carries the *original* index of each surviving unit, so masks are always written
in original coordinates and passes compose in any order (details in :mod:`.nodes`).
"""
from __future__ import annotations

from .nodes import (
    PAD,
    AttentionIR,
    BlockIR,
    ClassifierIR,
    LayerNormIR,
    MlpIR,
    PredictorIR,
    TokenSelectIR,
    cols,
    iter_tensors,
    replace,
    rows,
)
from .swin import MergeIR, StageIR, SwinIR
from .vit import PrefixTokenIR, ViTIR

__all__ = ["PAD", "AttentionIR", "BlockIR", "ClassifierIR", "LayerNormIR", "MergeIR", "MlpIR", "PredictorIR",
           "PrefixTokenIR", "StageIR", "SwinIR", "TokenSelectIR", "ViTIR", "cols", "iter_tensors", "replace", "rows"]
