"""The structure rows of report.json every family shares: one row per original block, dense vs pruned."""
from __future__ import annotations

from typing import Optional

from ..ir.nodes import BlockIR


def block_row(b: BlockIR, p: Optional[BlockIR], status: str, tokens: dict[str, list[int]]) -> dict:
    """The row of dense block ``b`` and its pruned form ``p`` (None: removed): ``block``, ``kept``,
    ``status``, ``heads``, ``qk``, ``v`` (channels summed over heads), ``mlp`` -- each [dense, pruned] --
    and ``tokens`` (``keys``, ``queries``, ``mlp``: each [dense, pruned])."""
    return {
        "block": b.source_index,
        "kept": p is not None,
        "status": status,
        "heads": [b.attn.num_heads, p.attn.num_heads if p else 0],
        "qk": [sum(b.attn.qk_dims), sum(p.attn.qk_dims) if p else 0],
        "v": [sum(b.attn.v_dims), sum(p.attn.v_dims) if p else 0],
        "mlp": [b.mlp.hidden, p.mlp.hidden if p else 0],
        "tokens": tokens,
    }
