"""Swin checkpoints of other tools (issue 9 item 4): torch.nn.utils.prune, Torch-Pruning (its own shrunk
module, and heads / head_dims shrunk under fused and recorded softmax scales), transformers'
SwinForImageClassification -- each compiled and compared with what the source computes (<= 1e-4)."""
from __future__ import annotations

import pytest
import torch

from conftest import randomise
from test_swin import SMALL_SWIN, TOL, check_swin_exact, swin_images
from vitshrink.families import build_module
from vitshrink.frontends.timm_swin import from_timm as from_timm_swin
from vitshrink.families import apply_spec
from vitshrink.families import reference_forward
from vitshrink.spec import Spec
from vitshrink.families import resolve_spec



def _swin_prune(model, seed=0):
    """torch.nn.utils.prune on a Swin as a user applies it: fc1 rows, q/k/v rows of qkv (L2), fc2
    unstructured, and every v row + proj column of one whole head."""
    from torch.nn.utils import prune

    torch.manual_seed(seed)
    blocks = [b for st in model.layers for b in st.blocks]
    for i, b in enumerate(blocks):
        prune.ln_structured(b.mlp.fc1, "weight", amount=0.3 + 0.1 * (i % 3), n=1, dim=0)
        prune.ln_structured(b.attn.qkv, "weight", amount=0.25, n=2, dim=0)
        prune.l1_unstructured(b.mlp.fc2, "weight", amount=0.3)
    attn = blocks[3].attn  # layers.1.blocks.1: head 1 gone whole (its v rows and proj columns)
    hd = attn.qkv.out_features // (3 * attn.num_heads)
    mask = torch.ones_like(attn.proj.weight)
    mask[:, hd:2 * hd] = 0
    prune.custom_from_mask(attn.proj, "weight", mask)
    return model


def _small_swin_model(seed):
    from timm.models.swin_transformer import SwinTransformer

    return randomise(SwinTransformer(**SMALL_SWIN), seed=seed)


@pytest.mark.parametrize("removed", [False, True], ids=["active (orig+mask)", "after prune.remove"])
def test_torch_nn_utils_prune_on_swin(tmp_path, removed):
    """Issue 9 item 4: a torch.nn.utils.prune Swin checkpoint imports with Swin names, compiles, and
    computes what the source computes (and what the masked reference says)."""
    import copy

    from torch.nn.utils import prune

    from vitshrink.frontends.timm import load_state
    from vitshrink.importers import import_checkpoint
    from vitshrink.importers.verify import source_model

    model = _swin_prune(_small_swin_model(5))
    if removed:
        for m in model.modules():
            if prune.is_pruned(m) and hasattr(m, "weight_orig"):
                prune.remove(m, "weight")
    torch.save(model.state_dict(), tmp_path / "sd.pth")
    x = swin_images(3, seed=2)
    with torch.no_grad():
        want = model(x)
    dense = _small_swin_model(11)
    result = import_checkpoint(tmp_path / "sd.pth", dense)
    assert result.format == ("zeroed" if removed else "torch-prune")
    assert all(k.startswith("layers.") for k in result.spec.masks)
    assert not bool(result.spec.masks["layers.1.blocks.1.heads"][1])
    assert result.notes["removed"]["mlp_neurons"] > 0 and result.notes["removed"]["folded_biases"] > 0
    assert result.notes["widths"][3]["name"] == "layers.1.blocks.1"
    m = copy.deepcopy(dense)
    load_state(m, result.state_dict)
    ir = from_timm_swin(m)
    rs = resolve_spec(result.spec, ir)
    pruned = build_module(apply_spec(ir, rs))
    with torch.no_grad():
        assert float((pruned(x) - want).abs().max()) <= TOL
        assert float((source_model(result, dense)(x) - want).abs().max()) <= TOL
    assert float((reference_forward(ir, rs, x) - want).abs().max()) <= TOL
    assert pruned.stages[1].blocks[1].attn.num_heads == 1


def test_vit_only_formats_are_refused_for_swin(tmp_path):
    from vitshrink.errors import VitshrinkError
    from vitshrink.importers import import_checkpoint

    model = _small_swin_model(5)
    torch.save(model.state_dict(), tmp_path / "sd.pth")
    with pytest.raises(VitshrinkError, match="ViT/DeiT models only.*torch-pruning, hf, torch-prune, nni, zeroed"):
        import_checkpoint(tmp_path / "sd.pth", model, fmt="vtc-lfc")
    with pytest.raises(VitshrinkError, match="not a torch-pruning file"):  # a state dict, not a module
        import_checkpoint(tmp_path / "sd.pth", model, fmt="torch-pruning")


def _hf_swin(seed=0):
    from transformers import SwinConfig, SwinForImageClassification

    cfg = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[2, 2, 2], num_heads=[2, 2, 4], window_size=4,
                     num_labels=10, layer_norm_eps=1e-5)
    return randomise(SwinForImageClassification(cfg), seed)


@pytest.mark.parametrize("layout", ["on disk (save_pretrained)", "in-memory v5 names"])
def test_hf_swin_directory_imports_exactly(tmp_path, layout):
    """A transformers SwinForImageClassification directory imports into timm's layout (patch merging
    moved from the end of stage s to the start of s + 1): timm with the imported weights computes the
    transformers model's logits, and a spec then prunes it exactly."""
    from safetensors.torch import load_file, save_file

    from conftest import need
    from vitshrink.frontends.timm import load_state
    from vitshrink.importers import import_checkpoint

    need("transformers")
    hf = _hf_swin(3)
    hf.save_pretrained(tmp_path / "hf")
    if layout != "on disk (save_pretrained)":  # transformers 5 writes the v4 names; its modules use v5 names
        save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(tmp_path / "hf" / "model.safetensors"))
    assert any(".attention.self.query." in k for k in load_file(str(tmp_path / "hf" / "model.safetensors"))) \
        == (layout == "on disk (save_pretrained)")
    dense = _small_swin_model(11)
    result = import_checkpoint(tmp_path / "hf", dense)
    assert result.format == "hf" and not result.spec.masks
    assert result.notes["key_layout"] == ("v4" if layout == "on disk (save_pretrained)" else "v5")
    import copy

    m = copy.deepcopy(dense)
    load_state(m, result.state_dict)
    x = swin_images(3, seed=4)
    with torch.no_grad():
        want = hf(pixel_values=x).logits
        assert float((m(x) - want).abs().max()) <= TOL
    ir = from_timm_swin(m)
    spec = Spec({"layers.1.blocks.0.heads": [1], "layers.2.embed": list(range(0, 64, 3)), "layers.0.blocks.1.mlp": [0, 7]})
    check_swin_exact(ir, spec, x)


def test_hf_swin_pruned_heads_are_refused(tmp_path):
    from conftest import need
    from vitshrink.errors import ModelError
    from vitshrink.importers import import_checkpoint

    need("transformers")
    hf = _hf_swin(3)
    hf.config.pruned_heads = {"1": [0]}
    hf.save_pretrained(tmp_path / "hf")
    with pytest.raises(ModelError, match="pruned_heads"):
        import_checkpoint(tmp_path / "hf", _small_swin_model(11))


@pytest.mark.parametrize("form", ["torch.save(model)", "tp.state_dict"])
def test_torch_pruning_swin_exact_against_the_tools_own_module(tmp_path, form):
    """A timm Swin pruned by Torch-Pruning itself (stage channels through a PatchMerging pruner, MLP)
    imports, compiles and computes what Torch-Pruning's own shrunk module computes."""
    import copy

    from conftest import need
    from tools import torch_pruning_swin
    from vitshrink.frontends.timm import load_state
    from vitshrink.importers import import_checkpoint

    tp = need("torch_pruning")
    model, _ = torch_pruning_swin(_small_swin_model(8), 0.5)
    assert model.layers[1].blocks[0].dim == 32 and model.layers[1].blocks[0].norm1.weight.shape[0] < 32  # it shrank
    if form == "tp.state_dict":
        torch.save(tp.state_dict(model), tmp_path / "tp.pth")
    else:
        torch.save(model, tmp_path / "tp.pth")
    dense = _small_swin_model(11)
    result = import_checkpoint(tmp_path / "tp.pth", dense)
    assert result.format == "torch-pruning" and result.reference_state_dict is None  # channels pruned: no timm twin
    assert {k for k in result.spec.masks if k.endswith(".embed")} == {"layers.0.embed", "layers.1.embed", "layers.2.embed"}
    m = copy.deepcopy(dense)
    load_state(m, result.state_dict)
    ir = from_timm_swin(m)
    rs = resolve_spec(result.spec, ir)
    pruned = build_module(apply_spec(ir, rs))
    x = swin_images(3, seed=9)
    with torch.no_grad():
        want = model(x)
        assert float((pruned(x) - want).abs().max()) <= TOL
    assert float((reference_forward(ir, rs, x) - want).abs().max()) <= TOL
    assert [s.dim for s in apply_spec(ir, rs).stages] == [b.norm1.weight.shape[0] for b in (st.blocks[0] for st in model.layers)]


def test_shrunk_swin_heads_and_head_dims_with_the_sources_softmax_scale(tmp_path):
    """Heads and head_dims shrunk as Torch-Pruning's head options leave them (qkv rows, proj columns, the
    bias table's columns; ``num_heads`` updated, ``scale`` not): with timm's fused attention the source's
    softmax scale becomes the pruned head_dim's, which the import folds into q; without it the recorded
    scale stays. The compiled model computes what the shrunk module computes."""
    import copy

    from torch import nn

    from vitshrink.frontends.timm import load_state
    from vitshrink.importers import import_checkpoint

    model = _small_swin_model(12)

    def shrink(attn, heads, hd2, fused):
        H, hd = attn.num_heads, attn.qkv.out_features // (3 * attn.num_heads)
        rows = torch.tensor([j * H * hd + h * hd + c for j in range(3) for h in heads for c in range(hd2)])
        cols = torch.tensor([h * hd + c for h in heads for c in range(hd2)])
        qkv = nn.Linear(attn.qkv.in_features, len(rows))
        qkv.weight.data, qkv.bias.data = attn.qkv.weight.data[rows].clone(), attn.qkv.bias.data[rows].clone()
        proj = nn.Linear(len(cols), attn.proj.out_features)
        proj.weight.data, proj.bias.data = attn.proj.weight.data[:, cols].clone(), attn.proj.bias.data.clone()
        attn.qkv, attn.proj, attn.num_heads, attn.fused_attn = qkv, proj, len(heads), fused
        attn.relative_position_bias_table = nn.Parameter(attn.relative_position_bias_table.data[:, heads].clone())

    with torch.no_grad():
        shrink(model.layers[1].blocks[1].attn, [0, 1], 5, fused=True)   # head_dim 8 -> 5, SDPA's default scale
        shrink(model.layers[2].blocks[0].attn, [0, 1], 4, fused=False)  # 4 heads -> 2, head_dim 16 -> 4, recorded scale
    torch.save(model, tmp_path / "shrunk.pth")
    x = swin_images(3, seed=10)
    with torch.no_grad():
        want = model(x)
    dense = _small_swin_model(11)
    result = import_checkpoint(tmp_path / "shrunk.pth", dense)
    assert result.format == "torch-pruning" and result.reference_state_dict is not None
    assert "block 3:" in result.notes["softmax_scale"][0]  # layers.1.blocks.1 is block 3
    masks = result.spec.masks
    assert masks["layers.1.blocks.1.qk"].sum() == 2 * 5 and masks["layers.2.blocks.0.heads"].tolist() == [True, True, False, False]
    m = copy.deepcopy(dense)
    load_state(m, result.state_dict)
    ir = from_timm_swin(m)
    pruned = build_module(apply_spec(ir, resolve_spec(result.spec, ir)))
    from vitshrink.importers.verify import source_model

    with torch.no_grad():
        assert float((pruned(x) - want).abs().max()) <= TOL
        assert float((source_model(result, dense)(x) - want).abs().max()) <= TOL
        ignored = copy.deepcopy(result)  # the scale ignored: the source is not reproduced
        ignored.reference_scales = {}
        assert float((source_model(ignored, dense)(x) - want).abs().max()) > 10 * TOL
