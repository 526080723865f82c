"""Structure hidden as zeros in a dense-shaped timm state dict -> canonical masks (spec v1); and the
``zeroed`` format itself (any dense-shaped timm state dict, the fallback when nothing specific matches).

What torch.nn.utils.prune (after ``prune.remove``), NNI's masks, S2ViTE's ``atten_mask``/``other_mask``,
SAViT's 0/1 gates and WDPruning's masks leave behind once applied: full-shape weights with zero rows and
columns. A unit is removed only when removing it is exact:

- q/k channel c of head h: its k row is zero (``k_c`` is then the constant ``k_bias_c`` for every key,
  so ``q_c k_c`` shifts all logits of a query equally and softmax ignores it), or its q row *and* q
  bias are zero (``q_c = 0``). A kept head keeps at least one q/k channel: with none left its attention
  is uniform, which zero channels reproduce exactly.
- v channel c of head h: its v row or its proj column is zero. A zero v row with a live bias outputs
  that bias (attention rows sum to 1): ``proj.bias += proj.weight[:, c] * v_bias_c`` (folded).
- a head: every v channel removed (q/k then do not matter).
- MLP neuron j: its fc1 row or its fc2 column is zero. A zero fc1 row with a live bias outputs
  ``GELU(fc1.bias_j)``: ``fc2.bias += fc2.weight[:, j] * GELU(fc1.bias_j)`` (folded).
- not removed: zero residual (embed) channels -- LayerNorm statistics still see them, so removing them
  would change the model -- and zeros inside kept rows (unstructured sparsity), reported per tensor with
  whether they form the 2:4 pattern sparse tensor cores accelerate.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..families import SWIN, VIT
from ..spec.format import Spec
from .base import Format, ImportContext, ImportResult
from .load import as_state_dict


def _zero_rows(w: Tensor) -> Tensor:
    return (w == 0).all(dim=-1)


def is_2_4(w: Tensor) -> bool:
    """True when every group of 4 consecutive weights along the input dim holds at least 2 zeros
    (NVIDIA's 2:4 semi-structured sparsity; ``w`` [out, in] with in % 4 == 0)."""
    if w.ndim != 2 or w.shape[1] % 4 or w.numel() == 0:
        return False
    return bool(((w.reshape(w.shape[0], -1, 4) == 0).sum(-1) >= 2).all())


def _sparsity(name: str, w: Tensor) -> dict:
    zeros = float((w == 0).float().mean()) if w.numel() else 0.0
    return {"tensor": name, "shape": list(w.shape), "zeros_left": round(zeros, 4), "semi_structured_2_4": is_2_4(w)}


def analyse(sd: Mapping[str, Tensor], dims: list[tuple[int, int, int]],
            prefixes: Optional[list[str]] = None, acts: Optional[list] = None) -> tuple[dict, dict, dict]:
    """Find the exactly removable structure in a dense-shaped timm ViT (or Swin) state dict.

    Args:
        sd: timm keys at the dense model's shapes, masks already applied (zeros).
        dims: per block (num_heads H, head_dim, MLP hidden).
        prefixes: per block, its key prefix and spec name (default ``blocks.{i}.``; Swin
            ``layers.{s}.blocks.{j}.``).
        acts: per block, the MLP activation (a callable; default exact GELU) a dead fc1 row's bias goes
            through before it is folded into fc2's bias. A Swin head's relative-bias column needs no check: a head whose
            v channels are all gone outputs nothing, whatever its logits.
    Returns:
        (state dict with constant outputs of removed units folded into the next bias -- the dense-layout
        weights to compile; canonical masks ``name -> bool tensor``; notes: ``removed`` counts,
        ``not_removed`` (reasons), ``unstructured`` (zeros left per kept tensor, 2:4 pattern)).
    """
    out = {k: v.clone() for k, v in sd.items()}
    masks: dict[str, Tensor] = {}
    removed = {"heads": 0, "qk_channels": 0, "v_channels": 0, "mlp_neurons": 0, "folded_biases": 0}
    not_removed: list[str] = []
    unstructured: list[dict] = []
    for i, (H, hd, hidden) in enumerate(dims):
        p = prefixes[i] if prefixes else f"blocks.{i}."
        W = out[p + "attn.qkv.weight"].view(3, H, hd, -1)
        b = out.get(p + "attn.qkv.bias")
        b = b.view(3, H, hd) if b is not None else None
        P = out[p + "attn.proj.weight"].view(-1, H, hd)
        q_dead = _zero_rows(W[0]) & ((b[0] == 0) if b is not None else True)
        qk_gone = q_dead | _zero_rows(W[1])
        v_row0, proj_col0 = _zero_rows(W[2]), (P == 0).all(0)
        v_gone = v_row0 | proj_col0
        if b is not None:  # a dead v row still outputs its bias: fold it into proj.bias
            fold = v_row0 & ~proj_col0 & (b[2] != 0)
            if fold.any():
                pb = out.setdefault(p + "attn.proj.bias", torch.zeros(P.shape[0]))
                pb += (P * (b[2] * fold)).sum((1, 2))
                b[2][fold] = 0
                removed["folded_biases"] += int(fold.sum())
        heads = ~v_gone.all(-1)
        for h in range(H):
            if heads[h] and qk_gone[h].all():
                qk_gone[h, 0] = False
                not_removed.append(f"{p[:-1]} head {h}: no live q/k channel but live v (uniform attention); one zero q/k channel kept")
        if not heads.all():
            masks[p + "heads"] = heads
        if (qk_gone[heads]).any():
            masks[p + "qk"] = ~qk_gone
        if (v_gone[heads]).any():
            masks[p + "v"] = ~v_gone
        removed["heads"] += int((~heads).sum())
        removed["qk_channels"] += int(qk_gone[heads].sum())
        removed["v_channels"] += int(v_gone[heads].sum())

        W1, W2 = out[p + "mlp.fc1.weight"], out[p + "mlp.fc2.weight"]
        b1 = out.get(p + "mlp.fc1.bias")
        row0, col0 = _zero_rows(W1), (W2 == 0).all(0)
        if b1 is not None:
            fold = row0 & ~col0 & (b1 != 0)
            if fold.any():
                b2 = out.setdefault(p + "mlp.fc2.bias", torch.zeros(W2.shape[0]))
                act = acts[i] if acts is not None else F.gelu
                b2 += W2[:, fold] @ act(b1[fold])
                b1[fold] = 0
                removed["folded_biases"] += int(fold.sum())
        neurons = ~(row0 | col0)
        if not neurons.all():
            masks[p + "mlp"] = neurons
        removed["mlp_neurons"] += int((~neurons).sum())

        # zeros that stay: inside the kept rows and columns
        qk_keep, v_keep = (~qk_gone & heads[:, None]).reshape(-1), (~v_gone & heads[:, None]).reshape(-1)
        Wf = W.reshape(3, H * hd, -1)
        for name, w in ((p + "attn.qkv.weight[q]", Wf[0][qk_keep]), (p + "attn.qkv.weight[k]", Wf[1][qk_keep]),
                        (p + "attn.qkv.weight[v]", Wf[2][v_keep]), (p + "attn.proj.weight", P.reshape(P.shape[0], -1)[:, v_keep]),
                        (p + "mlp.fc1.weight", W1[neurons]), (p + "mlp.fc2.weight", W2[:, neurons])):
            if w.numel() and (w == 0).any():
                unstructured.append(_sparsity(name, w))

    residual = [k for k in ("cls_token", "pos_embed", "patch_embed.proj.weight") if k in out]
    if residual:
        embed_dim = out["patch_embed.proj.weight"].shape[0]  # the first residual width (a Swin's stage 0)
        dead = torch.ones(embed_dim, dtype=torch.bool)
        for k in residual:
            t = out[k].reshape(-1, embed_dim) if k != "patch_embed.proj.weight" else out[k].reshape(embed_dim, -1).t()
            dead &= (t == 0).all(0)
        if dead.any():
            not_removed.append(f"{int(dead.sum())} residual (embed) channels are zero in the patch embedding and tokens "
                               "but LayerNorm statistics still count them: kept (give an `embed` mask to change the model)")
    return out, masks, {"removed": removed, "not_removed": not_removed, "unstructured": unstructured}


def from_zeroed(masked: dict[str, Tensor], ctx: ImportContext, notes: Optional[dict] = None) -> ImportResult:
    """The structure :func:`.zeroed.analyse` finds in ``masked`` (dense shapes, masks applied); the
    reference is ``masked`` itself run by timm -- exactly what the source computes. Tensors the model
    does not have (exit classifiers) travel along in the state dict."""
    ctx.check_shapes(masked, "checkpoint")
    own = ctx.model.state_dict()
    extras = {k: v.float() for k, v in masked.items() if k not in own and v.is_floating_point()}
    masked = {k: masked[k].float() if masked[k].is_floating_point() else masked[k] for k in own}
    folded, masks, found = analyse(masked, ctx.dims(), ctx.prefixes(), ctx.activations())
    spec = Spec(masks, {}, meta={"producer": "vitshrink import", "source": str(ctx.path)})
    return ImportResult("", "", {**folded, **extras}, spec, reference_state_dict={**masked, **extras},
                        reference_note="the checkpoint's masked weights run by timm (what the source computes)",
                        notes={**found, "index_history": "original indices (dense shapes)", **(notes or {})})


def _probe_zeroed(obj: Any, ctx: ImportContext) -> Optional[str]:
    sd = as_state_dict(obj)
    if sd is None or any(k.endswith("_orig") for k in sd):
        return None
    own = ctx.model.state_dict()
    if not all(k in sd and tuple(sd[k].shape) == tuple(v.shape) for k, v in own.items()):
        return None
    zero_rows = sum(int((sd[k] == 0).all(-1).sum()) for k in own if k.endswith(".weight") and sd[k].ndim == 2)
    return f"state dict at the dense shapes of {ctx.model_name}; {zero_rows} all-zero weight rows"


def _convert_zeroed(obj: Any, ctx: ImportContext) -> ImportResult:
    return from_zeroed(as_state_dict(obj), ctx)


FORMAT = Format("zeroed", "dense-shaped timm state dict with zeroed structure (prune.remove, S2ViTE, applied gates)",
                _probe_zeroed, _convert_zeroed, fallback=True, families=(VIT, SWIN))
