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
from . import ImportContext


def _place(dense_shape: torch.Size, t: Tensor, view: Optional[tuple]) -> Tensor:
    z = torch.zeros(dense_shape, dtype=torch.float32)
    if view is not None:
        dv, sv = view
        z.view(dv)[tuple(slice(0, n) for n in sv)] = t.float().reshape(sv)
    else:
        z[tuple(slice(0, n) for n in t.shape)] = t.float()
    return z


def place_shrunk(tensors: dict[str, Tensor], ctx: ImportContext, num_heads: Sequence[int],
                 scales: Optional[Sequence[float]] = None) -> tuple[dict, dict, dict, list]:
    """Place shrunk timm-keyed ``tensors`` into the dense architecture of ``ctx.model``.

    Args:
        tensors: the shrunk state dict (timm keys).
        num_heads: heads kept per block (head_dim = qkv rows / 3 / heads).
        scales: softmax scale the source used per block (None: the original ``head_dim ** -0.5``);
            the ratio to the original is folded into the q rows and biases of the returned weights.
    Returns:
        (placed weights -- zeros elsewhere, unfolded --, weights with the scale folded, canonical masks,
        per-block widths ``{"block", "heads", "head_dim", "mlp"}`` as [dense, kept]).
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
    views, widths = {}, []
    for i, ((H, hd, hidden), H2) in enumerate(zip(dims, num_heads)):
        p = f"blocks.{i}."
        rows = tensors[p + "attn.qkv.weight"].shape[0]
        if H2 < 1 or rows % (3 * H2):
            raise CheckpointError(f"checkpoint '{ctx.path}': '{p}attn.qkv.weight' has {rows} rows, "
                                  f"not 3 x num_heads ({H2}) x head_dim")
        hd2, hidden2 = rows // (3 * H2), int(tensors[p + "mlp.fc1.weight"].shape[0])
        if H2 > H or hd2 > hd or hidden2 > hidden or D2 > D:
            raise CheckpointError(f"checkpoint '{ctx.path}' does not fit {ctx.model_name}: '{p}attn.qkv.weight' is wider "
                                  f"(heads {H2}/{H}, head_dim {hd2}/{hd}, mlp {hidden2}/{hidden}, embed {D2}/{D})")
        views[p + "attn.qkv.weight"] = ((3, H, hd, D), (3, H2, hd2, D2))
        views[p + "attn.qkv.bias"] = ((3, H, hd), (3, H2, hd2))
        views[p + "attn.proj.weight"] = ((D, H, hd), (D2, H2, hd2))
        if H2 < H:
            masks[p + "heads"] = torch.arange(H) < H2
        if hd2 < hd:
            ch = (torch.arange(hd) < hd2).expand(H, hd).clone()
            masks[p + "qk"], masks[p + "v"] = ch, ch.clone()
        if hidden2 < hidden:
            masks[p + "mlp"] = torch.arange(hidden) < hidden2
        widths.append({"block": i, "heads": [H, H2], "head_dim": [hd, hd2], "mlp": [hidden, hidden2]})
    placed = {k: _place(v.shape, tensors[k], views.get(k)) for k, v in own.items()}
    folded = {k: v.clone() for k, v in placed.items()}
    for i, (H, hd, _) in enumerate(dims):
        ratio = (scales[i] if scales is not None else hd ** -0.5) / hd ** -0.5
        if ratio != 1.0:
            p = f"blocks.{i}.attn.qkv."
            folded[p + "weight"][: H * hd] *= ratio
            if p + "bias" in folded:
                folded[p + "bias"][: H * hd] *= ratio
    return placed, folded, masks, widths
