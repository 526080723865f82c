"""What the masked dense references of every family share: LayerNorm over the kept channels, a plain
linear map, and each kept head's q, k, v with the spec's channel masks applied as zeros."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..ir.nodes import LayerNormIR


def masked_layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float, e: Tensor) -> Tensor:
    """LayerNorm of x [..., D] over the channels where e [D] is 1; output 0 elsewhere."""
    n = e.sum()
    mean = (x * e).sum(-1, keepdim=True) / n
    var = (((x - mean) * e) ** 2).sum(-1, keepdim=True) / n
    return (x - mean) / torch.sqrt(var + eps) * (weight * e) + bias * e


def ln(x: Tensor, p: LayerNormIR, e: Tensor) -> Tensor:
    """:func:`masked_layer_norm` with the parameters of ``p``."""
    return masked_layer_norm(x, p.weight, p.bias, p.eps, e)


def linear(x: Tensor, w: Tensor, b: Optional[Tensor]) -> Tensor:
    """``x @ w.T + b`` (``w`` [out, in] as nn.Linear stores it)."""
    y = x @ w.t()
    return y if b is None else y + b


def masked_heads(h: Tensor, a, i: int, heads: Tensor, spec):
    """Per kept head of block ``i`` (attention ``a``, input ``h`` [..., D]): ``(head, q, k, v, v mask,
    v slice)`` with the spec's q/k and v channel masks applied as zeros -- the papers' definition."""
    off_qk = off_v = 0
    for hh in range(a.num_heads):
        dq, dv = a.qk_dims[hh], a.v_dims[hh]
        sq, sv = slice(off_qk, off_qk + dq), slice(off_v, off_v + dv)
        off_qk, off_v = off_qk + dq, off_v + dv
        if not heads[hh]:
            continue
        mqk = spec.qk[i][hh].float() if i in spec.qk else torch.ones(dq)
        mv = spec.v[i][hh].float() if i in spec.v else torch.ones(dv)
        q = linear(h, a.q_weight[sq], None if a.q_bias is None else a.q_bias[sq]) * mqk
        k = linear(h, a.k_weight[sq], None if a.k_bias is None else a.k_bias[sq]) * mqk
        v = linear(h, a.v_weight[sv], None if a.v_bias is None else a.v_bias[sv]) * mv
        yield hh, q, k, v, mv, sv
