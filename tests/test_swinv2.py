"""Swin V2 (issue 19): cosine attention with a per-head logit scale, the continuous position bias (an MLP
evaluated once), res-post-norm blocks; timm's SwinTransformerV2 (patch merging that normalises after the
reduction) and SwinTransformerV2Cr (main-branch norms after some blocks, no final norm). A small synthetic
model of each imports exactly and every random spec of stage channels, heads, q/k, v, MLP and blocks is
exact against the masked dense reference (the cosine then runs over the kept q/k channels)."""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import randomise
from tools import assert_imports_exactly
from test_swin import check_swin_exact, swin_images, swin_specs
from vitshrink.families import family_of, from_timm

SMALL_SWINV2 = dict(img_size=64, patch_size=4, window_size=4, embed_dim=16, depths=(2, 2, 2), num_heads=(2, 2, 4),
                    num_classes=10)
_IRS: dict = {}


def small_swinv2(kind: str = "v2"):
    if kind not in _IRS:
        from timm.models.swin_transformer_v2 import SwinTransformerV2
        from timm.models.swin_transformer_v2_cr import SwinTransformerV2Cr

        m = SwinTransformerV2(**SMALL_SWINV2) if kind == "v2" else SwinTransformerV2Cr(**SMALL_SWINV2, extra_norm_stage=True)
        m = randomise(m, seed=6)
        _IRS[kind] = (m, from_timm(m, f"small_swinv2_{kind}"))
    return _IRS[kind]


@pytest.mark.parametrize("kind", ["v2", "cr"])
def test_swinv2_imports_exactly(kind):
    m, ir = small_swinv2(kind)
    x = swin_images(3)
    assert_imports_exactly(m, ir, x)
    assert family_of(m).name == "swinv2"
    assert all(b.post_norm and b.attn.logit_scale is not None for b in ir.blocks)
    assert all(s.merge is None or s.merge.norm_after == (kind == "v2") for s in ir.stages)
    assert (ir.norm is None) == (kind == "cr") and any(b.norm_out is not None for b in ir.blocks) == (kind == "cr")


@settings(max_examples=int(os.environ.get("VITSHRINK_EXAMPLES", 60)) // 3, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), kind=st.sampled_from(["v2", "cr"]))
def test_random_swinv2_specs_are_exact(data, kind):
    _, ir = small_swinv2(kind)
    check_swin_exact(ir, data.draw(swin_specs(ir)))
