"""Codegen for token operations: VTC-LFC's low-frequency energy, learned token scorers, the
deterministic top-k (:func:`rank_keep`) and the token selection module (:class:`TokenSelect`), used by
the blocks of :class:`vitshrink.codegen.vit.PrunedViT`."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ir.nodes import PAD


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


def ranked(scores: Tensor, L: int) -> Tensor:
    """Positions [B, L] of ``scores`` [B, L] (``L`` given: a constant K in the graph, TensorRT's rule) from the largest down, ties to the lower position, the same in
    PyTorch and ONNX: ``torch.sort(stable=True)`` eagerly, one TopK in the exported graph (ONNX TopK breaks ties
    by the lower index: its operator spec; ORT, OpenVINO and the native runner verified on exact ties). An
    O(L log L) sort where :func:`rank_keep` compares all L^2 pairs: DeiT-Tiny with ToMe r=14 1.5% faster at batch 1,
    2.4% at batch 8 (ORT, 2 threads, AVX2 EPYC, interleaved)."""
    if torch.onnx.is_in_onnx_export():
        return scores.topk(L, dim=-1).indices
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices


def ascending(idx: Tensor, k: int) -> Tensor:
    """Distinct integers [B, k] in ascending order (a TopK of the negated values: no ties to break; none for k <= 1,
    where a TopK of K = 0 trips ONNX shape inference)."""
    return idx if k <= 1 else -((-idx).topk(k, dim=-1).values)


def gather_rows(x: Tensor, idx: Tensor) -> Tensor:
    """``x[b, idx[b]]`` for every image: x [B, L, *F], idx [B, k] -> [B, k, *F]; one Gather over the rows of
    all images (a [B*L, *F] view), no GatherElements."""
    B, L = x.shape[0], x.shape[1]
    flat = (idx + (torch.arange(B, device=x.device) * L).unsqueeze(1)).reshape(-1)
    return x.reshape(B * L, *x.shape[2:]).index_select(0, flat).reshape(B, idx.shape[1], *x.shape[2:])


class TokenMerge(nn.Module):
    """ToMe's bipartite soft matching (Bolya et al. ICLR 2023, sec. 3) with ``r`` merges, written with the ops
    every engine runs: Gather, MatMul, ReduceMax / ArgMax (the first maximum), TopK (ties to the lower index), a one-hot
    assignment matrix (Equal + Cast) and a MatMul in place of ``scatter_reduce`` (no ScatterND/Elements).

    x [B, n, D], size [B, n] (tokens each stands for), metric [B, n, dm] (keys summed over heads) ->
    x [B, n - r, D] = [prefix tokens, unmerged A tokens, B tokens], size likewise. Set A: the even positions
    after the ``num_prefix`` prefix tokens, set B: the odd ones. Each A token's partner is its most similar
    B token (cosine; ties to the lower B position: ``max`` / ArgMax return the first maximum); the ``r`` A tokens
    of highest similarity (ties to the lower A position, :func:`ranked`) merge:
    ``x_b = (x_b s_b + sum x_a s_a) / (s_b + sum s_a)``.
    """

    def __init__(self, tokens: int, num_prefix: int, r: int):
        super().__init__()
        self.tokens, self.num_prefix, self.r = tokens, num_prefix, r
        a = [p for p in range(num_prefix, tokens) if p % 2 == 0]
        b = [p for p in range(num_prefix, tokens) if p % 2 == 1]
        self.na, self.nb = len(a), len(b)
        self.register_buffer("a_pos", torch.tensor(a, dtype=torch.long, device="cpu"), persistent=False)
        self.register_buffer("b_pos", torch.tensor(b, dtype=torch.long, device="cpu"), persistent=False)

    @property
    def tokens_out(self) -> int:
        return self.tokens - self.r

    def forward(self, x: Tensor, size: Tensor, metric: Tensor, ids: Optional[Tensor] = None):
        """Returns (x, size, ids, merges): ``merges`` [B, r, 2] the (source, destination) original token ids of
        every merge in A order when ``ids`` [B, n] is given (tracing), else None."""
        P, r, na = self.num_prefix, self.r, self.na
        m = metric / metric.norm(dim=-1, keepdim=True)
        scores = m.index_select(1, self.a_pos) @ m.index_select(1, self.b_pos).transpose(-2, -1)  # [B, na, nb]
        best, partner = scores.max(dim=-1)  # [B, na]: the first B position holding the maximum, in torch and ONNX
        order = ranked(best, na)
        src, unm = ascending(order[:, :r], r), ascending(order[:, r:], na - r)  # the r best A tokens, and the rest (A positions)
        dst = partner.gather(1, src)  # [B, r] B positions
        xa, xb = x.index_select(1, self.a_pos), x.index_select(1, self.b_pos)
        sa, sb = size.index_select(1, self.a_pos), size.index_select(1, self.b_pos)
        assign = (dst.unsqueeze(1) == torch.arange(self.nb, device=x.device).unsqueeze(1)).to(x.dtype)  # [B, nb, r]
        ss = gather_rows(sa, src)  # [B, r]
        total = sb + (assign @ ss.unsqueeze(-1)).squeeze(-1)  # [B, nb]
        xb = (xb * sb.unsqueeze(-1) + assign @ (gather_rows(xa, src) * ss.unsqueeze(-1))) / total.unsqueeze(-1)
        # every A token merging (na == r) leaves no rows to gather: an empty Gather's Reshape to 0 rows reads as
        # "copy the input's dim" in ONNX (Reshape's allowzero=0), so nothing is gathered then
        x = torch.cat([x[:, :P], *([gather_rows(xa, unm)] if na > r else []), xb], dim=1)
        size = torch.cat([size[:, :P], *([gather_rows(sa, unm)] if na > r else []), total], dim=1)
        merges = None
        if ids is not None:
            ia, ib = ids.index_select(1, self.a_pos), ids.index_select(1, self.b_pos)
            merges = torch.stack([gather_rows(ia, src), gather_rows(ib, dst)], dim=-1)
            ids = torch.cat([ids[:, :P], *([gather_rows(ia, unm)] if na > r else []), ib], dim=1)
        return x, size, ids, merges


def metric_config(a) -> dict:
    """How a merging block computes ToMe's metric, the keys summed over the kept heads channel by channel in
    original q/k coordinates (``dim``: one past the largest kept q/k channel): ``{"from": "keys"}`` -- read off
    the attention's own keys -- when every head's first ``dim`` q/k channels are the original ones in order
    (padding after them), else ``{"from": "linear"}``, one Linear whose rows sum the kept heads' key rows of
    each channel (:func:`metric_weights`)."""
    real = [[c for c in ids if c != PAD] for ids in a.qk_ids]
    dim = 1 + max(max(r) for r in real if r)
    keys = all(list(ids[:dim]) == list(range(dim)) and all(c == PAD for c in ids[dim:]) for ids in a.qk_ids)
    return {"from": "keys" if keys else "linear", "dim": dim}


def metric_weights(a, dim: int) -> tuple[Tensor, Optional[Tensor]]:
    """The ``linear`` metric of :func:`metric_config`: weight [dim, D] and bias [dim] with row c the sum of the
    key rows (and biases) of q/k channel c over the kept heads (removed channels: nothing)."""
    w = a.k_weight.new_zeros(dim, a.k_weight.shape[1])
    bias = None if a.k_bias is None else a.k_bias.new_zeros(dim)
    off = 0
    for ids in a.qk_ids:
        for j, c in enumerate(ids):
            if c != PAD:
                w[c] += a.k_weight[off + j]
                if bias is not None:
                    bias[c] += a.k_bias[off + j]
        off += len(ids)
    return w, bias
