"""MACs counting against closed-form formulas (so the ideal speed-up in reports is right)."""
from __future__ import annotations

import torch

from vitshrink.families import build_module
from vitshrink.counting import count_macs
from vitshrink.frontends.timm import create_model, from_timm
from vitshrink.families import apply_spec
from vitshrink.spec import Spec
from vitshrink.families import resolve_spec


def vit_macs(D, N, blocks, patch_macs, classes, heads_out=1):
    """blocks: list of (sum_qk, sum_v, num_heads-agnostic attention sums, hidden) per block."""
    total = patch_macs
    for sum_qk, sum_v, hidden in blocks:
        total += N * D * (2 * sum_qk + sum_v)  # q, k, v projections
        total += N * N * sum_qk + N * N * sum_v  # q.k^T and attn.v
        total += N * sum_v * D  # proj
        total += 2 * N * D * hidden  # fc1, fc2
    return total + heads_out * D * classes


def test_deit_tiny_dense_macs():
    model = create_model("deit_tiny_patch16_224")
    patch = 196 * 192 * 3 * 16 * 16
    want = vit_macs(192, 197, [(192, 192, 768)] * 12, patch, 1000)
    assert count_macs(model) == want  # timm's own model: attention counted through SDPA
    assert count_macs(build_module(from_timm(model))) == want
    assert abs(want / 1e9 - 1.254) < 0.001  # the "1.3 GFLOPs" of the DeiT paper


def test_pruned_macs_follow_the_structure():
    ir = from_timm(create_model("deit_tiny_patch16_224"))
    qk = torch.zeros(3, 64, dtype=torch.bool)
    qk[0, :10] = qk[1, :20] = qk[2, :30] = True
    spec = Spec({"embed": torch.arange(192) < 160, "blocks.0.qk": qk, "blocks.3.keep": torch.tensor(False),
                 **{f"blocks.{i}.mlp": torch.arange(768) < 300 for i in range(12)},
                 **{f"blocks.{i}.heads": torch.tensor([True, False, True]) for i in range(1, 12)}},
                {"exit": {"block": 10}})
    pruned = apply_spec(ir, resolve_spec(spec, ir))
    blocks = [(60, 192, 300)] + [(128, 128, 300)] * 9  # block 0: 3 heads with 10/20/30 q/k; blocks 1-10 minus 3
    want = vit_macs(160, 197, blocks, 196 * 160 * 768, 1000)
    assert count_macs(build_module(pruned)) == want
