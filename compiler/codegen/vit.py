"""Codegen for ViT/DeiT: :class:`~vitshrink.ir.vit.ViTIR` -> :class:`PrunedViT`.

:class:`PrunedViT` is built from a JSON-serialisable *architecture* (``arch``: per-block heads with
their q/k and v widths, MLP hidden size, token schedule, ...) and a state dict. It is vitshrink's own
class, so a pruned model reloads with :func:`vitshrink.codegen.load` without timm, the original model
class or any patching, and it is an ordinary module: it can be fine-tuned, scripted or exported.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import Tensor, nn

from ..errors import VitshrinkError
from ..ir.vit import ViTIR
from ..ir.nodes import replace
from .attention import head_groups
from .block import Block
from .layers import PrunedModel, block_state_dict, mlp_config
from .pool import AttentionPool, pool_architecture, pool_state_dict
from .rope import paired, rope_config, rope_state_dict
from .tokens import metric_config, metric_weights

ARCH_FORMAT = "vitshrink.arch/1"


class PrunedViT(PrunedModel):
    """A ViT/DeiT classifier of arbitrary (pruned) widths and token schedules, built from ``arch``.

    forward: images [B, in_chans, H, W] float32 -> logits [B, num_classes] (a feature extractor: the
    pooled features [B, feature_dim], removed embedding channels as zeros). With ``trace=True`` it
    returns ``(logits, [ids after each dynamic selection])`` (original token ids, fused tokens
    numbered from N on) -- used to check that kept tokens are identical everywhere -- and keeps
    ``residuals``: per block, ``(source block index, residual stream [B, n_out, D_kept], original
    token ids [B, n_out])``, for token-by-token comparison with the reference. The final norm
    is applied only to the prefix tokens the classifiers read (LayerNorm is per token).
    """

    ARCH_FORMAT = ARCH_FORMAT

    def __init__(self, arch: dict, trace: bool = False, stem: Optional[nn.Module] = None):
        super().__init__(arch)
        self.trace = trace
        D = arch["embed_dim"]
        p = arch["patch_size"]
        P = len(arch["prefix"])
        if (arch.get("stem") is None) != (stem is None):
            raise VitshrinkError("arch.json and the model disagree on the convolutional stem (hybrid ViT)")
        self.stem = stem  # an opaque CNN trunk before the patch projection (timm HybridEmbed), or None
        in_chans = arch["stem"]["out_chans"] if stem is not None else arch["in_chans"]
        self.patch_embed = nn.Conv2d(in_chans, D, kernel_size=p, stride=p, bias=arch["patch_bias"])
        self.num_prefix = P
        self.prefix_tokens = nn.Parameter(torch.zeros(1, P, D)) if P else None
        self.pos_embed = nn.Parameter(torch.zeros(1, arch.get("pos_tokens", arch["num_tokens"]), D))
        self.late_prefix = arch.get("prefix_at") is not None  # CaiT: prefix tokens join after some blocks
        pre_eps = arch.get("norm_pre_eps")
        self.norm_pre = nn.LayerNorm(D, eps=pre_eps) if pre_eps is not None else None
        order = arch.get("token_order")
        if order is not None:
            self.register_buffer("token_order", torch.tensor(order, dtype=torch.long, device="cpu"), persistent=False)
        self.blocks = nn.ModuleList(Block(D, b, P) for b in arch["blocks"])
        self.norm = nn.LayerNorm(D, eps=arch["norm_eps"]) if arch["norm_eps"] is not None else None
        self.pool = arch.get("pool", "token")
        fc_eps = arch.get("fc_norm_eps")
        self.fc_norm = nn.LayerNorm(D, eps=fc_eps) if fc_eps is not None else None
        pool_cfg = arch.get("attn_pool")
        self.attn_pool = AttentionPool(pool_cfg, D) if pool_cfg is not None else None
        self.attn_pool_prefix = bool(pool_cfg and pool_cfg["include_prefix"])
        C = arch["num_classes"]
        width = pool_cfg["out_features"] if pool_cfg is not None else D
        self.heads = nn.ModuleList(nn.Linear(width, C, bias=h["bias"]) for h in arch["heads"])
        self.head_tokens = [h["token"] for h in arch["heads"]] or [0]
        self.num_read = max(self.head_tokens) + 1
        scatter = arch.get("feature_index")  # a feature extractor with pruned embedding channels
        if scatter is not None:
            self.register_buffer("feature_index", torch.tensor(scatter, dtype=torch.long, device="cpu"), persistent=False)
        self.scatter = scatter is not None

    def train(self, mode: bool = True):
        """As :meth:`nn.Module.train`; a stem loaded from ``stem.pt2`` (a ``torch.export`` program, which
        has no train mode) is left as it is."""
        stem, self.stem = self.stem, None
        try:
            super().train(mode)
        finally:
            self.stem = stem
        if stem is not None:
            try:
                stem.train(mode)
            except NotImplementedError:  # an exported program runs as exported (eval)
                pass
        return self

    def forward_features(self, x: Tensor):
        """images [B, C, H, W] -> (normalised prefix tokens [B, num_read, D] -- or, with average
        pooling, the pooled features [B, 1, D] --, traced ids)."""
        if self.stem is not None:
            x = self.stem(x)
            x = x[-1] if isinstance(x, (list, tuple)) else x
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        if self.prefix_tokens is not None and not self.late_prefix:
            x = torch.cat([self.prefix_tokens.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        if self.norm_pre is not None:
            x = self.norm_pre(x)
        ids = None
        if self.trace:
            ids = torch.arange(self.num_prefix if self.late_prefix else 0, self.arch["num_tokens"])
            ids = ids.unsqueeze(0).expand(x.shape[0], -1)
            self.residuals = []
        if self.arch.get("token_order") is not None:
            x = x.index_select(1, self.token_order)
            ids = None if ids is None else ids.index_select(1, self.token_order)
        N = x.shape[1]
        traced, fused_id, size = [], self.arch["num_tokens"], None
        # the blocks run on a batched [B, N, D] token stream (see .attention.Attention)
        for blk, cfg in zip(self.blocks, self.arch["blocks"]):
            if cfg.get("insert_prefix"):
                x, ids, N = self._insert_prefix(x, ids, N)
            x, ids, size, merges = blk(x, ids, fused_id, size)
            if blk.select is not None:
                fused_id += int(blk.select.fuse)
                if ids is not None:
                    traced.append(ids)
            if merges is not None:
                traced.append(merges)
            N = blk.n_out
            if self.trace:
                self.residuals.append((cfg["source_index"], x, ids))
        if self.arch.get("prefix_at_end"):  # every block that would have seen them was removed
            x, ids, N = self._insert_prefix(x, ids, N)
        if self.pool == "map":  # attention pool over the patch tokens after the final norm
            x = x if self.norm is None else self.norm(x)
            return self.attn_pool(x if self.attn_pool_prefix else x[:, self.num_prefix:]).unsqueeze(1), traced
        if self.pool == "avg":  # timm global_pool='avg': patch tokens, after the final norm, then fc_norm
            x = x if self.norm is None else self.norm(x)
            if size is None:
                x = x[:, self.num_prefix:].mean(1, keepdim=True)
            else:  # merged tokens (ToMe): each counts as the tokens it stands for
                s = size[:, self.num_prefix:].unsqueeze(-1)
                x = (x[:, self.num_prefix:] * s).sum(1, keepdim=True) / s.sum(1, keepdim=True)
            return (x if self.fc_norm is None else self.fc_norm(x)), traced
        x = x[:, :self.num_read]
        x = x if self.norm is None else self.norm(x)
        return (x if self.fc_norm is None else self.fc_norm(x)), traced  # timm: fc_norm after the pooling

    def _insert_prefix(self, x: Tensor, ids: Optional[Tensor], N: int):
        """CaiT: the prefix tokens join the stream x [B, N, D] (no position embedding) -> [B, P+N, D]."""
        x = torch.cat([self.prefix_tokens.expand(x.shape[0], -1, -1), x], dim=1)
        if ids is not None:
            ids = torch.cat([torch.arange(self.num_prefix).unsqueeze(0).expand(ids.shape[0], -1), ids], dim=1)
        return x, ids, N + self.num_prefix

    def forward(self, x: Tensor):
        x, traced = self.forward_features(x)
        if not len(self.heads):  # a feature extractor: the pooled feature, in its original channels
            f = x[:, 0]
            if self.scatter:  # kept channels back to their places, removed ones 0: [f | 0] gathered
                f = torch.cat([f, f.new_zeros(f.shape[0], 1)], dim=1).index_select(1, self.feature_index)
            return (f, traced) if self.trace else f
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
        if plan.get("merge"):
            mlp = keys - plan["merge"]["r"]
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
    late = ir.prefix_at is not None  # CaiT: the prefix tokens join before the first block from prefix_at on
    if late:
        seq = seq[P:]
    plans, inserted, merged = [], not late, None
    for b in ir.blocks:
        insert = not inserted and b.source_index >= ir.prefix_at
        if insert:
            seq, inserted = list(range(P)) + seq, True
        plan: dict = {"n_in": len(seq), "drop": None, "query": None, "select": None, "insert_prefix": insert}
        if b.class_attention:  # CaiT: the prefix tokens are the queries, and only they are updated
            plan["query"] = {"n": P, "index": None}
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
        if merged is not None:
            plan["prop_attn"] = merged  # sizes exist: log(size) on the keys (ToMe's proportional attention)
        if b.merge is not None:
            plan["merge"] = {"r": b.merge.r, "metric": metric_config(b.attn)}
            merged = b.merge.prop_attn
            seq = seq[:P] + [-1] * (len(seq) - P - b.merge.r)
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
            "rope": rope_config(a),
            "talking": None if a.talking is None else {"l_bias": a.talking.l_bias is not None,
                                                       "w_bias": a.talking.w_bias is not None},
            "qkv_bias": a.q_bias is not None,
            "proj_bias": a.proj_bias is not None,
            **mlp_config(m),
            "post_norm": b.post_norm,
            "rel_bias": a.rel_bias is not None,
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
        "family": ir.meta.get("family", "vit"),
        "name": ir.name,
        "img_size": list(ir.img_size),
        "patch_size": list(ir.patch_size),
        "in_chans": ir.in_chans,
        "embed_dim": ir.embed_dim,
        "embed_ids": list(ir.embed_ids),
        "patch_bias": ir.patch_bias is not None,
        "prefix": [t.name for t in ir.prefix],
        "num_tokens": ir.num_tokens,
        "pos_tokens": int(ir.pos_embed.shape[0]),
        "prefix_at": ir.prefix_at,
        "prefix_at_end": ir.prefix_at is not None and not any(p["insert_prefix"] for p in plans),
        "num_classes": ir.num_classes,
        "token_mode": ir.token_mode,
        "token_order": order,
        "blocks": blocks,
        "norm_eps": None if ir.norm is None else ir.norm.eps,
        "pool": ir.pool,
        "fc_norm_eps": None if ir.fc_norm is None else ir.fc_norm.eps,
        "norm_pre_eps": None if ir.norm_pre is None else ir.norm_pre.eps,
        "attn_pool": pool_architecture(ir.attn_pool),
        "feature_dim": ir.feature_dim,
        "feature_index": _feature_index(ir),
        "stem": None if ir.stem is None else {"out_chans": ir.stem.out_chans, "out_size": list(ir.stem.out_size)},
        "heads": [{"name": h.name, "token": h.token, "bias": h.bias is not None} for h in ir.heads],
        "exit_after": ir.exit_after,
    }


def _feature_index(ir: ViTIR) -> Optional[list[int]]:
    """For a feature extractor whose output channels are the (pruned) residual channels: for each
    original channel, its position among the kept ones, or ``embed_dim`` (a zero column) if removed;
    None when nothing needs to be put back."""
    if ir.heads or ir.attn_pool is not None or ir.embed_dim == ir.feature_dim:
        return None
    where = {c: p for p, c in enumerate(ir.embed_ids)}
    return [where.get(c, ir.embed_dim) for c in range(ir.feature_dim)]


def state_dict(ir: ViTIR) -> dict[str, Tensor]:
    """The :class:`PrunedViT` state dict holding the weights of ``ir``."""
    D = ir.embed_dim
    _, plans = _token_plan(ir)
    sd: dict[str, Tensor] = {"patch_embed.weight": ir.patch_weight}
    if ir.stem is not None:
        sd.update({f"stem.{k}": v for k, v in ir.stem.module.state_dict().items()})
    if ir.patch_bias is not None:
        sd["patch_embed.bias"] = ir.patch_bias
    if ir.prefix:
        sd["prefix_tokens"] = torch.stack([t.value for t in ir.prefix]).reshape(1, -1, D)
    sd["pos_embed"] = ir.pos_embed.reshape(1, -1, D)
    for j, (b, plan) in enumerate(zip(ir.blocks, plans)):
        p = f"blocks.{j}."
        b = replace(b, attn=paired(b.attn))  # RoPE: q/k channels in rotation-pair order (.rope)
        if b.attn.rel_bias is not None and b.attn.num_heads:
            sd[p + "attn_bias"] = b.attn.rel_bias
        sd.update(block_state_dict(b, p, split=bool(plan["query"])))
        sd.update(rope_state_dict(b.attn, head_groups([[qk, v] for qk, v in zip(b.attn.qk_dims, b.attn.v_dims)]), p))
        merge = plan.get("merge")
        if merge is not None and merge["metric"]["from"] == "linear":
            sd[p + "attn.metric_proj.weight"], bias = metric_weights(b.attn, merge["metric"]["dim"])
            if bias is not None:
                sd[p + "attn.metric_proj.bias"] = bias
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
    if ir.norm_pre is not None:
        sd["norm_pre.weight"], sd["norm_pre.bias"] = ir.norm_pre.weight, ir.norm_pre.bias
    if ir.attn_pool is not None:
        sd.update(pool_state_dict(ir.attn_pool, "attn_pool."))
    for k, h in enumerate(ir.heads):
        sd[f"heads.{k}.weight"] = h.weight
        if h.bias is not None:
            sd[f"heads.{k}.bias"] = h.bias
    return {k: v.detach().contiguous().float() if v.is_floating_point() else v.detach().contiguous() for k, v in sd.items()}


def build_module(ir: ViTIR, share: bool = False, trace: bool = False) -> PrunedViT:
    """ViT IR -> :class:`PrunedViT` in eval mode.

    Args:
        share: the module's parameters *are* the IR's tensors where their layout allows (no copy;
            training the module then changes the IR). Default: independent copies.
        trace: forward also returns the token ids kept by each dynamic selection.
    """
    stem = None if ir.stem is None else copy.deepcopy(ir.stem.module)
    with torch.device("meta"):  # no throw-away random init: the weights come from the IR (constant
        model = PrunedViT(architecture(ir), trace=trace, stem=stem)  # buffers are made on the CPU explicitly)
    sd = state_dict(ir)
    if not share:
        sd = {k: v.clone() for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()
