"""A spec resolved against one model: full-shape bool masks in original coordinates and typed settings
(:class:`ResolvedSpec`), what the passes and the reference read -- the same for every family.

Also the checks every family's names share (:func:`check_heads`): a kept block keeps a head, a kept
head keeps a q/k channel.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor

from ..errors import SpecError

SCORES = ("cls_attention", "cls_attention_lfe", "predictor")
PREDICTOR_TYPES = ("dynamicvit", "mlp")


@dataclass(frozen=True)
class ExitSetting:
    """Early exit (WDPruning): end after source block ``block``; classifier weights by checkpoint prefix."""

    block: int
    head: Optional[str] = None
    head_dist: Optional[str] = None
    norm: Optional[str] = None


@dataclass(frozen=True)
class PredictorSetting:
    """A learned token scorer read from the checkpoint under ``prefix``.

    - ``"dynamicvit"``: DynamicViT's PredictorLG (Rao et al. NeurIPS 2021): ``{prefix}.in_conv.0``
      LayerNorm(D), ``.in_conv.1`` Linear(D, D) + GELU; the first D/2 features stay per token, the
      last D/2 are averaged over the patch tokens present; ``.out_conv.0`` Linear(D, D/2) + GELU,
      ``.out_conv.2`` Linear(D/2, D/4) + GELU, ``.out_conv.4`` Linear(D/4, 2), log-softmax; the score is
      the keep log-probability (column 0).
    - ``"mlp"``: a per-token MLP scorer (SViTE+ / DPS-ViT style): optional ``{prefix}.norm``
      LayerNorm(D), then ``{prefix}.fc0`` ... ``{prefix}.fc{n}`` Linear layers D -> hidden... -> 1 with
      GELU between them; the score is the output.
    """

    type: str
    prefix: str
    hidden: tuple[int, ...] = ()
    norm: bool = True
    eps: float = 1e-5  # the predictor's own LayerNorm eps: torch's default, which DynamicViT's PredictorLG uses

    def expected_shapes(self, D: int) -> dict[str, tuple[int, ...]]:
        """Checkpoint key -> shape this predictor needs for embed_dim D."""
        p, out = self.prefix, {}
        if self.type == "dynamicvit":
            dims = [("in_conv.1", D, D), ("out_conv.0", D // 2, D), ("out_conv.2", D // 4, D // 2), ("out_conv.4", 2, D // 4)]
            out[f"{p}.in_conv.0.weight"] = out[f"{p}.in_conv.0.bias"] = (D,)
        else:
            widths = [D, *self.hidden, 1]
            dims = [(f"fc{j}", widths[j + 1], widths[j]) for j in range(len(widths) - 1)]
            if self.norm:
                out[f"{p}.norm.weight"] = out[f"{p}.norm.bias"] = (D,)
        for name, o, i in dims:
            out[f"{p}.{name}.weight"] = (o, i)
            out[f"{p}.{name}.bias"] = (o,)
        return out


@dataclass(frozen=True)
class DynamicRule:
    """A dynamic token rule of one block: keep ``keep`` of the patch tokens present, input-dependent.

    - ``keep``: the number of patch (non-prefix) tokens kept -- the spec gives a count (int) or a
      ratio of the patch tokens present (float in (0, 1], rounded up as EViT does). Equal to the
      tokens present: the rule does nothing.
    - ``score``: ``cls_attention`` (EViT, Liang et al. ICLR 2022: the class token's attention to each
      token in this block, averaged over heads), ``cls_attention_lfe`` (VTC-LFC, Wang et al. NeurIPS
      2022: that score times the token's low-frequency energy, eq. 6), ``predictor`` (a learned scorer).
    - ``head_weighting``: VTC-LFC's weighted attention score (eq. 8, as in the authors' selector):
      ``mean_h(w_h A_h[cls, j]) + mean_h(A_h[cls, cls] mean_i A_h[i, j])`` with ``w_h = mean_i A_h[i, cls]``,
      i over the patch tokens. Default on for ``cls_attention_lfe``, off otherwise.
    - ``cutoff``: the low-pass width of the LFE (VTC-LFC's default 0.15).
    - ``where``: ``mlp`` -- between the attention and the MLP of the block (EViT, VTC-LFC; needed by
      the attention scores) -- or ``attn`` -- before the block (DynamicViT; predictor only).
    - ``fuse``: merge the pruned tokens into one extra token, their sum weighted by their scores
      (EViT), appended after the kept tokens; it is a patch token for later rules.

    Ties in scores go to the lower position (tokens keep their relative order; see
    :func:`vitshrink.codegen.tokens.rank_keep`).
    """

    keep: int
    score: str = "cls_attention"
    where: str = "mlp"
    fuse: bool = False
    head_weighting: bool = False
    cutoff: float = 0.15
    predictor: Optional[PredictorSetting] = None


@dataclass(frozen=True)
class MergeRule:
    """A token-merging rule of one block (ToMe, Bolya et al. ICLR 2023): between the attention and the MLP,
    ``r`` patch tokens merge into others, chosen by bipartite soft matching on the block's keys.

    - the metric: each token's keys summed over the heads the block keeps, channel by channel in original q/k
      coordinates (removed heads and channels contribute 0 -- a head left without v channels is removed whole:
      ToMe's ``k.mean(1)`` up to a scale, which the cosine ignores), divided by its L2 norm;
    - the split, by position in the current sequence: set A the even positions, set B the odd ones;
      prefix tokens (class, distillation, registers) are in neither -- never merged, never merged into;
    - every A token's best B partner (cosine similarity, ties to the lower B position); the ``r`` A tokens
      with the best scores (ties to the lower A position) merge into their partners, several into one
      possible; the new sequence is [prefix tokens, the other A tokens, the B tokens], each in order;
    - sizes: every token carries how many original tokens it stands for (1 at the start); a merge is the
      size-weighted average ``sum(x * s) / sum(s)`` and sizes add;
    - ``prop_attn``: proportional attention -- ``log(s)`` of every key token added to the attention logits
      of every block after the first merge (ToMe eq. 1), so a merged token counts as ``s`` tokens;
      an average pool over the patch tokens is size-weighted too.

    Shapes stay static: block i's MLP and every later block see ``r`` tokens fewer."""

    r: int
    prop_attn: bool = True


@dataclass
class ResolvedSpec:
    """A spec validated against one model: full-shape bool masks in original coordinates."""

    embed: Optional[Tensor] = None
    heads: dict[int, Tensor] = field(default_factory=dict)
    qk: dict[int, Tensor] = field(default_factory=dict)
    v: dict[int, Tensor] = field(default_factory=dict)
    mlp: dict[int, Tensor] = field(default_factory=dict)
    removed_blocks: frozenset[int] = frozenset()
    exit: Optional[ExitSetting] = None
    tokens: dict[int, Tensor] = field(default_factory=dict)
    token_mode: str = "drop"
    dynamic: dict[int, DynamicRule] = field(default_factory=dict)
    merge: dict[int, MergeRule] = field(default_factory=dict)
    stage_embed: dict[int, Tensor] = field(default_factory=dict)  # Swin: stage -> [C_s] bool

    def last_block(self, num_blocks: int) -> int:
        """Source index of the last block that runs (the exit block, or the last one)."""
        return self.exit.block if self.exit is not None else num_blocks - 1


def check_heads(out: ResolvedSpec, name: Callable[[int], str]) -> None:
    """Every kept block keeps a head; every kept head keeps a q/k channel. ``name(i)`` is the canonical
    key prefix of block ``i`` (``blocks.3``, ``layers.1.blocks.0``).

    Raises:
        SpecError: naming the ``heads`` or ``qk`` key.
    """
    removed = out.removed_blocks
    for i, h in out.heads.items():
        if i not in removed and not h.any():
            raise SpecError(f"{name(i)}.heads", f"prunes every head of a kept block (remove the block with {name(i)}.keep: false)")
    for i, qk in out.qk.items():
        if i in removed:
            continue
        kept = out.heads.get(i, torch.ones(qk.shape[0], dtype=torch.bool))
        empty = [h for h in range(qk.shape[0]) if kept[h] and not qk[h].any()]
        if empty:
            raise SpecError(f"{name(i)}.qk", f"head {empty[0]} is kept but keeps no q/k channel (prune it with {name(i)}.heads)")
