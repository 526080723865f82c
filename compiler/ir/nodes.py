"""The IR nodes every model family shares: LayerNorm, attention (per-head widths), MLP, token rules,
blocks and classifiers. A family's model node (:class:`~vitshrink.ir.vit.ViTIR`,
:class:`~vitshrink.ir.swin.SwinIR`) holds a sequence of these blocks.

Shapes use D = embed_dim (kept residual channels), N = tokens (prefix + patches), C = classes.
Every prunable axis carries the *original* index of each surviving unit ("ids"): the kept heads of a
block, the q/k and v channels inside each head, the MLP hidden neurons, the residual channels. Masks
are always written in original coordinates (the model as the frontend imported it), so passes map a
mask through these ids and compose in any order. A padded unit (layout passes) has id -1.

Weights are float32 torch tensors with the shapes of ``nn.Linear`` (``[out, in]``).
Passes never modify an IR in place; they return a new one (:func:`dataclasses.replace`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

PAD = -1  # id of a zero-padded unit
ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu", "silu")  # the MLP activations the IR represents (MlpIR.act)


@dataclass(frozen=True)
class LayerNormIR:
    """LayerNorm over the kept channels: ``weight``/``bias`` [D], ``eps``."""

    weight: Tensor
    bias: Tensor
    eps: float


@dataclass(frozen=True)
class RopeIR:
    """Rotary position embedding (RoFormer, Su et al. 2021, eq. 34; EVA-02, DINOv3, timm's ``vit_*_rope_*``)
    on q and k of every token after the first ``skip`` (the prefix tokens are not rotated).

    In *original* coordinates: ``sin``, ``cos`` [H0 or 1, Np, hd0] (one table for all heads, or one per
    head: RoPE-Mixed); channel c is rotated with its partner :meth:`partner` --
    ``q'[c] = q[c] cos[c] + sign(c) q[partner(c)] sin[c]`` -- pairs (2i, 2i+1) (``half=False``) or
    (i, i + hd0/2) (``half=True``). Pruning q/k channels must keep or remove a pair together.
    """

    sin: Tensor
    cos: Tensor
    half: bool
    skip: int

    @property
    def head_dim(self) -> int:
        return int(self.sin.shape[-1])

    def partner(self, c: int) -> tuple[int, float]:
        """(the channel rotated with original channel ``c``, the sign of its term)."""
        if self.half:
            m = self.head_dim // 2
            return (c + m, -1.0) if c < m else (c - m, 1.0)
        return (c + 1, -1.0) if c % 2 == 0 else (c - 1, 1.0)

    def table(self, head: int) -> tuple[Tensor, Tensor]:
        """(sin, cos) [Np, hd0] of original head ``head``."""
        h = head if self.sin.shape[0] > 1 else 0
        return self.sin[h], self.cos[h]


@dataclass(frozen=True)
class TalkingHeadsIR:
    """Talking-heads attention (Shazeer et al. 2020; CaiT, Touvron et al. ICCV 2021, eq. 3): the heads'
    logits are mixed by ``l_weight`` [H, H] (+ ``l_bias``) before the softmax and the probabilities by
    ``w_weight`` [H, H] (+ ``w_bias``) after it; head h's values then read mixed map h. Pruning head h
    removes its logits, its mixed map and its output: row and column h of both matrices."""

    l_weight: Tensor
    l_bias: Optional[Tensor]
    w_weight: Tensor
    w_bias: Optional[Tensor]


@dataclass(frozen=True)
class AttentionIR:
    """Multi-head self-attention with a free number of heads and free q/k and v widths per head.

    Head h reads q/k channels ``qk_ids[h]`` and v channels ``v_ids[h]`` (original indices inside the
    original head ``head_ids[h]``). Projections are stored head after head:

    - ``q_weight``, ``k_weight``: [sum(qk_dims), D]; ``q_bias``, ``k_bias``: [sum(qk_dims)] or None
    - ``v_weight``: [sum(v_dims), D]; ``v_bias``: [sum(v_dims)] or None
    - ``proj_weight``: [D, sum(v_dims)]; ``proj_bias``: [D] or None

    ``scale`` is the softmax scale of the *original* model (original head_dim ** -0.5): pruning q/k
    channels removes terms of the dot product, it does not renormalise it.

    ``rel_bias``: a per-head constant added to the attention logits, [num_heads, A, A] over the A tokens
    of a window (Swin's relative position bias after the table lookup) or of the whole sequence (BEiT,
    timm's ``vit_relpos_*``), or None.
    ``rope``: rotary position embedding applied to q and k (:class:`RopeIR`, original coordinates), or None.
    ``talking``: talking-heads mixing (:class:`TalkingHeadsIR`, CaiT), or None.
    ``logit_scale``: [num_heads] -- cosine attention (Swin V2, Liu et al. CVPR 2022, eq. 2): the logits are
    ``cos(q, k) * logit_scale[h]`` (``scale`` unused); pruned q/k channels are zeros, so the cosine is over
    the kept ones. None: scaled dot product.
    """

    head_ids: tuple[int, ...]
    qk_ids: tuple[tuple[int, ...], ...]
    v_ids: tuple[tuple[int, ...], ...]
    q_weight: Tensor
    q_bias: Optional[Tensor]
    k_weight: Tensor
    k_bias: Optional[Tensor]
    v_weight: Tensor
    v_bias: Optional[Tensor]
    proj_weight: Tensor
    proj_bias: Optional[Tensor]
    scale: float
    rel_bias: Optional[Tensor] = None
    rope: Optional[RopeIR] = None
    logit_scale: Optional[Tensor] = None
    talking: Optional[TalkingHeadsIR] = None

    @property
    def num_heads(self) -> int:
        return len(self.head_ids)

    @property
    def qk_dims(self) -> tuple[int, ...]:
        return tuple(len(c) for c in self.qk_ids)

    @property
    def v_dims(self) -> tuple[int, ...]:
        return tuple(len(c) for c in self.v_ids)


@dataclass(frozen=True)
class MlpIR:
    """fc1 -> activation -> fc2. ``fc1_weight`` [hidden, D], ``fc2_weight`` [D, hidden].

    ``hidden_ids``: original index of each kept hidden neuron. hidden may be 0 (the MLP is then the
    constant ``fc2_bias``). ``act``: one of :data:`ACTIVATIONS` -- ``"gelu"`` (exact, erf),
    ``"gelu_tanh"`` (the tanh approximation, SigLIP), ``"quick_gelu"`` (OpenAI CLIP's
    ``x * sigmoid(1.702 x)``) or ``"silu"``; each acts per neuron, so pruning neurons is exact for all.

    Gated (GLU: EVA-02's SwiGLU, timm ``GluMlp``): ``gate_weight`` [hidden, D] (``gate_bias``), and hidden
    unit j is ``act(gate_j(x)) * fc1_j(x)`` -- a neuron is its gate row, its fc1 row and its fc2 column.
    ``norm``: a LayerNorm over the hidden units before fc2 (EVA-02 ``scale_mlp``), or None; with pruned
    neurons it normalises over the kept ones (as LayerNorms over pruned embedding channels do).
    """

    hidden_ids: tuple[int, ...]
    fc1_weight: Tensor
    fc1_bias: Optional[Tensor]
    fc2_weight: Tensor
    fc2_bias: Optional[Tensor]
    act: str = "gelu"
    gate_weight: Optional[Tensor] = None
    gate_bias: Optional[Tensor] = None
    norm: Optional[LayerNormIR] = None

    @property
    def hidden(self) -> int:
        return len(self.hidden_ids)


@dataclass(frozen=True)
class PredictorIR:
    """A learned token scorer (see :class:`vitshrink.spec.resolved.PredictorSetting`).

    ``norm``: LayerNorm over D applied first (None: none); ``layers``: the Linear layers in order as
    (weight [out, in], bias [out]). dynamicvit: in_conv.1, out_conv.0, out_conv.2, out_conv.4.
    """

    type: str
    norm: Optional[LayerNormIR]
    layers: tuple[tuple[Tensor, Optional[Tensor]], ...]


@dataclass(frozen=True)
class TokenSelectIR:
    """A dynamic token rule (see :class:`vitshrink.spec.resolved.DynamicRule`): keep ``keep`` patch tokens."""

    keep: int
    score: str
    where: str
    fuse: bool
    head_weighting: bool
    cutoff: float
    predictor: Optional[PredictorIR] = None


@dataclass(frozen=True)
class TokenMergeIR:
    """Token merging in a block (see :class:`vitshrink.spec.resolved.MergeRule`): ``r`` patch tokens merged by
    bipartite soft matching on the block's keys, between attention and MLP; ``prop_attn``: proportional attention."""

    r: int
    prop_attn: bool = True


@dataclass(frozen=True)
class BlockIR:
    """Pre-norm transformer block: x += attn(norm1(x)); x += mlp(norm2(x)) -- or, with ``post_norm``
    (timm's ResPost blocks, Swin V2), x += norm1(attn(x)); x += norm2(mlp(x)). ``norm_out``: a LayerNorm
    on the residual stream after the block (Swin V2 Cr's main-branch ``norm3``), or None.
    ``class_attention`` (CaiT): only the prefix tokens are queries and are updated (attention and MLP);
    keys and values come from every token.

    ``source_index`` is the block's index in the original model; spec keys ``blocks.{i}.*`` use it.
    ``tokens``: static token pruning -- the original ids of the tokens kept at this block (present in
    ``drop`` mode, updated in ``query`` mode; see :attr:`ViTIR.token_mode`), None for all.
    ``select``: a dynamic token rule, or None. ``merge``: token merging (ToMe), or None.
    """

    source_index: int
    norm1: LayerNormIR
    attn: AttentionIR
    norm2: LayerNormIR
    mlp: MlpIR
    tokens: Optional[tuple[int, ...]] = None
    select: Optional[TokenSelectIR] = None
    merge: Optional[TokenMergeIR] = None
    post_norm: bool = False
    norm_out: Optional[LayerNormIR] = None
    class_attention: bool = False


@dataclass(frozen=True)
class ClassifierIR:
    """Linear classifier reading token ``token`` after the final norm: ``weight`` [C, D], ``bias`` [C]."""

    name: str
    token: int
    weight: Tensor
    bias: Optional[Tensor]


def replace(obj, **changes):
    """:func:`dataclasses.replace` for IR nodes (they are frozen)."""
    return dataclasses.replace(obj, **changes)


def iter_tensors(node):
    """Yield every weight tensor below an IR node (depth first)."""
    if isinstance(node, Tensor):
        yield node
    elif isinstance(node, (tuple, list)):
        for x in node:
            yield from iter_tensors(x)
    elif dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            if f.name != "meta":
                yield from iter_tensors(getattr(node, f.name))


def rows(t: Optional[Tensor], idx: list[int]) -> Optional[Tensor]:
    """``t[idx]`` along dim 0 (a copy), None stays None."""
    return None if t is None else t.index_select(0, torch.as_tensor(idx, dtype=torch.long)).contiguous()


def cols(t: Tensor, idx: list[int]) -> Tensor:
    """``t[:, idx]`` (a copy)."""
    return t.index_select(1, torch.as_tensor(idx, dtype=torch.long)).contiguous()
