"""The ViT block of the generated models (:class:`~vitshrink.codegen.vit.PrunedViT`): pre- or post-norm,
on a batched token stream, with the token operations of every token-pruning method."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .attention import Attention
from .layers import Constant, mlp_module
from .tokens import LowFrequencyEnergy, Predictor, TokenMerge, TokenSelect


class Block(nn.Module):
    """Pre-norm transformer block on a batched [B, N, D] token stream, with its token operations.

    Token counts are static per block (``n_in`` tokens in, ``n_out`` out). In order: a static drop
    (slice, or gather in the gather form), a dynamic selection placed before the block, then either a
    Patch Slimming query-only update of the first ``n`` tokens (or of gathered positions, scattered
    back, in the gather form) or the ordinary block, with a dynamic selection or a token merge (ToMe)
    between attention and MLP. Token sizes (ToMe: how many tokens each stands for) enter the attention
    as ``log(size)`` on every key once a block before has merged.
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
        merge = cfg.get("merge")
        self.merge = TokenMerge(n_attn, num_prefix, merge["r"]) if merge else None
        self.prop_attn = cfg.get("prop_attn", False)  # log(size) on the keys (sizes exist after the first merge)
        self.norm1 = nn.LayerNorm(dim, eps=cfg["norm1_eps"])
        if cfg["heads"]:
            self.attn = Attention(dim, cfg["heads"], cfg["scale"], cfg["qkv_bias"], cfg["proj_bias"],
                                  split=self.query is not None, score=score, num_prefix=num_prefix, rope=cfg.get("rope"),
                                  talking=cfg.get("talking"), metric=merge["metric"] if merge else None)
        else:
            self.attn = Constant(dim, cfg["proj_bias"])
        self.norm2 = nn.LayerNorm(dim, eps=cfg["norm2_eps"])
        self.mlp = mlp_module(dim, cfg)
        self.post_norm = cfg.get("post_norm", False)
        if cfg.get("rel_bias") and cfg["heads"]:  # [heads, N, N] on the attention logits (BEiT, vit_relpos)
            self.attn_bias = nn.Parameter(torch.zeros(len(cfg["heads"]), self.n_in, self.n_in))
        else:
            self.attn_bias = None

    def _select(self, x: Tensor, scores: Optional[Tensor], ids, fused_id):
        xp = x[:, self.num_prefix:]
        if self.predictor is not None:
            scores = self.predictor(xp)
        if self.lfe is not None:
            scores = scores * self.lfe(xp)
        return self.select(x, scores, ids, fused_id)

    def forward(self, x: Tensor, ids: Optional[Tensor] = None, fused_id: int = 0, size: Optional[Tensor] = None):
        """x: [B, n_in, D] -> (x [B, n_out, D], ids, size, merges); ``ids`` [B, n] (original token ids, tracing)
        follow along; ``size`` [B, n] (tokens each stands for; None before any merge) too; ``merges`` [B, r, 2]:
        this block's (source, destination) token ids when it merges and ``ids`` are traced, else None."""
        if self.merge is not None or size is not None:
            return self._merging(x, ids, size)
        x, ids = self._forward(x, ids, fused_id)
        return x, ids, None, None

    def _merging(self, x: Tensor, ids: Optional[Tensor], size: Optional[Tensor]):
        """The block of a merging model (ToMe): attention with log(size) on the keys, the merge, the MLP."""
        N = self.n_in
        a = self.attn(self.norm1(x), N, key_bias=size.log() if size is not None and self.prop_attn else None)
        merges = None
        if self.merge is not None:
            a, metric = a
            x = x + a
            x, size, ids, merges = self.merge(x, torch.ones_like(x[..., 0]) if size is None else size, metric, ids)
        else:
            x = x + a
        return x + self.mlp(self.norm2(x)), ids, size, merges

    def _forward(self, x: Tensor, ids: Optional[Tensor] = None, fused_id: int = 0):
        N = self.n_in
        if self.drop:
            n = self.drop["n"]
            if self.drop.get("index") is None:
                x = x[:, :n]
                ids = None if ids is None else ids[:, :n]
            else:
                x = x.index_select(1, self.drop_index)
                ids = None if ids is None else ids.index_select(1, self.drop_index)
            N = n
        if self.select is not None and self.where == "attn":
            x, ids = self._select(x, None, ids, fused_id)
            N = self.select.tokens_out
        if self.query:
            return self._query_only(x, N), ids
        if self.post_norm:  # ResPost: the sub-layers' outputs are normalised (no token rules here)
            x = x + self.norm1(self.attn(x, N, bias=self.attn_bias))
            return x + self.norm2(self.mlp(x)), ids
        a = self.attn(self.norm1(x), N, bias=self.attn_bias)
        scores = None
        if isinstance(a, tuple):
            a, scores = a
        x = x + a
        if self.select is not None and self.where == "mlp":
            x, ids = self._select(x, scores, ids, fused_id)
        return x + self.mlp(self.norm2(x)), ids

    def _query_only(self, x: Tensor, N: int) -> Tensor:
        """Patch Slimming eq. 2: update ``n`` tokens; keys/values from all N tokens. x [B, N, D] -> [B, N, D]."""
        n = self.query["n"]
        h = self.norm1(x)
        prefix = self.query.get("index") is None
        take = (lambda t: t[:, :n]) if prefix else (lambda t: t.index_select(1, self.query_index))
        xq = take(x) + self.attn(h, N, xq=take(h), q_tokens=n)
        xq = xq + self.mlp(self.norm2(xq))
        if prefix:
            return torch.cat([xq, x[:, n:]], dim=1)
        out = x.clone()
        out[:, self.query_index] = xq  # the plain gather/scatter form (ScatterND in ONNX)
        return out
