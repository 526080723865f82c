"""Validation of the token parts of a ViT spec (static masks, dynamic rules, learned predictors): see
:mod:`vitshrink.spec.vit` for the names; called by :func:`vitshrink.spec.vit.resolve`."""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor

from ..errors import SpecError
from ..ir.vit import ViTIR
from .resolved import PREDICTOR_TYPES, SCORES, DynamicRule, MergeRule, PredictorSetting, ResolvedSpec


def check_static_tokens(out: ResolvedSpec, ir: ViTIR) -> None:
    """Prefix tokens kept; masks nested (a token removed before block i is not kept later)."""
    names = [t.name for t in ir.prefix]
    alive: Optional[Tensor] = None
    dropped_at: dict[int, int] = {}
    for i in sorted(out.tokens):
        m = out.tokens[i]
        key = f"blocks.{i}.tokens"
        lost = [t for t in range(ir.num_prefix) if not m[t]]
        if lost:
            label = {"cls": "class token", "dist": "distillation token"}.get(names[lost[0]], names[lost[0]])
            raise SpecError(key, f"prunes token {lost[0]} ({label}); prefix tokens must be kept")
        if alive is not None:
            back = torch.nonzero(m & ~alive).flatten().tolist()
            if back:
                raise SpecError(key, f"keeps token {back[0]}, which blocks.{dropped_at[back[0]]}.tokens removed "
                                     f"(token masks must be nested)")
        for t in torch.nonzero(~m).flatten().tolist():
            dropped_at.setdefault(t, i)
        alive = m if alive is None else alive & m


def resolve_predictor(key: str, value: Any, ir: ViTIR, tensors: dict[str, Tensor]) -> PredictorSetting:
    if not isinstance(value, dict) or not isinstance(value.get("prefix"), str):
        raise SpecError(key, 'must be {"type": "dynamicvit"|"mlp", "prefix": "<checkpoint prefix>", ...}')
    unknown = set(value) - {"type", "prefix", "hidden", "norm", "eps"}
    if unknown:
        raise SpecError(f"{key}.{sorted(unknown)[0]}", "unknown predictor field (expected type, prefix, hidden, norm, eps)")
    kind = value.get("type", "dynamicvit")
    if kind not in PREDICTOR_TYPES:
        raise SpecError(f"{key}.type", f"must be one of {', '.join(PREDICTOR_TYPES)}, found {kind!r}")
    hidden = value.get("hidden", [])
    if not isinstance(hidden, list) or not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden):
        raise SpecError(f"{key}.hidden", "must be a list of positive layer widths")
    if kind == "dynamicvit" and ir.embed_dim % 4:
        raise SpecError(f"{key}.type", f"dynamicvit predictors need embed_dim divisible by 4 (found {ir.embed_dim})")
    eps = value.get("eps", 1e-5)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise SpecError(f"{key}.eps", f"must be the LayerNorm eps, a number in (0, 1), found {eps!r}")
    pred = PredictorSetting(kind, value["prefix"], tuple(hidden), bool(value.get("norm", True)), float(eps))
    for name, shape in pred.expected_shapes(ir.embed_dim).items():
        if name not in tensors:
            raise SpecError(key, f"predictor weight '{name}' is missing from the checkpoint")
        if tuple(tensors[name].shape) != shape:
            raise SpecError(key, f"predictor weight '{name}' has shape {list(tensors[name].shape)}, needs {list(shape)}")
    return pred


def resolve_dynamic(value: Any, out: ResolvedSpec, ir: ViTIR, tensors: dict[str, Tensor]) -> dict[int, DynamicRule]:
    if not isinstance(value, dict):
        raise SpecError("dynamic_tokens", 'must be an object {"<block>": {"keep": ..., "score": ...}}')
    L = len(ir.blocks)
    rules: dict[int, tuple[str, dict]] = {}
    for b, rule in value.items():
        key = f"dynamic_tokens.{b}"
        if not (isinstance(b, str) and b.isdigit() and int(b) < L):
            raise SpecError(key, f"not a block index: the model has blocks 0..{L - 1}")
        if not isinstance(rule, dict):
            raise SpecError(key, "must be an object with keep, score, where, fuse, ...")
        rules[int(b)] = (key, rule)
    stop = out.last_block(L)
    present = ir.num_patches
    resolved: dict[int, DynamicRule] = {}
    for i in sorted(rules):
        key, rule = rules[i]
        if i > stop:
            continue
        unknown = set(rule) - {"keep", "score", "where", "fuse", "head_weighting", "cutoff", "predictor"}
        if unknown:
            raise SpecError(f"{key}.{sorted(unknown)[0]}", "unknown field (expected keep, score, where, fuse, head_weighting, cutoff, predictor)")
        if i in out.removed_blocks:
            raise SpecError(key, f"block {i} is removed (blocks.{i}.keep is false)")
        score = rule.get("score", "cls_attention")
        if score not in SCORES:
            raise SpecError(f"{key}.score", f"must be one of {', '.join(SCORES)}, found {score!r}")
        where = rule.get("where", "mlp")
        if where not in ("mlp", "attn"):
            raise SpecError(f"{key}.where", f"must be \"mlp\" (between attention and MLP) or \"attn\" (before the block), found {where!r}")
        if where == "attn" and score != "predictor":
            raise SpecError(f"{key}.where", f"score {score} reads this block's attention: use where \"mlp\"")
        for flag in ("fuse", "head_weighting"):
            if flag in rule and not isinstance(rule[flag], bool):
                raise SpecError(f"{key}.{flag}", "must be true or false")
        cutoff = rule.get("cutoff", 0.15)
        if not isinstance(cutoff, (int, float)) or isinstance(cutoff, bool) or not 0 < cutoff <= 1:
            raise SpecError(f"{key}.cutoff", f"must be a number in (0, 1], found {cutoff!r}")
        k = rule.get("keep")
        if isinstance(k, bool) or not isinstance(k, (int, float)):
            raise SpecError(f"{key}.keep", f"must be a token count (integer) or a keep ratio (number in (0, 1]), found {k!r}")
        if isinstance(k, float):
            if not 0 < k <= 1:
                raise SpecError(f"{key}.keep", f"keep ratio {k} is not in (0, 1]")
            k = max(1, math.ceil(k * present - 1e-9))
        if not 1 <= k <= present:
            raise SpecError(f"{key}.keep", f"keeps {k} tokens but only {present} patch tokens are present before block {i}")
        if score != "predictor":
            blk = ir.block(i)
            heads = out.heads.get(i, torch.ones(blk.attn.num_heads, dtype=torch.bool))
            v = out.v.get(i, torch.ones(blk.attn.num_heads, max(blk.attn.v_dims), dtype=torch.bool))
            if not (heads & v.any(1)).any():
                raise SpecError(key, f"score {score} reads block {i}'s attention, but every head of block {i} is removed")
        predictor = None
        if score == "predictor":
            if "predictor" not in rule:
                raise SpecError(f"{key}.predictor", "score predictor needs {\"type\", \"prefix\"} naming its checkpoint weights")
            predictor = resolve_predictor(f"{key}.predictor", rule["predictor"], ir, tensors)
        fuse = bool(rule.get("fuse", False)) and k < present
        resolved[i] = DynamicRule(
            keep=k, score=score, where=where, fuse=fuse,
            head_weighting=bool(rule.get("head_weighting", score == "cls_attention_lfe")),
            cutoff=float(cutoff), predictor=predictor,
        )
        present = k + int(fuse)
    return resolved


def mergeable(n: int, num_prefix: int) -> int:
    """How many tokens bipartite matching can merge in a sequence of ``n`` tokens whose first ``num_prefix``
    are protected: the A-set tokens (even positions) after the prefix, and no more than the B-set ones."""
    a = sum(1 for p in range(num_prefix, n) if p % 2 == 0)
    b = sum(1 for p in range(num_prefix, n) if p % 2 == 1)
    return min(a, b)


def resolve_merge(value: Any, out: ResolvedSpec, ir: ViTIR) -> dict[int, MergeRule]:
    """``token_merge``: ``{"<block>": {"r": count, "prop_attn": true}}`` (or ``{"<block>": count}``) -> rules.

    Raises:
        SpecError: naming ``token_merge.<block>`` (a block that does not exist or is removed, a count that is not a
            positive integer or merges more tokens than bipartite matching can there, an unknown field).
    """
    if not isinstance(value, dict):
        raise SpecError("token_merge", 'must be an object {"<block>": {"r": tokens merged}}')
    L = len(ir.blocks)
    rules: dict[int, MergeRule] = {}
    for b, rule in value.items():
        key = f"token_merge.{b}"
        if not (isinstance(b, str) and b.isdigit() and int(b) < L):
            raise SpecError(key, f"not a block index: the model has blocks 0..{L - 1}")
        if isinstance(rule, int) and not isinstance(rule, bool):
            rule = {"r": rule}
        if not isinstance(rule, dict):
            raise SpecError(key, 'must be {"r": tokens merged, "prop_attn": true} or a token count')
        unknown = set(rule) - {"r", "prop_attn"}
        if unknown:
            raise SpecError(f"{key}.{sorted(unknown)[0]}", "unknown field (expected r, prop_attn)")
        r = rule.get("r")
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise SpecError(f"{key}.r", f"must be a positive number of tokens merged in the block, found {r!r}")
        prop = rule.get("prop_attn", True)
        if not isinstance(prop, bool):
            raise SpecError(f"{key}.prop_attn", "must be true or false")
        if int(b) in out.removed_blocks:
            raise SpecError(key, f"block {b} is removed (blocks.{b}.keep is false)")
        blk = ir.block(int(b))
        heads = out.heads.get(int(b), torch.ones(blk.attn.num_heads, dtype=torch.bool))
        v = out.v.get(int(b), torch.ones(blk.attn.num_heads, max(blk.attn.v_dims), dtype=torch.bool))
        if not (heads & v.any(1)).any():
            raise SpecError(key, f"merging reads block {b}'s keys, but every head of block {b} is removed (or keeps no v channel)")
        rules[int(b)] = MergeRule(r, prop)
    if len({r.prop_attn for r in rules.values()}) > 1:
        raise SpecError("token_merge", "prop_attn must be the same in every block (sizes weigh the keys of every "
                                       "block after the first merge)")
    present, stop = ir.num_tokens, out.last_block(L)
    for i in sorted(rules):
        if i > stop:
            continue
        most = mergeable(present, ir.num_prefix)
        if rules[i].r > most:
            raise SpecError(f"token_merge.{i}", f"merges {rules[i].r} tokens, but bipartite matching can merge at most "
                                                f"{most} of the {present} tokens present before block {i} "
                                                f"({ir.num_prefix} prefix tokens never merge)")
        present -= rules[i].r
    return {i: r for i, r in rules.items() if i <= stop}
