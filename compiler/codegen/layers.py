"""The layers every generated model is made of: attention with per-head q/k and v widths (grouped by
width), the MLP, a sub-layer reduced to its bias, the block state-dict writer, and :class:`PrunedModel`,
the base of the generated model classes (it finds the class that reads an ``arch.json``)."""
from __future__ import annotations

from typing import ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import VitshrinkError


class PrunedModel(nn.Module):
    """Base of the generated models (:class:`~vitshrink.codegen.vit.PrunedViT`,
    :class:`~vitshrink.codegen.swin.PrunedSwin`): built from a JSON-serialisable architecture ``arch``
    whose ``format`` names the class (``ARCH_FORMAT``), so :func:`vitshrink.codegen.load` rebuilds any
    of them from ``arch.json`` without the original model class."""

    ARCH_FORMAT: ClassVar[str] = ""
    classes: ClassVar[dict[str, type]] = {}  # arch format -> class, filled as subclasses are defined

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.ARCH_FORMAT:
            PrunedModel.classes[cls.ARCH_FORMAT] = cls

    def __init__(self, arch: dict):
        super().__init__()
        if arch.get("format") != self.ARCH_FORMAT:
            raise VitshrinkError(f"architecture format {arch.get('format')!r} is not {self.ARCH_FORMAT}")
        self.arch = arch

    @staticmethod
    def class_for(arch: dict) -> type:
        """The generated model class that reads ``arch``.

        Raises:
            VitshrinkError: no class reads this ``format`` (named, with the known ones).
        """
        cls = PrunedModel.classes.get(arch.get("format"))
        if cls is None:
            raise VitshrinkError(f"architecture format {arch.get('format')!r} is not one of {', '.join(PrunedModel.classes)}")
        return cls


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
    """Multi-head self-attention with per-head q/k and v widths, on a flat token stream.

    Input and output are [B*N, D] (N tokens per image): linear layers then run as one Gemm with the
    bias fused, the fastest form for ONNX Runtime at batch 1. Projections are laid out as
    [q of all heads | k | v]: one ``qkv`` Linear, or ``q`` and ``kv`` when queries come from fewer
    tokens than keys (``split``; Patch Slimming's query-only blocks). Heads of equal width (a *group*,
    see :func:`head_groups`) run as one batched attention [B, h, N, d].

    ``score``: None, ``"cls"`` or ``"cls_weighted"`` -- also return a token score [B, N - P] read off
    this block's attention probabilities (EViT's class attention, or VTC-LFC's head-weighted form).
    """

    def __init__(self, dim: int, heads: list[list[int]], scale: float, qkv_bias: bool, proj_bias: bool,
                 split: bool = False, score: Optional[str] = None, num_prefix: int = 1):
        super().__init__()
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

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, scores: list, bias: Optional[Tensor] = None):
        # [B, h, Nq, dq] x [B, h, N, dq] x [B, h, N, dv] -> [B, h, Nq, dv]
        logits = (q * self.scale) @ k.transpose(-2, -1)
        if bias is not None and bias.dim() == 3:  # [h, N, N]: the same for every window
            logits = logits + bias
        elif bias is not None:  # [nW, h, N, N]: per window (Swin's shifted windows), images of nW windows
            nw, h, n, _ = bias.shape
            logits = (logits.reshape(-1, nw, h, n, n) + bias).reshape(-1, h, n, n)
        probs = logits.softmax(dim=-1)
        if self.score is not None:
            scores.append(self._score(probs))
        return probs @ v

    def forward(self, x: Tensor, tokens: int, xq: Optional[Tensor] = None, q_tokens: Optional[int] = None,
                bias: Optional[Tensor] = None):
        """x: [B*N, D] (N = ``tokens``); xq: [B*Nq, D] query inputs when ``split`` (default x); bias: a
        constant added to the attention logits, [heads, N, N] or [nW, heads, N, N] (Swin: relative
        position bias plus shifted-window mask, the B*N rows being images of nW windows of N tokens).
        Returns [B*Nq, D], and the token score [B, N - P] when ``score`` is set."""
        nq = tokens if q_tokens is None else q_tokens
        scores: list = []
        if self.split:
            yq, ykv = self.q(x if xq is None else xq), self.kv(x)
            qo, ko, vo, yk = 0, 0, self.sum_qk, ykv
        else:
            y = self.qkv(x)
            yq = yk = y
            qo, ko, vo = 0, self.sum_qk, 2 * self.sum_qk
        if self.uniform and not self.split:
            h, d, _ = self.groups[0]
            q, k, v = y.reshape(-1, tokens, 3 * h, d).transpose(1, 2).split(h, dim=1)
            o = self._attend(q, k, v, scores, bias).transpose(1, 2).reshape(-1, h * d)
        else:
            outs, h0 = [], 0
            for h, dq, dv in self.groups:
                q = yq[:, qo:qo + h * dq].reshape(-1, nq, h, dq).transpose(1, 2)
                k = yk[:, ko:ko + h * dq].reshape(-1, tokens, h, dq).transpose(1, 2)
                v = yk[:, vo:vo + h * dv].reshape(-1, tokens, h, dv).transpose(1, 2)
                hb = None if bias is None else bias[..., h0:h0 + h, :, :]
                outs.append(self._attend(q, k, v, scores, hb).transpose(1, 2).reshape(-1, h * dv))
                qo, ko, vo, h0 = qo + h * dq, ko + h * dq, vo + h * dv, h0 + h
            o = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]
        out = self.proj(o)
        if self.score is None:
            return out
        total = scores[0]
        for s in scores[1:]:
            total = total + s
        return out, total / self.num_heads


class Constant(nn.Module):
    """A sub-layer with nothing left but its output bias (every head or every MLP neuron removed):
    returns ``bias`` [D] (or 0), broadcast by the residual add."""

    def __init__(self, dim: int, bias: bool):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        return self.bias if self.bias is not None else x.new_zeros(())


class Mlp(nn.Module):
    """fc1 [hidden, D] -> exact GELU -> fc2 [D, hidden]."""

    def __init__(self, dim: int, hidden: int, bias1: bool, bias2: bool):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias1)
        self.fc2 = nn.Linear(hidden, dim, bias=bias2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def block_state_dict(b, p: str, split: bool = False) -> dict[str, Tensor]:
    """The weights of one block (:class:`Block` or the Swin block) under the key prefix ``p``: norms,
    ``attn.qkv`` (or ``attn.q`` + ``attn.kv`` when ``split``, Patch Slimming's query-only blocks),
    ``attn.proj``, the MLP -- or the output bias of a sub-layer with nothing else left (:class:`Constant`)."""
    a, m, sd = b.attn, b.mlp, {}
    sd[p + "norm1.weight"], sd[p + "norm1.bias"] = b.norm1.weight, b.norm1.bias
    sd[p + "norm2.weight"], sd[p + "norm2.bias"] = b.norm2.weight, b.norm2.bias
    if a.num_heads:
        if split:
            sd[p + "attn.q.weight"] = a.q_weight
            sd[p + "attn.kv.weight"] = torch.cat([a.k_weight, a.v_weight])
            if a.q_bias is not None:
                sd[p + "attn.q.bias"] = a.q_bias
                sd[p + "attn.kv.bias"] = torch.cat([a.k_bias, a.v_bias])
        else:
            sd[p + "attn.qkv.weight"] = torch.cat([a.q_weight, a.k_weight, a.v_weight])
            if a.q_bias is not None:
                sd[p + "attn.qkv.bias"] = torch.cat([a.q_bias, a.k_bias, a.v_bias])
        sd[p + "attn.proj.weight"] = a.proj_weight
        if a.proj_bias is not None:
            sd[p + "attn.proj.bias"] = a.proj_bias
    elif a.proj_bias is not None:
        sd[p + "attn.bias"] = a.proj_bias
    if m.hidden:
        sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc2.weight"] = m.fc1_weight, m.fc2_weight
        if m.fc1_bias is not None:
            sd[p + "mlp.fc1.bias"] = m.fc1_bias
        if m.fc2_bias is not None:
            sd[p + "mlp.fc2.bias"] = m.fc2_bias
    elif m.fc2_bias is not None:
        sd[p + "mlp.bias"] = m.fc2_bias
    return sd
