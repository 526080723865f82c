"""Structural passes every family shares: IR -> IR, each removing one kind of structure from the blocks
physically (heads, q/k and v channels, MLP neurons, whole blocks, a block's residual channels).
Family-level ones (the ViT embedding and early exit, Swin's stage channels) are in :mod:`.vit` and
:mod:`.swin`; both families' ``blocks`` are sequences of :class:`~vitshrink.ir.nodes.BlockIR`.

Every pass takes masks in *original* model coordinates (bool, True = keep) and maps them through the
IR's ids, so passes compose in any order. Each is exact: the smaller model computes the same logits
as the dense model with the masks applied as zeros (heads, channels, neurons), as identity (blocks),
or as a truncation (early exit); ``tests/test_exactness.py`` proves it against
the families' masked references on random masks.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from torch import Tensor

from vitshrink.ir.nodes import PAD, AttentionIR, BlockIR, LayerNormIR, cols, replace, rows


def _offsets(dims: Sequence[int]) -> list[int]:
    out, acc = [], 0
    for d in dims:
        out.append(acc)
        acc += d
    return out


def select_attention(attn: AttentionIR, plan: Sequence[tuple[int, Sequence[int], Sequence[int]]]) -> AttentionIR:
    """Rebuild ``attn`` from a plan: for each output head, ``(head position, q/k channel positions,
    v channel positions)`` in the *current* attention. Positions, not ids. Reordering is allowed
    (attention is invariant to a joint permutation of heads and proj input columns)."""
    qk_off, v_off = _offsets(attn.qk_dims), _offsets(attn.v_dims)
    qk_rows, v_rows = [], []
    head_ids, qk_ids, v_ids, head_pos = [], [], [], []
    for h, qk_pos, v_pos in plan:
        head_pos.append(h)
        qk_rows += [qk_off[h] + j for j in qk_pos]
        v_rows += [v_off[h] + j for j in v_pos]
        head_ids.append(attn.head_ids[h])
        qk_ids.append(tuple(attn.qk_ids[h][j] for j in qk_pos))
        v_ids.append(tuple(attn.v_ids[h][j] for j in v_pos))
    return replace(
        attn,
        head_ids=tuple(head_ids), qk_ids=tuple(qk_ids), v_ids=tuple(v_ids),
        q_weight=rows(attn.q_weight, qk_rows), q_bias=rows(attn.q_bias, qk_rows),
        k_weight=rows(attn.k_weight, qk_rows), k_bias=rows(attn.k_bias, qk_rows),
        v_weight=rows(attn.v_weight, v_rows), v_bias=rows(attn.v_bias, v_rows),
        proj_weight=cols(attn.proj_weight, v_rows),
        rel_bias=rows(attn.rel_bias, head_pos),  # the head's column of Swin's bias table goes with it
        logit_scale=rows(attn.logit_scale, head_pos),
        talking=None if attn.talking is None else _talking(attn.talking, head_pos),
    )


def _talking(t, head_pos: list[int]):
    """The talking-heads matrices of the heads at ``head_pos`` (rows and columns, in that order)."""
    return replace(t, l_weight=cols(rows(t.l_weight, head_pos), head_pos), l_bias=rows(t.l_bias, head_pos),
                   w_weight=cols(rows(t.w_weight, head_pos), head_pos), w_bias=rows(t.w_bias, head_pos))


def keep_positions(ids: Iterable[int], mask: Tensor) -> list[int]:
    """Positions whose original id is kept by ``mask`` (padding, id -1, is always kept)."""
    return [p for p, i in enumerate(ids) if i == PAD or bool(mask[i])]


def _map_blocks(ir, fn, masks: Mapping[int, object]):
    if not masks:
        return ir
    return replace(ir, blocks=tuple(fn(b, masks[b.source_index]) if b.source_index in masks else b for b in ir.blocks))


def prune_head_channels(ir, qk: Mapping[int, Tensor], v: Mapping[int, Tensor]):
    """Remove q/k and v channels per head (VTC-LFC, Wang et al. NeurIPS 2022, channel pruning by LFS).

    Args:
        qk: source block -> [H, head_dim] bool; q and k of a head keep the same channels (their dot
            product ``q_h . k_h`` loses exactly the masked terms; the softmax scale stays the original
            ``head_dim ** -0.5``).
        v: source block -> [H, head_dim] bool; a removed v channel removes the matching input column
            of proj. A head left with no v channel contributes nothing and is removed whole.
    Raises:
        ValueError: a head would keep v channels but no q/k channel (validation prevents this).
    """
    blocks = set(qk) | set(v)

    def fn(b: BlockIR, _):
        a = b.attn
        plan = []
        for h, hid in enumerate(a.head_ids):
            qk_pos = keep_positions(a.qk_ids[h], qk[b.source_index][hid]) if b.source_index in qk else list(range(a.qk_dims[h]))
            v_pos = keep_positions(a.v_ids[h], v[b.source_index][hid]) if b.source_index in v else list(range(a.v_dims[h]))
            if not v_pos:
                continue
            if not qk_pos:
                raise ValueError(f"blocks.{b.source_index}: head {hid} keeps v channels but no q/k channel")
            plan.append((h, qk_pos, v_pos))
        return replace(b, attn=select_attention(a, plan))

    return _map_blocks(ir, fn, {i: None for i in blocks})


def prune_heads(ir, heads: Mapping[int, Tensor]):
    """Remove whole attention heads (WDPruning, S2ViTE, SAViT): the head's q, k, v rows and its proj
    input columns. ``heads``: source block -> [H] bool."""

    def fn(b: BlockIR, mask: Tensor):
        a = b.attn
        plan = [(h, range(a.qk_dims[h]), range(a.v_dims[h])) for h in keep_positions(a.head_ids, mask)]
        return replace(b, attn=select_attention(a, plan))

    return _map_blocks(ir, fn, heads)


def prune_mlp(ir, mlp: Mapping[int, Tensor]):
    """Remove MLP hidden neurons (all width methods; S2ViTE ranks by fc1-row L1): fc1 output rows and
    fc2 input columns (a gated MLP's gate rows too; an MLP LayerNorm keeps the kept units' parameters).
    Exact because a zeroed neuron contributes nothing to fc2. ``mlp``: source block -> [hidden] bool."""

    def fn(b: BlockIR, mask: Tensor):
        m = b.mlp
        keep = keep_positions(m.hidden_ids, mask)
        return replace(b, mlp=replace(
            m, hidden_ids=tuple(m.hidden_ids[p] for p in keep),
            fc1_weight=rows(m.fc1_weight, keep), fc1_bias=rows(m.fc1_bias, keep),
            fc2_weight=cols(m.fc2_weight, keep),
            gate_weight=rows(m.gate_weight, keep), gate_bias=rows(m.gate_bias, keep),
            norm=None if m.norm is None else layer_norm_keep(m.norm, keep),
        ))

    return _map_blocks(ir, fn, mlp)


def layer_norm_keep(p: LayerNormIR, keep: list[int]) -> LayerNormIR:
    """The LayerNorm over the channels at positions ``keep`` only."""
    return replace(p, weight=rows(p.weight, keep), bias=rows(p.bias, keep))


def embed_block(b: BlockIR, keep: list[int]) -> BlockIR:
    """A block reading and writing only the residual channels at positions ``keep``: its LayerNorms,
    q/k/v and fc1 inputs, proj and fc2 outputs (and a token predictor's input). Shared by the ViT
    embedding pass and Swin's per-stage one."""
    a, m = b.attn, b.mlp
    attn = replace(
        a, q_weight=cols(a.q_weight, keep), k_weight=cols(a.k_weight, keep), v_weight=cols(a.v_weight, keep),
        proj_weight=rows(a.proj_weight, keep), proj_bias=rows(a.proj_bias, keep),
    )
    mlp = replace(m, fc1_weight=cols(m.fc1_weight, keep), fc2_weight=rows(m.fc2_weight, keep), fc2_bias=rows(m.fc2_bias, keep),
                  gate_weight=None if m.gate_weight is None else cols(m.gate_weight, keep))
    select = b.select
    if select is not None and select.predictor is not None:  # a token scorer reads the residual stream
        pr = select.predictor
        (w0, b0), *rest = pr.layers
        pr = replace(pr, norm=None if pr.norm is None else layer_norm_keep(pr.norm, keep), layers=((cols(w0, keep), b0), *rest))
        select = replace(select, predictor=pr)
    return replace(b, norm1=layer_norm_keep(b.norm1, keep), attn=attn, norm2=layer_norm_keep(b.norm2, keep), mlp=mlp, select=select,
                   norm_out=None if b.norm_out is None else layer_norm_keep(b.norm_out, keep))


def remove_blocks(ir, removed: Iterable[int]):
    """Remove whole blocks (given by source index): the residual stream passes through unchanged,
    i.e. the block acts as the identity (WDPruning depth pruning without a classifier change)."""
    removed = set(removed)
    if not removed:
        return ir
    return replace(ir, blocks=tuple(b for b in ir.blocks if b.source_index not in removed))
