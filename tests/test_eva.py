"""timm's Eva class (issue 19): EVA-02, DINOv3, Perception Encoder and the ``vit_*_rope_*`` models -- rotary
position embedding (interleaved and half pairs, one table or RoPE-Mixed per block and head), q/v bias
without k bias, SwiGLU / GluMlp with a hidden LayerNorm, LayerScale, register tokens, feature extractors.
Small synthetic Eva models of each kind import exactly, every random spec of heads, q/k channel *pairs*,
v, MLP, embed and blocks is exact against the masked dense reference, and what RoPE forbids (a q/k channel
without its rotation partner, token pruning) is refused by key."""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import images, randomise
from tools import assert_imports_exactly
from test_exactness import check_exact, specs
from vitshrink.errors import SpecError
from vitshrink.families import family_of, from_timm, resolve_spec
from vitshrink.spec import Spec

BASE = dict(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=4, num_classes=10, use_rot_pos_emb=True)
KINDS = {
    # EVA-02: fused qkv with q/v bias, SwiGLU (GluMlp form), RoPE interleaved pairs, average pooling
    "eva02": dict(qkv_fused=True, swiglu_mlp=True, global_pool="avg", use_fc_norm=True),
    # EVA-02 base: separate q/k/v projections, SwiGLU with its hidden LayerNorm, a class-token model
    "eva02_scale_mlp": dict(qkv_fused=False, swiglu_mlp=True, scale_mlp=True, global_pool="token"),
    # vit_*_rope_mixed_*: timm's rope attention, per-block per-head tables, LayerScale
    "rope_mixed": dict(attn_type="rope", rope_type="mixed", init_values=0.3, qkv_bias=False, use_abs_pos_emb=False),
    # DINOv3: half pairs, register tokens, a feature extractor
    "dinov3": dict(rope_type="dinov3", rope_rotate_half=True, num_reg_tokens=2, num_classes=0, init_values=0.5,
                   use_abs_pos_emb=False, global_pool="avg"),
}
_IRS: dict = {}


def eva(kind: str):
    if kind not in _IRS:
        from timm.models.eva import Eva

        m = randomise(Eva(**{**BASE, **KINDS[kind]}), seed=5)
        _IRS[kind] = (m, from_timm(m, kind))
    return _IRS[kind]


@st.composite
def rope_specs(draw, ir):
    """Random specs (:func:`test_exactness.specs`) whose q/k masks keep or drop whole rotation pairs: each
    channel takes the decision drawn for the first channel of its pair."""
    spec = draw(specs(ir, with_exit=False))
    for b in ir.blocks:
        qk = spec.masks.get(f"blocks.{b.source_index}.qk")
        if qk is not None:
            for c in range(qk.shape[1]):
                partner, sign = b.attn.rope.partner(c)
                if sign > 0:  # the second channel of its pair follows the first
                    qk[:, c] = qk[:, partner]
            empty, p0 = ~qk.any(1), b.attn.rope.partner(0)[0]
            qk[empty, 0] = qk[empty, p0] = True  # a kept head keeps a q/k pair
    return spec


@pytest.mark.parametrize("kind", KINDS)
def test_eva_imports_exactly(kind):
    m, ir = eva(kind)
    x = images(3)
    assert_imports_exactly(m, ir, x)
    assert family_of(m).name == "eva" and all(b.attn.rope is not None for b in ir.blocks)


@settings(max_examples=int(os.environ.get("VITSHRINK_EXAMPLES", 60)) // 3, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), kind=st.sampled_from(sorted(KINDS)))
def test_random_specs_are_exact_on_eva(data, kind):
    _, ir = eva(kind)
    check_exact(ir, data.draw(rope_specs(ir)))


def test_rope_pairs_and_tokens_are_refused_by_key():
    _, ir = eva("eva02")
    qk = torch.ones(4, 12, dtype=torch.bool)
    qk[2, 6] = False  # interleaved pairs: 6 rotates with 7
    with pytest.raises(SpecError, match="keeps q/k channel 7 but not 6, its rotation partner") as e:
        resolve_spec(Spec({"blocks.1.qk": qk}), ir)
    assert e.value.key == "blocks.1.qk"
    _, half = eva("dinov3")
    qk = torch.ones(4, 12, dtype=torch.bool)
    qk[0, 1] = False  # half pairs: 1 rotates with 7
    with pytest.raises(SpecError, match="channel 7 but not 1"):
        resolve_spec(Spec({"blocks.0.qk": qk}), half)
    _, cls = eva("eva02_scale_mlp")
    keep = torch.ones(cls.num_tokens, dtype=torch.bool)
    keep[4] = False
    with pytest.raises(SpecError, match="rotary position embedding or a relative position bias") as e:
        resolve_spec(Spec({"blocks.1.tokens": keep}), cls)
    assert e.value.key == "blocks.1.tokens"
