"""``torch-prune``: ``torch.nn.utils.prune`` while active -- ``{name}_orig`` parameter and ``{name}_mask``
buffer, the module computing ``orig * mask`` (torch/nn/utils/prune.py) -> :mod:`.zeroed`."""
from __future__ import annotations

from typing import Any, Optional

from ..errors import CheckpointError
from ..families import SWIN, VIT
from .base import Format, ImportContext, ImportResult
from .load import as_state_dict
from .zeroed import from_zeroed


def _probe_torch_prune(obj: Any, ctx: ImportContext) -> Optional[str]:
    sd = as_state_dict(obj)
    if sd is None:
        return None
    pairs = [k[: -len("_mask")] for k in sd if k.endswith("_mask") and k[: -len("_mask")] + "_orig" in sd]
    return f"{len(pairs)} parameters stored as *_orig + *_mask (torch.nn.utils.prune, active)" if pairs else None


def _convert_torch_prune(obj: Any, ctx: ImportContext) -> ImportResult:
    sd = as_state_dict(obj)
    out = {}
    for k, v in sd.items():
        if k.endswith("_mask") and k[: -len("_mask")] + "_orig" in sd:
            continue
        if k.endswith("_orig") and k[: -len("_orig")] + "_mask" in sd:
            name, mask = k[: -len("_orig")], sd[k[: -len("_orig")] + "_mask"]
            if mask.shape != v.shape:
                raise CheckpointError(f"checkpoint '{ctx.path}': '{name}_mask' has shape {list(mask.shape)}, "
                                      f"'{name}_orig' {list(v.shape)}")
            out[name] = v * mask
        else:
            out[k] = v
    return from_zeroed(out, ctx)


FORMAT = Format("torch-prune", "torch.nn.utils.prune state dict (*_orig + *_mask)", _probe_torch_prune,
                _convert_torch_prune, families=(VIT, SWIN))
