"""Mask format v1: boolean keep-masks with canonical names + settings, as any pruning method writes them.

- :mod:`.format`: the file forms (JSON index lists, safetensors bool tensors), :class:`Spec`,
  :func:`load_spec`, :func:`save_spec`.
- :mod:`.resolved`: :class:`ResolvedSpec` -- a spec validated against one model (full-shape bool
  masks in original coordinates, typed settings): what passes and references read.
- the names each model family defines and how they resolve: :mod:`.vit` (``embed``,
  ``blocks.{i}.{heads,qk,v,mlp,keep,tokens}``, exit and token settings; token rules in :mod:`.tokens`)
  and :mod:`.swin` (``layers.{s}.embed``, ``layers.{s}.blocks.{j}.*``).

Resolve a spec for any family with :func:`vitshrink.resolve_spec` (the family registry picks the names).
"""
from __future__ import annotations

from .format import FORMAT, Spec, from_index_form, load_spec, save_spec, to_index_form
from .resolved import PREDICTOR_TYPES, SCORES, DynamicRule, ExitSetting, PredictorSetting, ResolvedSpec

__all__ = ["FORMAT", "PREDICTOR_TYPES", "SCORES", "DynamicRule", "ExitSetting", "PredictorSetting", "ResolvedSpec",
           "Spec", "from_index_form", "load_spec", "save_spec", "to_index_form"]
