"""The IR of a ViT/DeiT classifier (timm ``VisionTransformer``): prefix tokens, position embedding,
a flat sequence of :class:`~vitshrink.ir.nodes.BlockIR`, final norm, pooling and classifier heads."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from torch import Tensor, nn

from .nodes import BlockIR, ClassifierIR, LayerNormIR, MlpIR, iter_tensors


@dataclass(frozen=True)
class PrefixTokenIR:
    """A learned token placed before the patch tokens (``cls``, ``dist``): ``value`` [D]."""

    name: str
    value: Tensor


@dataclass(frozen=True)
class StemIR:
    """An opaque convolutional stem before the patch projection (timm ``HybridEmbed``: a ResNet / ResNetV2
    trunk): ``module`` maps images [B, in_chans, H, W] to features [B, ``out_chans``, *``out_size``] (the
    last one if it returns a list). Carried as it is -- never pruned, shared by reference and codegen."""

    module: nn.Module
    out_chans: int
    out_size: tuple[int, int]


@dataclass(frozen=True)
class AttentionPoolIR:
    """Attention pooling with learned latent queries (timm ``AttentionPoolLatent``, ``global_pool='map'``:
    SigLIP). ``latent`` [L, Dl] queries the tokens: ``q = latent q_weight^T + q_bias`` [L, E];
    ``k``/``v`` from the tokens with ``k_weight``/``v_weight`` [E, D] (their input columns are the
    residual channels, the only axis pruning touches here); ``num_heads`` heads of E / num_heads
    channels at softmax ``scale``; then ``proj`` [O, E], and ``x + mlp(norm(x))`` over O (``mlp`` None:
    no MLP); finally the latents are pooled: ``"token"`` (the first) or ``"avg"``. The pool's own
    widths are not pruned."""

    latent: Tensor
    q_weight: Tensor
    q_bias: Optional[Tensor]
    k_weight: Tensor
    k_bias: Optional[Tensor]
    v_weight: Tensor
    v_bias: Optional[Tensor]
    num_heads: int
    scale: float
    proj_weight: Tensor
    proj_bias: Optional[Tensor]
    norm: Optional[LayerNormIR]
    mlp: Optional[MlpIR]
    pool: str = "token"
    include_prefix: bool = False

    @property
    def out_features(self) -> int:
        return int(self.proj_weight.shape[0])


@dataclass(frozen=True)
class ViTIR:
    """A ViT/DeiT classifier.

    ``pos_embed`` [N, D] covers prefix and patch tokens (added after the prefix tokens are prepended,
    as in DeiT/ViT). Logits are the mean over ``heads`` (one head; two for distilled DeiT).
    ``prefix_at`` (CaiT): the source index of the first block that sees the prefix tokens -- the blocks
    before it run on the patches alone, ``pos_embed`` is then [num_patches, D] (patches only) and the
    prefix tokens join, without a position embedding, before the first kept block from ``prefix_at`` on
    (or before the final norm when none is kept); None: from the start.
    ``stem``: an opaque convolutional stem (:class:`StemIR`) the patch projection reads instead of the
    image (hybrid ViTs), or None; ``patch_weight`` is then [D, stem channels, p, p].
    ``norm_pre``: a LayerNorm right after the position embedding (CLIP towers, timm ``pre_norm=True``),
    or None.
    ``pool``: ``"token"`` -- each head reads its prefix token after the final ``norm`` --, ``"avg"``
    (timm ``global_pool='avg'``): the mean of the patch tokens after ``norm`` (None: timm's Identity),
    then ``fc_norm`` (None: Identity), then the one head (its ``token`` is -1), or ``"map"``: the
    ``attn_pool`` (:class:`AttentionPoolIR`) over the patch tokens after ``norm``. Prefix tokens may be
    absent (``class_token=False``).
    ``heads`` may be empty: a feature extractor (timm ``num_classes=0``: DINOv2, CLIP and SigLIP towers)
    whose output is the pooled feature [B, ``feature_dim``]; with pruned embedding channels the kept
    channels are written back to their original positions (the removed ones are 0, as in the masked
    reference), so the output keeps its promised width.
    ``exit_after``: source index of the last block when an early exit was applied, else None.
    ``token_mode``: how static block ``tokens`` apply (``drop`` or ``query``).
    ``token_order``: set by the layout pass :func:`vitshrink.passes.prefix_token_order`: the original
    token ids in the order the sequence is laid out after the position embedding, so that every
    block's kept set is a prefix (codegen then slices instead of gathering/scattering).
    """

    name: str
    img_size: tuple[int, int]
    patch_size: tuple[int, int]
    in_chans: int
    embed_ids: tuple[int, ...]
    patch_weight: Tensor
    patch_bias: Optional[Tensor]
    prefix: tuple[PrefixTokenIR, ...]
    pos_embed: Tensor
    blocks: tuple[BlockIR, ...]
    norm: Optional[LayerNormIR]
    heads: tuple[ClassifierIR, ...]
    exit_after: Optional[int] = None
    token_mode: str = "drop"
    token_order: Optional[tuple[int, ...]] = None
    meta: dict = field(default_factory=dict)
    pool: str = "token"
    fc_norm: Optional[LayerNormIR] = None
    norm_pre: Optional[LayerNormIR] = None
    attn_pool: Optional[AttentionPoolIR] = None
    feature_dim: int = 0
    stem: Optional[StemIR] = None
    prefix_at: Optional[int] = None

    @property
    def embed_dim(self) -> int:
        return len(self.embed_ids)

    @property
    def num_prefix(self) -> int:
        return len(self.prefix)

    @property
    def grid(self) -> tuple[int, int]:
        h, w = self.stem.out_size if self.stem is not None else self.img_size
        return (h // self.patch_size[0], w // self.patch_size[1])

    @property
    def num_patches(self) -> int:
        g = self.grid
        return g[0] * g[1]

    @property
    def num_tokens(self) -> int:
        return self.num_prefix + self.num_patches

    @property
    def num_classes(self) -> int:
        """Classes of the classifier; 0 for a feature extractor (no heads)."""
        return int(self.heads[0].weight.shape[0]) if self.heads else 0

    @property
    def num_outputs(self) -> int:
        """Width of the model's output: classes, or the feature width of a feature extractor."""
        return self.num_classes if self.heads else self.feature_dim

    def block(self, source_index: int) -> Optional[BlockIR]:
        """The block that was ``blocks.{source_index}`` in the original model, or None if removed."""
        for b in self.blocks:
            if b.source_index == source_index:
                return b
        return None

    def num_params(self) -> int:
        """Number of parameters (elements of every weight tensor, the stem's included)."""
        stem = 0 if self.stem is None else sum(p.numel() for p in self.stem.module.parameters())
        return stem + sum(t.numel() for t in iter_tensors(self))
