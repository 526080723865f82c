"""The masked dense reference for Swin: what a pruned Swin must compute, written plainly.

It runs the dense Swin IR with the spec's masks applied as the papers define them (heads, q/k and
v channels, MLP neurons multiplied by 0; removed blocks as identity; a stage's residual channels
multiplied by its mask with every LayerNorm of the stage -- and the next merging's, over the four
copies -- normalising over the kept channels only). It shares no code with codegen: there are no
windows here. Each block's attention is *global* over the stage's grid, with an additive [L, L]
bias built from token coordinates: -inf between tokens of different (shifted) windows, the head's
relative position bias inside a window, and -100 between tokens of one shifted window that come from
different regions of the rolled grid (timm's mask). Slow ([L, L] per head); for verification.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ir.swin import SwinIR
from ..spec.resolved import ResolvedSpec
from .common import linear, masked_heads, masked_layer_norm


def global_window_bias(H: int, W: int, window: tuple[int, int], shift: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """For a grid of L = H*W tokens in raster order: (same_window [L, L] bool, pos [L] index of each
    token inside its window (0..A-1), region_penalty [L, L]: -100 where a shifted window mixes regions)."""
    wh, ww = window
    sh, sw = shift
    r = torch.arange(H).repeat_interleave(W)
    c = torch.arange(W).repeat(H)
    rr, cc = (r - sh) % H, (c - sw) % W  # where timm's roll by (-sh, -sw) puts the token
    win = (rr // wh) * (W // ww) + cc // ww
    pos = (rr % wh) * ww + cc % ww
    same = win[:, None] == win[None, :]
    penalty = torch.zeros(H * W, H * W)
    if sh or sw:
        def region(p, size, w, s):
            return torch.where(p < size - w, 0, torch.where(p < size - s, 1, 2))
        reg = region(rr, H, wh, sh) * 3 + region(cc, W, ww, sw)
        penalty = (reg[:, None] != reg[None, :]).float() * -100.0
    return same, pos, penalty


@torch.no_grad()
def reference_forward(dense: SwinIR, spec: ResolvedSpec, images: Tensor, tensors=None, trace: bool = False,
                      residuals: Optional[list] = None):
    """Logits [B, num_classes] of the dense Swin ``dense`` under the masks of ``spec`` (a
    :class:`~vitshrink.spec.resolved.ResolvedSpec` from :func:`vitshrink.resolve_spec`).

    Args:
        images: [B, in_chans, H, W] float32.
        tensors, residuals: unused (Swin specs read nothing else; no per-token trace is kept).
        trace: also return the kept tokens per dynamic rule -- always ``[]`` (windows keep every token).
    """
    logits = _forward(dense, spec, images)
    return (logits, []) if trace else logits


def _forward(dense: SwinIR, spec: ResolvedSpec, images: Tensor) -> Tensor:
    B = images.shape[0]
    x = F.conv2d(images, dense.patch_weight, dense.patch_bias, stride=dense.patch_size)  # [B, C0, H, W]
    x = x.flatten(2).transpose(1, 2)  # [B, L, C0] raster
    prev, e_prev = None, None
    for s in dense.stages:
        e = spec.stage_embed[s.index].float() if s.index in spec.stage_embed else torch.ones(s.dim)
        H, W = s.resolution
        if s.merge is None:
            p = dense.patch_norm
            x = masked_layer_norm(x, p.weight, p.bias, p.eps, e)
        else:
            Hp, Wp = prev.resolution
            xg = x.reshape(B, Hp, Wp, -1)
            # timm's order: (h0w0, h1w0, h0w1, h1w1), each C_prev channels
            parts = [xg[:, 0::2, 0::2], xg[:, 1::2, 0::2], xg[:, 0::2, 1::2], xg[:, 1::2, 1::2]]
            xm = torch.cat(parts, dim=-1).reshape(B, H * W, -1)
            m = s.merge.norm
            if s.merge.norm_after:  # Swin V2: reduce, then normalise the stage's (kept) channels
                x = linear(xm, s.merge.reduction_weight, s.merge.reduction_bias)
                x = masked_layer_norm(x, m.weight, m.bias, m.eps, e)
            else:
                xm = masked_layer_norm(xm, m.weight, m.bias, m.eps, e_prev.repeat(4))
                x = linear(xm, s.merge.reduction_weight, s.merge.reduction_bias) * e
        geometry = {}  # (unshifted, shifted) attention bias of this stage, built once
        for g in s.block_ids:
            if g in spec.removed_blocks:
                continue
            shift = dense.shift_of(g)
            if shift not in geometry:
                geometry[shift] = global_window_bias(H, W, s.window, shift)
            x = _block(x, dense.block(g), geometry[shift], e, spec)
        prev, e_prev = s, e
    p = dense.norm
    x = (x if p is None else masked_layer_norm(x, p.weight, p.bias, p.eps, e_prev)).mean(1)
    return linear(x, dense.head.weight, dense.head.bias)


def _block(x: Tensor, blk, geometry, e: Tensor, spec) -> Tensor:
    g, a = blk.source_index, blk.attn
    same, pos, penalty = geometry
    post = blk.post_norm  # Swin V2: x + norm(attn(x)), x + norm(mlp(x))
    h = x if post else masked_layer_norm(x, blk.norm1.weight, blk.norm1.bias, blk.norm1.eps, e)
    heads = spec.heads.get(g, torch.ones(a.num_heads, dtype=torch.bool))
    out = torch.zeros_like(x)
    for hh, q, k, v, _, sv in masked_heads(h, a, g, heads, spec):
        bias = a.rel_bias[hh][pos[:, None], pos[None, :]] + penalty
        bias = bias.masked_fill(~same, -math.inf)
        for b in range(x.shape[0]):  # one image at a time: [L, L] logits
            if a.logit_scale is None:
                logits = (q[b] @ k[b].t()) * a.scale + bias
            else:  # cosine similarity of q and k (removed channels are 0) times the head's logit scale
                qn = q[b] / q[b].norm(dim=-1, keepdim=True).clamp_min(1e-12)
                kn = k[b] / k[b].norm(dim=-1, keepdim=True).clamp_min(1e-12)
                logits = (qn @ kn.t()) * a.logit_scale[hh] + bias
            out[b] += (torch.softmax(logits, -1) @ v[b]) @ a.proj_weight[:, sv].t()
    if a.proj_bias is not None:
        out = out + a.proj_bias
    n1, n2 = blk.norm1, blk.norm2
    x = x + (masked_layer_norm(out, n1.weight, n1.bias, n1.eps, e) if post else out * e)
    m = blk.mlp
    h = x if post else masked_layer_norm(x, n2.weight, n2.bias, n2.eps, e)
    z = F.gelu(linear(h, m.fc1_weight, m.fc1_bias))
    if g in spec.mlp:
        z = z * spec.mlp[g].float()
    y = linear(z, m.fc2_weight, m.fc2_bias)
    x = x + (masked_layer_norm(y, n2.weight, n2.bias, n2.eps, e) if post else y * e)
    n3 = blk.norm_out  # Swin V2 Cr: a norm on the main branch after some blocks
    return x if n3 is None else masked_layer_norm(x, n3.weight, n3.bias, n3.eps, e)
