"""timm models and checkpoints: create a model by name, read and load checkpoints, the eval transform.

The per-family translations into the IR are :mod:`.timm_vit` (ViT/DeiT; :func:`from_timm` is re-exported
here) and :mod:`.timm_swin`; :func:`vitshrink.import_model` picks the one a model needs (the family
registry, :mod:`vitshrink.families`).
"""
from __future__ import annotations

import difflib
import json
import warnings
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file
from torch import nn

from ..errors import CheckpointError, ModelError
from .timm_common import timm
from .timm_vit import TESTED_MODELS, from_timm

__all__ = ["TESTED_MODELS", "check_model_name", "create_model", "fit_pos_embed", "eval_transform", "from_timm", "load_checkpoint", "load_state",
           "read_state_dict"]


def check_model_name(name: str) -> None:
    """Raises:
        ModelError: timm has no model ``name`` (the closest names are suggested)."""
    t = timm()
    if not t.is_model(name):
        close = difflib.get_close_matches(name, t.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelError(f"unknown model '{name}' (not a timm model name){hint}")


def create_model(name: str, **kwargs) -> nn.Module:
    """Build timm model ``name`` with random weights, in eval mode.

    Raises:
        ModelError: timm has no model of that name (closest names are suggested).
    """
    check_model_name(name)
    return timm().create_model(name, pretrained=False, **kwargs).eval()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file: safetensors, or a torch pickle (``.pth``/``.pt``/``.bin``) holding a
    state dict, possibly under ``model`` / ``state_dict`` / ``model_ema``.

    Raises:
        CheckpointError: missing or unreadable file, or no state dict inside.
    """
    path = Path(path)
    if path.is_dir():
        what = "a Hugging Face directory" if (path / "config.json").is_file() else "a directory"
        raise CheckpointError(f"checkpoint '{path}': {what}, not a weights file: convert it with `vitshrink import {path} "
                              f"--out DIR` and use DIR/dense.safetensors (and DIR/spec.json)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}': no such file")
    try:
        if path.suffix == ".safetensors":
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


def fit_classifier(model: nn.Module, sd: dict[str, torch.Tensor], num_classes: Optional[int] = None) -> None:
    """A checkpoint fine-tuned to its own classes: when its classifier weight (timm's ``pretrained_cfg``
    ``classifier``: ``head``, ``head.fc``; a distilled model's ``head`` and ``head_dist``) is [N, D] with N other
    than the model's ``num_classes``, timm's ``reset_classifier(N)`` makes the model's head that size before the
    weights load (a 10-class ViT fine-tuned from ImageNet: N = 10). A checkpoint without any classifier key is a
    feature extractor (``reset_classifier(0)``: the output is the pooled features [B, D]), said in a warning.

    Args:
        num_classes: ``--num-classes``: the number the user expects (0: a feature extractor, any head in ``sd``
            is left out); None: read from ``sd``.
    Raises:
        CheckpointError: ``num_classes`` > 0 that does not match the checkpoint's classifier (key and shape named).
    """
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    if not names or not hasattr(model, "reset_classifier"):
        return
    key = next((f"{n}.weight" for n in names if f"{n}.weight" in sd), None)
    weight = sd[key] if key is not None and sd[key].ndim == 2 else None
    if num_classes is not None:
        if num_classes < 0:
            raise CheckpointError(f"--num-classes {num_classes}: give the number of classes (0: a feature extractor)")
        if num_classes and weight is not None and weight.shape[0] != num_classes:
            raise CheckpointError(f"--num-classes {num_classes} does not fit the checkpoint: '{key}' has shape "
                                  f"{list(weight.shape)}, a head of {weight.shape[0]} classes")
        target = num_classes
    elif weight is not None:
        target = int(weight.shape[0])
    elif not any(k.startswith(f"{n}.") for n in names for k in sd) and getattr(model, "num_classes", 0):
        warnings.warn(f"the checkpoint has no classifier ('{names[0]}.weight'): compiled as a feature extractor "
                      "(num_classes=0, output the pooled features [B, D]); give --num-classes N if it should have a head",
                      stacklevel=2)
        target = 0
    else:
        return  # a partial classifier: the load names the missing key
    if target != getattr(model, "num_classes", target):
        model.reset_classifier(target)


def configure(model: nn.Module, layer_norm_eps: Optional[float] = None, label_names=None,
              data_config: Optional[dict] = None) -> nn.Module:
    """Set on a timm model what its source computes with beyond its weights: the LayerNorm eps of every LayerNorm
    (Hugging Face: 1e-12), the name of each output class and where they were read (``(names, source)``: in its
    ``pretrained_cfg`` as timm's own ``label_names``, read back by :func:`label_names_of`), and how images are
    preprocessed (timm data-config keys in ``pretrained_cfg``: :func:`data_config`). None: left as it is."""
    if layer_norm_eps is not None:
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.eps = layer_norm_eps
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    if label_names is not None:
        cfg.update(label_names=tuple(str(n) for n in label_names[0]), label_names_from=label_names[1])
    cfg.update(data_config or {})
    model.pretrained_cfg = cfg
    return model


def label_names_of(model: nn.Module) -> tuple[Optional[tuple[str, ...]], str]:
    """(one name per output class, where they were read), or (None, "") when the model has none that fit its
    ``num_classes`` (timm's ImageNet models carry none: folders map by wnid, :mod:`vitshrink.runtime.accuracy`)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("label_names")
    if names and len(names) == getattr(model, "num_classes", -1):
        return tuple(names), cfg.get("label_names_from") or "timm's label_names"
    return None, ""


def read_sidecar(checkpoint: str | Path) -> dict:
    """What the ``config.json`` beside a weights file says the model computes with beyond its weights, as the
    keywords of :func:`configure`: ``label_names`` (timm's key, as timm saves to the Hub) and, written by
    ``vitshrink import`` of a transformers directory, ``vitshrink.layer_norm_eps`` / ``vitshrink.data_config``;
    {} when there is no such file (or it says none of them)."""
    cfg_path = Path(checkpoint).parent / "config.json"
    if not Path(checkpoint).is_file() or not cfg_path.is_file():
        return {}
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(cfg, dict):
        return {}
    out: dict = {}
    names = cfg.get("label_names")
    if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
        out["label_names"] = (tuple(names), f"label_names of {cfg_path}")
    ours = cfg.get("vitshrink") if isinstance(cfg.get("vitshrink"), dict) else {}
    if isinstance(ours.get("layer_norm_eps"), (int, float)):
        out["layer_norm_eps"] = float(ours["layer_norm_eps"])
    if isinstance(ours.get("data_config"), dict):
        out["data_config"] = {k: tuple(v) if isinstance(v, list) else v for k, v in ours["data_config"].items()}
    return out


def fit_pos_embed(model: nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``sd`` with its absolute position embedding (``pos_embed`` [1, prefix + h*w, D]) resampled to the patch
    grid of ``model`` (created at another ``img_size``) by timm's own ``resample_abs_pos_embed`` (bicubic, the
    prefix tokens' rows kept), as timm's checkpoint filters do; other keys unchanged.

    Raises:
        CheckpointError: a ``pos_embed`` that is not [1, prefix + h*w, D] for a square h*w grid.
    """
    own = model.state_dict().get("pos_embed")
    pe = sd.get("pos_embed")
    if own is None or pe is None or tuple(pe.shape) == tuple(own.shape):
        return sd
    from timm.layers import resample_abs_pos_embed  # lazy: timm loads only when a checkpoint is resampled

    prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 0))
    n = pe.shape[1] - prefix
    side = int(round(n ** 0.5))
    if pe.dim() != 3 or side * side != n or pe.shape[-1] != own.shape[-1]:
        raise CheckpointError(f"'pos_embed' has shape {list(pe.shape)}: cannot resample it to {list(own.shape)} "
                              "(expected [1, prefix + h*w, D] on a square grid)")
    grid = tuple(model.patch_embed.grid_size)
    out = dict(sd)
    out["pos_embed"] = resample_abs_pos_embed(pe.float(), new_size=list(grid), old_size=[side, side],
                                              num_prefix_tokens=prefix, verbose=False)
    return out


def data_config(model: nn.Module) -> dict:
    """timm's data config of ``model`` (``input_size``, ``interpolation``, ``mean``, ``std``, ``crop_pct``,
    ``crop_mode``) from its ``pretrained_cfg`` -- where an importer put its source's preprocessing (an HF image
    processor's) --, at the input size the model was created at (``img_size=``/``--img-size``: the pretrained
    config still names the default size; the crop ratio stays)."""
    cfg = timm().data.resolve_data_config({}, model=model)
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size is not None:
        cfg["input_size"] = (cfg["input_size"][0], *map(int, size))
    return cfg


def eval_transform(model: nn.Module):
    """timm's own eval transform for ``model`` (resize, center crop, normalise: :func:`data_config`), as a
    callable on PIL images -> [C, H, W] float32."""
    return timm().data.create_transform(**data_config(model), is_training=False)


def preprocessing(model: nn.Module) -> dict:
    """What images go through before the model, for the report: :func:`data_config` (tuples as lists), where
    it came from (``from``: an HF image processor's ``preprocessor_config.json``, or timm's ``pretrained_cfg``),
    and the model's LayerNorm eps (``layer_norm_eps``: every distinct value; HF ViTs 1e-12, timm 1e-6)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return {**{k: list(v) if isinstance(v, tuple) else v for k, v in data_config(model).items()},
            "transform": "timm eval transform (resize, center crop, normalise)",
            "from": cfg.get("data_config_from") or f"timm's pretrained_cfg of {cfg.get('architecture', 'the model')}",
            "layer_norm_eps": sorted({float(m.eps) for m in model.modules() if isinstance(m, nn.LayerNorm)})}
