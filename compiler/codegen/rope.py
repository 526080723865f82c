"""Codegen for rotary position embedding (:class:`~vitshrink.ir.nodes.RopeIR`): the q/k channel layout
and the constant tables the generated attention applies.

The dot product ``q . k`` does not depend on the order of the channels inside a head, so codegen puts
every head's q/k channels in *paired* order -- the first channel of each rotation pair, then their
partners in the same order (zero-padded channels split evenly between the halves). The rotation is then
``x * cos + swap(x) * sin`` with ``swap`` exchanging the two halves: two slices and a concat, no gather,
whatever pairing (interleaved or half) and whichever channels pruning kept."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..errors import VitshrinkError
from ..ir.nodes import PAD, AttentionIR, replace, rows


def paired(a: AttentionIR) -> AttentionIR:
    """``a`` with every head's q/k channels in paired order (:mod:`module doc <.rope>`); unchanged without RoPE.

    Raises:
        VitshrinkError: a head keeps a channel without its rotation partner (specs are checked before).
    """
    if a.rope is None:
        return a
    order_rows, qk_ids, off = [], [], 0
    for h, ids in enumerate(a.qk_ids):
        pos = {c: j for j, c in enumerate(ids) if c != PAD}
        firsts = [j for j, c in enumerate(ids) if c != PAD and a.rope.partner(c)[1] < 0]
        try:
            seconds = [pos[a.rope.partner(ids[j])[0]] for j in firsts]
        except KeyError as e:
            raise VitshrinkError(f"head {a.head_ids[h]} keeps q/k channel {e.args[0]}'s partner but not it: "
                                 "RoPE rotates channel pairs") from None
        pads = [j for j, c in enumerate(ids) if c == PAD]
        if len(pads) % 2 or 2 * len(firsts) + len(pads) != len(ids):
            raise VitshrinkError(f"head {a.head_ids[h]}: q/k channels {list(ids)} do not form rotation pairs")
        order = firsts + pads[:len(pads) // 2] + seconds + pads[len(pads) // 2:]
        order_rows += [off + j for j in order]
        qk_ids.append(tuple(ids[j] for j in order))
        off += len(ids)
    return replace(a, qk_ids=tuple(qk_ids), q_weight=rows(a.q_weight, order_rows), q_bias=rows(a.q_bias, order_rows),
                   k_weight=rows(a.k_weight, order_rows), k_bias=rows(a.k_bias, order_rows))


def head_tables(a: AttentionIR, h: int) -> tuple[Tensor, Tensor]:
    """(sin, cos) [Np, d] of head ``h`` of a paired attention: column j holds original channel
    ``qk_ids[h][j]``'s cos, and its sin times the sign of the partner's term (0 for a padded channel)."""
    ids = a.qk_ids[h]
    sin_t, cos_t = a.rope.table(a.head_ids[h]) if a.head_ids[h] != PAD else (None, None)
    Np = a.rope.sin.shape[1]
    sin, cos = torch.zeros(Np, len(ids)), torch.zeros(Np, len(ids))
    for j, c in enumerate(ids):
        if c != PAD and sin_t is not None:
            cos[:, j] = cos_t[:, c]
            sin[:, j] = a.rope.partner(c)[1] * sin_t[:, c]
    return sin, cos


def rope_config(a: AttentionIR) -> Optional[dict]:
    """The block config of the rotation: tokens not rotated (``skip``) and rotated (``tokens``), or None."""
    return None if a.rope is None else {"skip": a.rope.skip, "tokens": int(a.rope.sin.shape[1])}


def rope_state_dict(a: AttentionIR, groups: list[tuple[int, int, int]], p: str) -> dict[str, Tensor]:
    """The tables of a paired attention per head group (:func:`~.attention.head_groups`):
    ``{p}attn.rope_sin_{g}`` and ``{p}attn.rope_cos_{g}`` [heads, Np, d]."""
    if a.rope is None:
        return {}
    sd, h0 = {}, 0
    for g, (n, _, _) in enumerate(groups):
        sin, cos = zip(*(head_tables(a, h) for h in range(h0, h0 + n)))
        sd[f"{p}attn.rope_sin_{g}"], sd[f"{p}attn.rope_cos_{g}"] = torch.stack(sin), torch.stack(cos)
        h0 += n
    return sd


def rotate(t: Tensor, sin: Tensor, cos: Tensor, skip: int) -> Tensor:
    """t [B, h, N, d] (paired channels) -> the same with tokens ``skip:`` rotated by sin, cos [h, N - skip, d]."""
    m = t.shape[-1] // 2
    r = t[:, :, skip:]
    r = r * cos + torch.cat([r[..., m:], r[..., :m]], dim=-1) * sin
    return torch.cat([t[:, :, :skip], r], dim=2) if skip else r
