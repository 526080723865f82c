"""timm models and checkpoints: create a model by name, read and load checkpoints, the eval transform.

The per-family translations into the IR are :mod:`.timm_vit` (ViT/DeiT; :func:`from_timm` is re-exported
here) and :mod:`.timm_swin`; :func:`vitshrink.import_model` picks the one a model needs (the family
registry, :mod:`vitshrink.families`).
"""
from __future__ import annotations

import difflib
from pathlib import Path

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


def fit_classifier(model: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """A checkpoint fine-tuned to its own classes: when its classifier weight (timm's ``pretrained_cfg``
    ``classifier``: ``head``, ``head.fc``; a distilled model's ``head`` and ``head_dist``) is [N, D] with N other
    than the model's ``num_classes``, timm's ``reset_classifier(N)`` makes the model's head that size before the
    weights load (a 10-class ViT fine-tuned from ImageNet: N = 10). A checkpoint without the classifier keeps
    the model's head (the load then names the missing key).
    """
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    weight = next((sd[f"{n}.weight"] for n in names if f"{n}.weight" in sd), None)
    if weight is not None and weight.ndim == 2 and weight.shape[0] != getattr(model, "num_classes", weight.shape[0]) \
            and hasattr(model, "reset_classifier"):
        model.reset_classifier(int(weight.shape[0]))


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


def eval_transform(model: nn.Module):
    """timm's own eval transform for ``model`` (resize, center crop, normalise), as a callable on PIL images,
    at the input size the model was created at (``img_size=``/``--img-size``: its pretrained config still
    names the default size; the crop ratio stays)."""
    t = timm()
    cfg = t.data.resolve_data_config({}, model=model)
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size is not None:
        cfg["input_size"] = (cfg["input_size"][0], *map(int, size))
    return t.data.create_transform(**cfg, is_training=False)
