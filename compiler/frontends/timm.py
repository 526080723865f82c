"""timm frontend: ``VisionTransformer`` / ``VisionTransformerDistilled`` -> :class:`~vitshrink.ir.ViTIR`.

Covers the DeiT/ViT family (``deit_{tiny,small,base}_patch16_224``, their ``_distilled`` variants,
``vit_{tiny,small,base}_patch16_224``) and any timm model built from the same options. Every option
the IR cannot represent exactly is refused with a :class:`ModelError` naming the option.
"""
from __future__ import annotations

import difflib
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .._torchvision_shim import ensure_timm_importable
from ..errors import CheckpointError, ModelError
from ..ir import AttentionIR, BlockIR, ClassifierIR, LayerNormIR, MlpIR, PrefixTokenIR, ViTIR

#: The models the test suite covers. Other timm models pass if they use only supported options.
TESTED_MODELS = (
    "deit_tiny_patch16_224",
    "deit_small_patch16_224",
    "deit_base_patch16_224",
    "deit_tiny_distilled_patch16_224",
    "deit_small_distilled_patch16_224",
    "deit_base_distilled_patch16_224",
    "deit3_small_patch16_224",
    "deit3_base_patch16_224",
    "vit_tiny_patch16_224",
    "vit_small_patch16_224",
    "vit_base_patch16_224",
)


def _timm():
    ensure_timm_importable()
    import timm

    return timm


def create_model(name: str, **kwargs) -> nn.Module:
    """Build timm model ``name`` with random weights, in eval mode.

    Raises:
        ModelError: timm has no model of that name (closest names are suggested).
    """
    timm = _timm()
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelError(f"unknown model '{name}' (not a timm model name){hint}")
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file: safetensors, or a torch pickle (``.pth``/``.pt``/``.bin``) holding a
    state dict, possibly under ``model`` / ``state_dict`` / ``model_ema``.

    Raises:
        CheckpointError: missing or unreadable file, or no state dict inside.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}': no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure is "unreadable"
        raise CheckpointError(f"checkpoint '{path}': cannot be read ({type(e).__name__}: {e})".splitlines()[0]) from e
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"checkpoint '{path}': holds no state dict of tensors")
    if any(k.startswith("module.") for k in sd):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return sd


def load_checkpoint(model: nn.Module, path: str | Path) -> dict[str, torch.Tensor]:
    """Load ``path`` into ``model`` (every model key must be present with its exact shape).

    Returns:
        The checkpoint's extra tensors (keys the model does not have): exit classifiers, predictors.
    Raises:
        CheckpointError: unreadable file, a missing key, or a shape mismatch (named).
    """
    return load_state(model, read_state_dict(path), f"checkpoint '{path}'")


def load_state(model: nn.Module, sd: dict[str, torch.Tensor], where: str = "state dict") -> dict[str, torch.Tensor]:
    """Load the state dict ``sd`` into ``model`` strictly; ``where`` names its origin in errors.

    Returns:
        The extra tensors of ``sd`` (keys the model does not have).
    Raises:
        CheckpointError: a missing key or a shape mismatch (named).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise CheckpointError(f"{where} does not match the model: key '{missing[0]}' missing{more}")
    for k, v in own.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{where} does not match the model: '{k}' has shape {list(sd[k].shape)}, "
                f"the model needs {list(v.shape)}"
            )
    model.load_state_dict({k: sd[k].float() for k in own}, strict=True)
    return {k: v.float() for k, v in sd.items() if k not in own}


def _refuse(option: str, value, why: str = "") -> None:
    raise ModelError(f"unsupported model option {option}={value!r}" + (f": {why}" if why else ""))


def _is_identity(m) -> bool:
    return m is None or isinstance(m, nn.Identity)


def _check_supported(model: nn.Module) -> None:
    timm = _timm()
    from timm.layers import Mlp, PatchEmbed
    from timm.layers.attention import Attention
    from timm.models.vision_transformer import Block, LayerScale, VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise ModelError(
            f"unsupported model class {type(model).__name__}: the timm frontend handles VisionTransformer "
            f"(DeiT/ViT) models only (timm {timm.__version__})"
        )
    if model.global_pool not in ("token", "avg"):
        _refuse("global_pool", model.global_pool, "'token' (class token) and 'avg' pooling are supported")
    if model.global_pool == "avg" and getattr(model, "pool_include_prefix", False):
        _refuse("pool_include_prefix", True, "average pooling over the patch tokens only is supported")
    if model.global_pool == "token" and (not getattr(model, "has_class_token", True) or model.cls_token is None):
        _refuse("class_token", False, "'token' pooling reads the class token")
    if getattr(model, "num_reg_tokens", 0) and type(model) is not VisionTransformer:
        _refuse("reg_tokens", model.num_reg_tokens, f"register tokens in {type(model).__name__}")
    if getattr(model, "dynamic_img_size", False):
        _refuse("dynamic_img_size", True)
    if model.pos_embed is None:
        _refuse("pos_embed", "none")
    if not _is_identity(model.norm_pre):
        _refuse("pre_norm", True)
    if not (_is_identity(getattr(model, "fc_norm", None)) or isinstance(model.fc_norm, nn.LayerNorm)):
        _refuse("fc_norm", type(model.fc_norm).__name__)
    if getattr(model, "attn_pool", None) is not None:
        _refuse("global_pool", model.global_pool)
    if not _is_identity(model.patch_drop):
        _refuse("patch_drop_rate", model.patch_drop.prob)
    if not isinstance(model.head, nn.Linear):
        _refuse("num_classes", 0, "a classifier head is required")
    if not (isinstance(model.norm, nn.LayerNorm) or _is_identity(model.norm)):
        _refuse("final_norm", type(model.norm).__name__)
    pe = model.patch_embed
    if type(pe) is not PatchEmbed or not _is_identity(pe.norm) or not pe.flatten or pe.dynamic_img_pad:
        _refuse("embed_layer", type(pe).__name__, "a plain PatchEmbed (conv, flatten, no norm) is required")
    if tuple(pe.proj.kernel_size) != tuple(pe.proj.stride) or pe.proj.padding not in ((0, 0), 0, "valid"):
        _refuse("patch_embed.proj", f"kernel={pe.proj.kernel_size} stride={pe.proj.stride}")
    for i, blk in enumerate(model.blocks):
        where = f"blocks.{i}"
        if type(blk) is not Block:
            _refuse("block_fn", type(blk).__name__)
        for ls in (blk.ls1, blk.ls2):  # LayerScale (DeiT-III) is folded into proj / fc2 (from_timm)
            if not (_is_identity(ls) or type(ls) is LayerScale):
                _refuse("init_values", type(ls).__name__, f"{where}: only timm's LayerScale is folded")
        if not (isinstance(blk.norm1, nn.LayerNorm) and isinstance(blk.norm2, nn.LayerNorm)):
            _refuse("norm_layer", type(blk.norm1).__name__)
        a = blk.attn
        if type(a) is not Attention:
            _refuse("attn_layer", type(a).__name__)
        if not (_is_identity(a.q_norm) and _is_identity(a.k_norm)):
            _refuse("qk_norm", True)
        if not _is_identity(getattr(a, "norm", None)):
            _refuse("scale_attn_norm", True)
        if getattr(a, "gate", None) is not None:
            _refuse("gated", True)
        m = blk.mlp
        if type(m) is not Mlp or not _is_identity(getattr(m, "norm", None)):
            _refuse("mlp_layer", type(m).__name__)
        if not isinstance(m.fc1, nn.Linear):
            _refuse("mlp_layer", "conv (use_conv)")
        act = m.act
        if not (isinstance(act, nn.GELU) and act.approximate == "none"):
            _refuse("act_layer", type(act).__name__, "only exact (erf) GELU is supported")


def _ln(m: nn.LayerNorm) -> LayerNormIR:
    if m.weight is None or m.bias is None:
        _refuse("norm_layer", "LayerNorm without affine")
    return LayerNormIR(m.weight.detach().clone(), m.bias.detach().clone(), float(m.eps))


def _clone(p: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if p is None else p.detach().clone()


def _gamma(ls) -> Optional[torch.Tensor]:
    """LayerScale's per-channel gamma [D], or None (Identity)."""
    return None if _is_identity(ls) else ls.gamma.detach()


def _scaled(weight: torch.Tensor, bias: Optional[torch.Tensor], gamma: Optional[torch.Tensor]):
    """(gamma * W, gamma * b): LayerScale after a Linear folded into it, ``gamma*(Wy+b) = (gamma W)y + gamma b``."""
    if gamma is None:
        return weight.detach().clone(), _clone(bias)
    return (weight.detach() * gamma[:, None]).clone(), None if bias is None else (bias.detach() * gamma).clone()


def from_timm(model: nn.Module, name: Optional[str] = None) -> ViTIR:
    """Translate a timm ViT/DeiT into the IR (a copy of its weights; the model is not changed).

    LayerScale (DeiT-III, ``init_values``) is folded exactly into attn.proj and mlp.fc2 (rows scaled by
    gamma); register tokens (``reg_tokens``) become prefix tokens after the class token, never pruned;
    ``no_embed_class`` position embeddings become zero rows for the prefix tokens; ``global_pool='avg'``
    (with or without a class token, with ``fc_norm`` or a final norm) pools the patch tokens.

    Raises:
        ModelError: the model uses an option the IR cannot represent (the option is named).
    """
    _check_supported(model)
    from timm.models.deit import VisionTransformerDistilled

    D = model.embed_dim
    blocks = []
    for i, blk in enumerate(model.blocks):
        a = blk.attn
        H, hd = a.num_heads, a.head_dim
        w = a.qkv.weight.detach()
        b = a.qkv.bias.detach() if a.qkv.bias is not None else None
        q_w, k_w, v_w = (w[j * H * hd:(j + 1) * H * hd].clone() for j in range(3))
        q_b, k_b, v_b = (None, None, None) if b is None else (b[j * H * hd:(j + 1) * H * hd].clone() for j in range(3))
        attn = AttentionIR(
            head_ids=tuple(range(H)),
            qk_ids=tuple(tuple(range(hd)) for _ in range(H)),
            v_ids=tuple(tuple(range(hd)) for _ in range(H)),
            q_weight=q_w, q_bias=q_b, k_weight=k_w, k_bias=k_b, v_weight=v_w, v_bias=v_b,
            **dict(zip(("proj_weight", "proj_bias"), _scaled(a.proj.weight, a.proj.bias, _gamma(blk.ls1)))),
            scale=float(a.scale),
        )
        m = blk.mlp
        mlp = MlpIR(
            hidden_ids=tuple(range(m.fc1.out_features)),
            fc1_weight=m.fc1.weight.detach().clone(), fc1_bias=_clone(m.fc1.bias),
            **dict(zip(("fc2_weight", "fc2_bias"), _scaled(m.fc2.weight, m.fc2.bias, _gamma(blk.ls2)))),
        )
        blocks.append(BlockIR(i, _ln(blk.norm1), attn, _ln(blk.norm2), mlp))

    prefix = [] if model.cls_token is None else [PrefixTokenIR("cls", model.cls_token.detach().reshape(D).clone())]
    reg = getattr(model, "reg_token", None)
    if reg is not None:  # timm's order: class token, register tokens, patches
        prefix += [PrefixTokenIR(f"reg{j}", t.clone()) for j, t in enumerate(reg.detach().reshape(-1, D))]
    avg = model.global_pool == "avg"
    heads = [ClassifierIR("head", -1 if avg else 0, model.head.weight.detach().clone(), _clone(model.head.bias))]
    if isinstance(model, VisionTransformerDistilled):
        prefix.append(PrefixTokenIR("dist", model.dist_token.detach().reshape(D).clone()))
        heads.append(ClassifierIR("head_dist", 1, model.head_dist.weight.detach().clone(), _clone(model.head_dist.bias)))
    pe = model.patch_embed
    ir = ViTIR(
        name=name or getattr(model, "default_cfg", {}).get("architecture", type(model).__name__),
        img_size=tuple(pe.img_size),
        patch_size=tuple(pe.patch_size),
        in_chans=int(pe.proj.in_channels),
        embed_ids=tuple(range(D)),
        patch_weight=pe.proj.weight.detach().clone(),
        patch_bias=_clone(pe.proj.bias),
        prefix=tuple(prefix),
        pos_embed=_pos_embed(model, len(prefix), D),
        blocks=tuple(blocks),
        norm=None if _is_identity(model.norm) else _ln(model.norm),
        heads=tuple(heads),
        meta={"frontend": "timm"},
        pool=model.global_pool,
        fc_norm=None if _is_identity(getattr(model, "fc_norm", None)) else _ln(model.fc_norm),
    )
    if ir.pos_embed.shape[0] != ir.num_tokens:
        _refuse("pos_embed", f"{ir.pos_embed.shape[0]} rows for {ir.num_tokens} tokens")
    return ir


def _pos_embed(model: nn.Module, num_prefix: int, D: int) -> torch.Tensor:
    """[N, D] added after the prefix tokens are prepended; ``no_embed_class`` (DeiT-III): zero rows
    for the prefix tokens (timm adds its position embeddings to the patches only)."""
    pos = model.pos_embed.detach().reshape(-1, D)
    if getattr(model, "no_embed_class", False):
        pos = torch.cat([torch.zeros(num_prefix, D, dtype=pos.dtype), pos])
    return pos.clone()


def eval_transform(model: nn.Module):
    """timm's own eval transform for ``model`` (resize, center crop, normalise), as a callable on PIL images."""
    timm = _timm()
    cfg = timm.data.resolve_data_config({}, model=model)
    return timm.data.create_transform(**cfg, is_training=False)


def import_model(name: str, checkpoint: Optional[str | Path] = None, state_dict: Optional[dict[str, torch.Tensor]] = None,
                 configure=None) -> tuple[nn.Module, ViTIR, dict[str, torch.Tensor]]:
    """Create timm model ``name``, load its weights and import it.

    Args:
        name: timm model name.
        checkpoint: a weights file (safetensors or a pickled state dict).
        state_dict: weights already in memory (e.g. from :func:`vitshrink.importers.import_checkpoint`);
            neither: random weights, with a warning.
        configure: called on the timm model before translation (an importer's
            :meth:`~vitshrink.importers.ImportResult.configure`: e.g. the source's LayerNorm eps).
    Returns:
        (timm model in eval mode, dense IR -- a :class:`ViTIR`, or a :class:`~vitshrink.ir_swin.SwinIR`
        for a timm SwinTransformer --, extra checkpoint tensors not in the model).
    Raises:
        ModelError, CheckpointError.
    """
    model = create_model(name)
    extras: dict[str, torch.Tensor] = {}
    if state_dict is not None:
        extras = load_state(model, state_dict, f"imported weights for {name}")
    elif checkpoint is None:
        warnings.warn(
            f"no checkpoint given: {name} has RANDOM weights (latency and exactness are meaningful, accuracy is not)",
            stacklevel=2,
        )
    else:
        extras = load_checkpoint(model, checkpoint)
    if configure is not None:
        configure(model)
    from .timm_swin import from_timm_swin, is_swin

    return model, (from_timm_swin(model, name) if is_swin(model) else from_timm(model, name)), extras
