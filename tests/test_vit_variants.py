"""The ViT variants people deploy as backbones (issue 19): CLIP towers (``pre_norm``, QuickGELU), DINOv2
and other feature extractors (``num_classes=0``, register tokens, LayerScale), SigLIP (``global_pool='map'``
attention pooling, GELUTanh), post-norm (ResPost) blocks. Each imports exactly (codegen of the unpruned model == timm) and every
random spec of heads, q/k, v, MLP, embed and blocks is exact against the masked dense reference
(hypothesis), on small synthetic models of the same timm class; a feature extractor keeps its output
width when embedding channels are pruned."""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import images, small_vit
from tools import assert_imports_exactly
from test_exactness import check_exact, specs
from vitshrink.errors import SpecError
from vitshrink.families import build_module, resolve_spec
from vitshrink.frontends.timm import from_timm
from vitshrink.spec import Spec

VARIANTS = {
    "clip": dict(pre_norm=True, act_layer="quick_gelu"),
    "dinov2": dict(num_classes=0, init_values=0.5, reg_tokens=4, no_embed_class=True),
    "siglip": dict(global_pool="map", class_token=False, num_classes=0, act_layer="gelu_tanh"),
    "siglip_classifier": dict(global_pool="map", class_token=False),
    "gap_features": dict(global_pool="avg", class_token=False, num_classes=0, fc_norm=True),
    "respost": dict(block_fn="ResPostBlock"),  # vit_*_rpn_*: post-norm blocks
}
_IRS: dict = {}


def variant(name: str):
    if name not in _IRS:
        from timm.models import vision_transformer

        kw = {k: getattr(vision_transformer, v) if k == "block_fn" else v for k, v in VARIANTS[name].items()}
        m = small_vit(seed=11, **kw)
        _IRS[name] = (m, from_timm(m, name))
    return _IRS[name]


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_imports_exactly(name):
    """codegen of the unpruned import == timm, and the reference without masks == timm."""
    m, ir = variant(name)
    x = images(3)
    want = assert_imports_exactly(m, ir, x)
    assert (ir.num_classes == 0) == (m.num_classes == 0)
    assert ir.num_outputs == want.shape[1]


@settings(max_examples=int(os.environ.get("VITSHRINK_EXAMPLES", 60)) // 4, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), name=st.sampled_from(sorted(VARIANTS)))
def test_random_specs_are_exact_on_variants(data, name):
    _, ir = variant(name)
    check_exact(ir, data.draw(specs(ir, with_exit=False)))


@pytest.mark.parametrize("name", ["dinov2", "gap_features", "siglip"])
def test_feature_extractor_keeps_its_width(name):
    """Embedding pruning on a feature extractor: the output stays [B, D]; kept channels in place,
    removed ones exactly 0 (token pooling / average: the residual channels; the attention pool's own
    output is not pruned and stays dense)."""
    _, ir = variant(name)
    embed = torch.ones(ir.embed_dim, dtype=torch.bool)
    embed[[1, 5, 17, 40]] = False
    pruned = check_exact(ir, Spec({"embed": embed, "blocks.1.heads": torch.tensor([True, False, True, True])}))
    out = build_module(pruned)(images(2))
    assert out.shape == (2, ir.feature_dim) and ir.feature_dim == 48
    if ir.attn_pool is None:
        assert bool((out[:, ~embed] == 0).all()) and bool((out[:, embed] != 0).all())
    else:
        assert bool((out != 0).all())


def test_variant_refusals_name_the_key():
    _, feat = variant("dinov2")
    with pytest.raises(SpecError, match="feature extractor") as e:
        resolve_spec(Spec({}, {"exit": {"block": 1}}), feat)
    assert e.value.key == "exit"
    _, pooled = variant("siglip")
    keep = torch.ones(pooled.num_tokens, dtype=torch.bool)
    keep[3] = False
    with pytest.raises(SpecError, match="every patch token") as e:
        resolve_spec(Spec({"blocks.2.tokens": keep}), pooled)
    assert e.value.key == "blocks.2.tokens"
