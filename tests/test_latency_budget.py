"""``vitshrink masks --latency-ms T --engine E --batch B``: the latency table (timed points, a non-negative
fit, the cache), unit costs in ns from it, the allocation under the budget, and the CLI end to end on a
small input (its table read from a cache the test wrote)."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from test_posttrain import _image_dir
from vitshrink import families
from vitshrink.cli import main
from vitshrink.masks import latency
from vitshrink.masks.budget import allocate, unit_costs
from vitshrink.spec.format import Spec


def latency_floor(ir, costs):
    from vitshrink.masks.budget import smallest

    return smallest(ir, costs)


def test_int8_and_torch_engines_are_refused_by_name():
    for name, words in (("ort-int8", "ort-qdq artifact"), ("torch", "module artifact"), ("nope", "unknown engine")):
        with pytest.raises(Exception, match=words):
            latency.check_engine(name)


@pytest.mark.parametrize("args, words", [
    (["--latency-ms", "5"], "--latency-ms needs calibration images"),
    (["--latency-ms", "5", "--macs", "0.5", "--data", "IMAGES"], "without --macs"),
    (["--latency-ms", "5", "--data", "IMAGES", "--engine", "openvino-int8"], "times ONNX exports"),
    (["--latency-ms", "-1", "--data", "IMAGES"], "give positive values"),
])
def test_bad_latency_input_is_one_line(tmp_path, args, words):
    imgs = _image_dir(tmp_path / "imgs", 4)
    args = [str(imgs) if a == "IMAGES" else a for a in args]
    out = tmp_path / "spec.json"
    res = CliRunner().invoke(main, ["masks", "deit_tiny_patch16_224", *args, "--calib-images", "4", "--quiet", "--out", str(out)])
    assert res.exit_code == 2 and words in res.output and "Traceback" not in res.output, res.output
    assert not out.exists()


def test_latency_table(tmp_path, monkeypatch):
    """The table on a small 4-block ViT (its exports are the cost): timed points, a non-negative fit, unit costs in
    ns from it, the allocation under its budget; the cache read back for the same key, not for another."""
    from conftest import small_vit
    from vitshrink.frontends.timm import from_timm

    ir = from_timm(small_vit(), "small_vit")
    fam, shape = families.family_of(ir), (3, 32, 32)
    cache = tmp_path / "lat.latency.json"
    macs = unit_costs(fam, ir, shape)
    table = latency.measure_table(fam, ir, shape, Spec(), macs, "ort", 1, 2, 0.5, cache)
    assert not table["cached"] and [(p["heads"], p["mlp"]) for p in table["points"]] == list(latency.POINTS)
    dense = table["points"][0]
    assert dense["head_macs"] + dense["neuron_macs"] < macs.total and all(p["ms"] > 0 for p in table["points"])
    assert table["points"][-1]["head_macs"] < dense["head_macs"] and table["points"][-1]["neuron_macs"] < dense["neuron_macs"]
    fit = table["fit"]
    assert fit["t0_ms"] >= 0 and fit["ms_per_head_mac"] >= 0 and fit["ms_per_neuron_mac"] >= 0
    costs = latency.costs_from_table(table, macs)  # ns per unit, proportional to each unit's MACs
    s = ir.blocks[0].source_index
    assert costs.unit == "ns" and costs.total == round(dense["ms"] * 1e6)
    assert costs.head[s] == pytest.approx(fit["ms_per_head_mac"] * 1e6 * macs.head[s])
    g = torch.Generator().manual_seed(0)
    hs = {b.source_index: torch.rand(b.attn.num_heads, generator=g) for b in ir.blocks}
    ms = {b.source_index: torch.rand(b.mlp.hidden, generator=g) for b in ir.blocks}
    ratio = 0.5 * (1 + latency_floor(ir, costs))
    masks, summary = allocate(ir, hs, ms, costs, ratio, name=lambda i: f"blocks.{i}")
    assert summary["macs"] <= ratio * costs.total + 1 and len(masks) == 2 * len(ir.blocks)
    again = lambda *a, **k: pytest.fail("measured again instead of reading the cache")  # noqa: E731
    monkeypatch.setattr(latency, "time_models", again)
    monkeypatch.setattr(latency, "export_widths", again)  # the first step of a measurement: no export spent on the check
    assert latency.measure_table(fam, ir, shape, Spec(), macs, "ort", 1, 2, 0.5, cache)["cached"]
    with pytest.raises(BaseException, match="measured again"):  # another batch size is another key
        latency.measure_table(fam, ir, shape, Spec(), macs, "ort", 2, 2, 0.5, cache)


def test_cli_latency_budget(tmp_path):
    """The CLI on DeiT-Tiny at 64 px (17 tokens) reading its table from the cache: a table written here with a known
    fit (30% of the dense time fixed, the rest proportional to the MACs kept), so the allocation, the refusals and
    the result timed on the engine do not depend on how busy the machine was when a table was timed. The spec
    records target, prediction and the measured result; an unreachable target is refused before any scoring, one
    the dense model already meets too."""
    _, ir, _ = families.import_model("deit_tiny_patch16_224", img_size=(64, 64))
    fam, shape = families.family_of(ir), (3, 64, 64)
    out = tmp_path / "specs" / "lat.json"
    macs = unit_costs(fam, ir, shape)
    head, neuron = sum(macs.head[b.source_index] * b.attn.num_heads for b in ir.blocks), \
        sum(macs.neuron[b.source_index] * b.mlp.hidden for b in ir.blocks)
    dense_ms = 100.0  # far above what the engine measures: the first allocation meets its target
    per_mac = 0.7 * dense_ms / (head + neuron)
    out.parent.mkdir(parents=True)
    out.with_name("lat.latency.json").write_text(json.dumps({
        "format": latency.FORMAT, "key": latency._key(ir, shape, Spec(), "ort", 1, 2),
        "points": [{"heads": 1.0, "mlp": 1.0, "head_macs": head, "neuron_macs": neuron, "ms": dense_ms}],
        "fit": {"t0_ms": 0.3 * dense_ms, "ms_per_head_mac": per_mac, "ms_per_neuron_mac": per_mac, "max_residual_ms": 0.0},
        "dense_ms": dense_ms}))
    imgs = _image_dir(tmp_path / "imgs", 8)
    base = ["masks", "deit_tiny_patch16_224", "--img-size", "64", "--data", str(imgs), "--calib-images", "8", "--no-reconstruct",
            "--bench-seconds", "0.5", "--quiet", "--out", str(out)]
    res = CliRunner().invoke(main, [*base, "--latency-ms", "70"])
    assert res.exit_code == 0, res.output
    assert "table cached" in res.output
    meta = json.loads(out.read_text())["meta"]
    lb = meta["latency_budget"]
    assert lb["engine"] == "ort" and lb["batch"] == 1 and lb["table"] == "lat.latency.json" and lb["table_cached"]
    assert lb["predicted_ms"] <= lb["target_ms"] * (1 + 1e-6) and 0 < lb["measured_ms"] < 70 and len(lb["tries"]) == 1
    assert lb["predicted_ms"] >= 0.95 * 70  # the budget is used, not left on the table
    spec_heads = [k for k in json.loads(out.read_text())["masks"] if k.endswith(".heads")]
    assert len(spec_heads) == 12
    floor = 0.3 * dense_ms + per_mac * sum(macs.head[b.source_index] for b in ir.blocks)  # fixed + one head per block
    for t, words in ((0.9 * floor, f"below the {floor:.2f} ms"), (200, "nothing to prune")):
        res = CliRunner().invoke(main, [*base, "--latency-ms", str(t)])
        assert res.exit_code == 2 and words in res.output, res.output
