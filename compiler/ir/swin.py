"""The IR of a Swin Transformer (Liu et al. ICCV 2021): stages and windows explicit, blocks shared.

A Swin model is a sequence of *stages*; stage s works on a grid of ``resolution`` tokens with
``C_s`` residual channels (its own ``embed_ids``), begins with the patch embedding (s = 0) or a
patch merging, and runs its blocks with window attention. The blocks themselves are the same
:class:`~vitshrink.ir.nodes.BlockIR` as in a ViT -- LayerNorm, attention with per-head q/k and v widths,
MLP -- plus the attention's per-head ``rel_bias`` [heads, A, A] (the relative position bias after
the table lookup, A = window area). They are kept *flattened* in :attr:`SwinIR.blocks` with a global
``source_index`` (stage 0's blocks first), so the block-level passes (heads, q/k/v channels, MLP,
block removal) run on both families through the same code. Spec keys ``layers.{s}.blocks.{j}.*``
map to that index with :meth:`SwinIR.block_index`.

Shapes: grids are (H, W) tokens; channels of the patch merging are ordered as timm concatenates
them, (h0w0, h1w0, h0w1, h1w1) x C_prev: previous channel c appears at c, C+c, 2C+c, 3C+c.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from torch import Tensor

from .nodes import BlockIR, ClassifierIR, LayerNormIR, iter_tensors


@dataclass(frozen=True)
class MergeIR:
    """Patch merging (2x2 neighbours concatenated): ``norm`` over 4 * C_prev (kept) channels, then
    ``reduction_weight`` [C_s, 4 * C_prev] (timm: no bias) -- or, with ``norm_after`` (Swin V2), the
    reduction first and ``norm`` over its C_s channels."""

    norm: LayerNormIR
    reduction_weight: Tensor
    reduction_bias: Optional[Tensor] = None
    norm_after: bool = False


@dataclass(frozen=True)
class StageIR:
    """One stage: residual channels ``embed_ids`` (original ids), token grid ``resolution`` (H, W),
    ``window`` (wh, ww), ``shift`` (sh, sw) of its odd blocks ((0, 0): no shift, as when the grid
    equals the window), ``block_ids``: global source indices of the stage's *original* blocks,
    ``merge``: the patch merging at its start (None for stage 0)."""

    index: int
    embed_ids: tuple[int, ...]
    resolution: tuple[int, int]
    window: tuple[int, int]
    shift: tuple[int, int]
    block_ids: tuple[int, ...]
    merge: Optional[MergeIR] = None

    @property
    def dim(self) -> int:
        return len(self.embed_ids)

    @property
    def window_area(self) -> int:
        return self.window[0] * self.window[1]

    @property
    def num_windows(self) -> int:
        return (self.resolution[0] // self.window[0]) * (self.resolution[1] // self.window[1])


@dataclass(frozen=True)
class SwinIR:
    """A Swin classifier: patch embedding (conv ``patch_weight`` [C_0, in_chans, p, p] + LayerNorm
    ``patch_norm``), ``stages``, their ``blocks`` (flattened, in order), the final ``norm`` (None: none,
    Swin V2 Cr), average pooling over the tokens and the classifier ``head`` (weight [C, C_last])."""

    name: str
    img_size: tuple[int, int]
    patch_size: tuple[int, int]
    in_chans: int
    patch_weight: Tensor
    patch_bias: Optional[Tensor]
    patch_norm: LayerNormIR
    stages: tuple[StageIR, ...]
    blocks: tuple[BlockIR, ...]
    norm: Optional[LayerNormIR]
    head: ClassifierIR
    meta: dict = field(default_factory=dict)

    @property
    def embed_dim(self) -> int:
        """Channels of the last stage (what the classifier reads)."""
        return self.stages[-1].dim

    @property
    def num_classes(self) -> int:
        return int(self.head.weight.shape[0])

    @property
    def num_tokens(self) -> int:
        """Tokens of the first stage (the patch grid)."""
        r = self.stages[0].resolution
        return r[0] * r[1]

    @property
    def heads(self) -> tuple[ClassifierIR, ...]:
        return (self.head,)

    def stage_of(self, source_index: int) -> StageIR:
        """The stage an (original) block belongs to."""
        for s in self.stages:
            if source_index in s.block_ids:
                return s
        raise KeyError(source_index)

    def block_index(self, stage: int, j: int) -> int:
        """Global source index of ``layers.{stage}.blocks.{j}``."""
        return self.stages[stage].block_ids[j]

    def block_key(self, source_index: int) -> str:
        """``layers.{s}.blocks.{j}``: the canonical (timm) name of a block."""
        s = self.stage_of(source_index)
        return f"layers.{s.index}.blocks.{s.block_ids.index(source_index)}"

    def shift_of(self, source_index: int) -> tuple[int, int]:
        """The cyclic shift of a block's windows: the stage's shift for odd blocks, else (0, 0)."""
        s = self.stage_of(source_index)
        return s.shift if s.block_ids.index(source_index) % 2 else (0, 0)

    def block(self, source_index: int) -> Optional[BlockIR]:
        for b in self.blocks:
            if b.source_index == source_index:
                return b
        return None

    def stage_blocks(self, stage: int) -> list[BlockIR]:
        """The (kept) blocks of a stage, in order."""
        ids = set(self.stages[stage].block_ids)
        return [b for b in self.blocks if b.source_index in ids]

    def num_params(self) -> int:
        """Number of parameters, as timm counts them: the relative position bias of a head counts
        its (2 wh - 1)(2 ww - 1) table entries, not the [A, A] it expands to."""
        total = sum(t.numel() for t in iter_tensors(self))
        for b in self.blocks:
            if b.attn.rel_bias is not None:
                wh, ww = self.stage_of(b.source_index).window
                total += b.attn.num_heads * (2 * wh - 1) * (2 * ww - 1) - b.attn.rel_bias.numel()
        return total
