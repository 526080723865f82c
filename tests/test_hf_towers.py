"""Hugging Face vision towers saved by transformers 5 (random weights, small configs): Dinov2Model (with and
without registers), CLIPVisionModel(WithProjection), SiglipVisionModel -- imported, compiled (dense and
pruned by a spec) and compared with transformers' own forward; classes that are not read are refused by name."""
from __future__ import annotations

import json
from functools import partial

import pytest
import torch
from click.testing import CliRunner

from conftest import images, need, randomise
from test_importers import compile_import, diff
from vitshrink.importers import import_checkpoint
from vitshrink.importers.verify import source_model

need("transformers")

SMALL = dict(image_size=28, patch_size=14, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def _hf(kind: str):
    """(transformers model, its output on pixel_values, the timm model of the same architecture)."""
    import transformers as tf
    from timm.layers import QuickGELU
    from timm.models.vision_transformer import VisionTransformer

    vit = partial(VisionTransformer, img_size=28, patch_size=14, embed_dim=32, depth=2, num_heads=4)
    if kind == "dinov2":
        hf = tf.Dinov2Model(tf.Dinov2Config(**SMALL))
        timm = vit(mlp_ratio=4.0, init_values=1.0, num_classes=0)
    elif kind == "dinov2_reg":
        hf = tf.Dinov2WithRegistersModel(tf.Dinov2WithRegistersConfig(**SMALL, num_register_tokens=2))
        timm = vit(mlp_ratio=4.0, init_values=1.0, num_classes=0, reg_tokens=2, no_embed_class=True)
    elif kind in ("clip", "clip_proj"):
        cfg = tf.CLIPVisionConfig(**SMALL, projection_dim=16)
        hf = tf.CLIPVisionModelWithProjection(cfg) if kind == "clip_proj" else tf.CLIPVisionModel(cfg)
        timm = vit(mlp_ratio=2.0, pre_norm=True, act_layer=QuickGELU, norm_layer=partial(torch.nn.LayerNorm, eps=1e-5),
                   num_classes=16 if kind == "clip_proj" else 0)
    else:
        hf = tf.SiglipVisionModel(tf.SiglipVisionConfig(**SMALL))
        timm = vit(mlp_ratio=2.0, class_token=False, global_pool="map", act_layer="gelu_tanh", num_classes=0)
    return randomise(hf.eval(), 3), timm.eval()


def _want(hf, x):
    with torch.no_grad():
        out = hf(pixel_values=x)
    return out.image_embeds if hasattr(out, "image_embeds") else out.pooler_output


@pytest.mark.parametrize("kind", ["dinov2", "dinov2_reg", "clip", "clip_proj", "siglip"])
def test_tower_exact_against_transformers(tmp_path, kind):
    from vitshrink.families import apply_spec, build_module, reference_forward, resolve_spec
    from vitshrink.spec import Spec

    hf, timm = _hf(kind)
    hf.save_pretrained(tmp_path / "hf")
    x = images(3, size=28, seed=5)
    want = _want(hf, x)
    result = import_checkpoint(tmp_path / "hf", timm)
    assert result.format == "hf" and result.notes["hf_class"] == type(hf).__name__
    dense, ir, _ = compile_import(result, timm)
    assert diff(dense(x), want) <= 1e-4  # the compiled dense model computes what transformers computes
    assert diff(source_model(result, timm)(x), want) <= 1e-4
    # pruned by a spec: exact against the masked dense reference of the imported weights
    masks = {f"blocks.{i}.heads": torch.tensor([h != i for h in range(4)]) for i in range(2)}
    masks.update({f"blocks.{i}.mlp": torch.arange(ir.blocks[i].mlp.hidden) % 3 != 0 for i in range(2)})
    rs = resolve_spec(Spec(masks), ir)
    with torch.no_grad():
        pruned = build_module(apply_spec(ir, rs))
        assert diff(pruned(x), reference_forward(ir, rs, x)) <= 1e-4
    assert [b.attn.num_heads for b in pruned.blocks] == [3, 3]


def test_register_position_rows_matter(tmp_path):
    """Mutant: the class token's position row dropped instead of folded into the token -> not exact."""
    hf, timm = _hf("dinov2_reg")
    hf.save_pretrained(tmp_path / "hf")
    x = images(2, size=28, seed=5)
    result = import_checkpoint(tmp_path / "hf", timm)
    pos = hf.embeddings.position_embeddings.detach()
    result.state_dict["cls_token"] = result.state_dict["cls_token"] - pos[:, :1]
    assert diff(compile_import(result, timm)[0](x), _want(hf, x)) > 1e-3


def test_towers_name_their_timm_model():
    from vitshrink.importers.hf import model_kwargs, timm_name

    base = dict(hidden_size=384, patch_size=14, image_size=518)
    assert timm_name({"model_type": "dinov2", "architectures": ["Dinov2Model"], **base}) == "vit_small_patch14_dinov2"
    assert timm_name({"model_type": "dinov2_with_registers", "architectures": ["Dinov2WithRegistersModel"],
                      "num_register_tokens": 4, **base}) == "vit_small_patch14_reg4_dinov2"
    clip = {"model_type": "clip_vision_model", "architectures": ["CLIPVisionModelWithProjection"], "hidden_size": 768,
            "patch_size": 16, "image_size": 224, "hidden_act": "quick_gelu", "projection_dim": 512}
    assert timm_name(clip) == "vit_base_patch16_clip_quickgelu_224"
    assert model_kwargs(clip) == {"num_classes": 512, "img_size": 224}
    assert model_kwargs({**clip, "architectures": ["CLIPVisionModel"]})["num_classes"] == 0
    sig = {"model_type": "siglip_vision_model", "architectures": ["SiglipVisionModel"], "hidden_size": 768, "patch_size": 16,
           "image_size": 224}
    assert timm_name(sig) == "vit_base_patch16_siglip_224"
    from vitshrink.frontends.timm import create_model
    for cfg in (clip, sig):  # the names exist in timm, and take the kwargs
        assert create_model(timm_name(cfg), **model_kwargs(cfg)).num_classes == model_kwargs(cfg)["num_classes"]


def _fake_hf(directory, model_type: str, cls: str, **cfg):
    from safetensors.torch import save_file

    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": model_type, "architectures": [cls], **cfg}))
    save_file({"x.weight": torch.zeros(2)}, str(directory / "model.safetensors"))
    return directory


@pytest.mark.parametrize("model_type,cls,words", [
    ("dinov2", "Dinov2ForImageClassification", "mean patch token"),
    ("clip", "CLIPModel", "CLIPVisionModelWithProjection.from_pretrained"),
    ("beit", "BeitForImageClassification", "vitshrink reads ViTForImageClassification"),
    ("siglip_vision_model", "SiglipVisionModel", "vision_use_head=false"),
])
def test_unhandled_hf_classes_are_refused_by_name(tmp_path, model_type, cls, words):
    from vitshrink.cli import main

    extra = {"vision_use_head": False} if cls == "SiglipVisionModel" else {}
    d = _fake_hf(tmp_path / "hf", model_type, cls, hidden_size=384, patch_size=14, **extra)
    for args in (["inspect", str(d)], ["import", str(d), "--out", str(tmp_path / "o")],
                 ["inspect", str(d), "--model", "vit_small_patch14_dinov2"]):
        res = CliRunner().invoke(main, args)
        err = res.stderr.strip().splitlines()
        assert res.exit_code == 2 and len(err) == 1 and cls in err[0] and words in err[0], (args, res.stderr)
    assert not (tmp_path / "o").exists()
