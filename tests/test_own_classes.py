"""A model fine-tuned to its own classes (issue 43): a timm checkpoint and a Hugging Face directory with a 10-class
head go through `inspect`, `masks --data` and `compile --data` and `check`, verified exactly and scored on a 10-folder
dataset whose folders map to outputs by the model's own label names (timm's label_names in a config.json beside the
weights, HF's config.id2label) -- a permutation of the sorted folder order, so scoring by position would be wrong.
32 px, generated images: the suite's time budget."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import save_file

from conftest import randomise
from vitshrink.cli import main
from vitshrink.errors import VitshrinkError
from vitshrink.runtime.accuracy import map_folders, read_labels

TOL = 1e-4
PREDICTED = 3  # the head's bias makes every image output 3
NAMED = 7  # ... whose label name is folder class_07 (3 images of 12); sorted folder order would give class_03 (1 of 12)


def _names(fmt: str) -> list[str]:
    """Output i is folder class_{-i mod 10}: output 3 is class_07 (a permutation of the sorted order)."""
    return [fmt.format((10 - i) % 10) for i in range(10)]


def _ten_folders(root):
    g = torch.Generator().manual_seed(0)
    for c in range(10):
        d = root / f"class_{c:02d}"
        d.mkdir(parents=True)
        for i in range(3 if c == NAMED else 1):
            Image.fromarray((torch.rand(40, 40, 3, generator=g) * 255).to(torch.uint8).numpy()).save(d / f"{i}.png")
    return root


def _biased(weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Small weights (the logits still read every feature: exactness means something) and a bias that wins."""
    with torch.no_grad():
        weight.mul_(1e-3)
        bias.zero_()[PREDICTED] = 10.0


def _inspect_masks_compile_check(tmp_path, checkpoint: str, labels_from: str, engines: str = "ort") -> dict:
    res = CliRunner().invoke(main, ["inspect", checkpoint, "--model", "deit_tiny_patch16_224"])
    assert res.exit_code == 0, res.output
    assert "classes: 10 (head [10, 192]" in res.output, res.output
    data, spec, out = _ten_folders(tmp_path / "imgs"), tmp_path / "s.json", tmp_path / "o"
    res = CliRunner().invoke(main, ["masks", "deit_tiny_patch16_224", "--checkpoint", checkpoint, "--img-size", "32",
                                    "--data", str(data), "--calib-images", "4", "--macs", "0.6", "--steps", "1", "--out", str(spec), "--quiet"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["compile", "deit_tiny_patch16_224", "--checkpoint", str(tmp_path / "s.weights.safetensors"),
                                    "--spec", str(spec), "--img-size", "32", "--data", str(data), "--engines", engines,
                                    "--calib-images", "4", "--bench-seconds", "0", "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    r = json.loads((out / "report.json").read_text())
    assert r["exactness"]["max_abs_diff"] <= TOL and r["export"]["onnx_max_abs_diff"] <= TOL
    assert r["macs"]["ratio"] <= 0.6
    acc = r["accuracy"]
    assert labels_from in acc["images"]["labels"], acc["images"]
    assert acc["n"] == 8 and acc["images"]["excluded"] == 4  # the 4 calibration images are held out
    calibrated = json.loads(spec.read_text())["meta"]["calibration"]["files"]  # chose the masks: held out
    expected = 3 - sum(f.startswith(f"class_{NAMED:02d}/") for f in calibrated)
    assert acc["pruned_top1"] == acc["dense_top1"] == expected / 8, acc
    assert all(row["original_top1"] == expected / 8 for row in acc["engines"]), acc["engines"]
    res = CliRunner().invoke(main, ["check", str(out), "--max-top1-drop", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    return r


def test_a_timm_checkpoint_fine_tuned_to_10_classes(tmp_path):
    """A timm checkpoint whose head is [10, 192] (it was refused: 'head.weight' has shape [10, 192], the model needs
    [1000, 192]), saved as timm saves to the Hub: label names in the config.json beside the weights."""
    from vitshrink.compat import ensure_timm_importable

    ensure_timm_importable()
    import timm

    model = randomise(timm.create_model("deit_tiny_patch16_224", num_classes=10), seed=3)
    _biased(model.head.weight, model.head.bias)
    (tmp_path / "w").mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w" / "model.safetensors"))
    (tmp_path / "w" / "config.json").write_text(json.dumps({"architecture": "deit_tiny_patch16_224", "num_classes": 10,
                                                            "label_names": _names("class_{:02d}")}))
    _inspect_masks_compile_check(tmp_path, str(tmp_path / "w" / "model.safetensors"), "config.json")


def test_a_hugging_face_vit_fine_tuned_to_10_classes(tmp_path):
    """transformers' ViTForImageClassification with num_labels=10 and its own id2label ('Class 07' matches the folder
    class_07), saved as a directory; compiled to ort and openvino-int8 from the re-fitted weights, whose labels
    come from the original directory."""
    from test_hf_import import _save
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(6)
    names = _names("Class {:02d}")
    hf = ViTForImageClassification(ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
                                             intermediate_size=768, num_labels=10,
                                             id2label=dict(enumerate(names)))).eval()
    _biased(hf.classifier.weight, hf.classifier.bias)
    _save(hf, tmp_path / "hf", "v4")
    ViTImageProcessor().to_json_file(str(tmp_path / "hf" / "preprocessor_config.json"))  # mean 0.5, bilinear, no crop
    r = _inspect_masks_compile_check(tmp_path, str(tmp_path / "hf"), "config.json id2label", engines="ort,openvino-int8")
    assert [e["engine"] for e in r["accuracy"]["engines"]] == ["ort", "openvino-int8"]
    pre = r["preprocessing"]  # what the images went through, and the LayerNorm eps the model normalises with
    assert "preprocessor_config.json" in pre["from"] and pre["mean"] == [0.5] * 3 and pre["interpolation"] == "bilinear"
    assert pre["layer_norm_eps"] == [1e-12] and pre["input_size"] == [3, 32, 32]


@pytest.mark.parametrize("processor", ["ViTImageProcessor", "DeiTImageProcessor"])
def test_an_hf_image_processor_is_what_the_images_go_through(processor):
    """timm's eval transform set from an HF processor's preprocessor_config.json gives the processor's pixels (ViT:
    squash to 224, no crop; DeiT: squash to 256, crop 224, bicubic) to within PIL's uint8 rounding."""
    import numpy as np
    import transformers
    from vitshrink.compat import ensure_timm_importable
    from vitshrink.frontends.timm import eval_transform
    from vitshrink.importers.hf import data_config

    ensure_timm_importable()
    import timm

    yy, xx = np.mgrid[0:300, 0:260]
    img = Image.fromarray(np.stack([xx * 255 / 260, yy * 255 / 300, (xx + yy) * 255 / 560], -1).astype(np.uint8))
    proc = getattr(transformers, processor)()
    model = timm.create_model("deit_tiny_patch16_224")
    model.pretrained_cfg = {**model.pretrained_cfg, **data_config(json.loads(proc.to_json_string()))}
    ours, theirs = eval_transform(model)(img).numpy(), proc(img, return_tensors="np")["pixel_values"][0]
    assert ours.shape == theirs.shape == (3, 224, 224)
    assert np.abs(ours - theirs).max() <= 2.5 / 127.5  # two uint8 levels at std 0.5; timm's own ImageNet mean: ~0.1


def test_folders_map_by_wnid_label_name_or_sorted_order(tmp_path):
    """The rules of map_folders, and --labels files (text and an {index: name} JSON)."""
    assert map_folders(["b", "a"], 2) == ({"a": 0, "b": 1}, "sorted folder order (the model has no label names)")
    assert map_folders(["n01440764", "n15075141"], 1000)[0] == {"n01440764": 0, "n15075141": 999}  # a subset of ImageNet
    label_of, how = map_folders(["dog", "Golden-Retriever"], 3, ["golden retriever", "cat", "Dog"], "id2label")
    assert label_of == {"dog": 2, "Golden-Retriever": 0} and "id2label" in how
    with pytest.raises(VitshrinkError, match=r"1 of 2 class folders are not among id2label \('bird'"):
        map_folders(["dog", "bird"], 3, ["golden retriever", "cat", "Dog"], "id2label")
    with pytest.raises(VitshrinkError, match="3 class folders cannot be mapped to the model's 2 classes"):
        map_folders(["a", "b", "c"], 2)
    (tmp_path / "l.txt").write_text("cat\n\ndog\n")
    (tmp_path / "l.json").write_text(json.dumps({"1": "dog", "0": "cat"}))
    assert read_labels(tmp_path / "l.txt")[0] == read_labels(tmp_path / "l.json")[0] == ("cat", "dog")
    (tmp_path / "bad.json").write_text(json.dumps({"0": "cat", "2": "dog"}))
    with pytest.raises(VitshrinkError, match="without holes"):
        read_labels(tmp_path / "bad.json")


def test_labels_that_miss_a_folder_and_a_num_classes_that_misfits_exit_2(tmp_path):
    """Bad input: one line, exit 2, nothing written -- before any compiling."""
    from vitshrink.compat import ensure_timm_importable

    ensure_timm_importable()
    import timm

    model = timm.create_model("deit_tiny_patch16_224", num_classes=10)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "ten.safetensors"))
    data = _ten_folders(tmp_path / "imgs")
    (tmp_path / "labels.txt").write_text("\n".join(_names("class_{:02d}")[:9] + ["kitten"]))
    base = ["compile", "deit_tiny_patch16_224", "--checkpoint", str(tmp_path / "ten.safetensors"), "--spec",
            "compiler/examples/deit_tiny_example.json", "--img-size", "32", "--quiet"]
    for extra, why in ((["--data", str(data), "--labels", str(tmp_path / "labels.txt")],
                        "1 of 10 class folders are not among --labels"),
                       (["--num-classes", "5"], "--num-classes 5 does not fit the checkpoint: 'head.weight' has shape [10, 192]")):
        out = tmp_path / "o"
        res = CliRunner().invoke(main, [*base, *extra, "--out", str(out)])
        assert res.exit_code == 2, res.output
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and why in lines[0], res.output
        assert not out.exists()


def test_an_imported_hf_directory_keeps_its_eps_labels_and_processor(tmp_path):
    """`vitshrink import` of a transformers directory writes, beside dense.safetensors, what the weights do not carry
    (timm's label_names; the LayerNorm eps and the image processor), and a compile of that file reads it back: the
    model computes with eps 1e-12 as transformers does (timm's default is 1e-6), scores by id2label, preprocesses as
    the processor."""
    from test_hf_import import _save
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor
    from vitshrink.frontends.timm import data_config, label_names_of
    from vitshrink.importers import import_dense

    hf = ViTForImageClassification(ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
                                             intermediate_size=768, num_labels=3, id2label={0: "cat", 1: "dog", 2: "fox"}))
    _save(hf.eval(), tmp_path / "hf", "v4")
    ViTImageProcessor().to_json_file(str(tmp_path / "hf" / "preprocessor_config.json"))
    res = CliRunner().invoke(main, ["import", str(tmp_path / "hf"), "--model", "deit_tiny_patch16_224", "--out", str(tmp_path / "i")])
    assert res.exit_code == 0 and "config.json" in res.output, res.output
    model = import_dense("deit_tiny_patch16_224", str(tmp_path / "i" / "dense.safetensors"))[0]
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-12}
    assert label_names_of(model)[0] == ("cat", "dog", "fox") and data_config(model)["mean"] == (0.5, 0.5, 0.5)
