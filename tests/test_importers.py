"""Importers: checkpoints pruned by other tools, made here *with the real tools* where they install
(Torch-Pruning, torch.nn.utils.prune) and from the documented layout where not (NNI), each compiled
and compared with what the source computes (max abs diff on logits <= 1e-4, fp32)."""
from __future__ import annotations

import collections
import copy
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SMALL, images, need, small_vit
from vitshrink.families import build_module
from vitshrink.frontends.timm import from_timm
from vitshrink.importers import import_checkpoint
from vitshrink.importers.verify import source_model
from vitshrink.families import apply_spec
from vitshrink.families import reference_forward
from vitshrink.families import resolve_spec

TOL = 1e-4
EXAMPLES = int(os.environ.get("VITSHRINK_EXAMPLES", "25"))


def compile_import(result, dense_model):
    """What `vitshrink compile --checkpoint PRUNED` builds: the imported weights in the original
    architecture, the imported spec resolved and applied, codegen. Returns (pruned module, dense IR, resolved)."""
    from vitshrink.frontends.timm import load_state

    model = copy.deepcopy(dense_model)
    extras = load_state(model, result.state_dict)  # exit classifiers and the like stay beside the model
    ir = from_timm(result.configure(model), "small")
    tensors = {**model.state_dict(), **extras}
    resolved = resolve_spec(result.spec, ir, tensors)
    return build_module(apply_spec(ir, resolved, tensors)), ir, resolved


def diff(a, b):
    return float((a - b).detach().abs().max())


# ------------------------------------------------------------------------------------ Torch-Pruning


@pytest.fixture(scope="module")
def tp_models():
    need("torch_pruning")
    from tools import torch_pruning_vit

    out = {}
    for name, kw in {"head_dims+embed (uniform)": {}, "heads+embed": {"prune_num_heads": True},
                     "head_dims, bottleneck": {"bottleneck": True},
                     "head_dims, fused off": {"bottleneck": True, "fused_attn": False},
                     "heads, bottleneck": {"prune_num_heads": True, "bottleneck": True}}.items():
        out[name] = torch_pruning_vit(small_vit(seed=3), 0.5, input_size=SMALL["img_size"], **kw)
    return out


@pytest.mark.parametrize("form", ["torch.save(model)", "training checkpoint", "tp.state_dict"])
@pytest.mark.parametrize("mode", ["head_dims+embed (uniform)", "heads+embed", "head_dims, bottleneck",
                                  "head_dims, fused off", "heads, bottleneck"])
def test_torch_pruning_exact_against_the_tools_own_module(tmp_path, tp_models, mode, form):
    import torch_pruning as tp

    model, pruner = tp_models[mode]
    path = tmp_path / "pruned.pth"
    obj = {"torch.save(model)": model, "training checkpoint": {"model": model, "epoch": 3, "optimizer": {"lr": 0.1}},
           "tp.state_dict": tp.state_dict(model)}[form]
    torch.save(obj, path)
    x = images(3, seed=7)
    want = model(x)
    dense = small_vit(seed=11)  # the original architecture; its weights play no part
    result = import_checkpoint(path, dense)
    assert result.format == "torch-pruning" and "no code from the file ran" in result.notes["loader"]
    pruned, ir, resolved = compile_import(result, dense)
    assert diff(pruned(x), want) <= TOL, mode
    assert diff(reference_forward(ir, resolved, x), want) <= TOL
    src = source_model(result, dense)
    if "embed" not in mode:  # the timm reference with the source's scale, independent of the folding
        assert src is not None and diff(src(x), want) <= TOL
    else:  # the source normalises over the kept channels, which timm's dense model cannot run: said, not faked
        assert src is None and "the embedding was pruned" in result.reference_note
    # physically gone: the compiled widths are Torch-Pruning's
    for b, tb in zip(pruned.blocks, model.blocks):
        assert b.attn.num_heads == tb.attn.num_heads
        assert b.mlp.fc1.out_features == tb.mlp.fc1.out_features
    assert pruned.arch["embed_dim"] == model.cls_token.shape[-1]


def test_torch_pruning_scale_matters(tmp_path, tp_models):
    """The mutant: ignore the source's effective scale (fused SDPA uses the pruned head_dim) -> caught."""
    model, _ = tp_models["head_dims, bottleneck"]
    torch.save(model, tmp_path / "p.pth")
    dense = small_vit(seed=11)
    result = import_checkpoint(tmp_path / "p.pth", dense)
    result.state_dict = result.reference_state_dict  # the unfolded weights: original scale
    pruned, _, _ = compile_import(result, dense)
    x = images(3, seed=7)
    assert diff(pruned(x), model(x)) > 10 * TOL


# ------------------------------------------------------------------------------- torch.nn.utils.prune


def _torch_prune(model, seed=0):
    """Mixed torch.nn.utils.prune as a user applies it: whole fc1 rows (ln_structured, bias stays live),
    whole q/k/v rows of qkv, a zeroed proj column set, unstructured L1 on fc2."""
    from torch.nn.utils import prune

    torch.manual_seed(seed)
    for i, b in enumerate(model.blocks):
        prune.ln_structured(b.mlp.fc1, "weight", amount=0.4 + 0.1 * (i % 2), n=1, dim=0)
        prune.ln_structured(b.attn.qkv, "weight", amount=0.3, n=2, dim=0)
        prune.l1_unstructured(b.mlp.fc2, "weight", amount=0.5)
    prune.random_structured(model.blocks[1].attn.proj, "weight", amount=0.25, dim=1)
    return model


@pytest.mark.parametrize("removed", [False, True], ids=["active (orig+mask)", "after prune.remove"])
def test_torch_nn_utils_prune(tmp_path, removed):
    from torch.nn.utils import prune

    model = _torch_prune(small_vit(seed=5))
    if removed:
        for m in model.modules():
            for name in ("weight",):
                if prune.is_pruned(m) and hasattr(m, name + "_orig"):
                    prune.remove(m, name)
    torch.save(model.state_dict(), tmp_path / "sd.pth")
    x = images(3, seed=2)
    want = model(x)
    dense = small_vit(seed=11)
    result = import_checkpoint(tmp_path / "sd.pth", dense)
    assert result.format == ("zeroed" if removed else "torch-prune")
    r = result.notes["removed"]
    assert r["mlp_neurons"] > 0 and r["qk_channels"] + r["v_channels"] > 0 and r["folded_biases"] > 0
    assert result.notes["unstructured"], "fc2's unstructured zeros are reported"
    assert not any(u["semi_structured_2_4"] for u in result.notes["unstructured"])
    pruned, ir, resolved = compile_import(result, dense)
    assert diff(pruned(x), want) <= TOL
    assert diff(source_model(result, dense)(x), want) <= TOL
    assert sum(b.mlp.fc1.out_features for b in pruned.blocks) < sum(b.mlp.fc1.out_features for b in model.blocks)


def test_semi_structured_2_4_is_recognised():
    from vitshrink.importers.zeroed import is_2_4

    w = torch.randn(8, 16)
    assert not is_2_4(w)
    w.view(8, 4, 4)[:, :, 1::2] = 0
    assert is_2_4(w)
    w[0, 0] = w[0, 2] = 0.0
    w[0, 1] = 1.0  # group 0 of row 0 now has 2 zeros at 0 and 2 (still 2:4), then break one group
    w[3, 4:8] = torch.tensor([1.0, 2.0, 0.0, 3.0])
    assert not is_2_4(w)


# ----------------------------------------------------------------------------------------- NNI


def _nni_masks(model, seed):
    """NNI v3 get_masks() layout (NNI does not install here): {module: {"weight": 0/1, "bias": 0/1}}
    float masks at full shape, in a defaultdict as NNI returns it."""
    g = torch.Generator().manual_seed(seed)
    masks = collections.defaultdict(dict)
    for i, b in enumerate(model.blocks):
        H, hd = b.attn.num_heads, b.attn.head_dim
        head = (torch.rand(H, generator=g) > 0.4).float()
        head[0] = 1.0
        rows = head.repeat_interleave(hd).repeat(3)
        masks[f"blocks.{i}.attn.qkv"] = {"weight": rows[:, None].expand_as(b.attn.qkv.weight).clone(), "bias": rows.clone()}
        neurons = (torch.rand(b.mlp.fc1.out_features, generator=g) > 0.5).float()
        masks[f"blocks.{i}.mlp.fc1"] = {"weight": neurons[:, None].expand_as(b.mlp.fc1.weight).clone(), "bias": neurons}
    return masks


def test_nni_masks_beside_the_dense_checkpoint(tmp_path):
    from safetensors.torch import save_file

    dense = small_vit(seed=6)
    masks = _nni_masks(dense, 1)
    torch.save(masks, tmp_path / "masks.pth")  # a defaultdict: torch's weights_only loader refuses it
    save_file({k: v.contiguous() for k, v in dense.state_dict().items()}, str(tmp_path / "dense.safetensors"))
    masked = copy.deepcopy(dense)
    with torch.no_grad():
        for name, entry in masks.items():
            mod = masked.get_submodule(name)
            for p, m in entry.items():
                getattr(mod, p).mul_(m)
    x = images(3, seed=4)
    result = import_checkpoint(tmp_path / "masks.pth", small_vit(seed=11), dense_checkpoint=tmp_path / "dense.safetensors")
    assert result.format == "nni"
    pruned, _, _ = compile_import(result, small_vit(seed=11))
    assert diff(pruned(x), masked(x)) <= TOL
    removed_heads = sum(int((e["bias"] == 0).sum()) for k, e in masks.items() if "qkv" in k) // (3 * 12)
    assert result.notes["removed"]["heads"] == removed_heads > 0


# ------------------------------------------------------------------------------ zeroed structure


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_zeroed_structure_random(data):
    """Random zero patterns of every removable kind, live biases included, on one block each."""
    dense = small_vit(seed=8)
    model = copy.deepcopy(dense)
    H, hd = model.blocks[0].attn.num_heads, model.blocks[0].attn.head_dim
    draw = lambda n, p: torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))  # noqa: E731
    with torch.no_grad():
        for b in model.blocks:
            W, bias, P = b.attn.qkv.weight.view(3, H, hd, -1), b.attn.qkv.bias.view(3, H, hd), b.attn.proj.weight.view(-1, H, hd)
            k0, q0, v0, pc = (draw(H * hd, 0).view(H, hd) for _ in range(4))
            W[1][k0] = 0  # k rows only: q . k shifts logits by a per-query constant
            W[0][q0] = 0
            bias[0][q0] = 0
            W[2][v0] = 0  # live v bias: folded into proj.bias
            P[:, pc] = 0
            n0, c0 = draw(b.mlp.fc1.out_features, 0), draw(b.mlp.fc1.out_features, 0)
            b.mlp.fc1.weight[n0] = 0  # live fc1 bias: GELU(b) folded into fc2.bias
            b.mlp.fc2.weight[:, c0] = 0
    path = f"/tmp/vitshrink-zeroed-{os.getpid()}.pth"
    torch.save(model.state_dict(), path)
    try:
        result = import_checkpoint(path, dense)
    finally:
        os.remove(path)
    x = images(2, seed=3)
    pruned, _, _ = compile_import(result, dense)
    assert diff(pruned(x), model(x)) <= TOL
    for pb, b in zip(pruned.blocks, model.blocks):  # every zero fc1 row / fc2 column is gone
        gone = ((b.mlp.fc1.weight == 0).all(1) | (b.mlp.fc2.weight == 0).all(0)).sum()
        assert pb.mlp.fc1.out_features == b.mlp.fc1.out_features - gone


def test_zero_q_rows_with_live_bias_are_kept(tmp_path):
    """q row zero but q bias live: q_c = b_c varies nothing per query, yet k_c varies per key -> not removable."""
    dense = small_vit(seed=8)
    model = copy.deepcopy(dense)
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight[:6] = 0  # q rows of head 0, channels 0-5; biases live
    torch.save(model.state_dict(), tmp_path / "z.pth")
    result = import_checkpoint(tmp_path / "z.pth", dense)
    assert "blocks.0.qk" not in result.spec.masks
    pruned, _, _ = compile_import(result, dense)
    assert diff(pruned(images(2)), model(images(2))) <= TOL


@pytest.mark.parametrize("act", ["quick_gelu", "gelu_tanh"])
def test_zeroed_fold_uses_the_models_own_activation(tmp_path, act):
    """Issue 19: a CLIP tower's dead fc1 row with a live bias outputs QuickGELU(b), not GELU(b): the fold
    reads the model's own activation (it was GELU for every model before)."""
    dense = small_vit(seed=8, act_layer=act, pre_norm=True)
    model = copy.deepcopy(dense)
    with torch.no_grad():
        for b in model.blocks:
            b.mlp.fc1.weight[::3] = 0  # live fc1 biases: act(b) folded into fc2.bias
    torch.save(model.state_dict(), tmp_path / "z.pth")
    result = import_checkpoint(tmp_path / "z.pth", dense)
    pruned, _, _ = compile_import(result, dense)
    assert diff(pruned(images(2)), model(images(2))) <= TOL
    assert pruned.blocks[0].mlp.fc1.out_features == dense.blocks[0].mlp.fc1.out_features * 2 // 3


def test_importers_refuse_families_they_do_not_read(tmp_path):
    """Zeroed / torch.nn.utils.prune / NNI read ViT/DeiT (CLIP, DINOv2, SigLIP, hybrids included) and Swin
    layouts; for an Eva model they say so instead of reading the wrong keys."""
    from timm.models.eva import Eva

    from vitshrink.errors import VitshrinkError

    m = Eva(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, num_classes=10, use_rot_pos_emb=True)
    torch.save(m.state_dict(), tmp_path / "eva.pth")
    with pytest.raises(VitshrinkError, match=r"no known pruned format for .*known: "):
        import_checkpoint(tmp_path / "eva.pth", m)
    with pytest.raises(VitshrinkError, match=r"--from 'zeroed': this format is read for ViT/DeiT, Swin models only"):
        import_checkpoint(tmp_path / "eva.pth", m, "zeroed")
