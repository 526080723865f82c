"""report.json ``structure`` of a ViT/DeiT: per block widths and token counts (keys, queries, MLP),
the token rule, removed blocks and the early exit."""
from __future__ import annotations

from ..codegen.vit import token_counts
from ..ir.vit import ViTIR
from .rows import block_row


def block_table(dense: ViTIR, pruned: ViTIR) -> dict:
    """Per-block widths and token counts, dense vs pruned, keyed by source block."""
    tokens = {b.source_index: t for b, t in zip(pruned.blocks, token_counts(pruned))}
    rows = []
    for b in dense.blocks:
        p = pruned.block(b.source_index)
        t = tokens.get(b.source_index)
        after_exit = pruned.exit_after is not None and b.source_index > pruned.exit_after
        status = "kept" if p is not None else ("after exit" if after_exit else "removed")
        row = block_row(b, p, status, {k: [dense.num_tokens, t[k] if t else 0] for k in ("keys", "queries", "mlp")})
        row["token_rule"] = None if p is None or p.select is None else {
            "keep": p.select.keep, "score": p.select.score, "where": p.select.where, "fuse": p.select.fuse}
        if p is not None and p.merge is not None:  # ToMe: r tokens merged between attention and MLP
            row["token_rule"] = {"merge": p.merge.r, "score": "tome", "where": "mlp", "prop_attn": p.merge.prop_attn}
        rows.append(row)
    return {"embed_dim": [dense.embed_dim, pruned.embed_dim], "exit_after": pruned.exit_after,
            "token_mode": pruned.token_mode if any(b.tokens is not None for b in pruned.blocks) else None,
            "token_layout": "prefix" if pruned.token_order is not None else "gather", "blocks": rows}
