"""CaiT (issue 19): talking-heads self-attention on the patch tokens, then class-attention blocks in which the
class token -- joining there -- is the only query and the only token updated. A small synthetic CaiT
imports exactly, every random spec of heads (a pruned head leaves both mixing matrices: its row and
column), q/k, v, MLP, embed and blocks (class-attention blocks too) is exact against the masked dense
reference, and token pruning and early exits are refused by key."""
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
from vitshrink.families import apply_spec, family_of, from_timm, resolve_spec
from vitshrink.spec import Spec

_IR: list = []


def small_cait():
    if not _IR:
        from timm.models.cait import Cait

        m = randomise(Cait(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=4, depth_token_only=2,
                           num_classes=10, init_values=0.3), seed=17)
        _IR.append((m, from_timm(m, "small_cait")))
    return _IR[0]


def test_cait_imports_exactly():
    m, ir = small_cait()
    x = images(3)
    assert_imports_exactly(m, ir, x)
    assert family_of(m).name == "cait" and ir.prefix_at == 3 and len(ir.blocks) == 5
    assert [b.class_attention for b in ir.blocks] == [False] * 3 + [True] * 2
    assert all((b.attn.talking is None) == b.class_attention for b in ir.blocks)


@st.composite
def cait_specs(draw, ir):
    """Random specs in which every kept talking head keeps a v channel (the one CaiT-specific rule)."""
    spec = draw(specs(ir, with_exit=False))
    for b in ir.blocks:
        v = spec.masks.get(f"blocks.{b.source_index}.v")
        if b.attn.talking is not None and v is not None:
            for h in range(v.shape[0]):
                if not v[h].any():
                    v[h, draw(st.integers(0, v.shape[1] - 1))] = True
    return spec


@settings(max_examples=int(os.environ.get("VITSHRINK_EXAMPLES", 60)) // 3, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_specs_are_exact_on_cait(data):
    _, ir = small_cait()
    check_exact(ir, data.draw(cait_specs(ir)))


def test_pruned_heads_shrink_the_mixing_matrices():
    _, ir = small_cait()
    keep = torch.tensor([True, False, True, False])
    pruned = apply_spec(ir, resolve_spec(Spec({"blocks.1.heads": keep}), ir))
    t = pruned.block(1).attn.talking
    assert t.l_weight.shape == (2, 2) and t.w_weight.shape == (2, 2)
    assert torch.equal(t.l_weight, ir.block(1).attn.talking.l_weight[keep][:, keep])


def test_tokens_exits_and_heads_without_values_are_refused_by_key():
    _, ir = small_cait()
    v = torch.ones(4, 12, dtype=torch.bool)
    v[2] = False
    with pytest.raises(SpecError, match="head 2 is kept but keeps no v channel") as e:
        resolve_spec(Spec({"blocks.0.v": v}), ir)
    assert e.value.key == "blocks.0.v"
    resolve_spec(Spec({"blocks.0.v": v, "blocks.0.heads": torch.tensor([True, True, False, True])}), ir)
    keep = torch.ones(ir.num_tokens, dtype=torch.bool)
    keep[3] = False
    with pytest.raises(SpecError, match="CaiT") as e:
        resolve_spec(Spec({"blocks.1.tokens": keep}), ir)
    assert e.value.key == "blocks.1.tokens"
    with pytest.raises(SpecError, match="CaiT") as e:
        resolve_spec(Spec({}, {"exit": {"block": 1}}), ir)
    assert e.value.key == "exit"
