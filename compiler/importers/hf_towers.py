"""Hugging Face transformers vision towers people fine-tune and ship -> the timm layout of the same model:

- ``Dinov2Model`` (``model_type`` ``dinov2``; timm ``vit_*_patch14_dinov2``): LayerScale (``layer_scale{1,2}.lambda1``
  -> ``ls{1,2}.gamma``), the class token's pooled output ``layernorm(x)[:, 0]`` (``pooler_output``);
  ``Dinov2WithRegistersModel`` (``dinov2_with_registers``; timm ``vit_*_patch14_reg4_dinov2``): the register
  tokens after the class token, which has its own position embedding row -- timm keeps the position
  embedding of the patches only (``no_embed_class``), so the class token's row is added to it here (exact);
- ``CLIPVisionModel`` / ``CLIPVisionModelWithProjection`` (``clip_vision_model``; timm ``vit_*_clip_*``,
  ``pre_norm``): ``pre_layrnorm`` -> ``norm_pre``, ``post_layernorm`` -> ``norm`` on the class token, QuickGELU
  where the config says ``quick_gelu`` (timm's ``*_clip_quickgelu_*``), the bias-free ``visual_projection`` ->
  the classifier ``head`` with a zero bias (its output is ``image_embeds``);
- ``SiglipVisionModel`` (``siglip_vision_model``; timm ``vit_*_siglip_*``): no class token, the attention
  pooling head (``head.probe``, ``head.attention`` -- ``nn.MultiheadAttention``'s packed ``in_proj`` -- , its
  LayerNorm and MLP) -> timm's ``attn_pool`` (``AttentionPoolLatent``: ``latent``, ``q``, ``kv``, ``proj``).

q, k and v are stacked into timm's fused ``qkv``. The model's output is what transformers returns as
``pooler_output`` (``image_embeds`` with the projection); the tests compare against transformers' own forward.
Other classes of these model types are refused by name (:func:`refuse`).
"""
from __future__ import annotations

import re
from typing import Optional

import torch
from torch import Tensor

from ..errors import CheckpointError, ModelError

#: model_type -> the transformers classes read
CLASSES = {"dinov2": ("Dinov2Model",), "dinov2_with_registers": ("Dinov2WithRegistersModel",),
           "clip_vision_model": ("CLIPVisionModel", "CLIPVisionModelWithProjection"),
           "siglip_vision_model": ("SiglipVisionModel",)}
MODEL_TYPES = tuple(CLASSES)
#: classes people try that have no timm form, and what to do instead
WHY_NOT = {
    "Dinov2ForImageClassification": "its classifier reads the class token concatenated with the mean patch token, "
                                    "a head timm's ViT (and vitshrink's IR) has no form for; compile the backbone "
                                    "(Dinov2Model) and keep the classifier outside",
    "CLIPModel": "it holds the text tower too; save the vision tower alone "
                 "(CLIPVisionModelWithProjection.from_pretrained(DIR).save_pretrained(OUT)) and import that",
    "SiglipModel": "it holds the text tower too; save the vision tower alone "
                   "(SiglipVisionModel.from_pretrained(DIR).save_pretrained(OUT)) and import that",
}
_ACT = {"gelu": "GELU", "quick_gelu": "QuickGELU", "gelu_pytorch_tanh": "GELUTanh"}
_SIZES = {384: "small", 768: "base", 1024: "large", 1536: "giant"}
_DINO = {"norm1": "norm1", "norm2": "norm2", "attention.attention.query": "q", "attention.attention.key": "k",
         "attention.attention.value": "v", "attention.output.dense": "attn.proj", "mlp.fc1": "mlp.fc1",
         "mlp.fc2": "mlp.fc2", "layer_scale1": "ls1", "layer_scale2": "ls2"}
_CLIP = {"layer_norm1": "norm1", "layer_norm2": "norm2", "self_attn.q_proj": "q", "self_attn.k_proj": "k",
         "self_attn.v_proj": "v", "self_attn.out_proj": "attn.proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_LAYER = re.compile(r"^encoder\.layers?\.(\d+)\.(.+)\.(weight|bias|lambda1)$")


def architecture(cfg: dict) -> str:
    """The transformers class a config was saved from (``architectures[0]``, or the model type)."""
    return (cfg.get("architectures") or [cfg.get("model_type", "?")])[0]


def refuse(cfg: dict) -> Optional[str]:
    """Why an HF directory of class ``architecture(cfg)`` is not read (None: it is)."""
    cls, mt = architecture(cfg), cfg.get("model_type")
    if cls in WHY_NOT:
        return f"Hugging Face {cls} is not imported: {WHY_NOT[cls]}"
    if mt in CLASSES and cls not in CLASSES[mt]:
        return f"Hugging Face {cls} (model_type '{mt}') is not imported: of that type vitshrink reads {', '.join(CLASSES[mt])}"
    if mt == "siglip_vision_model" and cfg.get("vision_use_head") is False:
        return "Hugging Face SiglipVisionModel with vision_use_head=false has no pooled output to compile"
    if cfg.get("use_swiglu_ffn"):
        return f"Hugging Face {cls} with use_swiglu_ffn=true (DINOv2 giant's SwiGLU MLP) is not imported yet"
    if any(cfg.get("pruned_heads") or {}):
        return (f"Hugging Face {cls} with config.pruned_heads: transformers 5 cannot prune its heads; import the dense "
                "model and give the heads as a spec (vitshrink masks / 'blocks.{i}.heads' masks)")
    return None


def timm_name(cfg: dict) -> Optional[str]:
    """The timm model with this tower's architecture (common sizes), or None."""
    mt, size, p = cfg.get("model_type"), _SIZES.get(cfg.get("hidden_size")), cfg.get("patch_size", 14)
    if size is None:
        return None
    if mt == "dinov2":
        return f"vit_{size}_patch{p}_dinov2"
    if mt == "dinov2_with_registers":
        return f"vit_{size}_patch{p}_reg{cfg.get('num_register_tokens', 4)}_dinov2"
    img = cfg.get("image_size", 224)
    if mt == "clip_vision_model":
        return f"vit_{size}_patch{p}_clip{'_quickgelu' if cfg.get('hidden_act') == 'quick_gelu' else ''}_{img}"
    return f"vit_{size}_patch{p}_siglip_{img}"


def model_kwargs(cfg: dict) -> dict:
    """timm ``create_model`` arguments the tower needs beyond its name: its output width (0: the pooled
    features, or the projection's width) and input size."""
    return {"num_classes": int(cfg.get("projection_dim", 0)) if architecture(cfg).endswith("WithProjection") else 0,
            "img_size": int(cfg.get("image_size", 224))}


def _split(key: str, table: dict, path) -> Optional[tuple[int, str]]:
    m = _LAYER.match(key)
    if not m:
        return None
    name, kind = m.group(2), m.group(3)
    if name not in table:
        raise CheckpointError(f"HF checkpoint '{path}': unknown key '{key}'")
    out = table[name]
    return int(m.group(1)), f"{out}.gamma" if kind == "lambda1" else f"{out}.{kind}"


def convert(cfg: dict, state: dict[str, Tensor], ctx) -> tuple[dict[str, Tensor], float]:
    """The tower's weights in the timm keys of ``ctx.model`` and the LayerNorm eps it normalises with.

    Raises:
        ModelError: the class is not read (:func:`refuse`) or its activation is not the timm model's.
        CheckpointError: an unknown key, a layer count or shape that does not fit ``ctx.model`` (named).
    """
    why = refuse(cfg)
    if why:
        raise ModelError(why)
    mt, path = cfg["model_type"], ctx.path
    act, have = _ACT.get(cfg.get("hidden_act", "gelu")), type(ctx.activations()[0]).__name__
    if act is None or (act != have and not (act == "GELUTanh" and have == "GELU" and ctx.activations()[0].approximate == "tanh")):
        raise ModelError(f"HF checkpoint '{path}': hidden_act={cfg.get('hidden_act')!r} but {ctx.model_name}'s MLP runs "
                         f"{have}; name the timm model of the same activation (e.g. the *_quickgelu_* CLIP towers)")
    table = _DINO if mt.startswith("dinov2") else _CLIP
    sd: dict[str, Tensor] = {}
    layers: dict[int, dict[str, Tensor]] = {}
    top = {}
    for key, t in state.items():
        k = key.removeprefix("vision_model.")
        hit = _split(k, table, path)
        if hit:
            layers.setdefault(hit[0], {})[hit[1]] = t.float()
        else:
            top[k] = t.float()
    own = ctx.model.state_dict()
    if len(layers) != len(ctx.dims()):
        raise CheckpointError(f"HF checkpoint '{path}' has {len(layers)} layers, {ctx.model_name} has {len(ctx.dims())}")
    for i, lay in sorted(layers.items()):
        p = f"blocks.{i}."
        sd[p + "attn.qkv.weight"] = torch.cat([lay[f"{n}.weight"] for n in "qkv"])
        if p + "attn.qkv.bias" in own:
            sd[p + "attn.qkv.bias"] = torch.cat([lay.get(f"{n}.bias", torch.zeros(len(lay[f"{n}.weight"]))) for n in "qkv"])
        sd.update({p + k: v for k, v in lay.items() if k[0] not in "qkv"})
    unread = set(top) - _top(mt, cfg, top, sd)
    unread.discard("embeddings.mask_token")  # DINOv2's masked-image-modelling token: never used at inference
    if unread:
        raise CheckpointError(f"HF checkpoint '{path}': unknown key '{sorted(unread)[0]}'")
    ctx.check_shapes(sd, "HF checkpoint (in timm keys)")
    return sd, float(cfg.get("layer_norm_eps", 1e-6 if mt != "clip_vision_model" else 1e-5))


def _top(mt: str, cfg: dict, top: dict[str, Tensor], sd: dict[str, Tensor]) -> set[str]:
    """Write the tower's non-block weights into ``sd`` (timm keys); returns the HF keys read."""
    def take(src: str, dst: str, fn=lambda t: t):
        for kind in ("weight", "bias"):
            if f"{src}.{kind}" in top:
                sd[f"{dst}.{kind}"] = fn(top[f"{src}.{kind}"])
                read.add(f"{src}.{kind}")

    read: set[str] = set()
    if mt.startswith("dinov2"):
        take("embeddings.patch_embeddings.projection", "patch_embed.proj")
        take("layernorm", "norm")
        cls, pos = top["embeddings.cls_token"], top["embeddings.position_embeddings"]
        read |= {"embeddings.cls_token", "embeddings.position_embeddings"}
        if mt == "dinov2_with_registers":  # timm: position embedding of the patches only, the class token's row folded
            sd["cls_token"], sd["pos_embed"] = cls + pos[:, :1], pos[:, 1:]
            sd["reg_token"] = top["embeddings.register_tokens"]
            read.add("embeddings.register_tokens")
        else:
            sd["cls_token"], sd["pos_embed"] = cls, pos
        return read
    take("embeddings.patch_embedding", "patch_embed.proj")
    take("post_layernorm", "norm")
    sd["pos_embed"] = top["embeddings.position_embedding.weight"][None]
    read.add("embeddings.position_embedding.weight")
    if mt == "clip_vision_model":
        take("pre_layrnorm", "norm_pre")
        sd["cls_token"] = top["embeddings.class_embedding"].reshape(1, 1, -1)
        read.add("embeddings.class_embedding")
        if "visual_projection.weight" in top:
            w = top["visual_projection.weight"]
            sd["head.weight"], sd["head.bias"] = w, torch.zeros(len(w))
            read.add("visual_projection.weight")
        return read
    D = top["head.probe"].shape[-1]  # SigLIP's attention-pooling head
    sd["attn_pool.latent"] = top["head.probe"]
    w, b = top["head.attention.in_proj_weight"], top["head.attention.in_proj_bias"]
    sd["attn_pool.q.weight"], sd["attn_pool.q.bias"] = w[:D], b[:D]
    sd["attn_pool.kv.weight"], sd["attn_pool.kv.bias"] = w[D:], b[D:]
    read |= {"head.probe", "head.attention.in_proj_weight", "head.attention.in_proj_bias"}
    take("head.attention.out_proj", "attn_pool.proj")
    take("head.layernorm", "attn_pool.norm")
    take("head.mlp.fc1", "attn_pool.mlp.fc1")
    take("head.mlp.fc2", "attn_pool.mlp.fc2")
    return read
