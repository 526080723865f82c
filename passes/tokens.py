"""Token passes: IR -> IR.

- :func:`static_tokens`: static token masks per block (Patch Slimming; PoWER-style hard drop).
- :func:`dynamic_tokens`: fixed-count, input-dependent token rules (EViT, VTC-LFC, DynamicViT, ...).
- :func:`merge_tokens`: token merging (ToMe): a fixed number of merges per block, input-dependent.
- :func:`prefix_token_order` (layout, exact): one constant permutation of the tokens after the
  position embedding so that every block's kept set is a prefix of the sequence; codegen then
  slices (``x[:, :n]``) instead of gathering and scattering.

Semantics (and the masked dense reference they are tested against) are in
:mod:`vitshrink.reference.vit`.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from vitshrink.ir.nodes import LayerNormIR, PredictorIR, TokenMergeIR, TokenSelectIR, cols, replace
from vitshrink.ir.vit import ViTIR
from vitshrink.spec.resolved import DynamicRule, MergeRule, PredictorSetting


def static_tokens(ir: ViTIR, masks: Mapping[int, Tensor], mode: str = "drop") -> ViTIR:
    """Attach static token masks (original token ids, [N] bool per source block, nested).

    Every block gets the kept set in force at its position (the latest mask at or before it), so
    the result does not depend on which blocks other passes remove.

    ``mode="drop"``: tokens removed before block i leave the sequence (the block and all later ones
    see only the kept tokens). ``mode="query"``: Patch Slimming (Tang et al. CVPR 2022), eq. 2 --
    block i updates only its kept tokens (queries, attention output, projection, MLP), while keys
    and values are computed from all tokens, the removed ones carrying their last features.
    """
    if not masks:
        return ir
    if mode not in ("drop", "query"):
        raise ValueError(f"token mode {mode!r}")
    order = sorted(masks)

    def kept(i: int):
        cur = None
        for j in order:
            if j > i:
                break
            m = torch.nonzero(masks[j]).flatten().tolist()
            cur = m if cur is None else sorted(set(cur) & set(m))
        return None if cur is None else tuple(cur)

    return replace(ir, token_mode=mode, blocks=tuple(replace(b, tokens=kept(b.source_index)) for b in ir.blocks))


def _linear(tensors, name, ids=None):
    w, b = tensors[f"{name}.weight"], tensors.get(f"{name}.bias")
    return (cols(w, ids) if ids is not None else w.clone(), None if b is None else b.clone())


def predictor_ir(setting: PredictorSetting, tensors: Mapping[str, Tensor], embed_ids: list[int], eps: float = 1e-5) -> PredictorIR:
    """Read a predictor's weights from checkpoint ``tensors`` (its D-sized inputs mapped to ``embed_ids``)."""
    p = setting.prefix
    if setting.type == "dynamicvit":
        norm = LayerNormIR(tensors[f"{p}.in_conv.0.weight"][embed_ids].clone(), tensors[f"{p}.in_conv.0.bias"][embed_ids].clone(), eps)
        names = ["in_conv.1", "out_conv.0", "out_conv.2", "out_conv.4"]
    else:
        norm = (LayerNormIR(tensors[f"{p}.norm.weight"][embed_ids].clone(), tensors[f"{p}.norm.bias"][embed_ids].clone(), eps)
                if setting.norm else None)
        names = [f"fc{j}" for j in range(len(setting.hidden) + 1)]
    layers = tuple(_linear(tensors, f"{p}.{n}", embed_ids if j == 0 else None) for j, n in enumerate(names))
    return PredictorIR(setting.type, norm, layers)


def dynamic_tokens(ir: ViTIR, rules: Mapping[int, DynamicRule], tensors: Mapping[str, Tensor] | None = None) -> ViTIR:
    """Attach dynamic token rules (source block -> rule); predictor weights come from ``tensors``.

    EViT (Liang et al. ICLR 2022), VTC-LFC (Wang et al. NeurIPS 2022, eqs. 6 and 8), DynamicViT
    (Rao et al. NeurIPS 2021) and SViTE+ / DPS-ViT style scorers; fixed keep counts, so shapes stay
    static and the exported graph uses one constant-K TopK and Gathers (no Scatter).
    """
    if not rules:
        return ir
    tensors = tensors or {}
    ids = list(ir.embed_ids)

    def fn(b):
        r = rules.get(b.source_index)
        if r is None:
            return b
        pred = predictor_ir(r.predictor, tensors, ids, r.predictor.eps) if r.predictor is not None else None
        return replace(b, select=TokenSelectIR(r.keep, r.score, r.where, r.fuse, r.head_weighting, r.cutoff, pred))

    return replace(ir, blocks=tuple(fn(b) for b in ir.blocks))


def merge_tokens(ir: ViTIR, rules: Mapping[int, MergeRule]) -> ViTIR:
    """Attach token-merging rules (source block -> rule): ToMe (Bolya et al. ICLR 2023, sec. 3), bipartite soft
    matching on the keys with ``r`` merges per block, size-weighted averages and proportional attention (eq. 1).

    Nothing is removed here: the merges depend on the input, and codegen builds them with Gather, MatMul
    and a one-hot assignment (:class:`vitshrink.codegen.tokens.TokenMerge`), so the shapes stay static.
    The metric (keys summed over the kept heads, in original channel coordinates) is read off the final
    widths at codegen, so the rule composes with every structural pass in any order.
    """
    if not rules:
        return ir
    return replace(ir, blocks=tuple(replace(b, merge=TokenMergeIR(rules[b.source_index].r, rules[b.source_index].prop_attn))
                                    if b.source_index in rules else b for b in ir.blocks))


def prefix_token_order(ir: ViTIR) -> ViTIR:
    """Layout pass for static token masks: order tokens so each block's kept set is a prefix.

    Prefix tokens (class, distillation) come first, in order; then patch tokens by how deep they
    survive (deepest first), ties by original index. In ``drop`` mode tokens already removed before
    the first block are left out of the order (never computed past the patch embedding). Exact: the
    classifier reads the prefix tokens, which stay first, and attention does not depend on the
    order of its keys.
    """
    sets = [b.tokens for b in ir.blocks]
    if all(s is None for s in sets):
        return ir
    N, P = ir.num_tokens, ir.num_prefix
    depth = {t: -1 for t in range(N)}
    for j, s in enumerate(sets):
        for t in (range(N) if s is None else s):
            depth[t] = j
    present = range(N)
    if ir.token_mode == "drop" and sets[0] is not None:
        present = sets[0]
    patches = sorted((t for t in present if t >= P), key=lambda t: (-depth[t], t))
    return replace(ir, token_order=tuple(range(P)) + tuple(patches))
