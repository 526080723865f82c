"""Reading a checkpoint file as an object, once, without running code from it: safetensors, torch pickles
(through :func:`.safe_pickle.safe_load`), transformers directories; and state dicts out of them."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from ..errors import CheckpointError
from .base import ImportContext
from .safe_pickle import find, is_module_record, module_tree, safe_load


def read_hf_dir(path: Path) -> Optional[dict]:
    """``{"hf_config": dict, "state": {key: tensor}, "hf_preprocessor": dict or None}`` for a transformers model
    directory (``hf_preprocessor``: its image processor's ``preprocessor_config.json``), else None."""
    cfg_file = path / "config.json"
    if not path.is_dir() or not cfg_file.is_file():
        return None
    try:
        config = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"'{cfg_file}': cannot be read as JSON ({e})") from e
    weights = [path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()]
    if not weights:
        raise CheckpointError(f"'{path}': has config.json but no model.safetensors or pytorch_model.bin")
    try:
        if weights[0].suffix == ".safetensors":
            state = load_file(str(weights[0]))
        else:
            state = torch.load(str(weights[0]), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"'{weights[0]}': cannot be read ({type(e).__name__}: {e})".splitlines()[0]) from e
    pre_file = path / "preprocessor_config.json"
    try:
        pre = json.loads(pre_file.read_text()) if pre_file.is_file() else None
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"'{pre_file}': cannot be read as JSON ({e})") from e
    return {"hf_config": config, "state": state, "hf_preprocessor": pre if isinstance(pre, dict) else None}


def load_source(path: str | Path, trust: bool = False) -> tuple[Any, str]:
    """Load a checkpoint file as an object: safetensors -> dict of tensors; anything else through
    :func:`.safe_pickle.safe_load`. Returns (object, loader description).

    Raises:
        CheckpointError: missing, unreadable, or a pickle needing unknown classes (named).
    """
    path = Path(path)
    if path.is_dir():
        obj = read_hf_dir(path)
        if obj is None:
            raise CheckpointError(f"checkpoint '{path}' is a directory without config.json (not a transformers model)")
        return obj, "transformers directory (config.json + weights; no code run)"
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}': no such file")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path)), "safetensors"
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"checkpoint '{path}': cannot be read ({type(e).__name__}: {e})".splitlines()[0]) from e
    obj, info = safe_load(path, trust)
    return obj, info["loader"]


def read_any_state_dict(path: str | Path, trust: bool = False) -> dict[str, Tensor]:
    """A state dict from a safetensors file, a pickled state dict (possibly under ``model`` /
    ``state_dict`` / ``model_ema``, ``module.`` prefixes stripped) or a pickled module (its tensors).

    Raises:
        CheckpointError: unreadable, or nothing like a state dict inside (the file is named).
    """
    obj, _ = load_source(path, trust)
    mod = find(obj, lambda o: is_module_record(o) or isinstance(o, nn.Module))
    if mod is not None:
        return module_tree(mod)[0]
    sd = as_state_dict(obj)
    if sd is None:
        raise CheckpointError(f"checkpoint '{path}': holds no state dict of tensors")
    return sd


def as_state_dict(obj: Any) -> Optional[dict[str, Tensor]]:
    """``obj`` as a flat ``{name: tensor}`` (looking under ``model``/``state_dict``/``model_ema``), or None."""
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        return None
    if all(k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return {k: v.detach().float() if v.is_floating_point() else v for k, v in obj.items()}


def dense_state(ctx: ImportContext) -> dict[str, Tensor]:
    """Weights of the dense model: ``--dense-checkpoint`` when given, else the model's own (random)."""
    if ctx.dense_checkpoint is None:
        return {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
    return read_any_state_dict(ctx.dense_checkpoint, ctx.trust)
