"""The main job on real input: DeiT-Tiny ImageNet weights and 1000 real images from ../shared/data."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DEIT_TINY_CKPT, IMAGENET_VAL, REPO, require_shared
from vitshrink.errors import VerificationError
from vitshrink.pipeline import compile_model, CompileOptions

BIN = Path(sys.executable).with_name("vitshrink")


@pytest.mark.slow
def test_real_deit_tiny_heads_and_mlp(tmp_path):
    """The README's main job: data-aware masks and re-fitted weights from 256 calibration images, compiled
    exactly, top-1 on the 744 others (the L1 masks of the same structure keep 0.018)."""
    require_shared()
    spec = tmp_path / "spec.json"
    proc = subprocess.run([BIN, "masks", "deit_tiny_patch16_224", "--checkpoint", DEIT_TINY_CKPT, "--data", IMAGENET_VAL,
                           "--heads", "0.67", "--mlp", "0.5", "--out", spec, "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads(spec.read_text())["meta"]
    assert meta["calibration"]["n"] == 256 and meta["criterion"] == "obs" and meta["reconstructed"]
    weights = tmp_path / "spec.weights.safetensors"
    out = tmp_path / "tiny"
    proc = subprocess.run([BIN, "compile", "deit_tiny_patch16_224", "--checkpoint", weights, "--spec", spec,
                           "--out", out, "--data", IMAGENET_VAL, "--batch", "1", "--bench-seconds", "3", "--quiet"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    r = json.loads((out / "report.json").read_text())
    assert r["exactness"]["max_abs_diff"] <= 1e-4 and r["export"]["onnx_max_abs_diff"] <= 1e-4
    a = r["accuracy"]
    assert a["n"] == 744 and a["images"]["excluded"] == 256  # the calibration images are not measured
    for k in ("dense_top1", "pruned_top1", "top1_agreement"):  # counts over 744 images
        assert abs(a[k] * 744 - round(a[k] * 744)) < 1e-6, (k, a[k])
    # a third of the heads and half the MLP gone, no fine-tuning: 0.499 here (dense 0.784 on these images)
    assert a["pruned_top1"] >= 0.45, a["pruned_top1"]
    # the compile's "dense" is the dense layout of the re-fitted weights: the masked dense model itself
    assert a["top1_agreement"] == 1.0 and a["dense_top1"] == a["pruned_top1"]
    assert r["macs"]["dense"] == 1_253_683_200
    assert all(b["heads"] == [3, 2] and b["mlp"] == [768, 384] for b in r["structure"]["blocks"])
    assert r["inputs"]["checkpoint"]["sha256"]
    print(f"\npruned top-1 {a['pruned_top1']:.4f}, realization {[round(e['realization'], 3) for e in r['latency']]}")


def test_exactness_failure_leaves_nothing(tmp_path, monkeypatch):
    """A pass that is not exact must stop the job before anything is written."""
    import vitshrink.reference.vit as reference

    real = reference.reference_forward

    def off_by_1e3(*a, **k):
        out = real(*a, **k)
        return (out[0] + 1e-3, out[1]) if isinstance(out, tuple) else out + 1e-3

    monkeypatch.setattr(reference, "reference_forward", off_by_1e3)
    spec = REPO / "compiler" / "examples" / "deit_tiny_example.json"
    with pytest.raises(VerificationError, match="exactness failed"):
        compile_model("deit_tiny_patch16_224", spec, tmp_path / "o", CompileOptions(progress=False, bench_seconds=0))
    assert list(tmp_path.iterdir()) == []


def _masks_and_compile(tmp_path, masks_args, name):
    require_shared()
    spec = tmp_path / f"{name}.json"
    subprocess.run([BIN, "masks", "deit_tiny_patch16_224", "--checkpoint", DEIT_TINY_CKPT, *masks_args, "--out", spec],
                   check=True, capture_output=True)
    out = tmp_path / name
    proc = subprocess.run([BIN, "compile", "deit_tiny_patch16_224", "--checkpoint", DEIT_TINY_CKPT, "--spec", spec,
                           "--out", out, "--data", IMAGENET_VAL, "--batch", "1", "--bench-seconds", "1", "--limit", "400", "--quiet"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    r = json.loads((out / "report.json").read_text())
    assert r["exactness"]["max_abs_diff"] <= 1e-4 and r["export"]["onnx_max_abs_diff"] <= 1e-4
    acc = r["accuracy"]  # top-1 on the first 400 held-out images (--limit: the suite's time budget)
    assert acc["n"] == 400 and acc["dense_top1"] >= 0.74, acc  # the real weights loaded (0.789 on all 1000)
    assert r["latency"][0]["speedup"] > 0 and "tokens per block" not in proc.stderr
    return json.loads(spec.read_text()), r


@pytest.mark.slow
def test_real_deit_tiny_patch_slimming_schedule(tmp_path):
    """(i) a Patch-Slimming nested schedule computed top-down on 100 of the sample images."""
    spec, r = _masks_and_compile(tmp_path, ["--tokens", "slim:0.85@3-11", "--calib", IMAGENET_VAL, "--calib-n", "100"], "slim")
    assert spec["settings"]["token_mode"] == "query" and spec["meta"]["calibration"]["n"] == 100
    assert r["accuracy"]["images"]["excluded"] == 100  # disjoint from the masks' images
    kept = [set(spec["masks"][f"blocks.{i}.tokens"]) for i in range(3, 12)]
    assert all(b <= a for a, b in zip(kept, kept[1:])) and all(0 in k for k in kept)  # nested, class token kept
    rows = r["structure"]["blocks"]
    assert [b["tokens"]["queries"][1] for b in rows] == [197] * 3 + [1 + len(k) - 1 for k in kept]
    assert all(b["tokens"]["keys"][1] == 197 for b in rows)  # query mode: keys/values from all tokens
    print(f"\nslim: MACs x{r['macs']['dense'] / r['macs']['pruned']:.2f}, top-1 {r['accuracy']['pruned_top1']:.3f}")


@pytest.mark.slow
def test_real_deit_tiny_evit(tmp_path):
    """(ii) EViT-style keep 0.7 at blocks 4, 7, 10."""
    spec, r = _masks_and_compile(tmp_path, ["--tokens", "evit:0.7@4,7,10"], "evit")
    assert set(spec["settings"]["dynamic_tokens"]) == {"4", "7", "10"}
    assert r["exactness"]["token_ids_identical"] is True
    assert [b["tokens"]["mlp"][1] for b in r["structure"]["blocks"]] == [197] * 4 + [139] * 3 + [98] * 3 + [69] * 2
    # EViT without fine-tuning is known to cost little accuracy; a guard against a broken selection
    assert r["accuracy"]["pruned_top1"] > 0.6 and r["accuracy"]["top1_agreement"] > 0.7
    print(f"\nevit: MACs x{r['macs']['dense'] / r['macs']['pruned']:.2f}, top-1 {r['accuracy']['pruned_top1']:.3f}")
