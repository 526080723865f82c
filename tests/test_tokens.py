"""Token paths: static (drop, query) and dynamic rules vs the masked dense reference.

Logits within 1e-4 and, for dynamic rules, identical kept-token indices -- in torch and in the
exported ONNX graph run by ONNX Runtime, including images whose flat regions make scores tie exactly.
"""
from __future__ import annotations

import collections
import math

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import images
from test_exactness import assert_tokens_match, bool_mask, specs
from vitshrink.families import build_module
from vitshrink.codegen import token_counts
from vitshrink.counting import count_macs
from vitshrink.errors import SpecError
from vitshrink.export import export_onnx
from vitshrink.families import apply_spec
from vitshrink.passes import bucket_heads, group_heads, pad_heads, prefix_token_order
from vitshrink.pipeline.inputs import tie_images
from vitshrink.families import reference_forward
from vitshrink.runtime.ort import OrtRunner
from vitshrink.spec import Spec
from vitshrink.families import resolve_spec

TOL = 1e-4
HS = settings(max_examples=int(__import__("os").environ.get("VITSHRINK_EXAMPLES", 40)), deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def predictor_tensors(D: int, seed: int = 0) -> dict:
    """Checkpoint tensors of a DynamicViT predictor ('pred') and an MLP scorer ('sel', hidden 8)."""
    g = torch.Generator().manual_seed(seed)
    t = {"pred.in_conv.0.weight": 1 + 0.2 * torch.randn(D, generator=g), "pred.in_conv.0.bias": 0.1 * torch.randn(D, generator=g),
         "sel.norm.weight": 1 + 0.2 * torch.randn(D, generator=g), "sel.norm.bias": 0.1 * torch.randn(D, generator=g)}
    for name, o, i in [("pred.in_conv.1", D, D), ("pred.out_conv.0", D // 2, D), ("pred.out_conv.2", D // 4, D // 2),
                       ("pred.out_conv.4", 2, D // 4), ("sel.fc0", 8, D), ("sel.fc1", 1, 8)]:
        t[f"{name}.weight"] = 0.3 * torch.randn(o, i, generator=g)
        t[f"{name}.bias"] = 0.1 * torch.randn(o, generator=g)
    return t


PREDICTORS = [{"type": "dynamicvit", "prefix": "pred"}, {"type": "mlp", "prefix": "sel", "hidden": [8]}]


def check(ir, spec: Spec, tensors=None, x=None, token_layouts=("prefix", "gather")):
    """Compiled (every head and token layout) vs reference: logits and kept token ids."""
    tensors = tensors or {}
    x = images(3) if x is None else x
    rs = resolve_spec(spec, ir, tensors)
    pruned = apply_spec(ir, rs, tensors)
    ref_res = []
    ref, ref_ids = reference_forward(ir, rs, x, tensors, trace=True, residuals=ref_res)
    for tl in token_layouts:
        for layout in (pad_heads, group_heads, bucket_heads):
            lir = layout(pruned)
            if tl == "prefix":
                lir = prefix_token_order(lir)
            module = build_module(lir, trace=True)
            with torch.no_grad():
                got, ids = module(x)
            diff = float((got - ref).abs().max())
            assert diff <= TOL, f"{tl}/{layout.__name__}: max abs diff {diff:.3g}"
            assert len(ids) == len(ref_ids) and all(torch.equal(a, b) for a, b in zip(ids, ref_ids)), "kept tokens differ"
            assert_tokens_match(ref_res, module.residuals, rs.embed)
    return rs, pruned


# ----------------------------------------------------------------------------------------- static


@st.composite
def static_specs(draw, ir):
    spec = draw(specs(ir, with_exit=True))
    N, P = ir.num_tokens, ir.num_prefix
    keep = torch.ones(N, dtype=torch.bool)
    for b in ir.blocks:
        if draw(st.booleans()):
            keep = keep & bool_mask(draw, (N,))
            keep[:P] = True
            spec.masks[f"blocks.{b.source_index}.tokens"] = keep.clone()
    spec.settings["token_mode"] = draw(st.sampled_from(["drop", "query"]))
    return spec


@HS
@given(data=st.data())
def test_random_static_tokens(small_model, data):
    _, ir = small_model
    from test_exactness import exit_tensors

    check(ir, data.draw(static_specs(ir)), exit_tensors(ir, len(ir.blocks)))


@HS
@given(data=st.data())
def test_random_static_tokens_distilled(small_distilled, data):
    from test_exactness import exit_tensors

    _, ir = small_distilled
    check(ir, data.draw(static_specs(ir)), exit_tensors(ir, len(ir.blocks)))


def test_prefix_order_makes_kept_sets_prefixes(small_model):
    _, ir = small_model
    g = torch.Generator().manual_seed(4)
    masks, keep = {}, torch.ones(17, dtype=torch.bool)
    for i in (0, 2, 3):
        keep = keep & (torch.rand(17, generator=g) > 0.3)
        keep[0] = True
        masks[f"blocks.{i}.tokens"] = keep.clone()
    for mode in ("drop", "query"):
        rs, pruned = check(ir, Spec(dict(masks), {"token_mode": mode}))
        order = prefix_token_order(pruned).token_order
        assert order[0] == 0
        for b in pruned.blocks:
            n = len(b.tokens) if b.tokens is not None else 17
            assert set(order[:n]) == set(b.tokens if b.tokens is not None else range(17))
        if mode == "drop":  # tokens dropped before the first block are never laid out
            assert len(order) == int(masks["blocks.0.tokens"].sum())


def test_query_mode_updates_only_kept_tokens(small_model):
    """Patch Slimming eq. 2: token counts per block -- keys from all tokens, queries/MLP from the kept."""
    _, ir = small_model
    keep = torch.zeros(17, dtype=torch.bool)
    keep[:9] = True
    rs, pruned = check(ir, Spec({"blocks.2.tokens": keep}, {"token_mode": "query"}))
    counts = token_counts(prefix_token_order(pruned))
    assert [c["keys"] for c in counts] == [17, 17, 17, 17]
    assert [c["queries"] for c in counts] == [17, 17, 9, 9] and [c["mlp"] for c in counts] == [17, 17, 9, 9]
    rs, pruned = check(ir, Spec({"blocks.2.tokens": keep}, {"token_mode": "drop"}))
    assert [c["keys"] for c in token_counts(pruned)] == [17, 17, 9, 9]


# ---------------------------------------------------------------------------------------- dynamic


@st.composite
def dynamic_specs(draw, ir):
    spec = draw(specs(ir, with_exit=False))
    if "embed" in spec.masks and int(spec.masks["embed"].sum()) < 8:
        # a residual stream of 1-7 channels makes tokens (nearly) identical after LayerNorm: their
        # scores then differ only by rounding, which each implementation does its own way
        spec.masks["embed"][:8] = True
    rules, present = {}, ir.num_patches
    for b in ir.blocks:  # valid by construction (no assume): live blocks, counts that fit, live attention
        i, m = b.source_index, spec.masks
        if not draw(st.booleans()) or (f"blocks.{i}.keep" in m and not bool(m[f"blocks.{i}.keep"])):
            continue
        heads = m.get(f"blocks.{i}.heads", torch.ones(b.attn.num_heads, dtype=torch.bool))
        v = m.get(f"blocks.{i}.v", torch.ones(b.attn.num_heads, 1, dtype=torch.bool))
        scores = ["cls_attention", "cls_attention_lfe", "predictor"] if (heads & v.any(1)).any() else ["predictor"]
        score = draw(st.sampled_from(scores))
        keep = draw(st.one_of(st.integers(1, min(6, present)), st.sampled_from([0.3, 0.5, 0.7, 0.9, 1.0])))
        rule = {"keep": keep, "score": score, "fuse": draw(st.booleans())}
        k = keep if isinstance(keep, int) else max(1, math.ceil(keep * present - 1e-9))
        present = k + int(rule["fuse"] and k < present)
        if score == "predictor":
            rule["predictor"] = draw(st.sampled_from(PREDICTORS))
            rule["where"] = draw(st.sampled_from(["attn", "mlp"]))
        else:
            rule["head_weighting"] = draw(st.booleans())
            if score == "cls_attention_lfe":
                rule["cutoff"] = draw(st.sampled_from([0.15, 0.3, 1.0]))
        rules[str(b.source_index)] = rule
    spec.settings["dynamic_tokens"] = rules
    return spec


def _draw_valid(data, strategy, ir, tensors):
    """A spec from ``strategy`` that must resolve: the strategies build valid specs, so a SpecError
    here is a bug in the strategy or in resolve_spec, never a discarded example."""
    spec = data.draw(strategy)
    resolve_spec(spec, ir, tensors)
    return spec


def test_strategies_discard_nothing(small_model, small_distilled):
    """Issue 11: no example is discarded. 150 draws of each spec strategy, every one resolves; the
    tests run with hypothesis' filter_too_much health check on."""
    from test_exactness import exit_tensors

    for _, ir in (small_model, small_distilled):
        tensors = {**predictor_tensors(ir.embed_dim), **exit_tensors(ir, len(ir.blocks))}
        drawn = collections.Counter()

        @settings(max_examples=150, deadline=None, database=None)
        @given(data=st.data())
        def draw(data):
            for name, strategy in (("specs", specs(ir)), ("static", static_specs(ir)), ("dynamic", dynamic_specs(ir))):
                try:
                    resolve_spec(data.draw(strategy), ir, tensors)
                    drawn[name, "valid"] += 1
                except SpecError as e:
                    drawn[name, str(e)] += 1

        draw()
        invalid = {k: n for k, n in drawn.items() if k[1] != "valid"}
        assert not invalid, f"strategies drew invalid specs: {invalid}"
        assert all(drawn[name, "valid"] >= 100 for name in ("specs", "static", "dynamic")), drawn


@HS
@given(data=st.data())
def test_random_dynamic_rules(small_model, data):
    _, ir = small_model
    tensors = predictor_tensors(ir.embed_dim)
    spec = _draw_valid(data, dynamic_specs(ir), ir, tensors)
    check(ir, spec, tensors, token_layouts=("prefix",))


@HS
@given(data=st.data())
def test_random_dynamic_rules_distilled(small_distilled, data):
    _, ir = small_distilled
    tensors = predictor_tensors(ir.embed_dim, seed=1)
    spec = _draw_valid(data, dynamic_specs(ir), ir, tensors)
    check(ir, spec, tensors, token_layouts=("prefix",))


def test_rank_keep_breaks_exact_ties_identically_in_torch_and_onnx(tmp_path):
    """Many exactly tied scores: torch (whose topk alone breaks ties arbitrarily) and ONNX Runtime
    keep the same tokens -- the lowest positions among equals -- as a stable sort would."""
    from vitshrink.codegen import rank_keep

    class Keep(torch.nn.Module):
        def forward(self, s):
            keep, idx = rank_keep(s, 7)
            return keep.to(torch.int64), idx

    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 3, (64, 20), generator=g).float()  # 3 distinct values over 20 tokens
    keep_t, idx_t = Keep()(scores)
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(Keep().eval(), (scores,), str(tmp_path / "k.onnx"), dynamo=True, opset_version=20)
    import onnxruntime as ort

    keep_o, idx_o = ort.InferenceSession(str(tmp_path / "k.onnx"), providers=["CPUExecutionProvider"]).run(None, {"s": scores.numpy()})
    assert np.array_equal(keep_o, keep_t.numpy()) and np.array_equal(idx_o, idx_t.numpy())
    for row, idx in zip(scores.tolist(), idx_t.tolist()):
        stable = sorted(range(20), key=lambda j: (-row[j], j))[:7]
        assert idx == sorted(stable)


@pytest.fixture(scope="module")
def tie_model():
    """A model whose patch position embeddings are all equal: on flat images identical patches are
    identical tokens, so the first rule's scores tie exactly."""
    from conftest import small_vit
    from vitshrink.frontends.timm import from_timm

    m = small_vit(seed=3)
    with torch.no_grad():
        m.pos_embed[:, 1:] = m.pos_embed[:, 1:2]
    return from_timm(m)


def test_exact_ties_in_a_model(tmp_path, tie_model):
    """Block 0 scores tie exactly on flat images: compiled torch, the reference and ONNX Runtime keep
    the same tokens, and among identical patches the lower position is the one kept."""
    ir = tie_model
    x = tie_images(4, (3, 32, 32), (8, 8))
    spec = Spec({}, {"dynamic_tokens": {"0": {"keep": 5, "fuse": True}}})
    rs, pruned = check(ir, spec, x=x, token_layouts=("prefix",))
    _, ids = reference_forward(ir, rs, x, trace=True)
    patches = x.unfold(2, 8, 8).unfold(3, 8, 8).reshape(4, 3, 16, -1).permute(0, 2, 1, 3).reshape(4, 16, -1)
    kept = ids[0][:, 1:6] - 1
    twins = 0
    for b in range(4):
        dropped = set(range(16)) - set(kept[b].tolist())
        for p in kept[b].tolist():  # a kept patch has no identical twin at a lower, dropped position
            assert not any(q < p and torch.equal(patches[b, q], patches[b, p]) for q in dropped)
            twins += any(torch.equal(patches[b, q], patches[b, p]) for q in dropped)
    assert twins > 0  # the images do produce ties between kept and dropped tokens
    module = build_module(pruned, trace=True)
    path = export_onnx(module, tmp_path / "m.onnx", (3, 32, 32))
    outs = OrtRunner(path).session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        _, tids = module(x)
    assert all(np.array_equal(o, t.numpy()) for o, t in zip(outs[1:], tids))


def test_fused_token_is_the_score_weighted_sum(small_model):
    """EViT: x_fused = sum over pruned tokens of score * token (not normalised)."""
    _, ir = small_model
    rs, pruned = check(ir, Spec({}, {"dynamic_tokens": {"3": {"keep": 4, "fuse": True}}}))
    assert token_counts(pruned)[3] == {"in": 17, "keys": 17, "queries": 17, "mlp": 6, "out": 6}


# ------------------------------------------------------------------------------------------ export


EXPORT_CASES = {
    "static_drop": ({"blocks.1.tokens": [0, 1, 2, 3, 5, 8, 9, 10, 11, 13], "blocks.3.tokens": [0, 2, 5, 9, 13]}, {"token_mode": "drop"}),
    "static_query": ({"blocks.1.tokens": [0, 1, 2, 3, 5, 8, 9, 10, 11, 13], "blocks.3.tokens": [0, 2, 5, 9, 13]}, {"token_mode": "query"}),
    "evit_fuse": ({}, {"dynamic_tokens": {"1": {"keep": 0.7, "fuse": True}, "3": {"keep": 0.5}}}),
    "vtc_lfc": ({"blocks.0.heads": [0, 2, 3]}, {"dynamic_tokens": {"1": {"keep": 9, "score": "cls_attention_lfe"}, "2": {"keep": 5, "score": "cls_attention_lfe"}}}),
    "predictors": ({"embed": list(range(0, 48, 2)) + [1, 3]}, {"dynamic_tokens": {
        "0": {"keep": 0.75, "score": "predictor", "where": "attn", "predictor": PREDICTORS[0]},
        "2": {"keep": 4, "score": "predictor", "fuse": True, "predictor": PREDICTORS[1]}}}),
}


# the token layout orders static masks only: a case without them is one graph in both layouts, exported once
EXPORT_PARAMS = [(c, t) for c in EXPORT_CASES for t in (("prefix", "gather") if c.startswith("static") else ("any",))]


@pytest.mark.parametrize("case,token_layout", EXPORT_PARAMS, ids=[f"{c}-{t}" for c, t in EXPORT_PARAMS])
def test_token_models_export(tmp_path, small_distilled, case, token_layout):
    _, ir = small_distilled
    masks, settings_ = EXPORT_CASES[case]
    # distilled: class 0, distillation 1, patches shift by one
    masks = {k: ([0, 1] + [t + 1 for t in v if t > 0] if k.endswith(".tokens") else v) for k, v in masks.items()}
    tensors = predictor_tensors(ir.embed_dim)
    rs = resolve_spec(Spec(dict(masks), settings_), ir, tensors)
    pruned = pad_heads(apply_spec(ir, rs, tensors))
    if token_layout == "any":
        assert prefix_token_order(pruned) is pruned  # the gather and the prefix layout are the same IR
    elif token_layout == "prefix":
        pruned = prefix_token_order(pruned)
    module = build_module(pruned, trace=True)
    path = export_onnx(module, tmp_path / "m.onnx", (3, 32, 32))
    model = onnx.load(str(path))
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["TopK"] == len(rs.dynamic) * 1  # one constant-K TopK per dynamic rule
    for n in model.graph.node:
        if n.op_type == "TopK":
            k = next(init for init in model.graph.initializer if init.name == n.input[1])
            assert onnx.numpy_helper.to_array(k).size == 1  # constant K
    if token_layout != "gather":
        assert not ops.keys() & {"ScatterND", "ScatterElements"}
    for out in model.graph.output:  # static shapes except batch
        dims = out.type.tensor_type.shape.dim
        assert all(d.dim_value > 0 for d in dims[1:])
    runner = OrtRunner(path)
    for x in (images(3, seed=5), tie_images(2, (3, 32, 32), (8, 8))):
        outs = runner.session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            want, ids = module(x)
        assert float(np.abs(outs[0] - want.numpy()).max()) <= TOL
        assert all(np.array_equal(o, t.numpy()) for o, t in zip(outs[1:], ids)), "ORT kept other tokens than torch"
        ref, ref_ids = reference_forward(ir, rs, x, tensors, trace=True)
        assert float((want - ref).abs().max()) <= TOL
        assert all(torch.equal(a, b) for a, b in zip(ids, ref_ids))
        assert all((t[:, :2] == torch.tensor([0, 1])).all() for t in ids)  # class and distillation tokens kept


def test_product_export_has_no_trace_outputs(tmp_path, small_model):
    _, ir = small_model
    rs = resolve_spec(Spec({}, {"dynamic_tokens": {"1": {"keep": 0.5, "fuse": True}}}), ir)
    path = export_onnx(build_module(apply_spec(ir, rs)), tmp_path / "m.onnx", (3, 32, 32))
    model = onnx.load(str(path))
    assert [o.name for o in model.graph.output] == ["logits"]
    assert "GatherElements" not in {n.op_type for n in model.graph.node}


# ---------------------------------------------------------------------------------------- counting


def test_macs_follow_token_counts():
    from test_counting import vit_macs
    from vitshrink.frontends.timm import create_model, from_timm

    ir = from_timm(create_model("deit_tiny_patch16_224"))
    keep = torch.zeros(197, dtype=torch.bool)
    keep[:99] = True  # class + 98 patches from block 6 on
    for mode in ("drop", "query"):
        pruned = prefix_token_order(apply_spec(ir, resolve_spec(Spec({"blocks.6.tokens": keep}, {"token_mode": mode}), ir)))
        got = count_macs(build_module(pruned))
        dense_block = vit_macs(192, 197, [(192, 192, 768)], 0, 0)
        if mode == "drop":
            small_block = vit_macs(192, 99, [(192, 192, 768)], 0, 0)
        else:  # queries, attention rows, proj and MLP for 99 tokens; K/V projections and keys for all 197
            n, N, D = 99, 197, 192
            small_block = n * D * D + 2 * N * D * D + 2 * n * N * D + n * D * D + 2 * n * D * 768
        want = 196 * 192 * 768 + 6 * dense_block + 6 * small_block + 192 * 1000
        assert got == want


# ---------------------------------------------------------------------------------------- producers


def test_uniform_and_slim_schedules(small_model):
    from vitshrink.masks.tokens import parse_token_schedule, slim_token_masks, token_spec, uniform_token_masks

    _, ir = small_model
    assert parse_token_schedule("slim:0.8@1-3") == ("slim", 0.8, [1, 2, 3])
    for masks in (uniform_token_masks(ir, 0.7, [1, 3]), slim_token_masks(ir, 0.7, [1, 3], images(6))):
        a, b = masks["blocks.1.tokens"], masks["blocks.3.tokens"]
        assert int(a.sum()) == 1 + 12 and int(b.sum()) == 1 + 9 and bool(a[0]) and not (b & ~a).any()
        check(ir, Spec(dict(masks), {"token_mode": "query"}))
    masks, settings_ = token_spec(ir, "evit:0.7@1,3", fuse=True)
    assert masks == {} and settings_["dynamic_tokens"]["3"] == {"keep": 0.7, "score": "cls_attention", "fuse": True}
    check(ir, Spec({}, settings_))


def test_slim_keeps_the_most_impactful_tokens(small_model):
    """At the deepest listed block the kept patches are exactly the top by attention rollout."""
    from vitshrink.masks.tokens import attention_rollout_scores, slim_token_masks

    _, ir = small_model
    x = images(6)
    scores = attention_rollout_scores(ir, x)
    m = slim_token_masks(ir, 0.5, [2], x)["blocks.2.tokens"]
    top = set(torch.argsort(scores[2, 1:], descending=True)[:8].tolist())
    assert {int(t) - 1 for t in torch.nonzero(m).flatten() if t > 0} == top


@pytest.mark.parametrize("bad", ["evit", "evit:0.7", "topk:0.7@3", "evit:1.7@3", "slim:0.5@x"])
def test_bad_schedules(small_model, bad):
    from vitshrink.errors import VitshrinkError
    from vitshrink.masks.tokens import token_spec

    _, ir = small_model
    with pytest.raises(VitshrinkError, match="--tokens"):
        token_spec(ir, bad, calib=images(2))


def test_query_mode_semantics_on_the_last_block(small_model):
    """Patch Slimming eq. 2: updating only the class token in the last block leaves the logits of
    the dense model unchanged (no other token's last update reaches the classifier); dropping the
    other tokens instead changes them (the class token then attends to itself only)."""
    model, ir = small_model
    only_cls = torch.zeros(17, dtype=torch.bool)
    only_cls[0] = True
    x = images(3)
    with torch.no_grad():
        dense = model(x)
    for mode, same in (("query", True), ("drop", False)):
        rs = resolve_spec(Spec({"blocks.3.tokens": only_cls}, {"token_mode": mode}), ir)
        got = build_module(prefix_token_order(apply_spec(ir, rs)))(x).detach()
        assert (float((got - dense).abs().max()) <= TOL) == same


class PredictorLG(torch.nn.Module):
    """DynamicViT's token predictor as its authors wrote it (Rao et al., NeurIPS 2021; dyvit.py),
    inference with every token present (policy all ones): an independent anchor for our two copies."""

    def __init__(self, embed_dim):
        super().__init__()
        nn = torch.nn
        self.in_conv = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, embed_dim), nn.GELU())
        self.out_conv = nn.Sequential(nn.Linear(embed_dim, embed_dim // 2), nn.GELU(), nn.Linear(embed_dim // 2, embed_dim // 4),
                                      nn.GELU(), nn.Linear(embed_dim // 4, 2), nn.LogSoftmax(dim=-1))

    def forward(self, x, policy):
        x = self.in_conv(x)
        B, N, C = x.size()
        local_x = x[:, :, :C // 2]
        global_x = (x[:, :, C // 2:] * policy).sum(dim=1, keepdim=True) / torch.sum(policy, dim=1, keepdim=True)
        return self.out_conv(torch.cat([local_x, global_x.expand(B, N, C // 2)], dim=-1))


def test_dynamicvit_predictor_against_the_authors_module(small_model):
    """Issue 11: the predictor's LayerNorm eps is DynamicViT's own (nn.LayerNorm default 1e-5), not the
    backbone's 1e-6 -- checked on tokens of small variance, where the two differ visibly. Both the
    reference's scorer and the module the compiler emits match the authors' PredictorLG."""
    from vitshrink.reference.vit import _predictor_scores

    _, ir = small_model
    D = ir.embed_dim
    tensors = predictor_tensors(D, seed=3)
    authors = PredictorLG(D)
    missing = authors.load_state_dict({k[len("pred."):]: v for k, v in tensors.items() if k.startswith("pred.")})
    assert not missing.missing_keys and not missing.unexpected_keys
    x = 3e-3 * torch.randn(2, 10, D, generator=torch.Generator().manual_seed(0))  # variance ~1e-5: eps matters
    with torch.no_grad():
        want = authors(x, torch.ones(2, 10, 1))[..., 0]
        authors.in_conv[0].eps = ir.blocks[0].norm1.eps  # the backbone's eps: another scorer
        other = authors(x, torch.ones(2, 10, 1))[..., 0]
    assert float((other - want).abs().max()) > 1e-3, "the inputs do not tell the two eps apart"

    spec = Spec({}, {"dynamic_tokens": {"1": {"keep": 4, "score": "predictor", "predictor": PREDICTORS[0]}}})
    rs = resolve_spec(spec, ir, tensors)
    ref = torch.stack([_predictor_scores(rs.dynamic[1], x[b], tensors, torch.ones(D)) for b in range(2)])
    compiled = build_module(apply_spec(ir, rs, tensors)).blocks[1].predictor
    with torch.no_grad():
        got = compiled(x)
    assert float((ref - want).abs().max()) <= 1e-5, "reference scorer differs from DynamicViT's"
    assert float((got - want).abs().max()) <= 1e-5, "compiled scorer differs from DynamicViT's"
