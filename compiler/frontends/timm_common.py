"""What every timm frontend shares: importing timm (through :mod:`vitshrink.compat`), refusing an
option by name, and copying LayerNorms and tensors out of a timm module."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..compat import ensure_timm_importable
from ..errors import ModelError
from ..ir.nodes import LayerNormIR


def timm():
    """The ``timm`` module, importable on a CPU-only torch beside a CUDA torchvision (:mod:`vitshrink.compat`)."""
    ensure_timm_importable()
    import timm as _timm  # lazy: heavy (pulls torchvision), and only after the compat shim

    return _timm


def refuse(option: str, value, why: str = "") -> None:
    """Raise :class:`ModelError` naming a timm model option the IR cannot represent exactly."""
    raise ModelError(f"unsupported model option {option}={value!r}" + (f": {why}" if why else ""))


def is_identity(m) -> bool:
    """True for a missing module or ``nn.Identity``."""
    return m is None or isinstance(m, nn.Identity)


def layer_norm(m: nn.LayerNorm) -> LayerNormIR:
    """A copy of an affine LayerNorm as IR (refused without affine parameters)."""
    if m.weight is None or m.bias is None:
        refuse("norm_layer", "LayerNorm without affine")
    return LayerNormIR(m.weight.detach().clone(), m.bias.detach().clone(), float(m.eps))


def clone(p: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A detached copy of ``p`` (None stays None)."""
    return None if p is None else p.detach().clone()
