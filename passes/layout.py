"""Layout passes: IR -> IR, exact, no structure removed; they make irregular widths fast to run.

After VTC-LFC-style channel pruning every head of a block can have its own q/k and v width. Run
head by head that is many tiny matmuls. Two exact remedies (docs/architecture.md, "Passes and exactness"):

- :func:`group_heads`: reorder heads so that heads of equal (q/k, v) width are adjacent; codegen
  then runs each group as one batched attention.
- :func:`pad_heads`: pad every head of a block with zero q/k and v channels up to a common width
  (the block maximum, optionally rounded up to a multiple). A zero q/k channel adds 0 to every
  q.k dot product, a zero v channel yields a zero output column that meets a zero proj column:
  the logits do not change, but the block becomes one regular multi-head attention.

Padded units carry id -1 (:data:`vitshrink.ir.nodes.PAD`). Both apply to any family's ``blocks``.
"""
from __future__ import annotations

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


def _pad_rows(t, offsets, dims, width):
    """Insert zero rows so that each of the consecutive segments ``dims`` becomes ``width`` long."""
    if t is None:
        return None
    parts = []
    for off, d in zip(offsets, dims):
        seg = t[off:off + d]
        parts.append(seg)
        if width > d:
            parts.append(seg.new_zeros((width - d,) + tuple(t.shape[1:])))
    return torch.cat(parts, 0) if parts else t


def pad_attention(a: AttentionIR, qk_width: int, v_width: int) -> AttentionIR:
    """Pad every head of ``a`` to ``qk_width`` q/k channels and ``v_width`` v channels with zeros."""
    if a.num_heads == 0:
        return a
    if qk_width < max(a.qk_dims) or v_width < max(a.v_dims):
        raise ValueError("pad width below an existing head width")
    qk_off = [sum(a.qk_dims[:h]) for h in range(a.num_heads)]
    v_off = [sum(a.v_dims[:h]) for h in range(a.num_heads)]
    proj_t = _pad_rows(a.proj_weight.t(), v_off, a.v_dims, v_width)
    return replace(
        a,
        qk_ids=tuple(ids + (PAD,) * (qk_width - len(ids)) for ids in a.qk_ids),
        v_ids=tuple(ids + (PAD,) * (v_width - len(ids)) for ids in a.v_ids),
        q_weight=_pad_rows(a.q_weight, qk_off, a.qk_dims, qk_width),
        q_bias=_pad_rows(a.q_bias, qk_off, a.qk_dims, qk_width),
        k_weight=_pad_rows(a.k_weight, qk_off, a.qk_dims, qk_width),
        k_bias=_pad_rows(a.k_bias, qk_off, a.qk_dims, qk_width),
        v_weight=_pad_rows(a.v_weight, v_off, a.v_dims, v_width),
        v_bias=_pad_rows(a.v_bias, v_off, a.v_dims, v_width),
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
