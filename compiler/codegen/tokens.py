"""Codegen for token operations: VTC-LFC's low-frequency energy, learned token scorers, the
deterministic top-k (:func:`rank_keep`) and the token selection module (:class:`TokenSelect`), used by
the blocks of :class:`vitshrink.codegen.vit.PrunedViT`."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def lfe_matrix(length: int, cutoff: float) -> torch.Tensor:
    """VTC-LFC's low-pass filter over ``length`` tokens as one complex [L, L] matrix (float64).

    ``IDFT . diag(w) . DFT`` with ``w_k = 1 - exp(-(k - m0)^2 / (2 d0))``, ``m0 = (L - 1) / 2``,
    ``d0 = (L * cutoff / 2)^2`` (the authors' Gaussian; it suppresses the highest frequencies at the
    centre of the unshifted spectrum). Applying it along the token axis equals their FFT, filter,
    inverse FFT.
    """
    n = torch.arange(length, dtype=torch.float64, device="cpu")  # constants: never on the meta device
    dft = torch.exp(-2j * torch.pi * torch.outer(n, n) / length)
    m0, d0 = (length - 1) / 2.0, (length * cutoff / 2.0) ** 2
    w = 1.0 - torch.exp(-((n - m0) ** 2) / (2.0 * d0))
    return (dft.conj() / length) @ (w.to(torch.complex128)[:, None] * dft)


class LowFrequencyEnergy(nn.Module):
    """VTC-LFC eq. 6: per token, the energy of its low-pass-filtered features, normalised.

    xp [B, L, D] (patch tokens in sequence order) -> [B, L]: ``sum_c |(M xp)[j, c]| / mean_j sum_c |xp[j, c]|``
    with M = :func:`lfe_matrix` applied as two real MatMuls (Re, Im) -- no FFT in the graph.
    """

    def __init__(self, length: int, cutoff: float):
        super().__init__()
        m = lfe_matrix(length, cutoff)
        self.register_buffer("re", m.real.float().contiguous(), persistent=False)
        self.register_buffer("im", m.imag.float().contiguous(), persistent=False)

    def forward(self, xp: Tensor) -> Tensor:
        yr, yi = self.re @ xp, self.im @ xp
        energy = torch.sqrt(yr * yr + yi * yi).sum(-1)
        return energy / xp.abs().sum(-1).mean(-1, keepdim=True)


class Predictor(nn.Module):
    """A learned token scorer (``dynamicvit`` or ``mlp``, see :class:`vitshrink.spec.resolved.PredictorSetting`):
    patch tokens [B, L, D] -> scores [B, L]."""

    def __init__(self, dim: int, cfg: dict):
        super().__init__()
        self.type = cfg["type"]
        self.norm = nn.LayerNorm(dim, eps=cfg["eps"]) if cfg["norm"] else None
        self.layers = nn.ModuleList(nn.Linear(i, o, bias=b) for o, i, b in cfg["layers"])

    def forward(self, xp: Tensor) -> Tensor:
        h = self.norm(xp) if self.norm is not None else xp
        if self.type == "dynamicvit":
            h = F.gelu(self.layers[0](h))
            half = h.shape[-1] // 2
            glob = h[..., half:].mean(1, keepdim=True).expand(-1, h.shape[1], -1)
            h = torch.cat([h[..., :half], glob], dim=-1)
            h = F.gelu(self.layers[1](h))
            h = F.gelu(self.layers[2](h))
            return torch.log_softmax(self.layers[3](h), dim=-1)[..., 0]
        for j, layer in enumerate(self.layers):
            h = layer(h)
            if j + 1 < len(self.layers):
                h = F.gelu(h)
        return h[..., 0]


def rank_keep(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Which ``k`` of L tokens to keep, deterministically and identically in torch and ONNX Runtime.

    ``rank_j = #{l : s_l > s_j} + #{l < j : s_l = s_j}`` (ties go to the lower position), keep
    ``rank < k``; the kept positions are then read in ascending order with one TopK over unique keys.
    torch.topk breaks ties arbitrarily while ONNX TopK prefers the lower index, so a plain top-k on
    tied scores (flat image regions give identical patches) would differ between the two.

    Args:
        scores: [B, L] float.
    Returns:
        (keep [B, L] bool, idx [B, k] int64 ascending positions of the kept tokens).
    """
    L = scores.shape[-1]
    pos = torch.arange(L, device=scores.device)
    before = pos.unsqueeze(0) < pos.unsqueeze(1)  # [j, l]: l < j
    s_j, s_l = scores.unsqueeze(-1), scores.unsqueeze(-2)
    rank = ((s_l > s_j) | ((s_l == s_j) & before)).sum(-1)
    keep = rank < k
    key = keep.to(scores.dtype) * (L - pos).to(scores.dtype)  # kept: L - j (unique, > 0); pruned: 0
    return keep, key.topk(k, dim=-1).indices


class TokenSelect(nn.Module):
    """Keep the prefix tokens and ``keep`` of the patch tokens by score; optionally fuse the rest.

    x [B, N, D] -> [B, P + keep + fuse, D]. Kept tokens stay in their relative order; the fused token
    (EViT: the pruned tokens summed with their scores as weights) is appended. One Gather on the
    tokens of all images as rows (a [B*N, D] view), no Scatter.
    """

    def __init__(self, tokens: int, num_prefix: int, keep: int, fuse: bool):
        super().__init__()
        self.tokens, self.num_prefix, self.keep, self.fuse = tokens, num_prefix, keep, fuse
        self.register_buffer("prefix_pos", torch.arange(num_prefix, device="cpu").unsqueeze(0), persistent=False)

    @property
    def tokens_out(self) -> int:
        return self.num_prefix + self.keep + int(self.fuse)

    def forward(self, x: Tensor, scores: Tensor, ids: Optional[Tensor] = None, fused_id: int = 0):
        N, P, D = self.tokens, self.num_prefix, x.shape[-1]
        keep, idx = rank_keep(scores, self.keep)
        B = x.shape[0]
        rows = torch.cat([self.prefix_pos.expand(B, -1), idx + P], dim=1)  # [B, P + keep]
        flat = (rows + (torch.arange(B, device=x.device) * N).unsqueeze(1)).reshape(-1)
        y = x.reshape(-1, D).index_select(0, flat).reshape(B, P + self.keep, D)
        if ids is not None:
            ids = ids.gather(1, rows)
        if self.fuse:
            w = scores * (~keep).to(scores.dtype)  # [B, L]
            fused = w.unsqueeze(1) @ x[:, P:]  # [B, 1, D]
            y = torch.cat([y, fused], dim=1)
            if ids is not None:
                ids = torch.cat([ids, torch.full_like(ids[:, :1], fused_id)], dim=1)
        return y, ids
