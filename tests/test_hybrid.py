"""Hybrid ViTs (issue 19: timm ``HybridEmbed``, ``vit_*_r*``, ``vit_*_resnet*``): a convolutional trunk before
the patch projection, carried as an opaque stem -- never pruned, the projection's output channels are the
embedding. A small synthetic hybrid imports exactly, random specs of every width kind are exact against
the masked dense reference, and the pruned checkpoint (``stem.pt2`` + weights) reloads without the
trunk's class and gives the same outputs."""
from __future__ import annotations

import functools
import os

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from conftest import SMALL, images, randomise
from test_exactness import check_exact, specs
from vitshrink.codegen import load, save
from vitshrink.families import apply_spec, build_module, from_timm, resolve_spec
from vitshrink.masks.vit import l1_spec

_IR: list = []


def hybrid():
    if not _IR:
        from timm.layers import HybridEmbed
        from timm.models.vision_transformer import VisionTransformer

        trunk = nn.Sequential(nn.Conv2d(3, 12, 3, stride=2, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
                              nn.Conv2d(12, 16, 3, stride=2, padding=1))  # 32x32 -> 16 channels, 8x8
        embed = functools.partial(HybridEmbed, backbone=trunk, patch_size=2)
        m = randomise(VisionTransformer(**{**SMALL, "patch_size": 2}, embed_layer=embed), seed=13)
        _IR.append((m, from_timm(m, "small_hybrid")))
    return _IR[0]


def test_hybrid_imports_exactly_and_keeps_its_stem():
    m, ir = hybrid()
    x = images(3)
    with torch.no_grad():
        assert float((build_module(ir)(x) - m(x)).abs().max()) <= 1e-5
    assert ir.stem is not None and ir.stem.out_chans == 16 and ir.grid == (4, 4) and ir.num_tokens == 17
    assert ir.num_params() == sum(p.numel() for p in m.parameters())


@settings(max_examples=int(os.environ.get("VITSHRINK_EXAMPLES", 60)) // 4, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_specs_are_exact_on_a_hybrid(data):
    _, ir = hybrid()
    check_exact(ir, data.draw(specs(ir, with_exit=False)))


def test_pruned_hybrid_reloads_from_its_checkpoint(tmp_path):
    _, ir = hybrid()
    pruned = apply_spec(ir, resolve_spec(l1_spec(ir, heads=0.5, mlp=0.5, embed=0.75), ir))
    module = build_module(pruned)
    save(module, tmp_path / "model")
    assert (tmp_path / "model" / "stem.pt2").is_file()
    again = load(tmp_path / "model")
    x = images(3)
    with torch.no_grad():
        assert float((again(x) - module(x)).abs().max()) == 0.0
    assert again.patch_embed.weight.shape == (36, 16, 2, 2)  # the embedding pruned, the stem untouched
