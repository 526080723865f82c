"""The reference L1 mask producer."""
from __future__ import annotations

import pytest
import torch

from vitshrink.errors import VitshrinkError
from vitshrink.masks.common import head_scores
from vitshrink.masks.vit import l1_spec
from vitshrink.families import resolve_spec


def timm_head_l1(blk) -> torch.Tensor:
    """[H] L1 norm of each head's q, k, v rows and proj columns, read from timm's fused qkv --
    independently of the frontend and of maskgen.head_scores."""
    H = blk.attn.num_heads
    D = blk.attn.qkv.weight.shape[1]
    qkv = blk.attn.qkv.weight.detach().reshape(3, H, D // H, D).abs().sum((0, 2, 3))
    proj = blk.attn.proj.weight.detach().reshape(D, H, D // H).abs().sum((0, 2))
    return qkv + proj


def test_keeps_the_largest_units(small_model):
    model, ir = small_model
    spec = l1_spec(ir, heads=0.5, mlp=0.25, embed=0.75)
    rs = resolve_spec(spec, ir)
    for j, b in enumerate(ir.blocks):
        i = b.source_index
        s = timm_head_l1(model.blocks[i])
        assert torch.allclose(head_scores(ir, j), s, rtol=1e-5)
        kept, dropped = s[rs.heads[i]], s[~rs.heads[i]]
        assert rs.heads[i].sum() == 2 and kept.min() >= dropped.max()
        fc1 = model.blocks[i].mlp.fc1.weight.detach().abs().sum(1)
        assert rs.mlp[i].sum() == round(0.25 * b.mlp.hidden)
        assert fc1[rs.mlp[i]].min() >= fc1[~rs.mlp[i]].max()
    assert rs.embed.sum() == 36


def test_rounding_keeps_at_least_one(small_model):
    _, ir = small_model
    rs = resolve_spec(l1_spec(ir, heads=0.01, mlp=0.001), ir)
    assert all(int(m.sum()) == 1 for m in rs.heads.values())
    assert all(int(m.sum()) == 1 for m in rs.mlp.values())


def test_deit_tiny_two_of_three_heads():
    from vitshrink.frontends.timm import create_model, from_timm

    ir = from_timm(create_model("deit_tiny_patch16_224"))
    rs = resolve_spec(l1_spec(ir, heads=0.67, mlp=0.5), ir)
    assert all(int(m.sum()) == 2 for m in rs.heads.values())
    assert all(int(m.sum()) == 384 for m in rs.mlp.values())


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5])
def test_bad_ratio(small_model, ratio):
    _, ir = small_model
    with pytest.raises(VitshrinkError, match="keep ratio"):
        l1_spec(ir, mlp=ratio)


def test_the_masks_job_is_a_function(tmp_path):
    """vitshrink.make_masks -- what `vitshrink masks` runs -- called directly: the spec written and returned (L1 widths
    and a ToMe schedule on random weights: the warning says so); bad input raises before anything is written."""
    import vitshrink
    from vitshrink.spec import load_spec

    r = vitshrink.make_masks("deit_tiny_patch16_224", tmp_path / "s.json", img_size=(32, 32), heads=0.67, tokens="tome:2")
    assert r.path.is_file() and r.weights is None and r.images == 0
    assert load_spec(r.path).masks.keys() == r.spec.masks.keys() and len(r.spec.masks) == 12
    assert r.spec.settings["token_merge"] and any("RANDOM" in w for w in r.warnings)
    with pytest.raises(VitshrinkError, match="--macs needs calibration images"):
        vitshrink.make_masks("deit_tiny_patch16_224", tmp_path / "t.json", macs=0.5)
    assert not (tmp_path / "t.json").exists()
