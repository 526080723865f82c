"""Bug-injection guards: plausible miscompilations applied to a correct pruned IR must be caught --
by the exactness check of the tests, by the compile's exactness stage (VerificationError) and by the
CLI (exit 1, nothing written). If a mutant survives, a guard is blind: these tests fail.

Every new pass and importer adds its mutants to MUTANTS (importer mutants live beside their tests:
test_importers.py, test_hf_import.py, test_seed_formats.py)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from conftest import DEIT_TINY_CKPT, REPO, images, require_shared, small_vit
from vitshrink.families import build_module
from vitshrink.frontends.timm import from_timm
from vitshrink.ir import replace
from vitshrink.families import apply_spec
from vitshrink.passes import pad_heads, prefix_token_order
from vitshrink.families import reference_forward
from vitshrink.spec import Spec
from vitshrink.families import resolve_spec

TOL = 1e-4


def _blocks(ir, fn):
    return replace(ir, blocks=tuple(fn(b) for b in ir.blocks))


def _attn(ir, fn):
    return _blocks(ir, lambda b: replace(b, attn=fn(b.attn)) if b.attn.num_heads else b)


def wrong_scale(ir):  # the softmax scale recomputed from the kept q/k width (Torch-Pruning's SDPA default)
    return _attn(ir, lambda a: replace(a, scale=max(a.qk_dims) ** -0.5))


def qk_bias_dropped(ir):
    return _attn(ir, lambda a: replace(a, q_bias=torch.zeros_like(a.q_bias), k_bias=torch.zeros_like(a.k_bias)))


def v_bias_dropped(ir):
    return _attn(ir, lambda a: replace(a, v_bias=torch.zeros_like(a.v_bias)))


def k_rows_off_by_one(ir):
    return _attn(ir, lambda a: replace(a, k_weight=torch.roll(a.k_weight, 1, 0)))


def mlp_rows_off_by_one(ir):
    return _blocks(ir, lambda b: replace(b, mlp=replace(b.mlp, fc1_weight=torch.roll(b.mlp.fc1_weight, 1, 0)))
                   if b.mlp.hidden > 1 else b)


def layer_norm_from_wrong_channels(ir):  # norm1's affine from the first D' channels instead of the kept ones
    def fn(b, dense=ir.meta["dense"]):
        d = dense.block(b.source_index).norm1
        n = len(b.norm1.weight)
        return replace(b, norm1=replace(b.norm1, weight=d.weight[:n].clone(), bias=d.bias[:n].clone()))
    return _blocks(ir, fn)


def stale_head_count(ir):  # one kept head too few: num_heads not updated after pruning
    from vitshrink.passes.structural import select_attention

    def fn(a):
        if a.num_heads < 2:
            return a
        return select_attention(a, [(h, range(a.qk_dims[h]), range(a.v_dims[h])) for h in range(a.num_heads - 1)])
    return _attn(ir, fn)


def unpadded_irregular_head(ir):  # irregular v widths truncated to the narrowest head instead of padded
    from vitshrink.passes.structural import select_attention

    def fn(a):
        w = min(a.v_dims)
        if w == max(a.v_dims) or w == 0:
            return a
        return select_attention(a, [(h, range(a.qk_dims[h]), range(w)) for h in range(a.num_heads)])
    return _attn(ir, fn)


def exit_norm_from_wrong_block(ir):  # the model's final norm instead of the exit classifier's own
    final, ids = ir.meta["dense"].norm, list(ir.embed_ids)
    return replace(ir, norm=replace(ir.norm, weight=final.weight[ids].clone(), bias=final.bias[ids].clone()))


def wrong_token_order(ir):  # tokens laid out in one order, position embeddings in another (patch rows rolled by one)
    P = ir.num_prefix
    pos = ir.pos_embed.clone()
    pos[P:] = torch.roll(pos[P:], 1, 0)
    return replace(ir, pos_embed=pos)


MUTANTS = {f.__name__: f for f in (wrong_scale, qk_bias_dropped, v_bias_dropped, k_rows_off_by_one, mlp_rows_off_by_one,
                                    layer_norm_from_wrong_channels, stale_head_count, unpadded_irregular_head,
                                    exit_norm_from_wrong_block, wrong_token_order)}

#: the pass each mutant is a bug of: (module, function) it is planted in, as the per-pass check names it
PLANTED_IN = {
    "wrong_scale": ("vit", "prune_head_channels"), "v_bias_dropped": ("vit", "prune_head_channels"),
    "k_rows_off_by_one": ("vit", "prune_head_channels"), "qk_bias_dropped": ("vit", "prune_heads"),
    "stale_head_count": ("vit", "prune_heads"), "mlp_rows_off_by_one": ("vit", "prune_mlp"),
    "layer_norm_from_wrong_channels": ("vit", "prune_embed"), "exit_norm_from_wrong_block": ("vit", "early_exit"),
    "unpadded_irregular_head": ("layout", "lay_out_heads"), "wrong_token_order": ("tokens", "prefix_token_order"),
}


def plant(monkeypatch, mutant: str, dense) -> str:
    """Replace the pass of ``mutant`` (:data:`PLANTED_IN`) in its module by the pass followed by the bug
    (the head layout: by the bug alone -- it is the unpadded form); returns the pass's name."""
    import vitshrink.passes.layout as layout
    import vitshrink.passes.tokens as tokens
    import vitshrink.passes.vit as vit

    module_name, fn_name = PLANTED_IN[mutant]
    module = {"vit": vit, "layout": layout, "tokens": tokens}[module_name]
    real = getattr(module, fn_name)

    def planted(ir, *args, **kwargs):
        out = ir if mutant == "unpadded_irregular_head" else real(ir, *args, **kwargs)
        return MUTANTS[mutant](replace(out, meta={**out.meta, "dense": dense}))

    monkeypatch.setattr(module, fn_name, planted)
    return fn_name


def spec_for(ir, mutant: str) -> tuple[Spec, dict]:
    """A spec that exercises the mutated part: every structural kind, an early exit with its own
    classifier, irregular v widths, static tokens for the token-order mutant."""
    g = torch.Generator().manual_seed(1)
    D, H, hd = ir.embed_dim, ir.blocks[0].attn.num_heads, ir.blocks[0].attn.qk_dims[0]
    L, hidden = len(ir.blocks), ir.blocks[0].mlp.hidden
    masks = {"embed": torch.rand(D, generator=g) > 0.25}
    for i in range(L):
        masks[f"blocks.{i}.heads"] = torch.tensor([h != i % H for h in range(H)])
        qk = torch.rand(H, hd, generator=g) > 0.4
        qk[:, 0] = True
        masks[f"blocks.{i}.qk"] = qk
        v = torch.zeros(H, hd, dtype=torch.bool)
        for h in range(H):
            v[h, : hd // 2 + h] = True  # irregular: head h keeps hd/2 + h channels
        masks[f"blocks.{i}.v"] = v
        masks[f"blocks.{i}.mlp"] = torch.rand(hidden, generator=g) > 0.5
    settings, tensors = {}, {}
    if mutant == "exit_norm_from_wrong_block":
        k = L - 2
        tensors = {"exit.norm.weight": 1 + 0.3 * torch.randn(D, generator=g), "exit.norm.bias": 0.3 * torch.randn(D, generator=g),
                   "exit.head.weight": 0.2 * torch.randn(ir.num_classes, D, generator=g),
                   "exit.head.bias": 0.2 * torch.randn(ir.num_classes, generator=g)}
        settings["exit"] = {"block": k, "head": "exit.head", "norm": "exit.norm"}
    if mutant == "wrong_token_order":
        N = ir.num_tokens
        keep = torch.ones(N, dtype=torch.bool)
        keep[torch.randperm(N - 1, generator=g)[: (N - 1) // 3] + 1] = False
        masks["blocks.1.tokens"] = keep
    return Spec(masks, settings), tensors


def mutated(ir, mutant, spec, tensors):
    """The correct pruned IR (laid out as the compile lays it out), then the mutant applied."""
    rs = resolve_spec(spec, ir, tensors)
    pruned = pad_heads(apply_spec(ir, rs, tensors)) if mutant != "unpadded_irregular_head" else apply_spec(ir, rs, tensors)
    if mutant == "wrong_token_order":
        pruned = prefix_token_order(pruned)
    pruned = replace(pruned, meta={**pruned.meta, "dense": ir})
    out = MUTANTS[mutant](pruned)
    assert out is not pruned
    return rs, pruned, out


@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_check_exact_catches(mutant):
    model = small_vit(seed=9)
    ir = from_timm(model, "small")
    spec, tensors = spec_for(ir, mutant)
    rs, good, bad = mutated(ir, mutant, spec, tensors)
    x = images(3, seed=2)
    with torch.no_grad():
        ref = reference_forward(ir, rs, x, tensors)
        assert float((build_module(good)(x) - ref).abs().max()) <= TOL  # the unmutated IR is exact
        assert float((build_module(bad)(x) - ref).abs().max()) > 10 * TOL, f"mutant {mutant} survived"


@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_verify_each_names_the_pass(monkeypatch, mutant):
    """Every mutant planted in its own pass: the per-pass check passes the steps before it and names it."""
    from vitshrink.families import family_of
    from vitshrink.pipeline.verify_each import describe, first_failure, verify_each

    model = small_vit(seed=9)
    ir = from_timm(model, "small")
    spec, tensors = spec_for(ir, mutant)
    rs = resolve_spec(spec, ir, tensors)
    x = images(3, seed=2)
    clean = verify_each(family_of(ir), ir, rs, x, tensors, "pad", "prefix", TOL)
    assert all(r["passed"] for r in clean) and len(clean) >= 5, clean  # the passes themselves are exact
    name = plant(monkeypatch, mutant, ir)
    rows = verify_each(family_of(ir), ir, rs, x, tensors, "pad", "prefix", TOL, stop_at_first=True)
    bad = first_failure(rows)
    assert bad is not None and bad["pass"] == name and rows[-1] is bad, rows
    assert all(r["passed"] for r in rows[:-1]) and bad["max_abs_diff"] > 10 * TOL
    assert f"first pass not exact: {name}" in describe(rows, TOL)


def test_verify_each_on_swin(monkeypatch):
    """Swin's steps too: a bug planted in its stage-channel pass is named, the passes before it exact."""
    import vitshrink.passes.swin as swin_passes
    from test_swin import SMALL_SWIN, swin_images
    from timm.models.swin_transformer import SwinTransformer
    from conftest import randomise
    from vitshrink.families import family_of
    from vitshrink.frontends.timm_swin import from_timm as from_timm_swin
    from vitshrink.pipeline.verify_each import first_failure, verify_each

    ir = from_timm_swin(randomise(SwinTransformer(**SMALL_SWIN), seed=4), "small_swin")
    masks = {f"layers.{s.index}.embed": torch.arange(s.dim) % 3 != 1 for s in ir.stages}
    for s in ir.stages:
        for j, g in enumerate(s.block_ids):
            a, hidden = ir.block(g).attn, ir.block(g).mlp.hidden
            masks[f"layers.{s.index}.blocks.{j}.heads"] = torch.arange(a.num_heads) != j % a.num_heads
            masks[f"layers.{s.index}.blocks.{j}.mlp"] = torch.arange(hidden) % 2 == 0
    rs = resolve_spec(Spec(masks), ir)
    x = swin_images(2, seed=5)
    clean = verify_each(family_of(ir), ir, rs, x, None, "pad", "prefix", TOL)
    assert [r["pass"] for r in clean] == ["prune_heads", "prune_mlp", "prune_stage_embed", "lay_out_heads"], clean
    assert all(r["passed"] for r in clean), clean
    real = swin_passes.prune_stage_embed

    def wrong_norm(ir, s, m):  # the stage's first norm1 from the first C' channels instead of the kept ones
        out = real(ir, s, m)
        g = out.stages[s].block_ids[0]
        b, d = out.block(g), ir_dense.block(g).norm1
        n = len(b.norm1.weight)
        return replace(out, blocks=tuple(replace(c, norm1=replace(c.norm1, weight=d.weight[:n].clone(), bias=d.bias[:n].clone()))
                                         if c.source_index == g else c for c in out.blocks))

    ir_dense = ir
    monkeypatch.setattr(swin_passes, "prune_stage_embed", wrong_norm)
    rows = verify_each(family_of(ir), ir, rs, x, None, "pad", "prefix", TOL)
    bad = first_failure(rows)
    assert bad is not None and bad["pass"] == "prune_stage_embed" and rows[0]["passed"] and rows[1]["passed"], rows


def test_per_token_check_catches_what_logits_miss():
    """A bug on tokens no classifier reads: in query mode (Patch Slimming) the last block updates
    every token instead of the kept ones. The logits cannot see it; the per-token check does."""
    from test_exactness import assert_tokens_match

    model = small_vit(seed=9)
    ir = from_timm(model, "small")
    L, N = len(ir.blocks), ir.num_tokens
    keep = torch.arange(N) % 2 == 0
    spec = Spec({f"blocks.{L - 1}.tokens": keep}, {"token_mode": "query"})
    rs = resolve_spec(spec, ir)
    good = apply_spec(ir, rs)
    bad = replace(good, blocks=good.blocks[:-1] + (replace(good.blocks[-1], tokens=None),))
    x, ref_res = images(3, seed=2), []
    ref = reference_forward(ir, rs, x, residuals=ref_res)
    for pruned, exact in ((good, True), (bad, False)):
        module = build_module(pruned, trace=True)
        with torch.no_grad():
            logits, _ = module(x)
        assert float((logits - ref).abs().max()) <= TOL  # the classifier reads only kept tokens
        if exact:
            assert_tokens_match(ref_res, module.residuals)
        else:
            with pytest.raises(AssertionError, match="residual max abs diff"):
                assert_tokens_match(ref_res, module.residuals)


@pytest.fixture(scope="module")
def real_tiny_spec(tmp_path_factory):
    """A spec for real DeiT-Tiny weights (attention far from uniform, live biases) with every kind."""
    require_shared()
    from vitshrink.families import import_model
    from vitshrink.spec import save_spec

    _, ir, _ = import_model("deit_tiny_patch16_224", DEIT_TINY_CKPT)
    path = tmp_path_factory.mktemp("mut") / "spec.json"
    save_spec(spec_for(ir, "all")[0], path)
    return path


CLI_MUTANTS = ["wrong_scale", "qk_bias_dropped", "v_bias_dropped", "k_rows_off_by_one", "layer_norm_from_wrong_channels",
               "stale_head_count", "unpadded_irregular_head"]


@pytest.mark.parametrize("mutant", CLI_MUTANTS)
def test_compile_and_cli_catch(tmp_path, monkeypatch, real_tiny_spec, mutant):
    """The mutant planted in its pass of the compile, on real DeiT-Tiny weights: exit 1 naming that pass, nothing written."""
    from vitshrink.cli import main
    from vitshrink.families import import_model

    name = plant(monkeypatch, mutant, import_model("deit_tiny_patch16_224", DEIT_TINY_CKPT)[1])
    res = CliRunner().invoke(main, ["compile", "deit_tiny_patch16_224", "--checkpoint", str(DEIT_TINY_CKPT), "--spec",
                                    str(real_tiny_spec), "--out", str(tmp_path / "o"), "--bench-seconds", "0", "--layout", "pad",
                                    "--quiet"])
    assert res.exit_code == 1, (mutant, res.stderr)
    last = res.stderr.splitlines()[-1]
    assert "exactness failed" in last and f"first pass not exact: {name} (" in last, last
    assert not (tmp_path / "o").exists()


def test_ci_turns_missing_data_into_failures(tmp_path):
    """With CI set and no ../shared/data, a test that needs the real data fails instead of skipping."""
    env = {**os.environ, "CI": "true", "VITSHRINK_SHARED_DATA": str(tmp_path / "no-such-dir"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_frontend.py::test_real_checkpoint_loads"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "CI is set" in proc.stdout, proc.stdout[-1500:]
    env.pop("CI")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                           "tests/test_frontend.py::test_real_checkpoint_loads"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "1 skipped" in proc.stdout, proc.stdout[-1500:]

