"""report.json ``structure`` of a Swin: per block widths (named ``layers.{s}.blocks.{j}``) and per stage
its channels, token grid and window."""
from __future__ import annotations

from ..ir.swin import SwinIR
from .rows import block_row


def block_table(dense: SwinIR, pruned: SwinIR) -> dict:
    """Per-block widths, dense vs pruned, and the stages. Token counts are per image, as for a ViT: every
    token of a stage's grid is a key, a query and goes through the MLP (each query meets the keys of its
    own window: the stage's ``window``)."""
    rows = []
    for b in dense.blocks:
        p = pruned.block(b.source_index)
        st = dense.stage_of(b.source_index)
        L = st.resolution[0] * st.resolution[1]
        grid = {"keys": L, "queries": L, "mlp": L}
        row = block_row(b, p, "kept" if p is not None else "removed",
                        {k: [grid[k], grid[k] if p is not None else 0] for k in ("keys", "queries", "mlp")})
        row["name"] = dense.block_key(b.source_index)
        row["token_rule"] = None
        rows.append(row)
    stages = [{"stage": d.index, "embed_dim": [d.dim, p.dim], "resolution": list(d.resolution), "window": list(d.window)}
              for d, p in zip(dense.stages, pruned.stages)]
    return {"stages": stages, "embed_dim": [dense.embed_dim, pruned.embed_dim], "exit_after": None,
            "token_mode": None, "token_layout": "gather", "blocks": rows}
