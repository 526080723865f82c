"""Composition and independent anchors.

- The structural passes commute: applied one by one in any order they build the same model.
- A second spec applied to an already pruned (or padded) model equals one spec with the combined masks.
- Anchors that share no code with vitshrink's reference: embedding pruning against timm with its
  LayerNorms replaced by LayerNorms over the kept channels and the removed channels zeroed where they
  are written; early exit against timm cut by hand (distilled models in the zeroed-timm anchor:
  test_exactness.py).
"""
from __future__ import annotations

import copy

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import images
from test_exactness import specs, timm_zeroable_specs, zeroed_timm
from test_seed_formats import deployed_anchor
from vitshrink.families import build_module
from vitshrink.families import apply_spec
from vitshrink.passes import pad_heads, prune_embed, prune_head_channels, prune_heads, prune_mlp, remove_blocks
from vitshrink.families import reference_forward
from vitshrink.spec import Spec
from vitshrink.families import resolve_spec

TOL = 1e-4
FEW = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
PASSES = ("channels", "heads", "mlp", "blocks", "embed")


def _run(ir, rs, order):
    for name in order:
        if name == "channels":
            ir = prune_head_channels(ir, rs.qk, rs.v)
        elif name == "heads":
            ir = prune_heads(ir, rs.heads)
        elif name == "mlp":
            ir = prune_mlp(ir, rs.mlp)
        elif name == "blocks":
            ir = remove_blocks(ir, rs.removed_blocks)
        elif name == "embed" and rs.embed is not None:
            ir = prune_embed(ir, rs.embed)
    return ir


@FEW
@given(data=st.data())
def test_passes_commute(small_model, data):
    _, ir = small_model
    rs = resolve_spec(data.draw(specs(ir, with_exit=False)), ir)
    order = data.draw(st.permutations(PASSES))
    x = images(2)
    a, b = _run(ir, rs, order), apply_spec(ir, rs)
    assert [blk.attn.head_ids for blk in a.blocks] == [blk.attn.head_ids for blk in b.blocks]
    assert [blk.mlp.hidden_ids for blk in a.blocks] == [blk.mlp.hidden_ids for blk in b.blocks] and a.embed_ids == b.embed_ids
    with torch.no_grad():
        assert float((build_module(a)(x) - build_module(b)(x)).abs().max()) <= 1e-5


def _and(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = out[k] & v if k in out else v
    return out


def test_second_spec_on_a_pruned_and_a_padded_model(small_distilled):
    _, ir = small_distilled
    g = torch.Generator().manual_seed(4)
    first = {"embed": torch.arange(48) % 5 != 0, "blocks.0.heads": torch.tensor([True, False, True, True]),
             "blocks.1.mlp": torch.rand(96, generator=g) > 0.3, "blocks.2.v": torch.rand(4, 12, generator=g) > 0.4}
    second = {"embed": torch.arange(48) % 7 != 3, "blocks.0.heads": torch.tensor([True, True, False, True]),
              "blocks.1.mlp": torch.rand(96, generator=g) > 0.3, "blocks.3.qk": torch.rand(4, 12, generator=g) > 0.3}
    second["blocks.3.qk"][:, 0] = True
    r1, r2 = resolve_spec(Spec(first), ir), resolve_spec(Spec(second), ir)
    combined = resolve_spec(Spec(_and(first, second)), ir)
    x = images(3, seed=5)
    want = reference_forward(ir, combined, x)
    once = apply_spec(ir, combined)
    for base in (apply_spec(ir, r1), pad_heads(apply_spec(ir, r1))):
        twice = apply_spec(base, r2)
        with torch.no_grad():
            assert float((build_module(twice)(x) - want).abs().max()) <= TOL
        assert twice.embed_ids == once.embed_ids
        assert [b.mlp.hidden_ids for b in twice.blocks] == [b.mlp.hidden_ids for b in once.blocks]
        assert [b.attn.head_ids for b in twice.blocks] == [b.attn.head_ids for b in once.blocks]


# ------------------------------------------------------------------------------ independent anchors


@FEW
@given(data=st.data())
def test_embed_pruning_against_timm_with_masked_layernorms(small_model, small_distilled, data):
    """SAViT's embedding pruning (LayerNorm over kept channels) against timm itself: its LayerNorms
    swapped for LayerNorms over the kept channels, the removed channels zeroed where they are written,
    and every other mask zeroed in timm's weights."""
    model, ir = data.draw(st.sampled_from([small_model, small_distilled]))
    spec = data.draw(timm_zeroable_specs(ir))
    embed = torch.tensor(data.draw(st.lists(st.booleans(), min_size=48, max_size=48)))
    embed[data.draw(st.integers(0, 47))] = True
    spec.masks["embed"] = embed
    rs = resolve_spec(spec, ir)
    anchor = deployed_anchor(zeroed_timm(model, ir, rs), embed)
    if hasattr(model, "dist_token"):
        with torch.no_grad():
            anchor.dist_token[..., ~embed] = 0
    x = images(2, seed=6)
    with torch.no_grad():
        got = build_module(pad_heads(apply_spec(ir, rs)))(x)
        assert float((got - anchor(x)).abs().max()) <= TOL


def test_early_exit_against_timm_cut_by_hand(small_distilled):
    from test_exactness import exit_tensors

    model, ir = small_distilled
    tensors = exit_tensors(ir, len(ir.blocks))
    k = 1
    spec = Spec({}, {"exit": {"block": k, "head": f"exits.{k}.head", "head_dist": f"exits.{k}.head_dist",
                              "norm": f"exits.{k}.norm"}})
    rs = resolve_spec(spec, ir, tensors)
    cut = copy.deepcopy(model)
    cut.blocks = cut.blocks[: k + 1]
    with torch.no_grad():
        for name, mod in (("norm", cut.norm), ("head", cut.head), ("head_dist", cut.head_dist)):
            src = f"exits.{k}.{name}"
            mod.weight.copy_(tensors[src + ".weight"])
            mod.bias.copy_(tensors[src + ".bias"])
    x = images(3, seed=7)
    with torch.no_grad():
        assert float((build_module(apply_spec(ir, rs, tensors))(x) - cut(x)).abs().max()) <= TOL


def _evit_forward(model, x, rules: dict, renormalise: bool = False):
    """EViT (Liang et al., ICLR 2022, sec. 3.2) written on timm's own modules with a forward hook:
    in block i of ``rules`` = {i: keep ratio}, after attention, keep the ceil(keep * n) patch tokens
    with the highest class attention (mean over heads of attn[:, :, 0, 1:]) and fuse the rest into
    one token sum_j a_j x_j (eq. 3: weights are the class attention, not renormalised), appended
    after the kept tokens. Independent of vitshrink's reference: only timm's weights are shared."""
    import math

    import timm.models.vision_transformer as tvit

    cls_attn = {}

    def hook(attn, inputs, _out):  # recompute the probabilities timm's fused attention does not expose
        h = inputs[0]
        B, N, C = h.shape
        qkv = attn.qkv(h).reshape(B, N, 3, attn.num_heads, C // attn.num_heads).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
        cls_attn["a"] = ((q @ k.transpose(-2, -1)) * attn.scale).softmax(-1)[:, :, 0, 1:].mean(1)  # [B, N-1]

    handles = [b.attn.register_forward_hook(hook) for b in model.blocks]
    try:
        t = model.patch_embed(x)
        t = model._pos_embed(t)
        for i, blk in enumerate(model.blocks):
            assert isinstance(blk, tvit.Block)
            t = t + blk.attn(blk.norm1(t))
            if i in rules:
                a, patches = cls_attn["a"], t[:, 1:]
                k = math.ceil(rules[i] * patches.shape[1])
                idx = a.topk(k, dim=1).indices
                rest = torch.ones_like(a, dtype=torch.bool).scatter(1, idx, False)
                kept = patches.gather(1, idx[..., None].expand(-1, -1, t.shape[-1]))
                fused = (a * rest)[..., None].mul(patches).sum(1, keepdim=True)
                if renormalise:  # a plausible misreading of eq. 3, for the sensitivity check
                    fused = fused / (a * rest).sum(1)[:, None, None]
                t = torch.cat([t[:, :1], kept, fused], 1)
            t = t + blk.mlp(blk.norm2(t))
        return model.forward_head(model.norm(t))
    finally:
        for h in handles:
            h.remove()


def test_evit_keep_and_fuse_against_timm_with_hooks():
    """Issue 11: EViT's keep + fuse (the dynamic rule score cls_attention, fuse true, no head
    weighting) on real DeiT-Tiny weights and real images, against timm run by hand with the
    paper's formula -- 70% kept at blocks 3, 6 and 9 as in the paper's DeiT setting."""
    from conftest import DEIT_TINY_CKPT, require_shared
    from vitshrink.families import import_model

    require_shared()
    model, ir, _ = import_model("deit_tiny_patch16_224", DEIT_TINY_CKPT)
    model.eval()
    x = real_images(4)
    rules = {3: 0.7, 6: 0.7, 9: 0.7}
    spec = Spec({}, {"dynamic_tokens": {str(i): {"keep": r, "score": "cls_attention", "fuse": True,
                                                 "head_weighting": False} for i, r in rules.items()}})
    rs = resolve_spec(spec, ir)
    with torch.no_grad():
        want = _evit_forward(model, x, rules)
        ref = reference_forward(ir, rs, x)
        got = build_module(pad_heads(apply_spec(ir, rs)))(x)
    assert float((ref - want).abs().max()) <= TOL, "reference differs from EViT's formula"
    assert float((got - want).abs().max()) <= TOL, "compiled module differs from EViT's formula"
    assert (got.argmax(1) == want.argmax(1)).all()
    with torch.no_grad():  # the anchor is sensitive: fusing with renormalised weights is another model
        other = _evit_forward(model, x, rules, renormalise=True)
    assert float((other - want).abs().max()) > 100 * TOL


def real_images(n: int) -> torch.Tensor:
    """``n`` real ImageNet validation images [n, 3, 224, 224], DeiT's eval transform."""
    from PIL import Image

    from conftest import IMAGENET_VAL
    from vitshrink.frontends.timm import create_model, eval_transform

    tf = eval_transform(create_model("deit_tiny_patch16_224"))
    files = sorted(p for p in IMAGENET_VAL.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))[:n]
    return torch.stack([tf(Image.open(p).convert("RGB")) for p in files])
