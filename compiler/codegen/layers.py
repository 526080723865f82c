"""The layers every generated model is made of besides attention (:mod:`.attention`): the MLP, a
sub-layer reduced to its bias, the block state-dict writer, and :class:`PrunedModel`, the base of the
generated model classes (it finds the class that reads an ``arch.json``)."""
from __future__ import annotations

from typing import ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import VitshrinkError


class PrunedModel(nn.Module):
    """Base of the generated models (:class:`~vitshrink.codegen.vit.PrunedViT`,
    :class:`~vitshrink.codegen.swin.PrunedSwin`): built from a JSON-serialisable architecture ``arch``
    whose ``format`` names the class (``ARCH_FORMAT``), so :func:`vitshrink.codegen.load` rebuilds any
    of them from ``arch.json`` without the original model class."""

    ARCH_FORMAT: ClassVar[str] = ""
    classes: ClassVar[dict[str, type]] = {}  # arch format -> class, filled as subclasses are defined

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.ARCH_FORMAT:
            PrunedModel.classes[cls.ARCH_FORMAT] = cls

    def __init__(self, arch: dict):
        super().__init__()
        if arch.get("format") != self.ARCH_FORMAT:
            raise VitshrinkError(f"architecture format {arch.get('format')!r} is not {self.ARCH_FORMAT}")
        self.arch = arch

    @staticmethod
    def class_for(arch: dict) -> type:
        """The generated model class that reads ``arch``.

        Raises:
            VitshrinkError: no class reads this ``format`` (named, with the known ones).
        """
        cls = PrunedModel.classes.get(arch.get("format"))
        if cls is None:
            raise VitshrinkError(f"architecture format {arch.get('format')!r} is not one of {', '.join(PrunedModel.classes)}")
        return cls


class Constant(nn.Module):
    """A sub-layer with nothing left but its output bias (every head or every MLP neuron removed):
    returns ``bias`` [D] (or 0), broadcast by the residual add."""

    def __init__(self, dim: int, bias: bool):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        return self.bias if self.bias is not None else x.new_zeros(())


def quick_gelu(x: Tensor) -> Tensor:
    """OpenAI CLIP's QuickGELU, ``x * sigmoid(1.702 x)``."""
    return x * torch.sigmoid(1.702 * x)


def gelu_tanh(x: Tensor) -> Tensor:
    """GELU's tanh approximation (timm ``GELUTanh``)."""
    return F.gelu(x, approximate="tanh")


ACT = {"gelu": F.gelu, "gelu_tanh": gelu_tanh, "quick_gelu": quick_gelu}  # MlpIR.act -> function


class Mlp(nn.Module):
    """fc1 [hidden, D] -> activation (``act``: exact GELU, its tanh form or QuickGELU) -> fc2 [D, hidden]."""

    def __init__(self, dim: int, hidden: int, bias1: bool, bias2: bool, act: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias1)
        self.fc2 = nn.Linear(hidden, dim, bias=bias2)
        self.act = ACT[act]

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def block_state_dict(b, p: str, split: bool = False) -> dict[str, Tensor]:
    """The weights of one block (:class:`Block` or the Swin block) under the key prefix ``p``: norms,
    ``attn.qkv`` (or ``attn.q`` + ``attn.kv`` when ``split``, Patch Slimming's query-only blocks),
    ``attn.proj``, the MLP -- or the output bias of a sub-layer with nothing else left (:class:`Constant`)."""
    a, m, sd = b.attn, b.mlp, {}
    sd[p + "norm1.weight"], sd[p + "norm1.bias"] = b.norm1.weight, b.norm1.bias
    sd[p + "norm2.weight"], sd[p + "norm2.bias"] = b.norm2.weight, b.norm2.bias
    if a.num_heads:
        if split:
            sd[p + "attn.q.weight"] = a.q_weight
            sd[p + "attn.kv.weight"] = torch.cat([a.k_weight, a.v_weight])
            if a.q_bias is not None:
                sd[p + "attn.q.bias"] = a.q_bias
                sd[p + "attn.kv.bias"] = torch.cat([a.k_bias, a.v_bias])
        else:
            sd[p + "attn.qkv.weight"] = torch.cat([a.q_weight, a.k_weight, a.v_weight])
            if a.q_bias is not None:
                sd[p + "attn.qkv.bias"] = torch.cat([a.q_bias, a.k_bias, a.v_bias])
        sd[p + "attn.proj.weight"] = a.proj_weight
        if a.proj_bias is not None:
            sd[p + "attn.proj.bias"] = a.proj_bias
    elif a.proj_bias is not None:
        sd[p + "attn.bias"] = a.proj_bias
    if m.hidden:
        sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc2.weight"] = m.fc1_weight, m.fc2_weight
        if m.fc1_bias is not None:
            sd[p + "mlp.fc1.bias"] = m.fc1_bias
        if m.fc2_bias is not None:
            sd[p + "mlp.fc2.bias"] = m.fc2_bias
    elif m.fc2_bias is not None:
        sd[p + "mlp.bias"] = m.fc2_bias
    return sd
