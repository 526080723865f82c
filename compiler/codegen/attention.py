"""Attention with per-head q/k and v widths, on a batched token stream, through fused kernels.

Heads of equal widths (a *group*, :func:`head_groups`) run as one call of
``torch.nn.functional.scaled_dot_product_attention`` (SDPA) with the model's own softmax scale: on a
GPU that is FlashAttention / memory-efficient / cuDNN attention, as timm's own modules use it; a
bias on the logits (Swin's relative position bias and shifted-window mask) goes in as the additive
``attn_mask``. Which kernel runs depends on the group's widths and the mask (``docs/gpu.md``): flash needs equal q/k and v widths (a multiple of 8, at most 256) and no float mask; the
layout pass :func:`vitshrink.passes.layout.bucket_heads` makes irregular heads such groups.

Two blocks read the attention probabilities themselves:

- EViT's class attention (``score="cls"``): only the class token's row is needed -- one extra
  [1, N] product per head beside the fused call;
- VTC-LFC's head-weighted score (``score="cls_weighted"``, eq. 8) needs every patch's attention to the
  class token and the mean attention every token receives, i.e. each row's softmax normaliser and
  every column: the whole [N, N] matrix, so such a block computes ``softmax(q k^T) v`` explicitly.

Rotary position embedding (EVA-02, DINOv3, ``vit_*_rope_*``) rotates q and k of each group after the
projection, with constant tables per group (:mod:`.rope`).

``fused=False`` (:func:`attention_form`) is the explicit form everywhere: the ONNX export uses
whichever form measures faster on the CPU engines (:mod:`vitshrink.export`).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .rope import rotate


def head_groups(heads: list[list[int]]) -> list[tuple[int, int, int]]:
    """Runs of consecutive heads with equal widths: ``[(num_heads, qk_dim, v_dim), ...]``."""
    groups: list[list[int]] = []
    for qk, v in heads:
        if groups and groups[-1][1] == qk and groups[-1][2] == v:
            groups[-1][0] += 1
        else:
            groups.append([1, qk, v])
    return [tuple(g) for g in groups]


class Attention(nn.Module):
    """Multi-head self-attention with per-head q/k and v widths, on a batched token stream.

    Input and output are [B, N, D] (N tokens per image; Swin: [B*nW, N, C], the windows of the images).
    That is the form the CPU engines and their quantizers expect: OpenVINO fuses LayerNorm with the
    INT8 quantizer that follows it only on [B, N, D], and a flat [B*N, D] stream measured no faster in
    fp32 (``python benchmarks/precision.py``). Projections are laid out as
    [q of all heads | k | v]: one ``qkv`` Linear, or ``q`` and ``kv`` when queries come from fewer
    tokens than keys (``split``; Patch Slimming's query-only blocks). Heads of equal width (a *group*,
    see :func:`head_groups`) run as one batched attention [B, h, N, d]: one SDPA call.

    ``score``: None, ``"cls"`` or ``"cls_weighted"`` -- also return a token score [B, N - P] read off
    this block's attention probabilities (EViT's class attention, or VTC-LFC's head-weighted form).
    ``fused``: attention through SDPA (default) or written out as two matmuls and a softmax.
    """

    def __init__(self, dim: int, heads: list[list[int]], scale: float, qkv_bias: bool, proj_bias: bool,
                 split: bool = False, score: Optional[str] = None, num_prefix: int = 1, rope: Optional[dict] = None,
                 cosine: bool = False, talking: Optional[dict] = None, metric: Optional[dict] = None):
        super().__init__()
        # token merging (ToMe): also return the keys summed over the heads [B, N, dm] -- read off the keys when every
        # head's first dm q/k channels are the original ones ("keys"), else one Linear computing the same sum
        self.metric = None if metric is None else metric["from"]
        self.metric_dim = None if metric is None else metric["dim"]
        self.metric_proj = nn.Linear(dim, metric["dim"], bias=qkv_bias) if metric and metric["from"] == "linear" else None
        self.groups = head_groups(heads)
        self.num_heads = len(heads)
        self.scale = scale
        self.sum_qk = sum(qk for qk, _ in heads)
        self.sum_v = sum(v for _, v in heads)
        self.split = split
        if split:
            self.q = nn.Linear(dim, self.sum_qk, bias=qkv_bias)
            self.kv = nn.Linear(dim, self.sum_qk + self.sum_v, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(dim, 2 * self.sum_qk + self.sum_v, bias=qkv_bias)
        self.proj = nn.Linear(self.sum_v, dim, bias=proj_bias)
        self.uniform = len(self.groups) == 1 and self.groups[0][1] == self.groups[0][2]
        self.score = score
        self.num_prefix = num_prefix
        self.fused = True
        self.rope_skip = None if rope is None else rope["skip"]
        if talking:  # CaiT: the heads' logits and probabilities mixed across heads (one explicit product)
            H = self.num_heads
            self.talk_l = nn.Linear(H, H, bias=talking["l_bias"])
            self.talk_w = nn.Linear(H, H, bias=talking["w_bias"])
        else:
            self.talk_l = self.talk_w = None
        if cosine:  # Swin V2: cos(q, k) * logit_scale[h], i.e. unit q scaled per head, unit k, softmax scale 1
            self.logit_scale = nn.Parameter(torch.zeros(self.num_heads))
            self.scale = 1.0
        else:
            self.logit_scale = None
        for g, (h, dq, _) in enumerate(self.groups if rope else []):  # RoPE tables per group (.rope)
            self.register_buffer(f"rope_sin_{g}", torch.zeros(h, rope["tokens"], dq))
            self.register_buffer(f"rope_cos_{g}", torch.zeros(h, rope["tokens"], dq))

    @staticmethod
    def _mix(lin: nn.Linear, a: Tensor) -> Tensor:
        """Mix the heads of a [B, H, Nq, N] map with ``lin`` ([H, H] + bias): one MatMul over a [B, H, Nq*N]
        view, no transposes (timm permutes to [B, Nq, N, H] and back)."""
        B, H, nq, n = a.shape
        y = torch.matmul(lin.weight, a.reshape(B, H, nq * n))
        if lin.bias is not None:
            y = y + lin.bias.reshape(H, 1)
        return y.reshape(B, H, nq, n)

    def _talking(self, yq: Tensor, yk: Tensor, offsets: tuple[int, int, int], nq: int, tokens: int) -> Tensor:
        """Talking-heads attention: every group's logits [B, h, Nq, N] joined over the heads, mixed by
        ``talk_l``, softmax, mixed by ``talk_w``; each group's values read their heads' mixed maps."""
        qo, ko, vo = offsets
        logits, vs = [], []
        for h, dq, dv in self.groups:
            q = yq[..., qo:qo + h * dq].reshape(-1, nq, h, dq).transpose(1, 2)
            k = yk[..., ko:ko + h * dq].reshape(-1, tokens, h, dq).transpose(1, 2)
            vs.append(yk[..., vo:vo + h * dv].reshape(-1, tokens, h, dv).transpose(1, 2))
            logits.append((q * self.scale) @ k.transpose(-2, -1))
            qo, ko, vo = qo + h * dq, ko + h * dq, vo + h * dv
        a = torch.cat(logits, dim=1) if len(logits) > 1 else logits[0]
        a = self._mix(self.talk_l, a).softmax(dim=-1)
        a = self._mix(self.talk_w, a)
        outs, h0 = [], 0
        for (h, _, dv), v in zip(self.groups, vs):
            outs.append((a[:, h0:h0 + h] @ v).transpose(1, 2).reshape(-1, nq, h * dv))
            h0 += h
        return torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]

    def _cosine(self, q: Tensor, k: Tensor, h0: int) -> tuple[Tensor, Tensor]:
        """Swin V2's cosine attention on q and k [B, h, N, d] of the heads from ``h0``: ``q / |q| *
        logit_scale`` and ``k / |k|`` (then a plain dot product)."""
        if self.logit_scale is None:
            return q, k
        ls = self.logit_scale[h0:h0 + q.shape[1]].reshape(1, -1, 1, 1)
        return F.normalize(q, dim=-1) * ls, F.normalize(k, dim=-1)

    def _rope(self, q: Tensor, k: Tensor, g: int) -> tuple[Tensor, Tensor]:
        """Rotary position embedding of group ``g`` on q and k [B, h, N, d] (paired channels)."""
        if self.rope_skip is None:
            return q, k
        sin, cos = getattr(self, f"rope_sin_{g}"), getattr(self, f"rope_cos_{g}")
        return rotate(q, sin, cos, self.rope_skip), rotate(k, sin, cos, self.rope_skip)

    def _score(self, probs: Tensor) -> Tensor:
        """Sum over this group's heads of the per-head token score; probs [B, h, Nq, N] -> [B, N - P]."""
        P = self.num_prefix
        cls_row = probs[:, :, 0, P:]
        if self.score == "cls":
            return cls_row.sum(1)
        w = probs[:, :, P:, 0].mean(-1, keepdim=True)  # patches' attention to the class token, per head
        c = probs[:, :, 0, 0].unsqueeze(-1)  # class token's attention to itself, per head
        col = probs[:, :, P:, P:].mean(2)  # mean attention each token receives from the patches
        return (w * cls_row).sum(1) + (c * col).sum(1)

    def _explicit(self, q: Tensor, k: Tensor, v: Tensor, scores: list, bias: Optional[Tensor],
                  key_bias: Optional[Tensor] = None) -> Tensor:
        """``softmax(q k^T * scale + bias) v`` written out (the probabilities exist: scores read them)."""
        logits = (q * self.scale) @ k.transpose(-2, -1)
        if key_bias is not None:  # [B, 1, 1, N]: ToMe's proportional attention, log(size) of every key
            logits = logits + key_bias
        if bias is not None and bias.dim() == 3:  # [h, N, N]: the same for every window
            logits = logits + bias
        elif bias is not None:  # [nW, h, N, N]: per window (Swin's shifted windows), images of nW windows
            nw, h, n, _ = bias.shape
            logits = (logits.reshape(-1, nw, h, n, n) + bias).reshape(-1, h, n, n)
        probs = logits.softmax(dim=-1)
        if self.score is not None:
            scores.append(self._score(probs))
        return probs @ v

    def _fused(self, q: Tensor, k: Tensor, v: Tensor, scores: list, bias: Optional[Tensor],
               key_bias: Optional[Tensor] = None) -> Tensor:
        """The same through SDPA; EViT's class row as one [1, N] product per head beside it."""
        if key_bias is not None:  # proportional attention: token rules and a logit bias are never combined
            return F.scaled_dot_product_attention(q, k, v, attn_mask=key_bias, scale=self.scale)
        if self.score == "cls":  # no bias: token rules are for ViTs
            row = ((q[:, :, :1] * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            scores.append(row[:, :, 0, self.num_prefix:].sum(1))
        if bias is not None and bias.dim() == 4:  # per window: the windows of an image join the head axis
            nw, h, n, _ = bias.shape
            dv = v.shape[-1]
            q, k, v = (t.reshape(-1, nw * h, t.shape[-2], t.shape[-1]) for t in (q, k, v))  # [B, nW*h, n, d]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.reshape(nw * h, n, n), scale=self.scale)
            return out.reshape(-1, h, n, dv)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, scores: list, bias: Optional[Tensor] = None,
                key_bias: Optional[Tensor] = None) -> Tensor:
        # [B, h, Nq, dq] x [B, h, N, dq] x [B, h, N, dv] -> [B, h, Nq, dv]
        if self.fused and self.score != "cls_weighted":
            return self._fused(q, k, v, scores, bias, key_bias)
        return self._explicit(q, k, v, scores, bias, key_bias)

    def forward(self, x: Tensor, tokens: int, xq: Optional[Tensor] = None, q_tokens: Optional[int] = None,
                bias: Optional[Tensor] = None, key_bias: Optional[Tensor] = None):
        """x: [B, N, D] (N = ``tokens``); xq: [B, Nq, D] query inputs when ``split`` (default x); bias: a
        constant added to the attention logits, [heads, N, N] or [nW, heads, N, N] (Swin: relative
        position bias plus shifted-window mask, the B rows being images of nW windows of N tokens);
        key_bias: [B, N] added to every query's logit of each key (ToMe's proportional attention, log size).
        Returns [B, Nq, D], and the token score [B, N - P] when ``score`` is set, or the merging metric
        [B, N, dm] (keys summed over heads) when ``metric`` is set."""
        nq = tokens if q_tokens is None else q_tokens
        scores: list = []
        keys: list = []
        if key_bias is not None:
            key_bias = key_bias[:, None, None, :]
        if self.split:
            yq, ykv = self.q(x if xq is None else xq), self.kv(x)
            qo, ko, vo, yk = 0, 0, self.sum_qk, ykv
        else:
            y = self.qkv(x)
            yq = yk = y
            qo, ko, vo = 0, self.sum_qk, 2 * self.sum_qk
        if self.talk_l is not None:
            o = self._talking(yq, yk, (qo, ko, vo), nq, tokens)
        elif self.uniform and not self.split:
            h, d, _ = self.groups[0]
            # timm's own form ([B, N, 3, h, d] -> [3, B, h, N, d], unbound on the outer axis): OpenVINO takes
            # the three views in place; a split of [B, 3h, N, d] on axis 1 ran as a reference Split (a copy)
            q, k, v = y.reshape(-1, tokens, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
            q, k = self._cosine(*self._rope(q, k, 0), 0)
            if self.metric == "keys":
                keys.append(k[..., :self.metric_dim].sum(1))
            o = self._attend(q, k, v, scores, bias, key_bias).transpose(1, 2).reshape(-1, nq, h * d)
        else:
            outs, h0 = [], 0
            for g, (h, dq, dv) in enumerate(self.groups):
                q = yq[..., qo:qo + h * dq].reshape(-1, nq, h, dq).transpose(1, 2)
                k = yk[..., ko:ko + h * dq].reshape(-1, tokens, h, dq).transpose(1, 2)
                q, k = self._cosine(*self._rope(q, k, g), h0)
                v = yk[..., vo:vo + h * dv].reshape(-1, tokens, h, dv).transpose(1, 2)
                hb = None if bias is None else bias[..., h0:h0 + h, :, :]
                if self.metric == "keys":
                    keys.append(k[..., :self.metric_dim].sum(1))
                outs.append(self._attend(q, k, v, scores, hb, key_bias).transpose(1, 2).reshape(-1, nq, h * dv))
                qo, ko, vo, h0 = qo + h * dq, ko + h * dq, vo + h * dv, h0 + h
            o = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]
        out = self.proj(o)
        if self.metric is not None:
            if self.metric_proj is not None:
                return out, self.metric_proj(x)
            metric = keys[0]
            for k in keys[1:]:
                metric = metric + k
            return out, metric
        if self.score is None:
            return out
        total = scores[0]
        for s in scores[1:]:
            total = total + s
        return out, total / self.num_heads


@contextmanager
def attention_form(model: nn.Module, fused: bool) -> Iterator[nn.Module]:
    """Within the block, every :class:`Attention` of ``model`` runs fused (SDPA) or explicit
    (``fused=False``: two matmuls and a softmax); the previous forms come back afterwards."""
    mods = [m for m in model.modules() if isinstance(m, Attention)]
    before = [m.fused for m in mods]
    for m in mods:
        m.fused = fused
    try:
        yield model
    finally:
        for m, f in zip(mods, before):
            m.fused = f
