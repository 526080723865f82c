"""Shrunk timm Swin checkpoints (Torch-Pruning) -> timm's dense Swin with zeros, kept units first.

Torch-Pruning on timm's Swin (with a PatchMerging pruner that prunes the four copies of each channel
together) shrinks each stage's residual channels and the MLPs, and can shrink heads and head_dim. As
for ViTs (:mod:`.shrunk`) the original indices are unknown, so kept units go first: stage channels
``c < C'_s`` -- and, in the next patch merging's LayerNorm and ``reduction`` columns, their four
copies ``k * C_s + c`` --, heads ``h < H'``, channels ``< head_dim'`` inside each head (the head's
relative-position-bias column moves with it), MLP neurons ``< hidden'``. The softmax scale the source
used is folded into the q rows (see :mod:`.torch_pruning`).
"""
from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import Tensor

from ..errors import CheckpointError
from ..spec.format import Spec
from .base import ImportContext, ImportResult
from .shrunk import EMBED_NOTE, NO_HISTORY, group_blocks, place

_MERGE = re.compile(r"^layers\.(\d+)\.downsample\.(norm\.weight|norm\.bias|reduction\.weight|reduction\.bias)$")


def _four_copies(dense_c: int, kept_c: int) -> Tensor:
    """Dense positions of the shrunk merge input: copy k of kept channel c sits at k * C + c."""
    return torch.tensor([k * dense_c + c for k in range(4) for c in range(kept_c)], dtype=torch.long)


def place_shrunk_swin(tensors: dict[str, Tensor], ctx: ImportContext, heads: Sequence[int],
                      scales: Sequence[float]) -> tuple[dict, dict, dict, list, list]:
    """Place shrunk timm-Swin-keyed ``tensors`` into ``ctx.model``'s dense shapes.

    Args:
        heads: per block (global order) the heads kept; q, k and v equally wide (qkv rows / 3 / heads).
        scales: per block the softmax scale the source used (folded into the q rows of the second result).
    Returns:
        (placed weights, weights with the scale folded, canonical masks (Swin names), per-block widths,
        per-stage channels [dense, kept]).
    Raises:
        CheckpointError: a missing key, or a tensor wider than the model (named).
    """
    own = ctx.model.state_dict()
    missing = [k for k in own if k not in tensors]
    if missing:
        raise CheckpointError(f"checkpoint '{ctx.path}' does not fit {ctx.model_name}: key '{missing[0]}' missing")
    stages = list(ctx.model.layers)
    C = [st.blocks[0].dim for st in stages]
    C2 = [int(tensors[f"layers.{s}.blocks.0.norm1.weight"].shape[0]) for s in range(len(stages))]
    masks: dict[str, Tensor] = {}
    placed: dict[str, Tensor] = {}
    for k, v in own.items():
        t = tensors[k]
        if any(a > b for a, b in zip(t.shape, v.shape)) or t.dim() != v.dim():
            raise CheckpointError(f"checkpoint '{ctx.path}' does not fit {ctx.model_name}: '{k}' has shape "
                                  f"{list(t.shape)}, wider than the model's {list(v.shape)}")
        m = _MERGE.match(k)
        if m is None or m.group(2) == "reduction.bias":
            if ".attn.qkv." not in k and ".attn.proj.weight" not in k:
                placed[k] = place(v.shape, t)
            continue
        s = int(m.group(1))
        idx = _four_copies(C[s - 1], C2[s - 1])
        z = torch.zeros(v.shape)
        if m.group(2) == "reduction.weight":
            z[: t.shape[0]].index_copy_(1, idx, t.float())
        else:
            z.index_copy_(0, idx, t.float())
        placed[k] = z
    widths = []
    for (H, hd, hidden), prefix, H2, g in zip(ctx.dims(), ctx.prefixes(), heads, range(len(heads))):
        s = int(prefix.split(".")[1])
        D, D2 = C[s], C2[s]
        w, b = tensors[prefix + "attn.qkv.weight"], tensors.get(prefix + "attn.qkv.bias")
        if H2 < 1 or w.shape[0] % (3 * H2):
            raise CheckpointError(f"checkpoint '{ctx.path}': '{prefix}attn.qkv.weight' has {w.shape[0]} rows, "
                                  f"not 3 x num_heads ({H2}) x head_dim")
        hd2 = w.shape[0] // (3 * H2)
        if H2 > H or hd2 > hd:
            raise CheckpointError(f"checkpoint '{ctx.path}': '{prefix}attn.qkv.weight' is wider than {ctx.model_name} "
                                  f"(heads {H2}/{H}, head_dim {hd2}/{hd})")
        qkv_w, qkv_b = torch.zeros(3, H, hd, D), torch.zeros(3, H, hd)
        qkv_w[:, :H2, :hd2, :D2] = w.float().reshape(3, H2, hd2, D2)
        placed[prefix + "attn.qkv.weight"] = qkv_w.reshape(3 * H * hd, D)
        if b is not None:
            qkv_b[:, :H2, :hd2] = b.float().reshape(3, H2, hd2)
            placed[prefix + "attn.qkv.bias"] = qkv_b.reshape(-1)
        proj = torch.zeros(D, H, hd)
        proj[:D2, :H2, :hd2] = tensors[prefix + "attn.proj.weight"].float().reshape(D2, H2, hd2)
        placed[prefix + "attn.proj.weight"] = proj.reshape(D, H * hd)
        hidden2 = int(tensors[prefix + "mlp.fc1.weight"].shape[0])
        if H2 < H:
            masks[prefix + "heads"] = torch.arange(H) < H2
        if hd2 < hd:
            masks[prefix + "qk"] = (torch.arange(hd) < hd2).expand(H, hd).clone()
            masks[prefix + "v"] = masks[prefix + "qk"].clone()
        if hidden2 < hidden:
            masks[prefix + "mlp"] = torch.arange(hidden) < hidden2
        widths.append({"block": g, "name": prefix[:-1], "heads": [H, H2], "qk_per_head": [hd, hd2],
                       "v_per_head": [hd, hd2], "mlp": [hidden, hidden2]})
    for s, (c, c2) in enumerate(zip(C, C2)):
        if c2 < c:
            masks[f"layers.{s}.embed"] = torch.arange(c) < c2
    folded = {k: v.clone() for k, v in placed.items()}
    for (H, hd, _), prefix, scale in zip(ctx.dims(), ctx.prefixes(), scales):
        ratio = scale / hd ** -0.5
        if ratio != 1.0:
            folded[prefix + "attn.qkv.weight"][: H * hd] *= ratio
            if prefix + "attn.qkv.bias" in folded:
                folded[prefix + "attn.qkv.bias"][: H * hd] *= ratio
    return placed, folded, masks, widths, [[c, c2] for c, c2 in zip(C, C2)]


def convert_torch_pruning_swin(tensors, attrs, classes, ctx, num_heads, scales, notes_scale) -> ImportResult:
    """Torch-Pruning's shrunk timm Swin as an import (:mod:`.torch_pruning` reads the pickle and hands over its
    tensors, attributes, classes and per-block heads and softmax scales); the source is run as timm's dense Swin with zeros when
    no stage lost channels (a LayerNorm over zeros would differ), else the masked reference anchors it."""
    placed, folded, masks, widths, stage_channels = place_shrunk_swin(tensors, ctx, num_heads, scales)
    ref = placed if all(c == c2 for c, c2 in stage_channels) else None
    spec = Spec(masks, {}, meta={"producer": "vitshrink import", "source": str(ctx.path), "format": "torch-pruning"})
    return ImportResult("", "", folded, spec, reference_state_dict=ref,
                        reference_scales=dict(enumerate(scales)) if ref is not None else {},
                        reference_note=("the source's computation: its shrunk tensors in timm's dense Swin (zeros elsewhere) "
                                        "with the softmax scale it really used") if ref is not None else EMBED_NOTE,
                        notes={"index_history": NO_HISTORY, "stage_channels": stage_channels, "shrunk_widths": widths,
                               "softmax_scale": group_blocks(notes_scale) or "original head_dim ** -0.5 in every block",
                               "removed": {}, "not_removed": [], "unstructured": [],
                               "classes": sorted(set(classes.values()))})
