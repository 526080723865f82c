"""MACs, counted by torch's :class:`~torch.utils.flop_counter.FlopCounterMode`.

MACs (multiply-accumulates) are what the pruning papers call "FLOPs" (fvcore's convention).
FlopCounterMode counts 2 FLOPs per MAC for convolutions and matmuls; we halve it. Its registry lacks
the CPU attention kernel (``aten._scaled_dot_product_flash_attention_for_cpu``), which we map to
torch's own SDPA formula so that attention's q.k and attn.v products are counted on every device.
Elementwise work (LayerNorm, softmax, GELU, residual adds) is not counted, as in fvcore.
Parameters are counted on the IR (:meth:`vitshrink.ir.vit.ViTIR.num_params`, :meth:`vitshrink.ir.swin.SwinIR.num_params`).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _custom_mapping() -> dict:
    ops = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        ops[op] = _cpu_sdpa_flop
    return ops


@torch.no_grad()
def count_macs_by_module(model: nn.Module, names: list[str], input_shape: tuple[int, ...] = (1, 3, 224, 224)) -> dict[str, int]:
    """MACs per image of one forward pass of ``model``, in total (``""``) and inside each of the submodules
    ``names`` (qualified names as ``model.named_modules()`` gives them), counted as :func:`count_macs` counts.

    Returns:
        ``{"": total, name: MACs inside that module}``.
    Raises:
        KeyError: a name that is not a submodule of ``model``.
    """
    modules = dict(model.named_modules())
    for n in names:
        if n not in modules:
            raise KeyError(f"{n!r} is not a submodule of {type(model).__name__}")
    x = torch.zeros(input_shape)
    with FlopCounterMode(display=False, custom_mapping=_custom_mapping()) as counter:
        model(x)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    per = {n: sum(counts.get(f"{root}.{n}", {}).values()) // 2 // input_shape[0] for n in names}
    return {"": counter.get_total_flops() // 2 // input_shape[0], **per}


def count_macs(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 224, 224)) -> int:
    """MACs of one forward pass of ``model`` per image (input [1, C, H, W] float32).

    Returns:
        MACs per image (int). Example: timm deit_tiny_patch16_224 -> 1.254e9.
    """
    x = torch.zeros(input_shape)
    with FlopCounterMode(display=False, custom_mapping=_custom_mapping()) as counter:
        model(x)
    return counter.get_total_flops() // 2 // input_shape[0]

