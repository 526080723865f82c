"""Hugging Face transformers ViT / DeiT (with teacher) directories made by transformers itself, in its
v5 key layout and in the v4 layout found in older checkpoints, with and without config.pruned_heads:
compiled and compared with the transformers model's own logits (<= 1e-4)."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from conftest import images, need, randomise
from test_importers import compile_import, diff
from vitshrink.importers import guess_model, import_checkpoint
from vitshrink.importers.verify import source_model

transformers = need("transformers")

DIMS = dict(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
            intermediate_size=96, num_labels=10)


def _hf(kind: str, seed: int = 0):
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher, ViTConfig, ViTForImageClassification

    if kind == "vit":
        return randomise(ViTForImageClassification(ViTConfig(**DIMS)), seed)
    return randomise(DeiTForImageClassificationWithTeacher(DeiTConfig(**DIMS)), seed)


def _timm(kind: str):
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    cls = VisionTransformer if kind == "vit" else VisionTransformerDistilled
    return cls(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=4, mlp_ratio=2.0, num_classes=10).eval()


_V4 = [("layers.", "encoder.layer."), ("attention.q_proj", "attention.attention.query"),
       ("attention.k_proj", "attention.attention.key"), ("attention.v_proj", "attention.attention.value"),
       ("attention.o_proj", "attention.output.dense"), ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense")]


def _save(model, directory, layout: str, pruned_heads=None):
    """``save_pretrained`` (transformers 5 still writes the v4 key names on disk), optionally renamed to
    the in-memory v5 names, and with heads removed as v4's ``prune_heads`` did (q/k/v rows and output
    columns sliced, ``config.pruned_heads`` recorded)."""
    from safetensors.torch import load_file, save_file

    model.save_pretrained(directory)
    sd = load_file(str(directory / "model.safetensors"))
    cfg = json.loads((directory / "config.json").read_text())
    hd = DIMS["hidden_size"] // DIMS["num_attention_heads"]
    for layer, heads in (pruned_heads or {}).items():
        keep = torch.tensor([h * hd + c for h in range(DIMS["num_attention_heads"]) if h not in heads for c in range(hd)])
        pre = f"{cfg['model_type']}.encoder.layer.{layer}.attention."
        for n in ("attention.query", "attention.key", "attention.value"):
            sd[pre + n + ".weight"], sd[pre + n + ".bias"] = sd[pre + n + ".weight"][keep], sd[pre + n + ".bias"][keep]
        sd[pre + "output.dense.weight"] = sd[pre + "output.dense.weight"][:, keep]
    if pruned_heads:
        cfg["pruned_heads"] = {str(k): v for k, v in pruned_heads.items()}
    if layout == "v5":
        renamed = {}
        for k, v in sd.items():
            for a, b in _V4:
                k = k.replace(b, a)
            renamed[k] = v
        sd = renamed
    save_file({k: v.contiguous() for k, v in sd.items()}, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(cfg))


def _zero_heads(model, pruned_heads):
    """The v4 semantics of pruned heads, on the dense transformers model: their weights zeroed."""
    m = copy.deepcopy(model)
    hd = DIMS["hidden_size"] // DIMS["num_attention_heads"]
    with torch.no_grad():
        for layer, heads in pruned_heads.items():
            att = m.base_model.layers[layer].attention if hasattr(m.base_model, "layers") else m.base_model.encoder.layer[layer].attention
            for h in heads:
                s = slice(h * hd, (h + 1) * hd)
                for lin in (att.q_proj, att.k_proj, att.v_proj):
                    lin.weight[s] = 0
                    lin.bias[s] = 0
                att.o_proj.weight[:, s] = 0
    return m


@pytest.mark.parametrize("layout", ["v5", "v4"])
@pytest.mark.parametrize("kind", ["vit", "deit"])
@pytest.mark.parametrize("pruned", [None, {0: [1, 3], 2: [0]}], ids=["dense", "pruned_heads"])
def test_hf_directory_exact_against_transformers(tmp_path, kind, layout, pruned):
    model = _hf(kind, seed=4)
    _save(model, tmp_path / "hf", layout, pruned)
    x = images(3, seed=5)
    with torch.no_grad():
        want = (_zero_heads(model, pruned) if pruned else model)(pixel_values=x).logits
    dense = _timm(kind)
    result = import_checkpoint(tmp_path / "hf", dense)
    assert result.format == "hf" and result.notes["key_layout"] == layout and result.layer_norm_eps == 1e-12
    pruned_model, _, _ = compile_import(result, dense)
    assert diff(pruned_model(x), want) <= 1e-4
    assert diff(source_model(result, dense)(x), want) <= 1e-4
    expected = [DIMS["num_attention_heads"] - len((pruned or {}).get(i, [])) for i in range(DIMS["num_hidden_layers"])]
    assert [b.attn.num_heads for b in pruned_model.blocks] == expected
    if pruned:
        assert result.spec.masks["blocks.0.heads"].tolist() == [True, False, True, False]


def test_hf_eps_matters(tmp_path):
    """Mutant: timm's LayerNorm eps (1e-6) instead of HF's (1e-12) on a layer with tiny variance -> caught."""
    model = _hf("vit", seed=4)
    with torch.no_grad():
        model.vit.embeddings.patch_embeddings.projection.weight.mul_(1e-3)
        model.vit.embeddings.position_embeddings.mul_(1e-3)
        model.vit.embeddings.cls_token.mul_(1e-3)
    _save(model, tmp_path / "hf", "v5")
    x = images(2, seed=5)
    dense = _timm("vit")
    result = import_checkpoint(tmp_path / "hf", dense)
    assert diff(compile_import(result, dense)[0](x), model(pixel_values=x).logits) <= 1e-4
    result.layer_norm_eps = None
    assert diff(compile_import(result, dense)[0](x), model(pixel_values=x).logits) > 1e-3


def test_hf_model_name_guessed(tmp_path):
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    m = DeiTForImageClassificationWithTeacher(DeiTConfig(hidden_size=192, num_attention_heads=3, intermediate_size=768,
                                                         num_hidden_layers=1))
    m.save_pretrained(tmp_path / "d")
    assert guess_model(tmp_path / "d") == "deit_tiny_distilled_patch16_224"


def test_hf_wrong_model_and_unshrunk_pruned_heads_say_what_to_do(tmp_path):
    """Issue 26 items 2 and 4: an HF directory for another model says it does not fit, naming both
    shapes; config.pruned_heads over layers that still hold every head (transformers 5 cannot shrink
    them) says how to bring the heads instead."""
    need("transformers")
    from vitshrink.errors import CheckpointError
    from vitshrink.importers import import_checkpoint

    _save(_hf("vit"), tmp_path / "a", "v5")
    with pytest.raises(CheckpointError, match=r"does not fit small_other: its config.json has hidden_size 48, 4 heads"):
        from timm.models.vision_transformer import VisionTransformer
        other = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=4, mlp_ratio=2.0,
                                  num_classes=10).eval()
        other.default_cfg = {"architecture": "small_other"}
        import_checkpoint(tmp_path / "a", other)
    _save(_hf("vit"), tmp_path / "b", "v5")
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    cfg["pruned_heads"] = {"1": [0, 2]}
    (tmp_path / "b" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"pruned_heads lists heads \[0, 2\] of layer 1.*still hold all 4 heads.*--spec"):
        import_checkpoint(tmp_path / "b", _timm("vit"))


def test_masks_and_compile_read_an_hf_directory(tmp_path):
    """Issue 26 item 4: `vitshrink masks MODEL --checkpoint <HF directory>` said "no such file": now masks
    and `compile --spec` read the directory's weights (the hf importer), and one for another model says so."""
    from click.testing import CliRunner
    from transformers import ViTConfig, ViTForImageClassification

    from vitshrink.cli import main

    _save(_hf("vit"), tmp_path / "small", "v5")
    res = CliRunner().invoke(main, ["masks", "deit_tiny_patch16_224", "--checkpoint", str(tmp_path / "small"), "--mlp", "0.5",
                                    "--out", str(tmp_path / "s.json")])
    assert res.exit_code == 2 and "does not fit deit_tiny_patch16_224" in res.output, res.output
    torch.manual_seed(6)  # transformers' own initialisation: 12 blocks of conftest's random weights end far above 1e-4 in fp32
    tiny = ViTForImageClassification(ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
                                               intermediate_size=768, num_labels=1000)).eval()
    _save(tiny, tmp_path / "hf", "v4")
    res = CliRunner().invoke(main, ["masks", "deit_tiny_patch16_224", "--checkpoint", str(tmp_path / "hf"), "--mlp", "0.5",
                                    "--out", str(tmp_path / "s.json"), "--quiet"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["compile", "deit_tiny_patch16_224", "--checkpoint", str(tmp_path / "hf"), "--spec",
                                    str(tmp_path / "s.json"), "--out", str(tmp_path / "o"), "--bench-seconds", "0", "--quiet"])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "o" / "report.json").read_text())
    assert r["exactness"]["passed"] and r["macs"]["ratio"] < 0.8
    from vitshrink import load
    from vitshrink.spec import load_spec

    masked = copy.deepcopy(tiny)  # transformers' model with the spec's MLP neurons zeroed: what the compile must compute
    spec = load_spec(tmp_path / "s.json")
    with torch.no_grad():
        for i in range(12):
            layer = masked.base_model.layers[i] if hasattr(masked.base_model, "layers") else masked.base_model.encoder.layer[i]
            fc2 = layer.mlp.fc2 if hasattr(layer, "mlp") else layer.output.dense
            kept = torch.as_tensor(spec.masks[f"blocks.{i}.mlp"])
            keep = kept if kept.dtype == torch.bool else torch.zeros(768, dtype=torch.bool).index_fill_(0, kept, True)
            fc2.weight[:, ~keep] = 0
        x = images(2, size=224, seed=1)
        assert diff(load(tmp_path / "o" / "model")(x), masked(pixel_values=x).logits) <= 1e-4