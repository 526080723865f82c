"""The masked dense reference: what a pruned model must compute, written as plainly as possible.

It runs the *dense* model (its IR straight from the frontend) with the spec's masks applied the way
the papers define them, never by slicing:

- heads, q/k channels, v channels, MLP neurons: the masked activations are multiplied by 0;
- embedding channels (SAViT): the residual stream is multiplied by the mask and every LayerNorm
  normalises over the kept channels only (mean and variance over kept channels; DESIGN.md);
- removed blocks: identity;
- early exit (WDPruning): stop after the exit block and use its classifier.

It shares no code with codegen (attention is a loop over heads), so agreement between the two is
evidence, not tautology. Slow; meant for verification on a few images.
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .ir import LayerNormIR, ViTIR
from .spec import ResolvedSpec


def _masked_layer_norm(x: Tensor, p: LayerNormIR, e: Tensor) -> Tensor:
    """LayerNorm of x [B, N, D] over the channels where e [D] is 1; output 0 elsewhere."""
    n = e.sum()
    mean = (x * e).sum(-1, keepdim=True) / n
    var = (((x - mean) * e) ** 2).sum(-1, keepdim=True) / n
    return (x - mean) / torch.sqrt(var + p.eps) * (p.weight * e) + p.bias * e


def _linear(x: Tensor, w: Tensor, b: Optional[Tensor]) -> Tensor:
    y = x @ w.t()
    return y if b is None else y + b


@torch.no_grad()
def reference_forward(
    dense: ViTIR,
    spec: ResolvedSpec,
    images: Tensor,
    tensors: Optional[Mapping[str, Tensor]] = None,
) -> Tensor:
    """Logits [B, num_classes] of the dense model ``dense`` under the masks of ``spec``.

    Args:
        dense: the unpruned IR (as imported; original coordinates).
        spec: validated masks (:func:`vitshrink.spec.resolve_spec`).
        images: [B, in_chans, H, W] float32.
        tensors: checkpoint tensors for an exit classifier named in the spec.
    """
    tensors = tensors or {}
    D = dense.embed_dim
    e = spec.embed.float() if spec.embed is not None else torch.ones(D)
    x = F.conv2d(images, dense.patch_weight, dense.patch_bias, stride=dense.patch_size)
    x = x.flatten(2).transpose(1, 2)
    prefix = torch.stack([t.value for t in dense.prefix]).expand(x.shape[0], -1, -1)
    x = (torch.cat([prefix, x], 1) + dense.pos_embed) * e

    stop = spec.exit.block if spec.exit is not None else len(dense.blocks) - 1
    for blk in dense.blocks:
        i = blk.source_index
        if i > stop:
            break
        if i in spec.removed_blocks:
            continue
        a = blk.attn
        h = _masked_layer_norm(x, blk.norm1, e)
        out = torch.zeros_like(x)
        heads = spec.heads.get(i, torch.ones(a.num_heads, dtype=torch.bool))
        off_qk = off_v = 0
        for hh in range(a.num_heads):
            dq, dv = a.qk_dims[hh], a.v_dims[hh]
            sq, sv = slice(off_qk, off_qk + dq), slice(off_v, off_v + dv)
            off_qk += dq
            off_v += dv
            if not heads[hh]:
                continue
            mqk = spec.qk[i][hh].float() if i in spec.qk else torch.ones(dq)
            mv = spec.v[i][hh].float() if i in spec.v else torch.ones(dv)
            q = _linear(h, a.q_weight[sq], None if a.q_bias is None else a.q_bias[sq]) * mqk
            k = _linear(h, a.k_weight[sq], None if a.k_bias is None else a.k_bias[sq]) * mqk
            v = _linear(h, a.v_weight[sv], None if a.v_bias is None else a.v_bias[sv]) * mv
            attn = torch.softmax((q @ k.transpose(-2, -1)) * a.scale, dim=-1)
            out = out + (attn @ v) @ a.proj_weight[:, sv].t()
        if a.proj_bias is not None:
            out = out + a.proj_bias
        x = x + out * e

        m = blk.mlp
        h = _masked_layer_norm(x, blk.norm2, e)
        z = F.gelu(_linear(h, m.fc1_weight, m.fc1_bias))
        if i in spec.mlp:
            z = z * spec.mlp[i].float()
        x = x + _linear(z, m.fc2_weight, m.fc2_bias) * e

    norm, heads_w = dense.norm, {c.name: (c.weight, c.bias) for c in dense.heads}
    if spec.exit is not None:
        if spec.exit.norm is not None:
            norm = LayerNormIR(tensors[f"{spec.exit.norm}.weight"], tensors[f"{spec.exit.norm}.bias"], dense.norm.eps)
        for name, prefix in (("head", spec.exit.head), ("head_dist", spec.exit.head_dist)):
            if prefix is not None:
                heads_w[name] = (tensors[f"{prefix}.weight"], tensors.get(f"{prefix}.bias"))
    x = _masked_layer_norm(x, norm, e)
    logits = sum(_linear(x[:, c.token], *heads_w[c.name]) for c in dense.heads)
    return logits / len(dense.heads)

