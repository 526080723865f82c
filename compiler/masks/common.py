"""Magnitude (L1) criteria every family's reference producer shares: the top-k keep mask, head scores,
per-channel scores of a block, and the per-block head and MLP masks of :func:`width_masks`."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from ..errors import VitshrinkError


def topk_mask(scores: Tensor, ratio: float) -> Tensor:
    """Keep the ``round(ratio * n)`` largest of ``scores`` [n] (at least one; ties to the lower index)."""
    n = scores.numel()
    k = max(1, min(n, int(round(ratio * n))))
    # stable descending order: ties broken by the lower index
    order = sorted(range(n), key=lambda i: (-float(scores[i]), i))[:k]
    m = torch.zeros(n, dtype=torch.bool)
    m[order] = True
    return m


def check_ratio(name: str, r: Optional[float]) -> None:
    """Raise :class:`VitshrinkError` naming ``--{name}`` unless the keep ratio ``r`` is None or in (0, 1]."""
    if r is not None and not 0.0 < r <= 1.0:
        raise VitshrinkError(f"--{name} {r}: a keep ratio must be in (0, 1]")


def head_scores(ir, block: int) -> Tensor:
    """[H] L1 norm (block position ``block`` of any family's ``ir.blocks``) of each head's q, k, v weight rows and proj weight columns."""
    a = ir.blocks[block].attn
    out, qo, vo = [], 0, 0
    for dq, dv in zip(a.qk_dims, a.v_dims):
        s = (a.q_weight[qo:qo + dq].abs().sum() + a.k_weight[qo:qo + dq].abs().sum()
             + a.v_weight[vo:vo + dv].abs().sum() + a.proj_weight[:, vo:vo + dv].abs().sum())
        out.append(s)
        qo, vo = qo + dq, vo + dv
    return torch.stack(out)


def block_channel_l1(b) -> Tensor:
    """[D] L1 norm of a block's weights per residual channel: q/k/v and fc1 columns, proj and fc2 rows."""
    a, m = b.attn, b.mlp
    return (a.q_weight.abs().sum(0) + a.k_weight.abs().sum(0) + a.v_weight.abs().sum(0)
            + a.proj_weight.abs().sum(1) + m.fc1_weight.abs().sum(0) + m.fc2_weight.abs().sum(1))


def width_masks(ir, heads: Optional[float], mlp: Optional[float], name: Callable[[int], str]) -> dict[str, Tensor]:
    """Per block: the ``round(heads * H)`` heads with the largest :func:`head_scores` and the
    ``round(mlp * hidden)`` MLP neurons with the largest fc1-row L1 (S2ViTE's neuron criterion, Chen et
    al. NeurIPS 2021), as ``{name(i) + ".heads": [H] bool, name(i) + ".mlp": [hidden] bool}``;
    ``name(i)`` is the family's canonical name of source block i."""
    masks: dict[str, Tensor] = {}
    for j, b in enumerate(ir.blocks):
        key = name(b.source_index)
        if heads is not None:
            masks[f"{key}.heads"] = topk_mask(head_scores(ir, j), heads)
        if mlp is not None:
            masks[f"{key}.mlp"] = topk_mask(b.mlp.fc1_weight.abs().sum(1), mlp)
    return masks


def l1_meta(ir, heads, mlp, embed) -> dict:
    """The ``meta`` of a spec written by :func:`width_masks` and an embed criterion."""
    return {"producer": "vitshrink masks", "criterion": "l1", "model": ir.name,
            "keep_ratio": {"heads": heads, "mlp": mlp, "embed": embed}}
