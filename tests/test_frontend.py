"""timm frontend: import fidelity for the tested models, refusal of unsupported options, checkpoints."""
from __future__ import annotations

import pytest
import torch

from conftest import DEIT_TINY_CKPT, images, require_shared, small_vit
from vitshrink.families import build_module
from vitshrink.errors import CheckpointError, ModelError
from vitshrink.frontends.timm import create_model, from_timm, load_checkpoint, TESTED_MODELS
from vitshrink.families import import_model


@pytest.mark.parametrize("name", TESTED_MODELS)
def test_import_fidelity(name):
    """The codegen of the unpruned IR computes timm's own logits."""
    model = create_model(name)
    with torch.no_grad():
        for p in model.parameters():  # timm inits biases to 0 and LN to 1: make them non-trivial
            p.add_(torch.randn_like(p) * 0.02)
    ir = from_timm(model, name)
    x = images(2, 224)
    with torch.no_grad():
        want, got = model(x), build_module(ir)(x)
    assert float((want - got).abs().max()) <= 1e-4
    gammas = sum(p.numel() for n, p in model.named_parameters() if n.endswith(".gamma"))  # LayerScale, folded
    zero_pos = ir.num_prefix * ir.embed_dim if getattr(model, "no_embed_class", False) else 0  # prefix rows added
    assert ir.num_params() == sum(p.numel() for p in model.parameters()) - gammas + zero_pos
    assert ir.num_prefix == (2 if "distilled" in name else 1)
    assert (gammas > 0) == name.startswith("deit3")


def test_ir_represents_irregular_heads(small_model):
    """Different head counts per block and different q/k and v widths per head."""
    from vitshrink.passes import prune_head_channels, prune_heads

    _, ir = small_model
    qk = torch.ones(4, 12, dtype=torch.bool)
    qk[0, 5:] = False
    v = torch.ones(4, 12, dtype=torch.bool)
    v[2, :9] = False
    p = prune_heads(prune_head_channels(ir, {0: qk}, {0: v}), {1: torch.tensor([True, False, False, True])})
    assert p.blocks[0].attn.qk_dims == (5, 12, 12, 12) and p.blocks[0].attn.v_dims == (12, 12, 3, 12)
    assert p.blocks[1].attn.num_heads == 2 and p.blocks[2].attn.num_heads == 4


WIDENED = [dict(init_values=0.5), dict(reg_tokens=2), dict(no_embed_class=True),
           dict(init_values=0.5, reg_tokens=4, no_embed_class=True)]


@pytest.mark.parametrize("kwargs", WIDENED, ids=["-".join(k) for k in WIDENED])
def test_layerscale_register_tokens_no_embed_class_import_exactly(kwargs):
    """LayerScale folded into proj/fc2, register tokens as prefix tokens, no_embed_class position
    embeddings: the codegen of the IR computes timm's logits."""
    model = small_vit(seed=5, **kwargs)
    ir = from_timm(model)
    x = images(3)
    with torch.no_grad():
        assert float((model(x) - build_module(ir)(x)).abs().max()) <= 1e-4
    assert ir.num_prefix == 1 + kwargs.get("reg_tokens", 0)
    assert [t.name for t in ir.prefix][1:] == [f"reg{j}" for j in range(kwargs.get("reg_tokens", 0))]


@pytest.mark.parametrize("kwargs", WIDENED[-1:], ids=["all"])
def test_widened_models_prune_exactly(kwargs):
    """Every structural kind and static tokens on a model with LayerScale, 4 register tokens and
    no_embed_class: exact against the masked reference, per token after every block; register tokens
    are prefix tokens, never pruned."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from test_exactness import check_exact, exit_tensors
    from test_tokens import check, static_specs

    ir = from_timm(small_vit(seed=6, **kwargs))

    @settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
    @given(data=st.data())
    def run(data):
        spec = data.draw(static_specs(ir))
        rs, pruned = check(ir, spec, exit_tensors(ir, len(ir.blocks)))
        assert all(b.tokens is None or set(range(ir.num_prefix)) <= set(b.tokens) for b in pruned.blocks)

    run()
    from vitshrink.masks.vit import l1_spec

    check_exact(ir, l1_spec(ir, heads=0.5, mlp=0.5, embed=0.75))


POOLED = [dict(global_pool="avg"), dict(global_pool="avg", class_token=False),
          dict(global_pool="avg", class_token=False, reg_tokens=4, no_embed_class=True, fc_norm=True, init_values=0.5),
          dict(fc_norm=True)]


@pytest.mark.parametrize("kwargs", POOLED, ids=["avg", "avg-no-cls", "avg-reg4-fc_norm-ls", "token-fc_norm"])
def test_average_pooling_and_fc_norm_prune_exactly(kwargs):
    """global_pool='avg' (class token or none, fc_norm after the pooling or a final norm before it),
    and fc_norm on a class-token model: timm's logits on import, then random structural specs and
    an L1 spec with every kind exact against the masked reference."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from test_exactness import check_exact, specs
    from vitshrink.masks.vit import l1_spec

    model = small_vit(seed=7, **kwargs)
    ir = from_timm(model)
    x = images(3)
    with torch.no_grad():
        assert float((model(x) - build_module(ir)(x)).abs().max()) <= 1e-4
    assert ir.pool == kwargs.get("global_pool", "token")
    assert (ir.fc_norm is not None) == (kwargs.get("fc_norm", False) or ir.pool == "avg") and ir.heads[0].token == (-1 if ir.pool == "avg" else 0)

    @settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
    @given(data=st.data())
    def run(data):
        check_exact(ir, data.draw(specs(ir, with_exit=False)))

    run()
    check_exact(ir, l1_spec(ir, heads=0.5, mlp=0.5, embed=0.75))


@pytest.mark.parametrize("name", ["vit_base_patch16_gap_224", "vit_base_patch16_reg4_gap_256"])
def test_timm_average_pooled_models_import_exactly(name):
    """Two timm average-pooled ViTs at full size: one with a final norm and no class token, one with
    4 register tokens, no_embed_class and fc_norm."""
    model = create_model(name)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ir = from_timm(model, name)
    size = model.patch_embed.img_size[0]
    x = images(2, size)
    with torch.no_grad():
        assert float((model(x) - build_module(ir)(x)).abs().max()) <= 1e-4
    assert ir.pool == "avg" and ir.num_prefix == (4 if "reg4" in name else 0)


def test_token_pruning_and_exit_are_refused_on_average_pooling():
    from vitshrink.errors import SpecError
    from vitshrink.spec import Spec
    from vitshrink.families import resolve_spec

    ir = from_timm(small_vit(seed=7, global_pool="avg"))
    keep = torch.ones(ir.num_tokens, dtype=torch.bool)
    keep[3] = False
    for spec, key in ((Spec({"blocks.2.tokens": keep}), "blocks.2.tokens"),
                      (Spec({}, {"dynamic_tokens": {"1": {"keep": 0.5}}}), "dynamic_tokens"),
                      (Spec({}, {"exit": {"block": 1}}), "exit")):
        with pytest.raises(SpecError, match="every patch token") as e:
            resolve_spec(spec, ir)
        assert e.value.key == key


UNSUPPORTED = [
    (dict(global_pool="max"), "global_pool"),
    (dict(global_pool="avg", pool_include_prefix=True), "pool_include_prefix"),
    (dict(qk_norm=True), "qk_norm"),
    (dict(global_pool="map", class_token=False, fc_norm=True), "fc_norm"),
    (dict(dynamic_img_size=True), "dynamic_img_size"),
    (dict(act_layer="relu"), "act_layer"),
]


@pytest.mark.parametrize("kwargs,option", UNSUPPORTED, ids=[o for _, o in UNSUPPORTED])
def test_unsupported_options_are_named(kwargs, option):
    model = small_vit(**kwargs)
    with pytest.raises(ModelError, match=f"option {option}"):
        from_timm(model)


def test_non_vit_model_is_refused():
    with pytest.raises(ModelError, match="VisionTransformer"):
        from_timm(create_model("resnet18"))


def test_unknown_model_name_suggests():
    with pytest.raises(ModelError, match=r"unknown model 'deit_tiny_patch16_244'.*deit_tiny_patch16_224"):
        create_model("deit_tiny_patch16_244")


def test_checkpoint_mismatch_missing_and_unreadable(tmp_path):
    from safetensors.torch import save_file

    small = create_model("deit_small_patch16_224")
    path = tmp_path / "small.safetensors"
    save_file({k: v.contiguous() for k, v in small.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match=r"does not match the model: 'cls_token' has shape \[1, 1, 384\]"):
        load_checkpoint(create_model("deit_tiny_patch16_224"), path)

    tiny = create_model("deit_tiny_patch16_224")
    sd = {k: v for k, v in tiny.state_dict().items() if k != "head.bias"}
    torch.save({"model": sd}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="'head.bias' missing"):
        load_checkpoint(tiny, tmp_path / "partial.pth")

    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(tiny, tmp_path / "junk.safetensors")
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tiny, tmp_path / "absent.pth")


def test_pth_with_wrapper_and_extras(tmp_path):
    tiny = create_model("deit_tiny_patch16_224")
    sd = dict(tiny.state_dict())
    sd["exits.10.head.weight"] = torch.zeros(1000, 192)
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "wrapped.pth")
    fresh = create_model("deit_tiny_patch16_224")
    extras = load_checkpoint(fresh, tmp_path / "wrapped.pth")
    assert list(extras) == ["exits.10.head.weight"]
    assert torch.equal(fresh.pos_embed, tiny.pos_embed)


def test_real_checkpoint_loads():
    require_shared()
    model, ir, extras = import_model("deit_tiny_patch16_224", DEIT_TINY_CKPT)
    assert extras == {} and ir.num_params() == 5_717_416


def test_compile_average_pooled_register_token_vit(tmp_path):
    """Issue 9: a timm ViT with global_pool='avg', 4 register tokens, fc_norm and no_embed_class
    (vit_little_patch16_reg4_gap_256) compiles exactly end to end: heads, MLP and embed pruned, ONNX
    checked in ONNX Runtime."""
    import vitshrink
    from vitshrink.masks.vit import l1_spec
    from vitshrink.spec import save_spec

    name = "vit_little_patch16_reg4_gap_256"
    ir = from_timm(create_model(name), name)
    save_spec(l1_spec(ir, heads=0.5, mlp=0.5, embed=0.75), tmp_path / "spec.json")
    r = vitshrink.compile_model(name, tmp_path / "spec.json", tmp_path / "out", batch=1, bench_seconds=0,
                                progress=False, verify_images=2, img_size=(64, 64))  # 16 patches: the suite's time
    assert r["verified"] and r["exactness"]["max_abs_diff"] <= 1e-4 and r["export"]["passed"]
    assert r["import"]["max_abs_diff"] <= 1e-4
    assert r["structure"]["embed_dim"] == [ir.embed_dim, round(0.75 * ir.embed_dim)]
