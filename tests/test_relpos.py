"""ViTs with a relative position bias (issue 19): BEiT (a bias table over the grid and the class token, q/v
bias without k bias, LayerScale) and ``VisionTransformerRelPos`` (a bias from an MLP over grid offsets,
per block or shared; pre- and post-norm blocks). Small synthetic models of each kind import exactly,
every random spec of heads, q/k, v, MLP, embed and blocks is exact against the masked dense reference,
and token pruning -- which the per-position bias forbids -- is refused by key."""
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

BASE = dict(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=4, num_classes=10)


def _beit(**kw):
    from timm.models.beit import Beit

    return Beit(**BASE, use_rel_pos_bias=True, init_values=0.3, **kw)


def _relpos(**kw):
    from timm.models.vision_transformer_relpos import VisionTransformerRelPos

    return VisionTransformerRelPos(**BASE, **kw)


def _respost(**kw):
    from timm.models.vision_transformer_relpos import ResPostRelPosBlock

    return _relpos(block_fn=ResPostRelPosBlock, init_values=None, **kw)


KINDS = {
    "beit": lambda: _beit(),
    "relpos_mlp_cls": lambda: _relpos(class_token=True, global_pool="token", init_values=0.3),
    "relpos_shared_bias": lambda: _relpos(rel_pos_type="bias", shared_rel_pos=True, fc_norm=True),
    "relpos_respost": lambda: _respost(),
}
_IRS: dict = {}


def relpos(kind: str):
    if kind not in _IRS:
        m = randomise(KINDS[kind](), seed=9)
        _IRS[kind] = (m, from_timm(m, kind))
    return _IRS[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_relpos_imports_exactly(kind):
    m, ir = relpos(kind)
    x = images(3)
    assert_imports_exactly(m, ir, x)
    assert family_of(m).name == "relpos" and all(b.attn.rel_bias is not None for b in ir.blocks)
    assert all(b.post_norm == (kind == "relpos_respost") for b in ir.blocks)


@settings(max_examples=int(os.environ.get("VITSHRINK_EXAMPLES", 60)) // 3, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), kind=st.sampled_from(sorted(KINDS)))
def test_random_specs_are_exact_with_relative_position_bias(data, kind):
    _, ir = relpos(kind)
    check_exact(ir, data.draw(specs(ir, with_exit=False)))


def test_token_pruning_is_refused_by_key():
    _, ir = relpos("relpos_mlp_cls")
    keep = torch.ones(ir.num_tokens, dtype=torch.bool)
    keep[5] = False
    with pytest.raises(SpecError, match="relative position bias") as e:
        resolve_spec(Spec({"blocks.2.tokens": keep}), ir)
    assert e.value.key == "blocks.2.tokens"
    with pytest.raises(SpecError, match="relative position bias") as e:
        resolve_spec(Spec({}, {"dynamic_tokens": {"1": {"keep": 0.5}}}), ir)
    assert e.value.key == "dynamic_tokens"
