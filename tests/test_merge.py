"""Token merging (ToMe, Bolya et al. ICLR 2023) as a spec v1 token rule: the compiled model (Gather, MatMul and
a one-hot assignment, no scatter) against the masked dense reference (per-image Python, ``scatter_reduce``):
logits within 1e-4 and the very same merges (source -> destination token per block), over random merge
schedules and widths on class-token, distilled, register and average-pooled ViTs; ties; an independent anchor
(timm's DeiT with ToMe's algorithm patched in by hand); bad specs named; planted bugs caught and named."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import images, small_vit
from test_exactness import exit_tensors, specs
from test_tokens import HS, TOL, check
from vitshrink.errors import SpecError
from vitshrink.families import apply_spec, build_module, reference_forward, resolve_spec
from vitshrink.frontends.timm import from_timm
from vitshrink.pipeline.inputs import tie_images
from vitshrink.spec import Spec
from vitshrink.spec.tokens import mergeable


@st.composite
def merge_specs(draw, ir, widths: bool = True):
    """A random structural spec (or none) plus a random merge schedule: per kept block, maybe r merges
    (1 .. what bipartite matching allows with the tokens left)."""
    spec = draw(specs(ir, with_exit=True)) if widths else Spec({})
    embed = spec.masks.get("embed")
    if embed is not None and int(embed.sum()) < 3:
        # LayerNorm over one or two channels maps every token to one of two vectors: ties in the mathematics that
        # two implementations compute a few ulps apart, so which equal token merges is float noise (exact ties:
        # test_exact_ties_on_flat_images). Three channels leave the tokens distinct.
        spec.masks["embed"] = embed.clone()
        spec.masks["embed"][:3] = True
    removed = {int(k.split(".")[1]) for k, v in spec.masks.items() if k.endswith(".keep") and not bool(v)}
    stop = spec.settings.get("exit", {}).get("block", len(ir.blocks) - 1)
    present, rules = ir.num_tokens, {}

    def reads_keys(b):  # a head the block keeps, with v channels: merging reads its keys
        heads = spec.masks.get(f"blocks.{b.source_index}.heads", torch.ones(b.attn.num_heads, dtype=torch.bool))
        v = spec.masks.get(f"blocks.{b.source_index}.v", torch.ones(b.attn.num_heads, 1, dtype=torch.bool))
        return bool((heads & v.any(1)).any())

    for b in ir.blocks:
        i = b.source_index
        most = mergeable(present, ir.num_prefix)
        if i in removed or i > stop or most < 1 or not reads_keys(b) or not draw(st.booleans()):
            continue
        r = draw(st.integers(1, most))
        rules[str(i)] = {"r": r}
        present -= r
    if not rules:  # at least one merge, where one can be
        i = next((b.source_index for b in ir.blocks if b.source_index not in removed and b.source_index <= stop
                  and reads_keys(b)), None)
        if i is not None:
            rules[str(i)] = {"r": 1}
    if rules:
        spec.settings["token_merge"] = rules
    return spec


def _check(ir, spec, x=None):
    return check(ir, spec, exit_tensors(ir, len(ir.blocks)), x=x, token_layouts=("gather",))


@HS
@given(data=st.data())
def test_random_merge_schedules_and_widths(small_model, data):
    _, ir = small_model
    _check(ir, data.draw(merge_specs(ir)))


@HS
@given(data=st.data())
def test_random_merges_distilled(small_distilled, data):
    """The class and the distillation token (positions 0 and 1: one in each set) never merge."""
    _, ir = small_distilled
    rs, _ = _check(ir, data.draw(merge_specs(ir)))


@pytest.fixture(scope="module")
def pooled_models():
    """Average-pooled ViTs: with a class token, without one, with 4 registers and fc_norm."""
    return {name: from_timm(small_vit(seed=7, **kw), name) for name, kw in (
        ("avg", dict(global_pool="avg")), ("avg-no-cls", dict(global_pool="avg", class_token=False)),
        ("reg4", dict(global_pool="avg", class_token=False, reg_tokens=4, no_embed_class=True, fc_norm=True)))}


@pytest.mark.parametrize("name", ["avg", "avg-no-cls", "reg4"])
def test_average_pooled_and_register_models(pooled_models, name):
    """A size-weighted mean pool keeps the pooled value; register tokens are prefix tokens (never merged)."""
    ir = pooled_models[name]
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        present, rules = ir.num_tokens, {}
        for b in ir.blocks:
            r = int(torch.randint(1, mergeable(present, ir.num_prefix) + 1, (1,), generator=g))
            rules[str(b.source_index)] = {"r": r}
            present -= r
        _check(ir, Spec({"blocks.1.heads": [0, 2], "blocks.2.mlp": list(range(0, 96, 2))}, {"token_merge": rules}))


def test_merges_and_sizes_are_tomes(small_model):
    """Merging everything it can: token counts per block, the size-weighted average kept the class token first,
    and the traced merges (source, destination) are ids of tokens present at that block."""
    from vitshrink.codegen import token_counts

    _, ir = small_model
    rs, pruned = _check(ir, Spec({}, {"token_merge": {"0": 8, "1": 4, "3": 2}}))
    assert [t["mlp"] for t in token_counts(pruned)] == [9, 5, 5, 3]
    assert [t["keys"] for t in token_counts(pruned)] == [17, 9, 5, 5]
    module = build_module(pruned, trace=True)
    with torch.no_grad():
        _, traced = module(images(2))
    assert [t.shape for t in traced] == [(2, 8, 2), (2, 4, 2), (2, 2, 2)]
    for t in traced:
        assert (t[..., 0] != 0).all() and (t[..., 1] != 0).all()  # the class token is neither source nor destination
    assert all(r[2].shape[1] == n for r, n in zip(module.residuals, (9, 5, 5, 3)))


def test_exact_ties_on_flat_images(small_model):
    """Flat image regions give identical tokens, hence cosine similarities that tie exactly: the same merges in
    the compiled model and the reference (ties to the lower position, in both sets)."""
    _, ir = small_model
    x = tie_images(3, (3, 32, 32), (8, 8))
    _check(ir, Spec({}, {"token_merge": {"0": 6, "2": 3}}), x=x)


@pytest.mark.parametrize("settings_,key,words", [
    ({"token_merge": {"0": 9}}, "token_merge.0", "at most 8 of the 17 tokens"),
    ({"token_merge": {"0": 8, "1": 5}}, "token_merge.1", "at most 4 of the 9 tokens"),
    ({"token_merge": {"4": 2}}, "token_merge.4", "not a block index"),
    ({"token_merge": {"1": 0}}, "token_merge.1.r", "positive number"),
    ({"token_merge": {"1": {"r": 2, "sizes": True}}}, "token_merge.1.sizes", "unknown field"),
    ({"token_merge": {"1": {"r": 2, "prop_attn": False}, "2": {"r": 2}}}, "token_merge", "prop_attn"),
    ({"token_merge": {"1": 2}, "dynamic_tokens": {"2": {"keep": 4}}}, "token_merge", "cannot be combined"),
    ({"token_merge": [1, 2]}, "token_merge", "must be an object"),
])
def test_bad_merge_specs_name_the_key(small_model, settings_, key, words):
    _, ir = small_model
    with pytest.raises(SpecError) as e:
        resolve_spec(Spec({}, settings_), ir)
    assert e.value.key == key and words in str(e.value), str(e.value)


def test_a_block_without_keys_cannot_merge(small_model):
    """A removed block, or one whose every kept head lost its v channels (removed whole): no keys to match on."""
    _, ir = small_model
    with pytest.raises(SpecError, match="block 2 is removed"):
        resolve_spec(Spec({"blocks.2.keep": False}, {"token_merge": {"2": 2}}), ir)
    with pytest.raises(SpecError, match="every head of block 1 is removed"):
        resolve_spec(Spec({"blocks.1.heads": [0], "blocks.1.v": [[], [0], [1], [2]]}, {"token_merge": {"1": 2}}), ir)
    assert not resolve_spec(Spec({}, {"token_merge": {"3": 2}, "exit": {"block": 2}}), ir).merge  # after the exit: none


# ------------------------------------------------------------------------------ an independent anchor


def _tome_forward(model, x: torch.Tensor, r: list[int]) -> torch.Tensor:
    """timm's own VisionTransformer with ToMe's algorithm written straight from the paper -- the metric from
    timm's qkv (keys averaged over heads), bipartite matching with -inf on the class token's row, argsort,
    ``scatter_reduce`` of x*size and size, proportional attention -- on timm's modules, no vitshrink code."""
    B = x.shape[0]
    t = model.patch_embed(x)
    t = model._pos_embed(t)
    size = None
    for blk, rr in zip(model.blocks, r):
        a = blk.attn
        h = blk.norm1(t)
        N, C = h.shape[1], h.shape[2]
        qkv = a.qkv(h).reshape(B, N, 3, a.num_heads, C // a.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        logits = (q * a.scale) @ k.transpose(-2, -1)
        if size is not None:
            logits = logits + size.log()[:, None, None, :, 0]
        o = (logits.softmax(-1) @ v).transpose(1, 2).reshape(B, N, C)
        t = t + a.proj(o)
        if rr:
            metric = k.mean(1)
            metric = metric / metric.norm(dim=-1, keepdim=True)
            sa, sb = metric[:, ::2], metric[:, 1::2]
            scores = sa @ sb.transpose(-1, -2)
            scores[:, 0, :] = -math.inf  # the class token
            node_max, node_idx = scores.max(dim=-1)
            order = node_max.argsort(dim=-1, descending=True, stable=True)[..., None]
            unm, src = order[:, rr:], order[:, :rr]
            dst = node_idx[..., None].gather(1, src)
            unm = unm.sort(dim=1)[0]
            size = torch.ones(B, N, 1) if size is None else size

            def merge(z):
                za, zb = z[:, ::2], z[:, 1::2]
                c = z.shape[-1]
                keep = za.gather(1, unm.expand(-1, -1, c))
                moved = za.gather(1, src.expand(-1, -1, c))
                zb = zb.scatter_reduce(1, dst.expand(-1, -1, c), moved, reduce="sum")
                return torch.cat([keep, zb], dim=1)

            t = merge(t * size)
            size = merge(size)
            t = t / size
        t = t + blk.mlp(blk.norm2(t))
    return model.head(model.norm(t)[:, 0])


def test_against_tome_written_on_timm():
    """The compiled model and the reference equal ToMe's algorithm patched by hand into timm's own modules (a
    DeiT-Tiny-shaped model at 64 px, 17 tokens: r = 4, 2, 2 in the first blocks -- the schedules ToMe's constant
    r gives when tokens run out) on random images."""
    from conftest import randomise
    from vitshrink.frontends.timm import create_model

    model = randomise(create_model("deit_tiny_patch16_224", img_size=64), seed=2)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    ir = from_timm(model, "deit_tiny_patch16_224")
    r = [4, 2, 2] + [0] * 9
    spec = Spec({}, {"token_merge": {str(i): n for i, n in enumerate(r) if n}})
    rs = resolve_spec(spec, ir)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = _tome_forward(model.eval(), x, r)
        ref = reference_forward(ir, rs, x)
        got = build_module(apply_spec(ir, rs))(x)
    assert float((ref - want).abs().max()) <= TOL, "the reference is not ToMe"
    assert float((got - want).abs().max()) <= TOL, "the compiled model is not ToMe"
    with torch.no_grad():  # the anchor is sensitive: without proportional attention it is another model
        plain = build_module(apply_spec(ir, resolve_spec(Spec({}, {"token_merge": {
            str(i): {"r": n, "prop_attn": False} for i, n in enumerate(r) if n}}), ir)))(x)
    assert float((plain - want).abs().max()) > 100 * TOL


# ------------------------------------------------------------------------------ planted bugs


def _no_proportional_attention(monkeypatch):
    from vitshrink.codegen import block

    real = block.Block.__init__

    def init(self, *a, **k):
        real(self, *a, **k)
        self.prop_attn = False
    monkeypatch.setattr(block.Block, "__init__", init)


def _sizes_not_updated(monkeypatch):
    from vitshrink.codegen import tokens

    real = tokens.TokenMerge.forward

    def forward(self, x, size, metric, ids=None):
        x, size, ids, merges = real(self, x, size, metric, ids)
        return x, torch.ones_like(size), ids, merges
    monkeypatch.setattr(tokens.TokenMerge, "forward", forward)


def _class_token_merged(monkeypatch):
    from vitshrink.codegen import tokens

    real = tokens.TokenMerge.__init__
    monkeypatch.setattr(tokens.TokenMerge, "__init__", lambda self, n, P, r: real(self, n, 0, r))


def _unweighted_mean(monkeypatch):
    from vitshrink.codegen import tokens

    real = tokens.TokenMerge.forward

    def forward(self, x, size, metric, ids=None):
        merged, _, ids_, merges = real(self, x, torch.ones_like(size), metric, ids)
        return merged, real(self, x, size, metric, None)[1], ids_, merges
    monkeypatch.setattr(tokens.TokenMerge, "forward", forward)


MERGE_MUTANTS = {f.__name__.lstrip("_"): f for f in (_no_proportional_attention, _sizes_not_updated, _class_token_merged,
                                                     _unweighted_mean)}


@pytest.fixture(scope="module")
def anchor_ir():
    """A DeiT-Tiny-shaped model at 64 px (17 tokens) with random weights, scaled to a trained model's range."""
    from conftest import randomise
    from vitshrink.frontends.timm import create_model

    model = randomise(create_model("deit_tiny_patch16_224", img_size=64), seed=2)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    return from_timm(model, "deit_tiny_patch16_224")


@pytest.mark.parametrize("mutant", list(MERGE_MUTANTS))
def test_planted_merge_bugs_are_caught_and_named(anchor_ir, monkeypatch, mutant):
    """Each bug a ToMe port can have -- no proportional attention, sizes not carried, the class token merged, an
    unweighted mean -- breaks exactness by far, and the per-pass check names the merging pass as the first one
    not exact (the widths before it exact)."""
    from vitshrink.families import family_of
    from vitshrink.pipeline.verify_each import first_failure, verify_each

    ir = anchor_ir
    spec = Spec({"blocks.0.heads": [0, 2], "blocks.5.mlp": list(range(0, 768, 2))},
                {"token_merge": {"0": 4, "1": 3, "2": 2, "4": 2}})
    rs = resolve_spec(spec, ir)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref, ref_ids = reference_forward(ir, rs, x, trace=True)
    MERGE_MUTANTS[mutant](monkeypatch)
    module = build_module(apply_spec(ir, rs), trace=True)
    with torch.no_grad():
        got, ids = module(x)
    same_merges = all(torch.equal(a, b) for a, b in zip(ids, ref_ids))
    assert float((got - ref).abs().max()) > 10 * TOL or not same_merges, f"mutant {mutant} survived"
    rows = verify_each(family_of(ir), ir, rs, x, {}, "pad", "prefix", TOL, stop_at_first=True)
    bad = first_failure(rows)
    assert bad is not None and bad["pass"] == "merge_tokens" and all(r["passed"] for r in rows[:-1]), rows


# ------------------------------------------------------------------------------ export

#: ONNX operators TensorRT's ONNX parser supports (onnx-tensorrt docs/operators.md, TensorRT 8.4 -- plus the opset
#: 17-20 normalisations and Gelu of TensorRT 10), scatter left out on purpose: with a reduction it is unsupported or
#: wrong there (NVIDIA/TensorRT#2396, #3650, #3750)
TENSORRT_OPS = {
    "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh", "AveragePool",
    "BatchNormalization", "Cast", "Ceil", "Celu", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv", "ConvTranspose",
    "Cos", "Cosh", "CumSum", "DepthToSpace", "DequantizeLinear", "Div", "Dropout", "Einsum", "Elu", "Equal", "Erf", "Exp",
    "Expand", "EyeLike", "Flatten", "Floor", "Gather", "GatherElements", "GatherND", "Gelu", "Gemm", "GlobalAveragePool",
    "GlobalLpPool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "GroupNormalization", "HardSigmoid", "Identity", "If",
    "InstanceNormalization", "IsNaN", "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax", "Loop",
    "LRN", "LpNormalization", "LpPool", "MatMul", "Max", "MaxPool", "Mean", "Min", "Mul", "Neg", "Not", "Or", "Pad", "Pow",
    "PRelu", "QuantizeLinear", "Range", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
    "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Resize", "Round", "Selu", "Shape",
    "Sigmoid", "Sign", "Sin", "Sinh", "Size", "Slice", "Softmax", "Softplus", "Softsign", "SpaceToDepth", "Split", "Sqrt",
    "Squeeze", "Sub", "Sum", "Tan", "Tanh", "ThresholdedRelu", "Tile", "TopK", "Transpose", "Unsqueeze", "Where", "Xor",
}


def test_merging_exports_with_ops_every_engine_runs(tmp_path, small_distilled):
    """The merged graph: no op outside TensorRT's parser list (no Scatter), TopK with constant K, static shapes but
    the batch; ONNX Runtime and OpenVINO run it with the logits and the merges of torch -- flat images too. On the
    distilled model (two protected prefix tokens); the class-token-only DeiT on every engine: test_engines'
    test_compile_engines_all, whose ONNX file is read against the same list."""
    import numpy as np
    import onnx

    from conftest import need
    from vitshrink.export import export_onnx
    from vitshrink.passes import pad_heads
    from vitshrink.runtime.ort import OrtRunner

    _, ir = small_distilled
    rs = resolve_spec(Spec({"blocks.0.heads": [0, 1, 3], "blocks.1.qk": [[0, 1, 2, 5], [0, 3], [1], [2, 4, 6, 8]]},
                           {"token_merge": {"0": 5, "1": 3, "3": 2}}), ir)
    module = build_module(pad_heads(apply_spec(ir, rs)), trace=True)
    path = export_onnx(module, tmp_path / "m.onnx", (3, 32, 32))
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert ops <= TENSORRT_OPS, sorted(ops - TENSORRT_OPS)
    assert {"ArgMax", "TopK", "MatMul", "Equal"} <= ops
    consts = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    assert all(n.input[1] in consts for n in graph.node if n.op_type == "TopK")  # K an initializer (TensorRT's rule)
    runner = OrtRunner(path)
    need("openvino", "engines")
    from vitshrink.runtime.openvino_runner import OpenVinoRunner

    ov = OpenVinoRunner(path, threads=2)
    for x in (images(3, seed=5), tie_images(2, (3, 32, 32), (8, 8))):
        with torch.no_grad():
            want, merges = module(x)
            ref, ref_merges = reference_forward(ir, rs, x, trace=True)
        outs = runner.session.run(None, {"images": x.numpy()})
        assert float(np.abs(outs[0] - want.numpy()).max()) <= TOL and float((want - ref).abs().max()) <= TOL
        assert all(np.array_equal(o, m.numpy()) for o, m in zip(outs[1:], merges)), "ONNX Runtime merged other tokens"
        assert all(torch.equal(a, b) for a, b in zip(merges, ref_merges))
        assert float(np.abs(ov.run(x.numpy()) - want.numpy()).max()) <= TOL


# ------------------------------------------------------------------------------ the compile


def test_masks_writes_tomes_schedule(tmp_path):
    """`masks --tokens tome:R` writes ToMe's constant schedule, fewer merges where tokens run out (17 tokens at
    64 px: 17 -> 14 -> 11 -> 8 -> 5 -> 3 -> 2); `tome:R@BLOCKS` in those blocks only. The compile of a merging spec on
    every engine: test_engines' test_compile_engines_all."""
    import json

    from click.testing import CliRunner
    from vitshrink.cli import main

    for tokens, want in (("tome:3", {str(i): r for i, r in enumerate([3, 3, 3, 3, 2, 1])}), ("tome:4@2,5", {"2": 4, "5": 4})):
        res = CliRunner().invoke(main, ["masks", "deit_tiny_patch16_224", "--img-size", "64", "--tokens", tokens,
                                        "--heads", "0.67", "--out", str(tmp_path / "s.json")])
        assert res.exit_code == 0, res.output
        spec = json.loads((tmp_path / "s.json").read_text())
        assert {k: v["r"] for k, v in spec["settings"]["token_merge"].items()} == want, tokens
    for tokens in ("tome:3", "uniform:0.7@3"):  # --fuse is EViT's: refused where it would be ignored
        res = CliRunner().invoke(main, ["masks", "deit_tiny_patch16_224", "--img-size", "64", "--tokens", tokens, "--fuse",
                                        "--out", str(tmp_path / "f.json")])
        assert res.exit_code == 2 and res.output.strip().startswith("error: --fuse: only the dynamic rules"), res.output
        assert not (tmp_path / "f.json").exists()


def test_tome_auto_takes_the_whole_budget_without_scores(tmp_path):
    """`masks --data --macs R --tokens tome:auto`: the smallest r whose merging alone meets R (r - 1 does not);
    no width is searched, no score computed, no weights written; the budget and the calibration images recorded."""
    import json

    from click.testing import CliRunner
    from test_posttrain import _image_dir
    from vitshrink import families
    from vitshrink.cli import main
    from vitshrink.masks.budget import model_macs
    from vitshrink.masks.tokens import token_spec

    out = tmp_path / "s.json"
    res = CliRunner().invoke(main, ["masks", "deit_tiny_patch16_224", "--img-size", "64", "--data", str(_image_dir(tmp_path / "i", 4)),
                                    "--calib-images", "4", "--macs", "0.6", "--tokens", "tome:auto", "--out", str(out)])
    assert res.exit_code == 0, res.output
    spec = json.loads(out.read_text())
    assert not spec["masks"] and not list(tmp_path.glob("*.safetensors")) and "criterion" not in spec["meta"]
    r = int(spec["meta"]["tokens"]["schedule"].split(":")[1])
    _, ir, _ = families.import_model("deit_tiny_patch16_224", img_size=(64, 64))
    fam, shape = families.family_of(ir), (3, 64, 64)
    share = lambda r: model_macs(fam, ir, shape, Spec(settings=token_spec(ir, f"tome:{r}")[1])) / model_macs(fam, ir, shape)  # noqa: E731
    assert share(r) <= 0.6 < share(r - 1)
    assert spec["meta"]["budget"]["macs"] == pytest.approx(share(r) * spec["meta"]["budget"]["dense_macs"], rel=1e-9)
    assert spec["meta"]["calibration"]["n"] == 4 and "budget: MACs" in res.output


def test_merging_every_a_token_exports(tmp_path):
    """A block whose r is its whole A set (a short sequence: 5 tokens -> 4 -> 3 -> 2) exports and runs in ONNX Runtime
    with torch's logits: no empty Gather (an ONNX Reshape to 0 rows copies the input's dim instead)."""
    import numpy as np

    from vitshrink.export import export_onnx
    from vitshrink.frontends.timm import from_timm
    from vitshrink.runtime.ort import OrtRunner

    ir = from_timm(small_vit(img_size=16), "small_vit_16")  # 4 patches + the class token
    rs = resolve_spec(Spec({}, {"token_merge": {"0": 1, "1": 1, "2": 1}}), ir)
    module = build_module(apply_spec(ir, rs)).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    path = export_onnx(module, tmp_path / "m.onnx", (3, 16, 16))
    with torch.no_grad():
        want = module(x)
    assert float(np.abs(OrtRunner(path).run(x.numpy()) - want.numpy()).max()) <= TOL
