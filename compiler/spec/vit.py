"""Spec v1 names for ViT/DeiT models (original model coordinates; a missing mask means "keep all").

=====================  ===================  ===============================================
name                   shape                meaning
=====================  ===================  ===============================================
``embed``              [D]                  residual-stream channels (global, SAViT)
``blocks.{i}.heads``   [H_i]                whole heads (WDPruning, S2ViTE, SAViT)
``blocks.{i}.qk``      [H_i, head_dim]      q and k channels per head (VTC-LFC)
``blocks.{i}.v``       [H_i, head_dim]      v channels per head (VTC-LFC)
``blocks.{i}.mlp``     [hidden_i]           MLP hidden neurons
``blocks.{i}.keep``    []                   false: the whole block is removed
``blocks.{i}.tokens``  [N]                  static token keep-mask before block i (prefix kept)
=====================  ===================  ===============================================

Settings: ``exit`` = ``{"block": k, "head": prefix, "head_dist": prefix, "norm": prefix}``: the model
ends after block k (0-based source index) and classifies with the Linear ``{head}.weight/.bias`` (and
``{head_dist}`` on distilled models) after the LayerNorm ``{norm}.weight/.bias``, all read from the
checkpoint; an omitted prefix means the model's own ``head``/``head_dist``/``norm``.

``token_mode``: ``"drop"`` (default: tokens removed before block i leave the sequence for good) or
``"query"`` (Patch Slimming, eq. 2: in block i only kept tokens are updated -- queries, attention
output, projection and MLP -- while keys and values still come from all tokens). Static masks must be
nested (a token removed at block i is not kept at a later block); a missing mask keeps the tokens of
the previous one.

``dynamic_tokens``: ``{"<i>": rule}``, per block a fixed-count, input-dependent selection of the
patch tokens (prefix tokens are always kept) -- see :class:`~vitshrink.spec.resolved.DynamicRule`.

``token_merge``: ``{"<i>": {"r": r}}``, per block ``r`` patch tokens merged by ToMe's bipartite soft matching
(size-weighted, proportional attention) -- see :class:`~vitshrink.spec.resolved.MergeRule`.
"""
from __future__ import annotations

import re
from typing import Any, Optional

from torch import Tensor

from ..errors import SpecError
from ..ir.vit import ViTIR
from .format import Spec, from_index_form
from .resolved import ExitSetting, ResolvedSpec, check_heads
from .tokens import check_static_tokens, resolve_dynamic, resolve_merge

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(heads|qk|v|mlp|keep|tokens)$")
_KNOWN_SETTINGS = ("exit", "token_mode", "dynamic_tokens", "token_merge")


def block_name(ir: ViTIR, source_index: int) -> str:
    """``blocks.{i}``: the canonical (timm) name of a block."""
    return f"blocks.{source_index}"


def mask_shapes(ir: ViTIR) -> dict[str, tuple]:
    """Canonical mask name -> full shape, for the dense model ``ir``."""
    shapes: dict[str, tuple] = {"embed": (ir.embed_dim,)}
    for b in ir.blocks:
        i, H = b.source_index, b.attn.num_heads
        hd = max(b.attn.qk_dims) if H else 0
        shapes[f"blocks.{i}.heads"] = (H,)
        shapes[f"blocks.{i}.qk"] = (H, hd)
        shapes[f"blocks.{i}.v"] = (H, max(b.attn.v_dims) if H else 0)
        shapes[f"blocks.{i}.mlp"] = (b.mlp.hidden,)
        shapes[f"blocks.{i}.keep"] = ()
        shapes[f"blocks.{i}.tokens"] = (ir.num_tokens,)
    return shapes


def _resolve_exit(value: Any, ir: ViTIR, tensors: dict[str, Tensor]) -> ExitSetting:
    if not isinstance(value, dict) or "block" not in value:
        raise SpecError("exit", 'must be an object {"block": k, "head": prefix, ...}')
    unknown = set(value) - {"block", "head", "head_dist", "norm"}
    if unknown:
        raise SpecError(f"exit.{sorted(unknown)[0]}", "unknown exit field (expected block, head, head_dist, norm)")
    k = value["block"]
    L = len(ir.blocks)
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < L:
        raise SpecError("exit.block", f"{k!r} is out of range: the model has blocks 0..{L - 1}")
    D, C = ir.embed_dim, ir.num_classes
    for name in ("head", "head_dist", "norm"):
        prefix = value.get(name)
        if prefix is None:
            continue
        if not isinstance(prefix, str):
            raise SpecError(f"exit.{name}", f"must be a checkpoint key prefix (string), found {prefix!r}")
        if name == "head_dist" and ir.num_prefix < 2:
            raise SpecError("exit.head_dist", "the model has no distillation token")
        want = {"weight": (C, D), "bias": (C,)} if name != "norm" else {"weight": (D,), "bias": (D,)}
        for part, shape in want.items():
            key = f"{prefix}.{part}"
            if key not in tensors:
                raise SpecError(f"exit.{name}", f"checkpoint key '{key}' not found")
            if tuple(tensors[key].shape) != shape:
                raise SpecError(f"exit.{name}", f"checkpoint key '{key}' has shape {list(tensors[key].shape)}, needs {list(shape)}")
    return ExitSetting(k, value.get("head"), value.get("head_dist"), value.get("norm"))


def _check_positions(out: ResolvedSpec, ir: ViTIR, spec: Spec) -> None:
    """Rotary position embedding and relative position bias: tokens keep their positions (no token
    pruning), and q/k channel masks keep or remove each rotation pair as a whole."""
    rope = [b for b in ir.blocks if b.attn.rope is not None]
    if ir.prefix_at is not None or any(b.attn.talking is not None for b in ir.blocks):
        why = "does not apply to CaiT (talking-heads and class-attention blocks)"
    elif any(b.post_norm for b in ir.blocks):
        why = "does not apply to a model with post-norm blocks (token rules are written for pre-norm blocks)"
    elif rope or any(b.attn.rel_bias is not None for b in ir.blocks):
        why = ("does not apply to a model with rotary position embedding or a relative position bias (both belong "
               "to each token's position)")
    else:
        return
    if out.tokens:
        raise SpecError(f"blocks.{min(out.tokens)}.tokens", why)
    for key in ("dynamic_tokens", "token_merge"):
        if key in spec.settings:
            raise SpecError(key, why + (" -- a merged token has no position" if key == "token_merge" else ""))
    for b in rope:
        m = out.qk.get(b.source_index)
        for h in range(0 if m is None else m.shape[0]):
            for c in range(m.shape[1]):
                p = b.attn.rope.partner(c)[0]
                if bool(m[h, c]) != bool(m[h, p]):
                    raise SpecError(f"{block_name(ir, b.source_index)}.qk",
                                    f"head {h} keeps q/k channel {c if m[h, c] else p} but not {p if m[h, c] else c}, its "
                                    "rotation partner (RoPE rotates channel pairs: keep or prune both)")


def _check_talking(out: ResolvedSpec, ir: ViTIR) -> None:
    """Talking heads (CaiT): a kept head's logits feed every head's mixed map, so a kept head must keep a
    v channel (without one, removing the head would change the other heads; keeping it needs a width-0 v)."""
    for b in ir.blocks:
        i = b.source_index
        if b.attn.talking is None or i not in out.v:
            continue
        kept = out.heads.get(i, [True] * b.attn.num_heads)
        for h in range(b.attn.num_heads):
            if bool(kept[h]) and not bool(out.v[i][h].any()):
                raise SpecError(f"{block_name(ir, i)}.v", f"head {h} is kept but keeps no v channel; with talking heads "
                                f"its logits still reach the other heads (prune it with {block_name(ir, i)}.heads)")


def resolve(spec: Spec, ir: ViTIR, tensors: Optional[dict[str, Tensor]] = None) -> ResolvedSpec:
    """Validate ``spec`` against the dense ViT ``ir`` and expand it to full-shape bool masks.

    Args:
        spec: the spec as read.
        ir: the dense (unpruned) import of the model the spec was written for.
        tensors: checkpoint tensors the settings may reference (exit classifiers, token predictors).
    Raises:
        SpecError: unknown key, wrong shape or type, index out of range, every head of a kept block
            pruned, a kept head with no q/k channel, no embed channel, exit block out of range or its
            classifier keys missing, a pruned prefix token, non-nested token masks, a dynamic rule that keeps
            more tokens than are present or whose predictor weights are missing. The key is named.
    """
    tensors = tensors or {}
    out = ResolvedSpec()
    shapes = mask_shapes(ir)
    L = len(ir.blocks)
    removed = set()
    for key in sorted(spec.settings):
        if key not in _KNOWN_SETTINGS:
            raise SpecError(key, f"unknown setting (known: {', '.join(_KNOWN_SETTINGS)})")
    mode = spec.settings.get("token_mode", "drop")
    if mode not in ("drop", "query"):
        raise SpecError("token_mode", f"must be \"drop\" or \"query\", found {mode!r}")
    out.token_mode = mode
    if "exit" in spec.settings and not ir.heads:
        raise SpecError("exit", "a feature extractor (num_classes=0) has no classifier to exit to")
    if "exit" in spec.settings and ir.prefix_at is not None:
        raise SpecError("exit", "does not apply to CaiT (its class token joins after the self-attention blocks)")
    if "exit" in spec.settings:
        out.exit = _resolve_exit(spec.settings["exit"], ir, tensors)
    for key in sorted(spec.masks):
        value = spec.masks[key]
        if key == "embed":
            m = from_index_form(key, value, shapes[key])
            if not m.any():
                raise SpecError(key, "keeps no channel")
            out.embed = m
            continue
        match = _BLOCK_KEY.match(key)
        if not match:
            raise SpecError(key, "unknown mask name (expected embed or blocks.{i}.{heads,qk,v,mlp,keep,tokens})")
        i, kind = int(match.group(1)), match.group(2)
        if i >= L:
            raise SpecError(key, f"block {i} does not exist: the model has blocks 0..{L - 1}")
        m = from_index_form(key, value, shapes[key])
        if kind == "tokens":
            out.tokens[i] = m
        elif kind == "keep":
            if not bool(m):
                removed.add(i)
        else:
            getattr(out, kind)[i] = m
    out.removed_blocks = frozenset(removed)
    if ir.pool in ("avg", "map"):  # the pooled set would change with the tokens; an exit needs a class token
        why = (f"does not apply to a model pooled over every patch token (global_pool={ir.pool!r})")
        if out.tokens:
            raise SpecError(f"blocks.{min(out.tokens)}.tokens", why)
        for key in ("dynamic_tokens", "exit") + (("token_merge",) if ir.pool == "map" else ()):
            if key in spec.settings:
                raise SpecError(key, why + (" through an attention pool" if key == "token_merge" else ""))
    _check_positions(out, ir, spec)
    _check_talking(out, ir)
    check_heads(out, lambda i: block_name(ir, i))
    check_static_tokens(out, ir)
    if "dynamic_tokens" in spec.settings:
        out.dynamic = resolve_dynamic(spec.settings["dynamic_tokens"], out, ir, tensors)
    if out.tokens and out.dynamic:
        raise SpecError("dynamic_tokens", "static token masks (blocks.{i}.tokens) and dynamic rules cannot be combined yet")
    if "token_merge" in spec.settings:
        if out.tokens or out.dynamic:
            raise SpecError("token_merge", "token merging and token pruning (blocks.{i}.tokens, dynamic_tokens) cannot be "
                                           "combined yet")
        out.merge = resolve_merge(spec.settings["token_merge"], out, ir)
    return out
