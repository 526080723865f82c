"""Translations of the timm layers several frontends share into IR nodes: an attention's q|k|v projection
(fused or split, q/v bias parameters) as :class:`AttentionIR`, the MLP activations (GELU, GELUTanh,
QuickGELU, SiLU), the latent attention pool (``global_pool='map'``), and LayerScale folded into the Linear
before it."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..ir.nodes import AttentionIR, MlpIR
from ..ir.vit import AttentionPoolIR
from .timm_common import clone, is_identity, layer_norm, refuse


def qkv_projection(a) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """A timm attention's q|k|v projection [3E, D] and bias [3E] (or None): one fused ``qkv`` Linear (its
    bias plus BEiT / EVA / Swin V2's ``q_bias``, ``k_bias`` -- zero when absent --, ``v_bias`` parameters), or
    separate ``q_proj``/``k_proj``/``v_proj`` (or ``q``/``k``/``v``) Linears (a missing bias is zeros)."""
    if getattr(a, "qkv", None) is not None:
        w = a.qkv.weight.detach()
        b = None if a.qkv.bias is None else a.qkv.bias.detach()
        if getattr(a, "q_bias", None) is not None:
            k_bias = getattr(a, "k_bias", None)
            k_bias = torch.zeros_like(a.q_bias) if k_bias is None else k_bias
            extra = torch.cat([a.q_bias.detach(), k_bias.detach(), a.v_bias.detach()])
            b = extra if b is None else b + extra
        return w, b
    lins = (a.q_proj, a.k_proj, a.v_proj) if hasattr(a, "q_proj") else (a.q, a.k, a.v)  # CaiT's ClassAttn: q, k, v
    w = torch.cat([lin.weight.detach() for lin in lins])
    if all(lin.bias is None for lin in lins):
        return w, None
    return w, torch.cat([lin.bias.detach() if lin.bias is not None else torch.zeros(lin.out_features) for lin in lins])


def attention_ir(w: torch.Tensor, b: Optional[torch.Tensor], num_heads: int, proj: nn.Linear,
                 gamma_: Optional[torch.Tensor], scale: float, **extra) -> AttentionIR:
    """The unpruned :class:`AttentionIR` of a q|k|v projection ``w`` [3E, D] (bias ``b`` [3E] or None) with
    ``num_heads`` heads of E / num_heads channels, the output projection ``proj`` (LayerScale ``gamma_``
    folded in, or None) and softmax ``scale``; ``extra``: the family's fields (rope, rel_bias, ...)."""
    E = w.shape[0] // 3
    hd = E // num_heads
    part = lambda t, j: None if t is None else t[j * E:(j + 1) * E].clone()  # noqa: E731
    return AttentionIR(
        head_ids=tuple(range(num_heads)), qk_ids=tuple(tuple(range(hd)) for _ in range(num_heads)),
        v_ids=tuple(tuple(range(hd)) for _ in range(num_heads)),
        q_weight=part(w, 0), q_bias=part(b, 0), k_weight=part(w, 1), k_bias=part(b, 1),
        v_weight=part(w, 2), v_bias=part(b, 2),
        **dict(zip(("proj_weight", "proj_bias"), scaled(proj.weight, proj.bias, gamma_))),
        scale=float(scale), **extra,
    )


def activation(m, allowed: tuple = ()) -> str:
    """The IR name of a timm MLP's activation: ``m`` is a plain ``Mlp`` without a hidden norm, or one of
    the classes ``allowed`` (the caller translates those). Refused by name: another MLP or activation."""
    from timm.layers import GELUTanh, Mlp, QuickGELU  # timm: lazy, after the compat shim
    from timm.layers.activations import GELU as TimmGELU  # timm: lazy, after the compat shim (exact F.gelu)

    if type(m) not in allowed and (type(m) is not Mlp or not is_identity(getattr(m, "norm", None))):
        refuse("mlp_layer", type(m).__name__)
    for lin in ("fc1", "fc1_g", "fc1_x", "fc2"):
        if hasattr(m, lin) and not isinstance(getattr(m, lin), nn.Linear):
            refuse("mlp_layer", "conv (use_conv)")
    act = m.act
    if (isinstance(act, nn.GELU) and act.approximate == "none") or type(act) is TimmGELU:
        return "gelu"
    if (isinstance(act, nn.GELU) and act.approximate == "tanh") or isinstance(act, GELUTanh):
        return "gelu_tanh"
    if isinstance(act, QuickGELU):
        return "quick_gelu"
    if isinstance(act, nn.SiLU):
        return "silu"
    refuse("act_layer", type(act).__name__, "exact (erf) GELU, GELUTanh, QuickGELU and SiLU are supported")


def check_attn_pool(model: nn.Module) -> None:
    """``global_pool='map'``: timm's ``AttentionPoolLatent`` without its own position embedding or q/k norm."""
    from timm.layers import AttentionPoolLatent  # timm: lazy, after the compat shim

    p = model.attn_pool
    if type(p) is not AttentionPoolLatent:
        refuse("attn_pool", type(p).__name__, "timm's AttentionPoolLatent is supported")
    if p.pos_embed is not None:
        refuse("attn_pool.pos_embed", "abs")
    if not (is_identity(p.q_norm) and is_identity(p.k_norm)):
        refuse("attn_pool.qk_norm", True)
    if not isinstance(p.q, nn.Linear) or not isinstance(p.proj, nn.Linear):
        refuse("attn_pool.q_proj", False, "a query projection and an output projection are required")
    if p.pool not in ("token", "avg"):
        refuse("attn_pool.pool_type", p.pool)
    if not (is_identity(p.norm) or isinstance(p.norm, nn.LayerNorm)):
        refuse("attn_pool.norm", type(p.norm).__name__)
    if p.mlp is not None:
        activation(p.mlp)
    if not is_identity(getattr(model, "fc_norm", None)):
        refuse("fc_norm", type(model.fc_norm).__name__, "with global_pool='map'")


def gamma(ls) -> Optional[torch.Tensor]:
    """LayerScale's per-channel gamma [D], or None (Identity)."""
    return None if is_identity(ls) else ls.gamma.detach()


def scaled(weight: torch.Tensor, bias: Optional[torch.Tensor], gamma: Optional[torch.Tensor]):
    """(gamma * W, gamma * b): LayerScale after a Linear folded into it, ``gamma*(Wy+b) = (gamma W)y + gamma b``."""
    if gamma is None:
        return weight.detach().clone(), clone(bias)
    return (weight.detach() * gamma[:, None]).clone(), None if bias is None else (bias.detach() * gamma).clone()


def attn_pool(p, include_prefix: bool = False) -> AttentionPoolIR:
    """timm's ``AttentionPoolLatent`` as IR (its fused ``kv`` split into k and v)."""
    E = p.kv.out_features // 2
    kb = p.kv.bias.detach() if p.kv.bias is not None else None
    m = p.mlp
    return AttentionPoolIR(
        latent=p.latent.detach().reshape(p.latent_len, -1).clone(),
        q_weight=p.q.weight.detach().clone(), q_bias=clone(p.q.bias),
        k_weight=p.kv.weight.detach()[:E].clone(), k_bias=None if kb is None else kb[:E].clone(),
        v_weight=p.kv.weight.detach()[E:].clone(), v_bias=None if kb is None else kb[E:].clone(),
        num_heads=int(p.num_heads), scale=float(p.scale),
        proj_weight=p.proj.weight.detach().clone(), proj_bias=clone(p.proj.bias),
        norm=None if is_identity(p.norm) else layer_norm(p.norm),
        mlp=None if m is None else MlpIR(tuple(range(m.fc1.out_features)), m.fc1.weight.detach().clone(), clone(m.fc1.bias),
                                         m.fc2.weight.detach().clone(), clone(m.fc2.bias), act=activation(m)),
        pool=p.pool, include_prefix=include_prefix,
    )
