"""VTC-LFC (Daner-Wang/VTC-LFC): the pruned "cfged" DeiT and its token schedule.

Read from ``models/deit/deit.py`` and ``pruning/pruning_py/pruning_deit.py``: the checkpoint
``{"model", "dim_cfg", "token_cfg", "i_mask", "o_mask", "args", ...}`` holds the *shrunk* model.
``dim_cfg``: ``"embed"``, ``"q.i"``, ``"k.i"``, ``"v.i"``, ``"proj.i"``, ``"fc1.i"``, ``"fc2.i"`` as
(in, out), ``"h.i"`` as (heads,). Its ``Attention_cfged`` splits the C_q q/k channels and the C_v v
channels evenly over the heads (C_q / H per head for q and k, C_v / H for v -- so q/k and v widths
differ) and scales by ``qk_scale = 64 ** -0.5`` when ``args.keep_qk_scale``, else by the *pruned*
``(C_q / H) ** -0.5``. ``gamma_1``/``gamma_2`` multiply the attention and MLP outputs (folded into
proj / fc2). ``token_cfg[i]``: image tokens kept after the attention of block i by its selector --
class attention weighted per head times the low-frequency energy (cutoff ``1 - args.cutoff_token``,
default 0.15), i.e. the ``cls_attention_lfe`` rule with ``head_weighting``; the selector keeps
``torch.topk(sorted=False)`` order, which the backend decides, while vitshrink keeps the kept tokens in
their original order (a documented difference only when a later selector's FFT sees them).

The kept channels are placed first within each head: the cfged model computes by position, and
``o_mask`` indices cannot be reconciled with its even per-head split when widths were unequal.
"""
from __future__ import annotations

from typing import Any, Optional

from ..errors import CheckpointError, VitshrinkError
from ..spec.format import Spec
from .base import Format, ImportContext, ImportResult
from .load import as_state_dict
from .safe_pickle import Record
from .shrunk import place_shrunk


def _probe(obj: Any, ctx: ImportContext) -> Optional[str]:
    if isinstance(obj, dict) and isinstance(obj.get("dim_cfg"), dict) and "model" in obj:
        return "VTC-LFC checkpoint (dim_cfg" + (", token_cfg" if obj.get("token_cfg") is not None else "") + ")"
    return None


def _arg(obj: Any, ctx: ImportContext, name: str, default):
    if ctx.option(name) is not None:
        return type(default)(ctx.option(name)) if not isinstance(default, bool) else ctx.option(name) in ("1", "true", "True")
    args = obj.get("args")
    state = args.state if isinstance(args, Record) else getattr(args, "__dict__", {}) if args is not None else {}
    return state.get(name, default)


def _convert(obj: Any, ctx: ImportContext) -> ImportResult:
    cfg, sd = obj["dim_cfg"], as_state_dict(obj["model"])
    if sd is None:
        raise CheckpointError(f"checkpoint '{ctx.path}': 'model' holds no state dict")
    sd = dict(sd)
    dims = ctx.dims()
    heads, scales, notes = [], [], []
    keep_scale = bool(_arg(obj, ctx, "keep_qk_scale", True))
    for i, (H, hd, _) in enumerate(dims):
        try:
            H2, (_, c_q), (_, c_k), (_, c_v) = int(cfg[f"h.{i}"][0]), cfg[f"q.{i}"], cfg[f"k.{i}"], cfg[f"v.{i}"]
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint '{ctx.path}': dim_cfg has no usable 'h.{i}'/'q.{i}'/'k.{i}'/'v.{i}' ({e})") from e
        if c_q != c_k or c_q % H2 or c_v % H2:
            raise CheckpointError(f"checkpoint '{ctx.path}': dim_cfg block {i}: q {c_q}, k {c_k}, v {c_v} channels do "
                                  f"not split evenly over {H2} heads with q == k")
        heads.append((H2, c_q // H2, c_v // H2))
        scales.append(64 ** -0.5 if keep_scale else (c_q // H2) ** -0.5)
        p = f"blocks.{i}."
        for gamma, lin in (("gamma_1", "attn.proj"), ("gamma_2", "mlp.fc2")):  # output multipliers: fold
            g = sd.pop(p + gamma, None)
            if g is not None:
                sd[f"{p}{lin}.weight"] = sd[f"{p}{lin}.weight"] * g[:, None]
                sd[f"{p}{lin}.bias"] = sd[f"{p}{lin}.bias"] * g
    placed, folded, masks, widths = place_shrunk(sd, ctx, heads, scales)
    settings: dict = {}
    token_cfg = obj.get("token_cfg")
    if token_cfg is not None:
        cutoff = 1.0 - float(_arg(obj, ctx, "cutoff_token", 0.85))
        present = ctx.model.patch_embed.num_patches
        rules = {}
        for i, n in enumerate(list(token_cfg)[: len(dims)]):
            n = int(n)
            if n >= present:
                continue
            if n < 1:
                raise VitshrinkError(f"token_cfg[{i}] = {n}: a block keeping only the class token is not supported")
            rules[str(i)] = {"keep": n, "score": "cls_attention_lfe", "head_weighting": True, "where": "mlp",
                             "cutoff": cutoff}
            present = n
        if rules:
            settings["dynamic_tokens"] = rules
            notes.append("kept tokens stay in their original order (the authors' topk(sorted=False) leaves it to the backend)")
    full = "embed" not in masks and not settings
    return ImportResult(
        "", "", folded, Spec(masks, settings, meta={"producer": "vitshrink import", "format": "vtc-lfc"}),
        reference_state_dict=placed if full else None,
        reference_scales=dict(enumerate(scales)) if full else {},
        reference_note=("its shrunk tensors in the dense timm model, zeros elsewhere, with its softmax scale" if full else
                        "token selection (or a pruned embedding) is not expressible in timm: checked against the masked "
                        "dense reference, whose LFE is the authors' FFT formulation"),
        notes={"index_history": "dim_cfg widths; kept channels placed first in each head (the cfged model splits by "
                                "position)", "shrunk_widths": widths,
               "softmax_scale": "64 ** -0.5 (keep_qk_scale)" if keep_scale else "the pruned q/k width per head ** -0.5",
               "removed": {}, "not_removed": notes, "unstructured": []})


FORMAT = Format("vtc-lfc", "VTC-LFC: {'model', 'dim_cfg', 'token_cfg', ...} (unequal q/k and v widths, LFE token rule)",
                _probe, _convert, reads=("dim_cfg", "token_cfg"))
