"""Codegen for the attention pool with learned latent queries (timm ``AttentionPoolLatent``,
``global_pool='map'``, SigLIP): :class:`~vitshrink.ir.vit.AttentionPoolIR` -> :class:`AttentionPool`."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ir.vit import AttentionPoolIR
from .layers import Mlp


class AttentionPool(nn.Module):
    """tokens [B, N, D] -> pooled [B, out_features]: the latents [L, Dl] attend to the tokens
    (``num_heads`` heads, SDPA with the model's scale), then ``proj``, ``x + mlp(norm(x))``, and the first
    latent (``pool="token"``) or their mean (``"avg"``). Only the key/value inputs (the residual channels)
    are ever pruned."""

    def __init__(self, cfg: dict, dim: int):
        super().__init__()
        L, Dl, E, O = cfg["latent_len"], cfg["latent_dim"], cfg["embed_dim"], cfg["out_features"]
        self.num_heads, self.scale, self.pool = cfg["num_heads"], cfg["scale"], cfg["pool"]
        self.latent = nn.Parameter(torch.zeros(1, L, Dl))
        self.q = nn.Linear(Dl, E, bias=cfg["qkv_bias"])
        self.kv = nn.Linear(dim, 2 * E, bias=cfg["qkv_bias"])
        self.proj = nn.Linear(E, O, bias=cfg["proj_bias"])
        self.norm = nn.LayerNorm(O, eps=cfg["norm_eps"]) if cfg["norm_eps"] is not None else None
        m = cfg["mlp"]
        self.mlp = None if m is None else Mlp(O, m["hidden"], m["fc1_bias"], m["fc2_bias"], m["act"])

    def forward(self, x: Tensor) -> Tensor:
        B, N, _ = x.shape
        h = self.num_heads
        q = self.q(self.latent).reshape(1, -1, h, self.q.out_features // h).transpose(1, 2).expand(B, -1, -1, -1)
        k, v = self.kv(x).reshape(B, N, 2, h, -1).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # [B, h, L, E/h]
        o = self.proj(o.transpose(1, 2).reshape(B, o.shape[2], -1))
        if self.mlp is not None:
            o = o + self.mlp(o if self.norm is None else self.norm(o))
        return o[:, 0] if self.pool == "token" else o.mean(1)


def pool_architecture(p: Optional[AttentionPoolIR]) -> Optional[dict]:
    """The JSON-serialisable widths of an attention pool (None stays None)."""
    if p is None:
        return None
    m = p.mlp
    return {
        "latent_len": int(p.latent.shape[0]), "latent_dim": int(p.latent.shape[1]),
        "embed_dim": int(p.q_weight.shape[0]), "out_features": p.out_features, "num_heads": p.num_heads,
        "scale": p.scale, "pool": p.pool, "qkv_bias": p.q_bias is not None, "proj_bias": p.proj_bias is not None,
        "norm_eps": None if p.norm is None else p.norm.eps, "include_prefix": p.include_prefix,
        "mlp": None if m is None else {"hidden": m.hidden, "fc1_bias": m.fc1_bias is not None,
                                       "fc2_bias": m.fc2_bias is not None, "act": m.act},
    }


def pool_state_dict(p: AttentionPoolIR, prefix: str) -> dict[str, Tensor]:
    """The :class:`AttentionPool` weights of ``p`` under the key prefix ``prefix``."""
    sd = {prefix + "latent": p.latent.unsqueeze(0), prefix + "q.weight": p.q_weight,
          prefix + "kv.weight": torch.cat([p.k_weight, p.v_weight]), prefix + "proj.weight": p.proj_weight}
    if p.q_bias is not None:
        sd[prefix + "q.bias"], sd[prefix + "kv.bias"] = p.q_bias, torch.cat([p.k_bias, p.v_bias])
    if p.proj_bias is not None:
        sd[prefix + "proj.bias"] = p.proj_bias
    if p.norm is not None:
        sd[prefix + "norm.weight"], sd[prefix + "norm.bias"] = p.norm.weight, p.norm.bias
    if p.mlp is not None:
        m = p.mlp
        sd[prefix + "mlp.fc1.weight"], sd[prefix + "mlp.fc2.weight"] = m.fc1_weight, m.fc2_weight
        if m.fc1_bias is not None:
            sd[prefix + "mlp.fc1.bias"] = m.fc1_bias
        if m.fc2_bias is not None:
            sd[prefix + "mlp.fc2.bias"] = m.fc2_bias
    return sd
