"""Layout passes: IR -> IR, exact, no structure removed; they make irregular widths fast to run.

After VTC-LFC-style channel pruning every head of a block can have its own q/k and v width. Run
head by head that is many tiny matmuls. Three exact remedies (docs/architecture.md, "Passes and exactness"):

- :func:`group_heads`: reorder heads so that heads of equal (q/k, v) width are adjacent; codegen
  then runs each group as one batched attention.
- :func:`pad_heads`: pad every head of a block with zero q/k and v channels up to a common width
  (the block maximum, optionally rounded up to a multiple). A zero q/k channel adds 0 to every
  q.k dot product, a zero v channel yields a zero output column that meets a zero proj column:
  the logits do not change, but the block becomes one regular multi-head attention.
- :func:`bucket_heads`: the widths fused attention kernels take (FlashAttention: q, k and v of one
  width, a multiple of 8, at most 256): each head padded to q/k = v = a bucket width, heads of a bucket
  adjacent, at most ``max_groups`` buckets per block -- a few fused calls instead of one per width.

Padded units carry id -1 (:data:`vitshrink.ir.nodes.PAD`). All apply to any family's ``blocks``.
"""
from __future__ import annotations

from itertools import combinations
from typing import Sequence

import torch

from vitshrink.ir.nodes import PAD, AttentionIR, BlockIR, replace

from .structural import select_attention


def group_heads(ir):
    """Order heads of every block by (q/k width, v width), widest first (stable)."""

    def fn(b: BlockIR) -> BlockIR:
        a = b.attn
        order = sorted(range(a.num_heads), key=lambda h: (-a.qk_dims[h], -a.v_dims[h], h))
        plan = [(h, range(a.qk_dims[h]), range(a.v_dims[h])) for h in order]
        return replace(b, attn=select_attention(a, plan))

    return replace(ir, blocks=tuple(fn(b) for b in ir.blocks))


def _pad_rows(t, offsets, dims, widths):
    """Insert zero rows so that each of the consecutive segments ``dims`` becomes ``widths[i]`` long."""
    if t is None:
        return None
    parts = []
    for off, d, w in zip(offsets, dims, widths):
        seg = t[off:off + d]
        parts.append(seg)
        if w > d:
            parts.append(seg.new_zeros((w - d,) + tuple(t.shape[1:])))
    return torch.cat(parts, 0) if parts else t


def pad_attention(a: AttentionIR, qk_width: int | Sequence[int], v_width: int | Sequence[int]) -> AttentionIR:
    """Pad the heads of ``a`` with zero q/k and v channels: to ``qk_width`` / ``v_width`` channels (one
    width for every head, or one per head).

    Raises:
        ValueError: a width below the head's current width.
    """
    if a.num_heads == 0:
        return a
    H = a.num_heads
    qk_w = [qk_width] * H if isinstance(qk_width, int) else list(qk_width)
    v_w = [v_width] * H if isinstance(v_width, int) else list(v_width)
    if any(w < d for w, d in zip(qk_w, a.qk_dims)) or any(w < d for w, d in zip(v_w, a.v_dims)):
        raise ValueError("pad width below an existing head width")
    qk_off = [sum(a.qk_dims[:h]) for h in range(H)]
    v_off = [sum(a.v_dims[:h]) for h in range(H)]
    proj_t = _pad_rows(a.proj_weight.t(), v_off, a.v_dims, v_w)
    return replace(
        a,
        qk_ids=tuple(ids + (PAD,) * (w - len(ids)) for ids, w in zip(a.qk_ids, qk_w)),
        v_ids=tuple(ids + (PAD,) * (w - len(ids)) for ids, w in zip(a.v_ids, v_w)),
        q_weight=_pad_rows(a.q_weight, qk_off, a.qk_dims, qk_w),
        q_bias=_pad_rows(a.q_bias, qk_off, a.qk_dims, qk_w),
        k_weight=_pad_rows(a.k_weight, qk_off, a.qk_dims, qk_w),
        k_bias=_pad_rows(a.k_bias, qk_off, a.qk_dims, qk_w),
        v_weight=_pad_rows(a.v_weight, v_off, a.v_dims, v_w),
        v_bias=_pad_rows(a.v_bias, v_off, a.v_dims, v_w),
        proj_weight=proj_t.t().contiguous(),
    )


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def pad_heads(ir, multiple: int = 1):
    """Pad the heads of every block with irregular widths to the block's widest head (q/k and v
    separately), rounded up to ``multiple``. Blocks whose heads are already uniform are unchanged."""

    def fn(b: BlockIR) -> BlockIR:
        a = b.attn
        if a.num_heads == 0 or (len(set(a.qk_dims)) == 1 and len(set(a.v_dims)) == 1):
            return b
        return replace(b, attn=pad_attention(a, _round_up(max(a.qk_dims), multiple), _round_up(max(a.v_dims), multiple)))

    return replace(ir, blocks=tuple(fn(b) for b in ir.blocks))


def buckets(widths: Sequence[int], max_groups: int) -> list[int]:
    """At most ``max_groups`` bucket widths, the largest of ``widths`` among them, that minimise the summed
    width after every width is rounded up to its bucket (the padded q/k/v work): exhaustive over the
    distinct widths (a block has few)."""
    distinct = sorted(set(widths))
    top, rest = distinct[-1], distinct[:-1]
    best, best_cost = [top], None
    for n in range(0, min(max_groups - 1, len(rest)) + 1):
        for extra in combinations(rest, n):
            cand = sorted((*extra, top))
            cost = sum(next(c for c in cand if c >= w) for w in widths)
            if best_cost is None or cost < best_cost:
                best, best_cost = cand, cost
    return best


def bucket_heads(ir, multiple: int = 8, max_groups: int = 2, max_width: int = 256):
    """The layout fused attention kernels take: in every block, each head padded with zero channels to
    q/k = v = its bucket width -- ``max(q/k width, v width)`` rounded up to ``multiple``, then up to one
    of at most ``max_groups`` bucket widths (:func:`buckets`) -- and the heads of a bucket made adjacent
    (widest first), so codegen runs one fused call per bucket. Blocks already of one width that is
    a multiple of ``multiple`` with q/k = v are unchanged.

    Raises:
        ValueError: a head wider than ``max_width`` (FlashAttention's limit).
    """

    def fn(b: BlockIR) -> BlockIR:
        a = b.attn
        if a.num_heads == 0:
            return b
        need = [_round_up(max(q, v), multiple) for q, v in zip(a.qk_dims, a.v_dims)]
        if max(need) > max_width:
            raise ValueError(f"block {b.source_index}: a head of width {max(need)} > {max_width}")
        if len(set(need)) == 1 and set(a.qk_dims) == set(a.v_dims) == {need[0]}:
            return b
        cuts = buckets(need, max_groups)
        width = [next(c for c in cuts if c >= w) for w in need]
        order = sorted(range(a.num_heads), key=lambda h: (-width[h], h))
        a = select_attention(a, [(h, range(a.qk_dims[h]), range(a.v_dims[h])) for h in order])
        width = [width[h] for h in order]
        return replace(b, attn=pad_attention(a, width, width))

    return replace(ir, blocks=tuple(fn(b) for b in ir.blocks))


#: the head layouts (``--layout``), each exact
HEAD_LAYOUTS = ("pad", "group", "fused")


def lay_out_heads(ir, form: str):
    """The head layout ``form``: ``"pad"`` (:func:`pad_heads`), ``"group"`` (:func:`group_heads`) or
    ``"fused"`` (:func:`bucket_heads`).

    Raises:
        ValueError: an unknown form.
    """
    if form == "pad":
        return pad_heads(ir)
    if form == "group":
        return group_heads(ir)
    if form == "fused":
        return bucket_heads(ir)
    raise ValueError(f"head layout {form!r} is not one of {', '.join(HEAD_LAYOUTS)}")
