"""Shrunk checkpoints (tensors physically smaller than the original architecture) -> the original
architecture with zeros, kept units first.

Without an index history the original positions of the kept heads, channels and neurons are unknown;
any placement computes the same function (attention is invariant to a joint permutation of heads and
proj columns, the MLP to one of fc1 rows and fc2 columns, the residual stream to one of its channels
applied everywhere), so the kept units go first. Used by Torch-Pruning and SAViT's deployed checkpoints.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from ..errors import CheckpointError
from .base import ImportContext


def place(dense_shape: torch.Size, t: Tensor) -> Tensor:
    z = torch.zeros(dense_shape, dtype=torch.float32)
    z[tuple(slice(0, n) for n in t.shape)] = t.float()
    return z


def place_shrunk(tensors: dict[str, Tensor], ctx: ImportContext, heads: Sequence[int | tuple[int, int, int]],
                 scales: Optional[Sequence[float]] = None) -> tuple[dict, dict, dict, list]:
    """Place shrunk timm-keyed ``tensors`` into the dense architecture of ``ctx.model``.

    Args:
        tensors: the shrunk state dict (timm keys; qkv rows laid out [q | k | v], each head after head).
        heads: per block the heads kept -- an int (q, k and v equally wide: qkv rows / 3 / heads) or
            ``(heads, q/k width per head, v width per head)`` (VTC-LFC's unequal q/k and v widths).
        scales: softmax scale the source used per block (None: the original ``head_dim ** -0.5``);
            the ratio to the original is folded into the q rows and biases of the returned weights.
    Returns:
        (placed weights -- zeros elsewhere, unfolded --, weights with the scale folded, canonical masks,
        per-block widths ``{"block", "heads", "qk_per_head", "v_per_head", "mlp"}`` as [dense, kept]).
    Raises:
        CheckpointError: a missing key, a block wider than the model, or more blocks (named).
    """
    own = ctx.model.state_dict()
    D = ctx.model.embed_dim
    if "cls_token" not in tensors:
        raise CheckpointError(f"checkpoint '{ctx.path}': no 'cls_token'")
    D2 = int(tensors["cls_token"].shape[-1])
    dims = ctx.dims()
    if any(k.startswith(f"blocks.{len(dims)}.") for k in tensors):
        raise CheckpointError(f"checkpoint '{ctx.path}' does not fit {ctx.model_name}: it has 'blocks.{len(dims)}', "
                              f"the model has {len(dims)} blocks")
    missing = [k for k in own if k not in tensors]
    if missing:
        raise CheckpointError(f"checkpoint '{ctx.path}' does not fit {ctx.model_name}: key '{missing[0]}' missing")
    masks: dict[str, Tensor] = {}
    if D2 < D:
        masks["embed"] = torch.arange(D) < D2
    placed = {k: place(v.shape, tensors[k]) for k, v in own.items() if ".attn." not in k}
    widths = []
    for i, ((H, hd, hidden), spec) in enumerate(zip(dims, heads)):
        p = f"blocks.{i}."
        w, b = tensors[p + "attn.qkv.weight"], tensors.get(p + "attn.qkv.bias")
        rows = w.shape[0]
        if isinstance(spec, int):
            H2 = spec
            if H2 < 1 or rows % (3 * H2):
                raise CheckpointError(f"checkpoint '{ctx.path}': '{p}attn.qkv.weight' has {rows} rows, "
                                      f"not 3 x num_heads ({H2}) x head_dim")
            qkw = vw = rows // (3 * H2)
        else:
            H2, qkw, vw = spec
            if rows != H2 * (2 * qkw + vw):
                raise CheckpointError(f"checkpoint '{ctx.path}': '{p}attn.qkv.weight' has {rows} rows, not "
                                      f"{H2} heads x (2 x {qkw} q/k + {vw} v)")
        hidden2 = int(tensors[p + "mlp.fc1.weight"].shape[0])
        if H2 > H or qkw > hd or vw > hd or hidden2 > hidden or D2 > D:
            raise CheckpointError(f"checkpoint '{ctx.path}' does not fit {ctx.model_name}: '{p}attn.qkv.weight' is wider "
                                  f"(heads {H2}/{H}, q/k {qkw}/{hd}, v {vw}/{hd}, mlp {hidden2}/{hidden}, embed {D2}/{D})")
        parts = [(0, qkw), (H2 * qkw, qkw), (2 * H2 * qkw, vw)]
        qkv_w, qkv_b = torch.zeros(3, H * hd, D), torch.zeros(3, H * hd)
        for j, (start, width) in enumerate(parts):
            seg = w[start:start + H2 * width].float()
            qkv_w[j].view(H, hd, D)[:H2, :width, :D2] = seg.reshape(H2, width, D2)
            if b is not None:
                qkv_b[j].view(H, hd)[:H2, :width] = b[start:start + H2 * width].float().reshape(H2, width)
        placed[p + "attn.qkv.weight"] = qkv_w.reshape(3 * H * hd, D)
        if b is not None:
            placed[p + "attn.qkv.bias"] = qkv_b.reshape(-1)
        proj = torch.zeros(D, H * hd)
        proj.view(D, H, hd)[:D2, :H2, :vw] = tensors[p + "attn.proj.weight"].float().reshape(D2, H2, vw)
        placed[p + "attn.proj.weight"] = proj
        if p + "attn.proj.bias" in own:
            placed[p + "attn.proj.bias"] = place(own[p + "attn.proj.bias"].shape, tensors[p + "attn.proj.bias"])
        if H2 < H:
            masks[p + "heads"] = torch.arange(H) < H2
        if qkw < hd:
            masks[p + "qk"] = (torch.arange(hd) < qkw).expand(H, hd).clone()
        if vw < hd:
            masks[p + "v"] = (torch.arange(hd) < vw).expand(H, hd).clone()
        if hidden2 < hidden:
            masks[p + "mlp"] = torch.arange(hidden) < hidden2
        widths.append({"block": i, "heads": [H, H2], "qk_per_head": [hd, qkw], "v_per_head": [hd, vw], "mlp": [hidden, hidden2]})
    folded = {k: v.clone() for k, v in placed.items()}
    for i, (H, hd, _) in enumerate(dims):
        ratio = (scales[i] if scales is not None else hd ** -0.5) / hd ** -0.5
        if ratio != 1.0:
            p = f"blocks.{i}.attn.qkv."
            folded[p + "weight"][: H * hd] *= ratio
            if p + "bias" in folded:
                folded[p + "bias"][: H * hd] *= ratio
    return placed, folded, masks, widths


NO_HISTORY = ("none in the file: kept units placed first (widths exact; which original heads/channels/neurons "
              "were kept is unknown)")
EMBED_NOTE = ("the embedding was pruned: the source normalises over kept channels only, which the masked dense "
              "reference implements (timm's dense model cannot); checked there")


def group_blocks(items: list[tuple[int, str]]) -> list[str]:
    """[(block, text)] -> ["blocks 0-11: text", ...], consecutive blocks with the same text merged."""
    out: list[list] = []
    for i, text in items:
        if out and out[-1][2] == text and out[-1][1] == i - 1:
            out[-1][1] = i
        else:
            out.append([i, i, text])
    return [f"block {a}: {t}" if a == b else f"blocks {a}-{b}: {t}" for a, b, t in out]
