"""Codegen: IR -> ``nn.Module`` (:class:`PrunedViT`), and the pruned checkpoint on disk.

:class:`PrunedViT` is built from a JSON-serialisable *architecture* (``arch``: per-block heads with
their q/k and v widths, MLP hidden size, ...) and a state dict. It is vitshrink's own class, so a
pruned model reloads with :func:`load` without timm, the original model class or any patching, and it
is an ordinary module: it can be fine-tuned, scripted or exported.

Checkpoint directory layout (written by :func:`save`):

- ``model.safetensors``: the state dict of :class:`PrunedViT`
- ``arch.json``: ``{"format": "vitshrink.arch/1", ...}`` (:func:`architecture`)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .codegen_tokens import LowFrequencyEnergy, Predictor, TokenSelect, lfe_matrix, rank_keep  # noqa: F401 (re-exported)
from .errors import VitshrinkError
from .ir import ViTIR

ARCH_FORMAT = "vitshrink.arch/1"


# --------------------------------------------------------------------------------------- modules


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


class Block(nn.Module):
    """Pre-norm transformer block on a flat [B*N, D] token stream, with its token operations.

    Token counts are static per block (``n_in`` tokens in, ``n_out`` out). In order: a static drop
    (slice, or gather in the gather form), a dynamic selection placed before the block, then either a
    Patch Slimming query-only update of the first ``n`` tokens (or of gathered positions, scattered
    back, in the gather form) or the ordinary block, with a dynamic selection between attention and
    MLP.
    """

    def __init__(self, dim: int, cfg: dict, num_prefix: int):
        super().__init__()
        self.n_in, self.n_out, self.num_prefix = cfg["n_in"], cfg["n_out"], num_prefix
        self.drop, self.query, sel = cfg.get("drop"), cfg.get("query"), cfg.get("select")
        for name, op in (("drop_index", self.drop), ("query_index", self.query)):
            if op and op.get("index") is not None:
                self.register_buffer(name, torch.tensor(op["index"], dtype=torch.long, device="cpu"), persistent=False)
        n_attn = self.drop["n"] if self.drop else self.n_in
        score = None
        self.select = self.lfe = self.predictor = None
        if sel:
            n_sel = n_attn  # tokens present where the rule runs
            if sel["where"] == "mlp" and sel["score"] != "predictor":
                score = "cls_weighted" if sel["head_weighting"] else "cls"
            if sel["score"] == "cls_attention_lfe":
                self.lfe = LowFrequencyEnergy(n_sel - num_prefix, sel["cutoff"])
            if sel["score"] == "predictor":
                self.predictor = Predictor(dim, sel["predictor"])
            self.select = TokenSelect(n_sel, num_prefix, sel["keep"], sel["fuse"])
            self.where = sel["where"]
        self.norm1 = nn.LayerNorm(dim, eps=cfg["norm1_eps"])
        if cfg["heads"]:
            self.attn = Attention(dim, cfg["heads"], cfg["scale"], cfg["qkv_bias"], cfg["proj_bias"],
                                  split=self.query is not None, score=score, num_prefix=num_prefix)
        else:
            self.attn = Constant(dim, cfg["proj_bias"])
        self.norm2 = nn.LayerNorm(dim, eps=cfg["norm2_eps"])
        if cfg["mlp_hidden"]:
            self.mlp = Mlp(dim, cfg["mlp_hidden"], cfg["fc1_bias"], cfg["fc2_bias"])
        else:
            self.mlp = Constant(dim, cfg["fc2_bias"])

    def _select(self, x: Tensor, scores: Optional[Tensor], ids, fused_id):
        N, P = self.select.tokens, self.num_prefix
        xp = x.reshape(-1, N, x.shape[-1])[:, P:]
        if self.predictor is not None:
            scores = self.predictor(xp)
        if self.lfe is not None:
            scores = scores * self.lfe(xp)
        return self.select(x, scores, ids, fused_id)

    def forward(self, x: Tensor, ids: Optional[Tensor] = None, fused_id: int = 0):
        """x: [B*n_in, D] -> [B*n_out, D]; ``ids`` [B, n] (original token ids, tracing) follow along."""
        N, D = self.n_in, x.shape[-1]
        if self.drop:
            n = self.drop["n"]
            x3 = x.reshape(-1, N, D)
            if self.drop.get("index") is None:
                x = x3[:, :n].reshape(-1, D)
                ids = None if ids is None else ids[:, :n]
            else:
                x = x3.index_select(1, self.drop_index).reshape(-1, D)
                ids = None if ids is None else ids.index_select(1, self.drop_index)
            N = n
        if self.select is not None and self.where == "attn":
            x, ids = self._select(x, None, ids, fused_id)
            N = self.select.tokens_out
        if self.query:
            return self._query_only(x, N, D), ids
        a = self.attn(self.norm1(x), N)
        scores = None
        if isinstance(a, tuple):
            a, scores = a
        x = x + a
        if self.select is not None and self.where == "mlp":
            x, ids = self._select(x, scores, ids, fused_id)
        return x + self.mlp(self.norm2(x)), ids

    def _query_only(self, x: Tensor, N: int, D: int) -> Tensor:
        """Patch Slimming eq. 2: update ``n`` tokens; keys/values from all N tokens."""
        n = self.query["n"]
        x3 = x.reshape(-1, N, D)
        h3 = self.norm1(x).reshape(-1, N, D)
        prefix = self.query.get("index") is None
        take = (lambda t: t[:, :n]) if prefix else (lambda t: t.index_select(1, self.query_index))
        hq = take(h3).reshape(-1, D)
        xq = take(x3).reshape(-1, D)
        a = self.attn(h3.reshape(-1, D), N, xq=hq, q_tokens=n)
        xq = xq + a
        xq = (xq + self.mlp(self.norm2(xq))).reshape(-1, n, D)
        if prefix:
            return torch.cat([xq, x3[:, n:]], dim=1).reshape(-1, D)
        out = x3.clone()
        out[:, self.query_index] = xq  # the plain gather/scatter form (ScatterND in ONNX)
        return out.reshape(-1, D)


class PrunedViT(nn.Module):
    """A ViT/DeiT classifier of arbitrary (pruned) widths and token schedules, built from ``arch``.

    forward: images [B, in_chans, H, W] float32 -> logits [B, num_classes]. With ``trace=True`` it
    returns ``(logits, [ids after each dynamic selection])`` (original token ids, fused tokens
    numbered from N on) -- used to check that kept tokens are identical everywhere -- and keeps
    ``residuals``: per block, ``(source block index, residual stream [B, n_out, D_kept], original
    token ids [B, n_out])``, for token-by-token comparison with the reference. The final norm
    is applied only to the prefix tokens the classifiers read (LayerNorm is per token).
    """

    def __init__(self, arch: dict, trace: bool = False):
        super().__init__()
        if arch.get("format") != ARCH_FORMAT:
            raise VitshrinkError(f"architecture format {arch.get('format')!r} is not {ARCH_FORMAT}")
        self.arch = arch
        self.trace = trace
        D = arch["embed_dim"]
        p = arch["patch_size"]
        P = len(arch["prefix"])
        self.patch_embed = nn.Conv2d(arch["in_chans"], D, kernel_size=p, stride=p, bias=arch["patch_bias"])
        self.num_prefix = P
        self.prefix_tokens = nn.Parameter(torch.zeros(1, P, D)) if P else None
        self.pos_embed = nn.Parameter(torch.zeros(1, arch["num_tokens"], D))
        order = arch.get("token_order")
        if order is not None:
            self.register_buffer("token_order", torch.tensor(order, dtype=torch.long, device="cpu"), persistent=False)
        self.blocks = nn.ModuleList(Block(D, b, P) for b in arch["blocks"])
        self.norm = nn.LayerNorm(D, eps=arch["norm_eps"]) if arch["norm_eps"] is not None else None
        self.pool = arch.get("pool", "token")
        fc_eps = arch.get("fc_norm_eps")
        self.fc_norm = nn.LayerNorm(D, eps=fc_eps) if fc_eps is not None else None
        C = arch["num_classes"]
        self.heads = nn.ModuleList(nn.Linear(D, C, bias=h["bias"]) for h in arch["heads"])
        self.head_tokens = [h["token"] for h in arch["heads"]]
        self.num_read = max(self.head_tokens) + 1

    def forward_features(self, x: Tensor):
        """images [B, C, H, W] -> (normalised prefix tokens [B, num_read, D] -- or, with average
        pooling, the pooled features [B, 1, D] --, traced ids)."""
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        if self.prefix_tokens is not None:
            x = torch.cat([self.prefix_tokens.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        ids = None
        if self.trace:
            ids = torch.arange(self.arch["num_tokens"]).unsqueeze(0).expand(x.shape[0], -1)
            self.residuals = []
        if self.arch.get("token_order") is not None:
            x = x.index_select(1, self.token_order)
            ids = None if ids is None else ids.index_select(1, self.token_order)
        N, D = x.shape[1], x.shape[2]
        traced, fused_id = [], self.arch["num_tokens"]
        x = x.reshape(-1, D)  # the blocks run on a flat [B*N, D] token stream
        for blk, cfg in zip(self.blocks, self.arch["blocks"]):
            x, ids = blk(x, ids, fused_id)
            if blk.select is not None:
                fused_id += int(blk.select.fuse)
                if ids is not None:
                    traced.append(ids)
            N = blk.n_out
            if self.trace:
                self.residuals.append((cfg["source_index"], x.reshape(-1, N, D), ids))
        x = x.reshape(-1, N, D)
        if self.pool == "avg":  # timm global_pool='avg': patch tokens, after the final norm, then fc_norm
            x = x if self.norm is None else self.norm(x)
            x = x[:, self.num_prefix:].mean(1, keepdim=True)
            return (x if self.fc_norm is None else self.fc_norm(x)), traced
        x = x[:, :self.num_read]
        x = x if self.norm is None else self.norm(x)
        return (x if self.fc_norm is None else self.fc_norm(x)), traced  # timm: fc_norm after the pooling

    def forward(self, x: Tensor):
        x, traced = self.forward_features(x)
        logits = self.heads[0](x[:, self.head_tokens[0]])
        for head, t in zip(self.heads[1:], self.head_tokens[1:]):
            logits = logits + head(x[:, t])
        if len(self.heads) > 1:
            logits = logits / len(self.heads)
        return (logits, traced) if self.trace else logits


# --------------------------------------------------------------------------------------- IR -> module


def token_counts(ir: ViTIR) -> list[dict]:
    """Tokens per block of ``ir``: ``in`` (entering), ``keys`` (attention keys/values), ``queries``
    (attention queries = tokens updated), ``mlp`` (tokens through the MLP), ``out``."""
    out = []
    for plan in _token_plan(ir)[1]:
        P = ir.num_prefix
        keys = plan["drop"]["n"] if plan["drop"] else plan["n_in"]
        sel = plan["select"]
        if sel and sel["where"] == "attn":
            keys = P + sel["keep"] + int(sel["fuse"])
        queries = plan["query"]["n"] if plan["query"] else keys
        mlp = P + sel["keep"] + int(sel["fuse"]) if sel and sel["where"] == "mlp" else queries
        out.append({"in": plan["n_in"], "keys": keys, "queries": queries, "mlp": mlp, "out": plan["n_out"]})
    return out


def _token_plan(ir: ViTIR) -> tuple[Optional[list[int]], list[dict]]:
    """Static and dynamic token operations per block, as token counts and constant indices.

    Returns (initial gather of the token sequence or None, per-block {n_in, n_out, drop, query, select}).
    With ``ir.token_order`` (prefix layout) static masks become slices; without it, gathers (drop)
    and gather + scatter (query).
    """
    P, N = ir.num_prefix, ir.num_tokens
    prefix_layout = ir.token_order is not None
    seq: list[int] = list(ir.token_order) if prefix_layout else list(range(N))
    plans = []
    for b in ir.blocks:
        plan: dict = {"n_in": len(seq), "drop": None, "query": None, "select": None}
        if b.tokens is not None and set(b.tokens) != set(seq):
            kept = set(b.tokens)
            idx = [p for p, t in enumerate(seq) if t in kept]
            if prefix_layout:
                assert idx == list(range(len(idx))), "token order does not make the kept set a prefix"
            plan[ir.token_mode] = {"n": len(idx), "index": None if prefix_layout else idx}  # "drop" or "query"
            if ir.token_mode == "drop":
                seq = [seq[p] for p in idx]
        s = b.select
        if s is not None and s.keep < len(seq) - P:
            pr = s.predictor
            plan["select"] = {
                "keep": s.keep, "score": s.score, "where": s.where, "fuse": s.fuse,
                "head_weighting": s.head_weighting, "cutoff": s.cutoff,
                "predictor": None if pr is None else {
                    "type": pr.type, "norm": pr.norm is not None, "eps": pr.norm.eps if pr.norm is not None else 1e-5,
                    "layers": [[int(w.shape[0]), int(w.shape[1]), bias is not None] for w, bias in pr.layers]},
            }
            seq = seq[:P] + [-1] * (s.keep + int(s.fuse))  # ids now depend on the input
        plan["n_out"] = len(seq)
        plans.append(plan)
    return (list(ir.token_order) if prefix_layout else None), plans


def architecture(ir: ViTIR) -> dict:
    """The JSON-serialisable architecture of ``ir`` (widths, token schedule, biases, provenance ids)."""
    order, plans = _token_plan(ir)
    blocks = []
    for b, plan in zip(ir.blocks, plans):
        a, m = b.attn, b.mlp
        blocks.append({
            "source_index": b.source_index,
            "heads": [[qk, v] for qk, v in zip(a.qk_dims, a.v_dims)],
            "scale": a.scale,
            "qkv_bias": a.q_bias is not None,
            "proj_bias": a.proj_bias is not None,
            "mlp_hidden": m.hidden,
            "fc1_bias": m.fc1_bias is not None,
            "fc2_bias": m.fc2_bias is not None,
            "norm1_eps": b.norm1.eps,
            "norm2_eps": b.norm2.eps,
            **plan,
            "ids": {
                "heads": list(a.head_ids),
                "qk": [list(c) for c in a.qk_ids],
                "v": [list(c) for c in a.v_ids],
                "mlp": list(m.hidden_ids),
                "tokens": None if b.tokens is None else list(b.tokens),
            },
        })
    return {
        "format": ARCH_FORMAT,
        "name": ir.name,
        "img_size": list(ir.img_size),
        "patch_size": list(ir.patch_size),
        "in_chans": ir.in_chans,
        "embed_dim": ir.embed_dim,
        "embed_ids": list(ir.embed_ids),
        "patch_bias": ir.patch_bias is not None,
        "prefix": [t.name for t in ir.prefix],
        "num_tokens": ir.num_tokens,
        "num_classes": ir.num_classes,
        "token_mode": ir.token_mode,
        "token_order": order,
        "blocks": blocks,
        "norm_eps": None if ir.norm is None else ir.norm.eps,
        "pool": ir.pool,
        "fc_norm_eps": None if ir.fc_norm is None else ir.fc_norm.eps,
        "heads": [{"name": h.name, "token": h.token, "bias": h.bias is not None} for h in ir.heads],
        "exit_after": ir.exit_after,
    }


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


def state_dict(ir: ViTIR) -> dict[str, Tensor]:
    """The :class:`PrunedViT` state dict holding the weights of ``ir``."""
    D = ir.embed_dim
    _, plans = _token_plan(ir)
    sd: dict[str, Tensor] = {"patch_embed.weight": ir.patch_weight}
    if ir.patch_bias is not None:
        sd["patch_embed.bias"] = ir.patch_bias
    if ir.prefix:
        sd["prefix_tokens"] = torch.stack([t.value for t in ir.prefix]).reshape(1, -1, D)
    sd["pos_embed"] = ir.pos_embed.reshape(1, -1, D)
    for j, (b, plan) in enumerate(zip(ir.blocks, plans)):
        p = f"blocks.{j}."
        sd.update(block_state_dict(b, p, split=bool(plan["query"])))
        if plan["select"] is not None and b.select.predictor is not None:
            pr = b.select.predictor
            if pr.norm is not None:
                sd[p + "predictor.norm.weight"], sd[p + "predictor.norm.bias"] = pr.norm.weight, pr.norm.bias
            for k, (w, bias) in enumerate(pr.layers):
                sd[p + f"predictor.layers.{k}.weight"] = w
                if bias is not None:
                    sd[p + f"predictor.layers.{k}.bias"] = bias
    if ir.norm is not None:
        sd["norm.weight"], sd["norm.bias"] = ir.norm.weight, ir.norm.bias
    if ir.fc_norm is not None:
        sd["fc_norm.weight"], sd["fc_norm.bias"] = ir.fc_norm.weight, ir.fc_norm.bias
    for k, h in enumerate(ir.heads):
        sd[f"heads.{k}.weight"] = h.weight
        if h.bias is not None:
            sd[f"heads.{k}.bias"] = h.bias
    return {k: v.detach().contiguous().float() for k, v in sd.items()}


def build_module(ir: ViTIR, share: bool = False, trace: bool = False) -> PrunedViT:
    """IR -> :class:`PrunedViT` in eval mode.

    Args:
        share: the module's parameters *are* the IR's tensors where their layout allows (no copy;
            training the module then changes the IR). Default: independent copies.
        trace: forward also returns the token ids kept by each dynamic selection.
    Returns:
        :class:`PrunedViT`, or :class:`vitshrink.codegen_swin.PrunedSwin` for a Swin IR.
    """
    if getattr(ir, "family", "vit") == "swin":
        from .codegen_swin import build_swin_module

        return build_swin_module(ir, share=share)
    with torch.device("meta"):  # no throw-away random init: the weights come from the IR (constant
        model = PrunedViT(architecture(ir), trace=trace)  # buffers are made on the CPU explicitly)
    sd = state_dict(ir)
    if not share:
        sd = {k: v.clone() for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()


# --------------------------------------------------------------------------------------- disk


def save(model: nn.Module, directory: str | Path) -> Path:
    """Write ``model`` (:class:`PrunedViT` or :class:`~vitshrink.codegen_swin.PrunedSwin`) as ``arch.json`` +
    ``model.safetensors`` into ``directory`` (created)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "arch.json").write_text(json.dumps(model.arch, indent=1) + "\n")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"),
              metadata={"format": model.arch["format"]})
    return directory


def load(directory: str | Path, arch: Optional[dict] = None) -> PrunedViT:
    """Rebuild a pruned model saved by :func:`save` (or by ``vitshrink compile``: its ``DIR/model``).

    Needs only vitshrink and torch: no timm, no original model class.

    Raises:
        VitshrinkError: the directory lacks ``arch.json`` / ``model.safetensors`` or they disagree.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    if (directory / "model" / "arch.json").is_file():  # a `vitshrink compile` output directory
        directory = directory / "model"
    for f in ("arch.json", "model.safetensors"):
        if not (directory / f).is_file():
            raise VitshrinkError(f"'{directory / f}': no such file (not a vitshrink pruned checkpoint)")
    arch = arch or json.loads((directory / "arch.json").read_text())
    from .codegen_swin import PrunedSwin, is_swin_arch

    model = PrunedSwin(arch) if is_swin_arch(arch) else PrunedViT(arch)
    try:
        model.load_state_dict(load_file(str(directory / "model.safetensors")), strict=True)
    except RuntimeError as e:
        raise VitshrinkError(f"'{directory}': weights do not match arch.json ({str(e).splitlines()[0]})") from e
    return model.eval()
