"""A model fine-tuned to its own classes (issue 43): a timm checkpoint and a Hugging Face directory with a 10-class
head go through `masks` and `compile --data`, verified exactly and scored on a 10-folder dataset (folders to outputs
by sorted position: neither has label names here). 32 px, generated images: the suite's time budget."""
from __future__ import annotations

import json

import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import save_file

from conftest import randomise
from vitshrink.cli import main

TOL = 1e-4
PREDICTED = 3  # the head's bias makes every image class 3: top-1 = the share of folder 3's images, 2 of 20


def _ten_folders(root):
    g = torch.Generator().manual_seed(0)
    for c in range(10):
        d = root / f"class_{c:02d}"
        d.mkdir(parents=True)
        for i in range(2):
            Image.fromarray((torch.rand(40, 40, 3, generator=g) * 255).to(torch.uint8).numpy()).save(d / f"{i}.png")
    return root


def _biased(weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Small weights (the logits still read every feature: exactness means something) and a bias that wins."""
    with torch.no_grad():
        weight.mul_(1e-3)
        bias.zero_()[PREDICTED] = 10.0


def _masks_and_compile(tmp_path, checkpoint: str) -> dict:
    spec, out = tmp_path / "s.json", tmp_path / "o"
    res = CliRunner().invoke(main, ["masks", "deit_tiny_patch16_224", "--checkpoint", checkpoint, "--img-size", "32",
                                    "--heads", "0.67", "--mlp", "0.5", "--out", str(spec), "--quiet"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["compile", "deit_tiny_patch16_224", "--checkpoint", checkpoint, "--spec", str(spec),
                                    "--img-size", "32", "--data", str(_ten_folders(tmp_path / "imgs")), "--bench-seconds", "0",
                                    "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    r = json.loads((out / "report.json").read_text())
    assert r["exactness"]["max_abs_diff"] <= TOL and r["export"]["onnx_max_abs_diff"] <= TOL
    assert r["macs"]["ratio"] < 0.8
    acc = r["accuracy"]
    assert acc["n"] == 20 and acc["dense_top1"] == acc["pruned_top1"] == 0.1, acc  # 2 of 20: folder 3 is output 3
    assert acc["engines"][0]["original_top1"] == 0.1
    return r


def test_a_timm_checkpoint_fine_tuned_to_10_classes(tmp_path):
    """A timm checkpoint whose head is [10, 192]: the model's head is made that size (it was refused: 'head.weight'
    has shape [10, 192], the model needs [1000, 192])."""
    from vitshrink.compat import ensure_timm_importable

    ensure_timm_importable()
    import timm

    model = randomise(timm.create_model("deit_tiny_patch16_224", num_classes=10), seed=3)
    _biased(model.head.weight, model.head.bias)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "ten.safetensors"))
    _masks_and_compile(tmp_path, str(tmp_path / "ten.safetensors"))


def test_a_hugging_face_vit_fine_tuned_to_10_classes(tmp_path):
    """transformers' ViTForImageClassification with num_labels=10, saved as a directory."""
    from test_hf_import import _save
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(6)
    hf = ViTForImageClassification(ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
                                             intermediate_size=768, num_labels=10)).eval()
    _biased(hf.classifier.weight, hf.classifier.bias)
    _save(hf, tmp_path / "hf", "v4")
    _masks_and_compile(tmp_path, str(tmp_path / "hf"))
