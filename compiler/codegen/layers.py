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


ACT = {"gelu": F.gelu, "gelu_tanh": gelu_tanh, "quick_gelu": quick_gelu, "silu": F.silu}  # MlpIR.act -> function


class Mlp(nn.Module):
    """fc1 [hidden, D] -> activation (``act``: exact GELU, its tanh form, QuickGELU or SiLU) -> fc2 [D, hidden].

    ``gated`` (SwiGLU / GluMlp): fc1 is [2 hidden, D], values then gates, one Gemm; hidden unit j is
    ``act(gate_j) * value_j``. ``norm_eps``: a LayerNorm over the hidden units before fc2 (None: none)."""

    def __init__(self, dim: int, hidden: int, bias1: bool, bias2: bool, act: str = "gelu", gated: bool = False,
                 norm_eps: Optional[float] = None):
        super().__init__()
        self.hidden, self.gated = hidden, gated
        self.fc1 = nn.Linear(dim, 2 * hidden if gated else hidden, bias=bias1)
        self.norm = nn.LayerNorm(hidden, eps=norm_eps) if norm_eps is not None else None
        self.fc2 = nn.Linear(hidden, dim, bias=bias2)
        self.act = ACT[act]

    def forward(self, x: Tensor) -> Tensor:
        y = self.fc1(x)
        if self.gated:
            value, gate = y.split(self.hidden, dim=-1)
            y = self.act(gate) * value
        else:
            y = self.act(y)
        return self.fc2(y if self.norm is None else self.norm(y))


def mlp_config(m) -> dict:
    """The JSON-serialisable form of an :class:`~vitshrink.ir.nodes.MlpIR` that :func:`mlp_module` reads."""
    return {"mlp_hidden": m.hidden, "fc1_bias": m.fc1_bias is not None, "fc2_bias": m.fc2_bias is not None,
            "act": m.act, "gated": m.gate_weight is not None, "mlp_norm_eps": None if m.norm is None else m.norm.eps}


def mlp_module(dim: int, cfg: dict) -> nn.Module:
    """The MLP of a block config (:func:`mlp_config`), or its bias alone when no neuron is left."""
    if not cfg["mlp_hidden"]:
        return Constant(dim, cfg["fc2_bias"])
    return Mlp(dim, cfg["mlp_hidden"], cfg["fc1_bias"], cfg["fc2_bias"], cfg.get("act", "gelu"), cfg.get("gated", False),
               cfg.get("mlp_norm_eps"))


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
        t = a.talking
        if t is not None:  # CaiT's talking-heads mixing
            sd[p + "attn.talk_l.weight"], sd[p + "attn.talk_w.weight"] = t.l_weight, t.w_weight
            if t.l_bias is not None:
                sd[p + "attn.talk_l.bias"] = t.l_bias
            if t.w_bias is not None:
                sd[p + "attn.talk_w.bias"] = t.w_bias
        if a.proj_bias is not None:
            sd[p + "attn.proj.bias"] = a.proj_bias
    elif a.proj_bias is not None:
        sd[p + "attn.bias"] = a.proj_bias
    if m.hidden:
        gated = m.gate_weight is not None
        sd[p + "mlp.fc1.weight"] = torch.cat([m.fc1_weight, m.gate_weight]) if gated else m.fc1_weight
        sd[p + "mlp.fc2.weight"] = m.fc2_weight
        if m.fc1_bias is not None:
            sd[p + "mlp.fc1.bias"] = torch.cat([m.fc1_bias, m.gate_bias]) if gated else m.fc1_bias
        if m.norm is not None:
            sd[p + "mlp.norm.weight"], sd[p + "mlp.norm.bias"] = m.norm.weight, m.norm.bias
        if m.fc2_bias is not None:
            sd[p + "mlp.fc2.bias"] = m.fc2_bias
    elif m.fc2_bias is not None:
        sd[p + "mlp.bias"] = m.fc2_bias
    return sd
