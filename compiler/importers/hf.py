"""Hugging Face transformers ``ViTForImageClassification`` / ``DeiTForImageClassificationWithTeacher``
(and ``SwinForImageClassification``: :mod:`.hf_swin`; the DINOv2, CLIP and SigLIP vision towers:
:mod:`.hf_towers`) directories (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``) -> the timm layout.

Both key layouts are read: transformers v4 (``{vit,deit}.encoder.layer.{i}.attention.attention.query``,
``.attention.output.dense``, ``.intermediate.dense``, ``.output.dense``) and v5
(``{vit,deit}.layers.{i}.attention.{q,k,v,o}_proj``, ``.mlp.fc1``/``.fc2``). q, k and v are stacked
into timm's fused ``qkv``. ``config.pruned_heads`` (``{layer: [original head ids]}``; v4 applied it at
load time, v5 cannot) becomes head masks, the kept heads placed at their *original* ids. HF's
LayerNorm eps (``layer_norm_eps``, 1e-12 by default; timm uses 1e-6) is kept: the compiled model
normalises as the source does.
"""
from __future__ import annotations

import re
from typing import Any, Optional

import torch
from torch import Tensor

from ..errors import CheckpointError, ModelError
from ..families import SWIN, VIT
from ..spec.format import Spec
from . import hf_swin, hf_towers
from .base import Format, ImportContext, ImportResult

_LAYER_V4 = {"layernorm_before": "norm1", "layernorm_after": "norm2", "attention.attention.query": "q",
             "attention.attention.key": "k", "attention.attention.value": "v", "attention.output.dense": "attn.proj",
             "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2"}
_LAYER_V5 = {"layernorm_before": "norm1", "layernorm_after": "norm2", "attention.q_proj": "q", "attention.k_proj": "k",
             "attention.v_proj": "v", "attention.o_proj": "attn.proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_TOP = {"embeddings.cls_token": "cls_token", "embeddings.distillation_token": "dist_token",
        "embeddings.position_embeddings": "pos_embed", "embeddings.patch_embeddings.projection": "patch_embed.proj",
        "layernorm": "norm"}
_HEADS = {"classifier": "head", "cls_classifier": "head", "distillation_classifier": "head_dist"}
_LAYER_RE = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)$")


#: the transformers ``model_type`` values read, per family
MODEL_TYPES = {VIT: ("vit", "deit", *hf_towers.MODEL_TYPES), SWIN: hf_swin.MODEL_TYPES}
KNOWN = {t for types in MODEL_TYPES.values() for t in types}


def refusal(config: dict) -> Optional[str]:
    """Why the transformers class of ``config`` is not imported (None: it is read)."""
    if config.get("model_type") not in KNOWN:
        return (f"Hugging Face {hf_towers.architecture(config)} (model_type '{config.get('model_type')}') is not imported"
                + (f": {hf_towers.WHY_NOT[hf_towers.architecture(config)]}" if hf_towers.architecture(config) in hf_towers.WHY_NOT
                   else "; vitshrink reads ViTForImageClassification, DeiTForImageClassification(WithTeacher), "
                        "SwinForImageClassification, Dinov2Model, Dinov2WithRegistersModel, CLIPVisionModel(WithProjection), "
                        "SiglipVisionModel"))
    return hf_towers.refuse(config) if config.get("model_type") in hf_towers.MODEL_TYPES else None


def model_kwargs(config: dict) -> dict:
    """timm ``create_model`` arguments an HF config needs beyond the model name (the towers' output width)."""
    return hf_towers.model_kwargs(config) if config.get("model_type") in hf_towers.MODEL_TYPES else {}


def timm_name(config: dict) -> Optional[str]:
    """The timm model with the architecture of an HF ViT/DeiT/Swin/DINOv2/CLIP/SigLIP config (the common
    sizes), or None.

    Raises:
        ModelError: a transformers class vitshrink does not import (named, with what to do).
    """
    why = refusal(config)
    if why:
        raise ModelError(why)
    if config.get("model_type") in hf_swin.MODEL_TYPES:
        return hf_swin.timm_swin_name(config)
    if config.get("model_type") in hf_towers.MODEL_TYPES:
        return hf_towers.timm_name(config)
    size = {192: "tiny", 384: "small", 768: "base", 1024: "large"}.get(config.get("hidden_size"))
    p, img = config.get("patch_size", 16), config.get("image_size", 224)
    if size is None:
        return None
    if config.get("model_type") == "deit":
        distilled = any("Teacher" in a for a in config.get("architectures") or [])
        return f"deit_{size}{'_distilled' if distilled else ''}_patch{p}_{img}"
    return f"vit_{size}_patch{p}_{img}"


def _probe(obj: Any, ctx: ImportContext) -> Optional[str]:
    if not (isinstance(obj, dict) and "hf_config" in obj):
        return None
    cfg = obj["hf_config"]
    if cfg.get("model_type") not in KNOWN:  # an HF class no format reads: the converter refuses it by name
        return f"Hugging Face {hf_towers.architecture(cfg)} directory (model_type '{cfg.get('model_type')}')"
    if cfg.get("model_type") not in MODEL_TYPES.get(ctx.family, ()):
        return None
    pruned = {k: v for k, v in (cfg.get("pruned_heads") or {}).items() if v}
    return (f"Hugging Face {cfg.get('model_type')} directory ({', '.join(cfg.get('architectures') or ['?'])}), "
            f"{sum(len(v) for v in pruned.values())} pruned heads in config.pruned_heads")


def label_names(cfg: dict) -> Optional[tuple[tuple[str, ...], str]]:
    """``config.id2label`` as one name per output in output order, and where it was read; None for transformers'
    placeholders (``LABEL_0``, ``LABEL_1``, ...: a model saved without label names) or a map with holes."""
    raw = cfg.get("id2label")
    if not isinstance(raw, dict) or not raw:
        return None
    try:
        by_index = {int(k): str(v) for k, v in raw.items()}
    except (TypeError, ValueError):
        return None
    names = tuple(by_index.get(i) for i in range(len(by_index)))
    if None in names or all(re.fullmatch(r"LABEL_\d+", n) for n in names):
        return None
    return names, "config.json id2label"


_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}  # PIL's codes


def data_config(pre: Optional[dict]) -> Optional[dict]:
    """An HF image processor's ``preprocessor_config.json`` as timm data-config keys, so timm's eval transform
    preprocesses as the processor does: ``image_mean`` / ``image_std`` (0 and 1 without ``do_normalize``),
    ``resample`` (PIL's code), and the geometry -- ``size`` {height, width} resized exactly (timm's
    ``crop_mode="squash"``) or {shortest_edge} (``"center"``), then ``crop_size`` when ``do_center_crop``
    (``crop_pct`` = crop / size). ``data_config_from`` names the file. None: no processor, or one whose pixel
    scaling is not 1/255 (then timm's defaults apply and the report says so).
    """
    if not pre or not pre.get("do_rescale", True) or abs(float(pre.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9:
        return None
    size, crop = pre.get("size") or {}, pre.get("crop_size") or {}
    side = size.get("height", size.get("shortest_edge")) if isinstance(size, dict) else size
    cfg: dict = {"data_config_from": "preprocessor_config.json (the HF image processor)"}
    if pre.get("do_normalize", True) and pre.get("image_mean") and pre.get("image_std"):
        cfg.update(mean=tuple(map(float, pre["image_mean"])), std=tuple(map(float, pre["image_std"])))
    elif not pre.get("do_normalize", True):
        cfg.update(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    if pre.get("resample") in _RESAMPLE:
        cfg["interpolation"] = _RESAMPLE[pre["resample"]]
    if isinstance(side, (int, float)) and side > 0:
        cfg["crop_mode"] = "squash" if isinstance(size, dict) and "height" in size else "center"
        cut = crop.get("height") if isinstance(crop, dict) and pre.get("do_center_crop") else None
        cfg["crop_pct"] = float(cut) / float(side) if isinstance(cut, (int, float)) and cut > 0 else 1.0
    return cfg


def _convert(obj: Any, ctx: ImportContext) -> ImportResult:
    result = _convert_any(obj, ctx)
    result.label_names = label_names(obj["hf_config"])
    result.data_config = data_config(obj.get("hf_preprocessor"))
    return result


def _convert_any(obj: Any, ctx: ImportContext) -> ImportResult:
    cfg, state = obj["hf_config"], obj["state"]
    why = refusal(cfg)
    if why:
        raise ModelError(why)
    if ctx.family is SWIN:
        return hf_swin.convert_swin(obj, ctx)
    if cfg["model_type"] in hf_towers.MODEL_TYPES:
        return _convert_tower(cfg, state, ctx)
    prefix = cfg["model_type"]
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise ModelError(f"unsupported HF option hidden_act={cfg.get('hidden_act')!r}: only exact (erf) GELU")
    has_dist = f"{prefix}.embeddings.distillation_token" in state
    if has_dist and "classifier.weight" in state:
        raise ModelError("unsupported HF model DeiTForImageClassification with a distillation token: it classifies from "
                         "the class token alone, timm's distilled DeiT averages both heads; use the WithTeacher model")
    sd: dict[str, Tensor] = {}
    layers: dict[int, dict[str, Tensor]] = {}
    for key, t in state.items():
        k = key.removeprefix(prefix + ".")
        m = _LAYER_RE.match(k)
        if m:
            i, name, kind = int(m.group(1)), m.group(2), m.group(3)
            table = _LAYER_V4 if k.startswith("encoder.") else _LAYER_V5
            if name not in table:
                raise CheckpointError(f"HF checkpoint '{ctx.path}': unknown key '{key}'")
            layers.setdefault(i, {})[f"{table[name]}.{kind}"] = t.float()
            continue
        base, _, kind = k.rpartition(".")
        if k in _TOP:  # tokens: no .weight suffix
            sd[_TOP[k]] = t.float()
        elif base in _TOP:
            sd[f"{_TOP[base]}.{kind}"] = t.float()
        elif base in _HEADS:
            sd[f"{_HEADS[base]}.{kind}"] = t.float()
        elif k.startswith("pooler."):
            continue  # ViTModel's pooler is not used by the image classifier
        else:
            raise CheckpointError(f"HF checkpoint '{ctx.path}': unknown key '{key}'")
    dims = ctx.dims()
    pruned = {int(k): sorted(v) for k, v in (cfg.get("pruned_heads") or {}).items()}
    masks: dict[str, Tensor] = {}
    D = ctx.model.embed_dim
    H0, hidden0 = dims[0][0], dims[0][2]
    got = (cfg.get("hidden_size"), cfg.get("num_attention_heads"), cfg.get("intermediate_size"))
    if None not in got and got != (D, H0, hidden0):
        raise CheckpointError(f"HF checkpoint '{ctx.path}' does not fit {ctx.model_name}: its config.json has hidden_size "
                              f"{got[0]}, {got[1]} heads, intermediate_size {got[2]}; {ctx.model_name} has embed_dim {D}, "
                              f"{H0} heads, MLP hidden {hidden0} (name the model the directory was trained from)")
    if len(layers) != len(dims):
        raise CheckpointError(f"HF checkpoint '{ctx.path}' does not fit {ctx.model_name}: it has {len(layers)} layers, "
                              f"{ctx.model_name} has {len(dims)} (name the model the directory was trained from)")
    for i, (H, hd, _) in enumerate(dims):
        lay, p = layers[i], f"blocks.{i}."
        kept = [h for h in range(H) if h not in pruned.get(i, [])]
        if pruned.get(i) and lay["q.weight"].shape[0] == H * hd:
            raise CheckpointError(f"HF checkpoint '{ctx.path}': config.pruned_heads lists heads {pruned[i]} of layer {i}, but "
                                  f"its q/k/v layers still hold all {H} heads (transformers 5 has no prune_heads and does not "
                                  "shrink them): either shrink the q/k/v rows and the output columns of those heads, or drop "
                                  "pruned_heads from config.json and give the heads as a spec (vitshrink masks / "
                                  "'blocks.{i}.heads' masks) with --spec")
        if lay["q.weight"].shape[0] != len(kept) * hd:
            raise CheckpointError(f"HF checkpoint '{ctx.path}': layer {i} query has {lay['q.weight'].shape[0]} rows, "
                                  f"expected {len(kept)} heads x {hd} (config.pruned_heads: {pruned.get(i, [])})")
        rows = torch.tensor([h * hd + c for h in kept for c in range(hd)], dtype=torch.long)
        qkv_w, qkv_b = torch.zeros(3, H * hd, D), torch.zeros(3, H * hd)
        for j, n in enumerate("qkv"):
            qkv_w[j, rows] = lay[f"{n}.weight"]
            if f"{n}.bias" in lay:
                qkv_b[j, rows] = lay[f"{n}.bias"]
        sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"] = qkv_w.reshape(3 * H * hd, D), qkv_b.reshape(-1)
        proj = torch.zeros(D, H * hd)
        proj[:, rows] = lay["attn.proj.weight"]
        sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"] = proj, lay["attn.proj.bias"]
        for n in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
            for kind in ("weight", "bias"):
                sd[f"{p}{n}.{kind}"] = lay[f"{n}.{kind}"]
        if len(kept) < H:
            masks[p + "heads"] = torch.tensor([h in kept for h in range(H)])
    ctx.check_shapes(sd, "HF checkpoint (in timm keys)")
    eps = float(cfg.get("layer_norm_eps", 1e-12))
    spec = Spec(masks, {}, meta={"producer": "vitshrink import", "source": str(ctx.path), "format": "hf"})
    return ImportResult("", "", sd, spec, reference_state_dict=sd, layer_norm_eps=eps,
                        reference_note="the HF model's computation: its weights in the timm layout, pruned heads as "
                                       f"zeros, LayerNorm eps {eps:g} (transformers v5 cannot apply pruned_heads itself)",
                        notes={"index_history": "original head ids from config.pruned_heads",
                               "layer_norm_eps": eps, "key_layout": "v4" if any(".encoder.layer." in k for k in state) else "v5",
                               "pruned_heads": {str(k): v for k, v in pruned.items()},
                               "removed": {"heads": sum(len(v) for v in pruned.values())}, "not_removed": [], "unstructured": []})


def _convert_tower(cfg: dict, state: dict, ctx: ImportContext) -> ImportResult:
    """A DINOv2 / CLIP / SigLIP vision tower (:mod:`.hf_towers`): dense, as transformers computes it."""
    sd, eps = hf_towers.convert(cfg, state, ctx)
    cls = hf_towers.architecture(cfg)
    spec = Spec({}, {}, meta={"producer": "vitshrink import", "source": str(ctx.path), "format": "hf"})
    return ImportResult("", "", sd, spec, reference_state_dict=sd, layer_norm_eps=eps, model_kwargs=model_kwargs(cfg),
                        reference_note=f"transformers' {cls}: its weights in the timm layout, LayerNorm eps {eps:g}",
                        notes={"index_history": "dense (no pruned heads)", "layer_norm_eps": eps, "hf_class": cls,
                               "output": "image_embeds" if cls.endswith("WithProjection") else "pooler_output",
                               "removed": {}, "not_removed": [], "unstructured": []})


FORMAT = Format("hf", "Hugging Face transformers ViT/DeiT/Swin/DINOv2/CLIP/SigLIP directory (config.json + weights), config.pruned_heads",
                _probe, _convert, families=(VIT, SWIN))
