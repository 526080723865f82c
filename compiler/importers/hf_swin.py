"""Hugging Face transformers ``SwinForImageClassification`` directories -> timm's Swin layout.

Both key layouts are read: transformers v4 (``swin.encoder.layers.{s}.blocks.{j}.attention.self.query``,
``.attention.self.relative_position_bias_table``, ``.attention.output.dense``, ``.intermediate.dense``,
``.output.dense``) and v5 (``.attention.{q,k,v,o}_proj``, ``.attention.relative_position_bias.
relative_position_bias_table``, ``.mlp.fc1``/``.fc2``). q, k and v are stacked into timm's fused ``qkv``;
HF's patch merging sits at the *end* of stage s (``layers.{s}.downsample``), timm's at the start of
stage s + 1, with the same (h0w0, h1w0, h0w1, h1w1) channel order. ``config.pruned_heads`` is refused
for Swin: transformers has no working head pruning for it (its relative position bias tables would keep
every head's column), so a non-empty entry cannot say what was removed.
"""
from __future__ import annotations

import re
from typing import Any, Optional

import torch
from torch import Tensor

from ..errors import CheckpointError, ModelError
from ..spec.format import Spec
from .base import ImportContext, ImportResult

MODEL_TYPES = ("swin",)  # transformers config.model_type
_BLOCK_RE = re.compile(r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.(.+)$")
_DOWN_RE = re.compile(r"^encoder\.layers\.(\d+)\.downsample\.(reduction|norm)\.(weight|bias)$")
_BLOCK = {  # HF (v4 and v5) -> timm, inside a block
    "layernorm_before": "norm1", "layernorm_after": "norm2",
    "attention.self.query": "q", "attention.self.key": "k", "attention.self.value": "v",
    "attention.q_proj": "q", "attention.k_proj": "k", "attention.v_proj": "v",
    "attention.output.dense": "attn.proj", "attention.o_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
}
_TABLE = ("attention.self.relative_position_bias_table", "attention.relative_position_bias.relative_position_bias_table")
_TOP = {"embeddings.patch_embeddings.projection": "patch_embed.proj", "embeddings.norm": "patch_embed.norm",
        "layernorm": "norm"}


def timm_swin_name(config: dict) -> Optional[str]:
    """The timm Swin with the architecture of an HF Swin config (tiny, small, base at 224), or None."""
    key = (config.get("embed_dim"), tuple(config.get("depths") or ()), tuple(config.get("num_heads") or ()))
    size = {(96, (2, 2, 6, 2), (3, 6, 12, 24)): "tiny", (96, (2, 2, 18, 2), (3, 6, 12, 24)): "small",
            (128, (2, 2, 18, 2), (4, 8, 16, 32)): "base"}.get(key)
    if size is None:
        return None
    return f"swin_{size}_patch{config.get('patch_size', 4)}_window{config.get('window_size', 7)}_{config.get('image_size', 224)}"


def convert_swin(obj: Any, ctx: ImportContext) -> ImportResult:
    """HF Swin weights -> the timm state dict of ``ctx.model`` (no masks: a dense import to prune with a spec).

    Raises:
        ModelError: a non-exact-GELU activation, absolute position embeddings, or config.pruned_heads.
        CheckpointError: an unknown key, or a stage/block count or shape that does not fit (named).
    """
    cfg, state = obj["hf_config"], obj["state"]
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise ModelError(f"unsupported HF option hidden_act={cfg.get('hidden_act')!r}: only exact (erf) GELU")
    if cfg.get("use_absolute_embeddings"):
        raise ModelError("unsupported HF Swin option use_absolute_embeddings=True (timm's Swin has none)")
    if any(cfg.get("pruned_heads") or {}):
        raise ModelError("unsupported HF Swin config.pruned_heads: transformers cannot prune Swin heads consistently "
                         "(the relative position bias tables keep every head); give the dense model and a spec")
    sd: dict[str, Tensor] = {}
    blocks: dict[tuple[int, int], dict[str, Tensor]] = {}
    for key, t in state.items():
        k = key.removeprefix("swin.")
        if k.endswith("relative_position_index") or k.endswith(".attn_mask"):
            continue  # buffers derived from the geometry (timm recomputes them)
        m = _BLOCK_RE.match(k)
        if m:
            s, j, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            base, _, kind = rest.rpartition(".")
            if rest in _TABLE:
                blocks.setdefault((s, j), {})["table"] = t.float()
            elif base in _BLOCK:
                blocks.setdefault((s, j), {})[f"{_BLOCK[base]}.{kind}"] = t.float()
            else:
                raise CheckpointError(f"HF checkpoint '{ctx.path}': unknown key '{key}'")
            continue
        m = _DOWN_RE.match(k)
        if m:  # HF: end of stage s; timm: start of stage s + 1
            sd[f"layers.{int(m.group(1)) + 1}.downsample.{m.group(2)}.{m.group(3)}"] = t.float()
            continue
        base, _, kind = k.rpartition(".")
        if base in _TOP:
            sd[f"{_TOP[base]}.{kind}"] = t.float()
        elif base == "classifier":
            sd[f"head.fc.{kind}"] = t.float()
        elif k.startswith("pooler."):
            continue
        else:
            raise CheckpointError(f"HF checkpoint '{ctx.path}': unknown key '{key}'")
    want = [(s, j) for s, st in enumerate(ctx.model.layers) for j in range(len(st.blocks))]
    if sorted(blocks) != want:
        raise CheckpointError(f"HF checkpoint '{ctx.path}' has blocks {sorted(blocks)[:3]}..., {ctx.model_name} "
                              f"has {len(want)} blocks in stages of {[len(st.blocks) for st in ctx.model.layers]}")
    for (s, j), b in blocks.items():
        p = f"layers.{s}.blocks.{j}."
        sd[p + "attn.qkv.weight"] = torch.cat([b["q.weight"], b["k.weight"], b["v.weight"]])
        if "q.bias" in b:
            sd[p + "attn.qkv.bias"] = torch.cat([b["q.bias"], b["k.bias"], b["v.bias"]])
        sd[p + "attn.relative_position_bias_table"] = b["table"]
        for n in ("attn.proj", "norm1", "norm2", "mlp.fc1", "mlp.fc2"):
            for kind in ("weight", "bias"):
                if f"{n}.{kind}" in b:
                    sd[f"{p}{n}.{kind}"] = b[f"{n}.{kind}"]
    ctx.check_shapes(sd, "HF checkpoint (in timm keys)")
    eps = float(cfg.get("layer_norm_eps", 1e-5))
    spec = Spec({}, {}, meta={"producer": "vitshrink import", "source": str(ctx.path), "format": "hf"})
    return ImportResult("", "", sd, spec, reference_state_dict=sd, layer_norm_eps=eps,
                        reference_note=f"the HF Swin's weights in the timm layout, LayerNorm eps {eps:g}",
                        notes={"index_history": "dense import (no pruned structure)", "layer_norm_eps": eps,
                               "key_layout": "v4" if any(".attention.self." in k for k in state) else "v5",
                               "removed": {"heads": 0}, "not_removed": [], "unstructured": []})
