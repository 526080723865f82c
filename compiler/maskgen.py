"""Reference mask producer: magnitude (L1) criteria, so the main job runs on a real checkpoint
without another tool. Not a pruning method to publish; a baseline that writes spec v1 files.

- heads (per block): keep the ``round(R * H)`` heads with the largest L1 norm of their q, k, v
  weight rows plus their proj weight columns;
- MLP neurons (per block): keep the ``round(R * hidden)`` neurons with the largest L1 norm of their
  fc1 weight row (the S2ViTE neuron criterion, Chen et al. NeurIPS 2021);
- embedding channels (global): keep the ``round(R * D)`` channels with the largest L1 norm over all
  weights that write or read the channel (patch embedding row, q/k/v and fc1 columns, proj and fc2
  rows, classifier columns).

Ties go to the lower index. At least one unit is always kept.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .errors import VitshrinkError
from .ir import ViTIR
from .spec import Spec


def _topk_mask(scores: Tensor, ratio: float) -> Tensor:
    n = scores.numel()
    k = max(1, min(n, int(round(ratio * n))))
    # stable descending order: ties broken by the lower index
    order = sorted(range(n), key=lambda i: (-float(scores[i]), i))[:k]
    m = torch.zeros(n, dtype=torch.bool)
    m[order] = True
    return m


def _check_ratio(name: str, r: Optional[float]) -> None:
    if r is not None and not 0.0 < r <= 1.0:
        raise VitshrinkError(f"--{name} {r}: a keep ratio must be in (0, 1]")


def head_scores(ir: ViTIR, block: int) -> Tensor:
    """[H] L1 norm of each head's q, k, v weight rows and proj weight columns."""
    a = ir.blocks[block].attn
    out, qo, vo = [], 0, 0
    for dq, dv in zip(a.qk_dims, a.v_dims):
        s = (a.q_weight[qo:qo + dq].abs().sum() + a.k_weight[qo:qo + dq].abs().sum()
             + a.v_weight[vo:vo + dv].abs().sum() + a.proj_weight[:, vo:vo + dv].abs().sum())
        out.append(s)
        qo, vo = qo + dq, vo + dv
    return torch.stack(out)


def embed_scores(ir: ViTIR) -> Tensor:
    """[D] L1 norm of every weight that writes or reads each residual channel."""
    s = ir.patch_weight.abs().flatten(1).sum(1)
    for b in ir.blocks:
        a, m = b.attn, b.mlp
        s = s + a.q_weight.abs().sum(0) + a.k_weight.abs().sum(0) + a.v_weight.abs().sum(0)
        s = s + a.proj_weight.abs().sum(1) + m.fc1_weight.abs().sum(0) + m.fc2_weight.abs().sum(1)
    for h in ir.heads:
        s = s + h.weight.abs().sum(0)
    return s


def l1_spec(ir: ViTIR, heads: Optional[float] = None, mlp: Optional[float] = None,
            embed: Optional[float] = None) -> Spec:
    """A spec keeping the largest-L1 heads, MLP neurons and embedding channels at the given keep ratios.

    Args:
        ir: the dense model (its weights are the scores' input).
        heads, mlp, embed: keep ratios in (0, 1]; None leaves that kind unpruned.
    Raises:
        VitshrinkError: a ratio outside (0, 1].
    """
    for name, r in (("heads", heads), ("mlp", mlp), ("embed", embed)):
        _check_ratio(name, r)
    masks: dict[str, Tensor] = {}
    for j, b in enumerate(ir.blocks):
        i = b.source_index
        if heads is not None:
            masks[f"blocks.{i}.heads"] = _topk_mask(head_scores(ir, j), heads)
        if mlp is not None:
            masks[f"blocks.{i}.mlp"] = _topk_mask(b.mlp.fc1_weight.abs().sum(1), mlp)
    if embed is not None:
        masks["embed"] = _topk_mask(embed_scores(ir), embed)
    meta = {"producer": "vitshrink masks", "criterion": "l1", "model": ir.name,
            "keep_ratio": {"heads": heads, "mlp": mlp, "embed": embed}}
    return Spec(masks=masks, settings={}, source="<l1_spec>", meta=meta)
