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
def count_macs(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 224, 224)) -> int:
    """MACs of one forward pass of ``model`` per image (input [1, C, H, W] float32).

    Returns:
        MACs per image (int). Example: timm deit_tiny_patch16_224 -> 1.254e9.
    """
    x = torch.zeros(input_shape)
    with FlopCounterMode(display=False, custom_mapping=_custom_mapping()) as counter:
        model(x)
    return counter.get_total_flops() // 2 // input_shape[0]

