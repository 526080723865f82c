"""Fused attention (issue 16): the generated ViT and Swin modules run attention through
``F.scaled_dot_product_attention`` -- one call per group of equal heads, Swin's bias and shift mask as
``attn_mask`` --, except VTC-LFC's head-weighted score blocks (they need every probability); both forms
give the same logits; the ONNX export takes the explicit form; the ``fused`` head layout gives the
widths fused kernels take."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import images, randomise, small_vit
from vitshrink.codegen import attention_form
from vitshrink.families import apply_spec, build_module, reference_forward, resolve_spec
from vitshrink.frontends.timm import from_timm
from vitshrink.passes.layout import bucket_heads, buckets, group_heads
from vitshrink.spec import Spec

TOL = 1e-4


@pytest.fixture
def sdpa_calls(monkeypatch):
    """Every call of F.scaled_dot_product_attention: (q shape, v shape, has attn_mask)."""
    calls, real = [], F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        calls.append((tuple(q.shape), tuple(v.shape), kwargs.get("attn_mask") is not None))
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return calls


def _irregular(ir, seed=0):
    """Every head its own q/k and v width (VTC-LFC)."""
    g, masks = torch.Generator().manual_seed(seed), {}
    for b in ir.blocks:
        H, hd = b.attn.num_heads, b.attn.qk_dims[0]
        for kind, off in (("qk", 1), ("v", 4)):
            m = torch.zeros(H, hd, dtype=torch.bool)
            for h in range(H):
                m[h, torch.randperm(hd, generator=g)[:1 + (3 * h + off) % hd]] = True
            masks[f"blocks.{b.source_index}.{kind}"] = m
    return Spec(masks)


def _both_forms(module, x):
    with torch.no_grad():
        fused = module(x)
        with attention_form(module, False):
            explicit = module(x)
    return fused, explicit


def test_vit_calls_sdpa_once_per_head_group(small_model, sdpa_calls):
    _, ir = small_model
    rs = resolve_spec(_irregular(ir), ir)
    pruned = group_heads(apply_spec(ir, rs))
    module, x = build_module(pruned), images(2)
    fused, explicit = _both_forms(module, x)
    groups = sum(len(blk.attn.groups) for blk in module.blocks)
    assert len(sdpa_calls) == groups > len(module.blocks)  # irregular: several groups per block, each one call
    assert float((fused - explicit).abs().max()) <= 1e-5
    assert float((fused - reference_forward(ir, rs, x)).abs().max()) <= TOL


def test_fused_layout_gives_kernel_widths(small_model, sdpa_calls):
    """Buckets: q/k = v, multiples of 8, at most two calls per block -- and still exact."""
    _, ir = small_model
    rs = resolve_spec(_irregular(ir, seed=1), ir)
    laid = bucket_heads(apply_spec(ir, rs))
    for b in laid.blocks:
        assert b.attn.qk_dims == b.attn.v_dims and all(w % 8 == 0 for w in b.attn.qk_dims)
        assert len(set(b.attn.qk_dims)) <= 2 and list(b.attn.qk_dims) == sorted(b.attn.qk_dims, reverse=True)
    module, x = build_module(laid), images(2)
    with torch.no_grad():
        got = module(x)
    assert len(sdpa_calls) <= 2 * len(laid.blocks)
    assert all(q[-1] == v[-1] and q[-1] % 8 == 0 for q, v, _ in sdpa_calls)
    assert float((got - reference_forward(ir, rs, x)).abs().max()) <= TOL


def test_buckets_minimise_the_padded_width():
    assert buckets([8, 16, 16, 64], 2) == [16, 64]  # 16+16+16+64 = 112 beats 8+64*3 and [8, 64]
    assert buckets([8, 16, 16, 64], 1) == [64]
    assert buckets([24, 24], 2) == [24]
    assert buckets([8, 24, 40, 64], 3) == [8, 40, 64]  # 8+40+40+64 = 152 (ties [24, 40, 64]; the first found wins)


def test_swin_passes_bias_and_shift_mask_as_attn_mask(sdpa_calls):
    from timm.models.swin_transformer import SwinTransformer

    from vitshrink.frontends.timm_swin import from_timm as from_timm_swin
    from test_swin import SMALL_SWIN

    m = randomise(SwinTransformer(**SMALL_SWIN), seed=2)
    ir = from_timm_swin(m, "small_swin")
    module, x = build_module(ir), torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    fused, explicit = _both_forms(module, x)
    assert len(sdpa_calls) == len(ir.blocks) and all(mask for _, _, mask in sdpa_calls)
    assert float((fused - explicit).abs().max()) <= 1e-5
    with torch.no_grad():
        assert float((fused - m(x)).abs().max()) <= TOL


def test_token_score_blocks(sdpa_calls):
    """EViT's class-attention blocks run fused (the class row is one small product beside it);
    VTC-LFC's head-weighted blocks need every probability and run explicit."""
    m = small_vit(seed=5)
    ir = from_timm(m, "small")
    rules = {"1": {"keep": 0.7, "score": "cls_attention", "fuse": True},
             "2": {"keep": 0.7, "score": "cls_attention_lfe"}}
    rs = resolve_spec(Spec({}, {"dynamic_tokens": rules}), ir)
    module, x = build_module(apply_spec(ir, rs)), images(3)
    fused, explicit = _both_forms(module, x)
    assert len(sdpa_calls) == len(ir.blocks) - 1  # all but the head-weighted block 2
    assert float((fused - explicit).abs().max()) <= 1e-5
    assert float((fused - reference_forward(ir, rs, x)).abs().max()) <= TOL


def test_onnx_export_takes_the_explicit_form(small_model, sdpa_calls, tmp_path):
    from vitshrink.export import export_onnx, onnx_max_abs_diff

    _, ir = small_model
    module, x = build_module(ir), images(2)
    with torch.no_grad():
        want = module(x)
    sdpa_calls.clear()
    path = export_onnx(module, tmp_path / "m.onnx", (3, 32, 32))
    assert sdpa_calls == [] and all(a.fused for a in module.modules() if hasattr(a, "fused"))  # form restored
    assert onnx_max_abs_diff(path, x, want) <= TOL
