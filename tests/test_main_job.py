"""The compile job on real input (DeiT-Tiny ImageNet weights and real images from ../shared/data), where the
README does not run it.

The README's runnable blocks are the one home of the main job on real weights -- `masks --data` + compile,
EViT + compile, the INT8 compile -- and gate their reports with `vitshrink check` (exactness, top-1 floors,
speed-up against the original at the same precision): a regression there fails `.ci/run`."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from conftest import DEIT_TINY_CKPT, IMAGENET_VAL, REPO, require_shared
from vitshrink.cli import main
from vitshrink.errors import VerificationError
from vitshrink.pipeline import compile_model, CompileOptions

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


def _masks_and_compile(tmp_path, masks_args, name, limit=60):
    require_shared()
    spec = tmp_path / f"{name}.json"
    res = CliRunner().invoke(main, ["masks", "deit_tiny_patch16_224", "--checkpoint", str(DEIT_TINY_CKPT), *map(str, masks_args),
                                    "--out", str(spec), "--quiet"])
    assert res.exit_code == 0, res.output
    out = tmp_path / name
    proc = CliRunner().invoke(main, ["compile", "deit_tiny_patch16_224", "--checkpoint", str(DEIT_TINY_CKPT), "--spec", str(spec),
                                     "--out", str(out), "--data", str(IMAGENET_VAL), "--bench-seconds", "0", "--limit", str(limit),
                                     "--quiet"])
    assert proc.exit_code == 0, proc.output
    r = json.loads((out / "report.json").read_text())
    assert r["exactness"]["max_abs_diff"] <= 1e-4 and r["export"]["onnx_max_abs_diff"] <= 1e-4
    acc = r["accuracy"]  # top-1 on the first held-out images (--limit: the suite's time budget; always the same ones)
    assert acc["n"] == limit and acc["dense_top1"] >= 0.65, acc  # the real weights loaded (0.717 on these 60, 0.789 on all 1000)
    assert "tokens per block" not in proc.output
    return json.loads(spec.read_text()), r


def test_real_deit_tiny_patch_slimming_schedule(tmp_path):
    """A Patch-Slimming nested schedule computed top-down on 32 of the sample images (the README does not run it)."""
    spec, r = _masks_and_compile(tmp_path, ["--tokens", "slim:0.85@3-11", "--calib", IMAGENET_VAL, "--calib-n", "32"], "slim")
    assert spec["settings"]["token_mode"] == "query" and spec["meta"]["calibration"]["n"] == 32
    assert r["accuracy"]["images"]["excluded"] == 32  # disjoint from the masks' images
    kept = [set(spec["masks"][f"blocks.{i}.tokens"]) for i in range(3, 12)]
    assert all(b <= a for a, b in zip(kept, kept[1:])) and all(0 in k for k in kept)  # nested, class token kept
    rows = r["structure"]["blocks"]
    assert [b["tokens"]["queries"][1] for b in rows] == [197] * 3 + [1 + len(k) - 1 for k in kept]
    assert all(b["tokens"]["keys"][1] == 197 for b in rows)  # query mode: keys/values from all tokens
    print(f"\nslim: MACs x{r['macs']['dense'] / r['macs']['pruned']:.2f}, top-1 {r['accuracy']['pruned_top1']:.3f}")
