"""Low precision: calibration images disjoint from the accuracy images and recorded; the engines' own
quantizers (NNCF, ONNX Runtime QDQ, fp16 conversion) checked against fp32 torch on a small model; a
quantizer failure is one error with nothing left behind; bad calibration input is named (exit 2). The INT8
compile on the real DeiT-Tiny weights (timed against the INT8 original, accuracy per engine on held-out
images, gated per engine) is the README's runnable block, gated by `vitshrink check`; the int8 latency
entries' fields are checked by test_engines.test_compile_engines_all."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import REPO, images, need, small_vit
from vitshrink.cli import main
from vitshrink.errors import VerificationError, VitshrinkError
from vitshrink.pipeline.calibration import find_images, plan, record

EXAMPLE = str(REPO / "compiler" / "examples" / "deit_tiny_example.json")


def _folder(root, classes=3, per=4, nested=True):
    """An image folder: ``classes`` class folders of ``per`` small JPEGs (or all flat)."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        d = root / f"c{c}" if nested else root
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(d / f"c{c}_{i}.jpg")
    return root


def test_calibration_and_accuracy_images_are_disjoint_and_recorded(tmp_path):
    data = _folder(tmp_path / "data")
    sets = plan(None, 4, str(data), 3, {}, needed=True)
    calib = {p.resolve() for p in sets.calib_paths}
    held = {p.resolve() for p, _ in sets.accuracy_items}
    assert len(calib) == 4 and len(held) == 8 and not calib & held  # disjoint, all 12 used
    assert sets.calibration["source"].startswith("--data") and len(sets.calibration["sha256"]) == 64
    assert sets.accuracy_images["excluded"] == 4 and "not used for calibration" in sets.accuracy_images["what"]
    assert plan(None, 4, str(data), 3, {}, needed=True).calib_paths == sets.calib_paths  # seeded: the same choice
    # the images a spec's masks were chosen on are left out of accuracy even when nothing calibrates here
    meta = {"calibration": record(sets.calib_paths[:3], data, "vitshrink masks --data")}
    only = plan(None, 4, str(data), 3, meta, needed=False)
    assert only.calib_paths is None and only.accuracy_images["excluded"] == 3 and len(only.accuracy_items) == 9
    # ... and calibrate the INT8 engines when they need images
    assert plan(None, 4, str(data), 3, meta, needed=True).calib_paths == [p for p in sets.calib_paths[:3]]
    # --calib: a flat folder, labels unused; its files are left out of --data when they are the same files
    flat = _folder(tmp_path / "flat", classes=2, per=3, nested=False)
    assert len(plan(str(flat), 100, str(data), 3, {}, needed=True).calib_paths) == 6
    same = plan(str(data), 5, str(data), 3, {}, needed=True)
    assert same.accuracy_images["excluded"] == 5 and len(same.accuracy_items) == 7
    # no images at all: the verification inputs, with a warning
    none = plan(None, 4, None, 3, {}, needed=True)
    assert none.calib_paths is None and none.warning and none.calibration["source"].startswith("verification")


def test_bad_calibration_input_is_named(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    for args, words in ((("--calib", str(tmp_path / "empty")), ("--calib", "no images found")),
                        (("--calib", str(tmp_path / "nope")), ("--calib", "no such directory")),
                        (("--calib-images", "0"), ("--calib-images", "positive"))):
        out = tmp_path / "o"
        res = CliRunner().invoke(main, ["compile", "deit_tiny_patch16_224", "--spec", EXAMPLE, "--out", str(out),
                                        "--engines", "ort-int8", "--quiet", *args])
        assert res.exit_code == 2, res.output
        line = res.output.strip().splitlines()[-1]
        assert line.startswith("error:") and all(w in line for w in words) and not out.exists(), res.output
    data = _folder(tmp_path / "d", classes=1, per=2)
    with pytest.raises(VitshrinkError, match="every image was used for calibration"):
        plan(str(data), 5, str(data), 1, {}, needed=True)
    with pytest.raises(VitshrinkError, match="--calib"):
        find_images(tmp_path / "empty")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small ViT exported to ONNX, 8 calibration-like images and torch's logits on them."""
    from vitshrink.export import export_onnx

    model = small_vit(seed=5)
    x = images(8, seed=6)
    path = export_onnx(model, tmp_path_factory.mktemp("q") / "small.onnx", (3, 32, 32))
    with torch.no_grad():
        return path, x.numpy(), model(x).numpy()


def _rel_l2(got, want):
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def test_the_engines_own_quantizers_on_a_small_model(small, tmp_path):
    need("nncf", "engines")
    from vitshrink.runtime.compare import compare_with_torch
    from vitshrink.runtime.engines import make_runner, tolerance
    from vitshrink.runtime.quantize import quantize_openvino, quantize_ort, to_fp16

    path, x, want = small
    tol, metric = tolerance("int8", 1e-4)
    xml = quantize_openvino(path, tmp_path / "m.int8.xml", x)
    qdq = quantize_ort(path, tmp_path / "m.int8.onnx", x)
    assert xml.with_suffix(".bin").is_file()
    for engine, art in (("openvino-int8", xml), ("ort-int8", qdq)):
        r = compare_with_torch(lambda a=art, e=engine: make_runner(e, a, 2), x, want, tol, engine, metric)
        assert r["passed"] and 0 < r["rel_l2"] <= tol, (engine, r["rel_l2"])  # close, not exact: it is int8
        assert r["max_abs_diff"] > 1e-4
    from vitshrink.runtime.openvino_runner import default_hint
    from vitshrink.runtime.quantize import activation_products
    import openvino as ov

    ir = ov.Core().read_model(str(xml))
    fq_inputs = {op.get_friendly_name(): sum(i.get_source_output().get_node().get_type_name() == "FakeQuantize" for i in op.inputs())
                 for op in ir.get_ops() if op.get_type_name() == "MatMul"}
    attention = activation_products(ov.Core().read_model(str(path)))
    assert len(attention) == 4 * 2 and all(fq_inputs.get(n) == 0 for n in attention), (attention, fq_inputs)  # 4 blocks: q k^T, a v
    assert sum(v > 0 for v in fq_inputs.values()) >= 4 * 4  # qkv, proj, fc1, fc2 per block read int8

    # the unquantized layers at the CPU plugin's default (what an IR compiled without options runs)
    assert make_runner("openvino-int8", xml, 2).precision == f"i8+{default_hint()}"
    assert make_runner("openvino", path, 2).precision == "f32"
    import onnx

    g = onnx.load(str(qdq)).graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in g.node}  # the QDQ format
    made_by = {o: n.op_type for n in g.node for o in n.output}
    weights = {i.name for i in g.initializer}
    dq_of_weight = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in weights}
    kinds = {"weight layer": [], "activation x activation": []}
    for n in g.node:
        if n.op_type == "MatMul":
            kinds["weight layer" if any(i in dq_of_weight for i in n.input) else "activation x activation"].append(
                sum(made_by.get(i) == "DequantizeLinear" for i in n.input))
    # weight layers read int8 weights and int8 activations; q k^T and softmax x v stay fp32
    assert kinds["weight layer"] and set(kinds["weight layer"]) == {2}, kinds
    assert kinds["activation x activation"] and set(kinds["activation x activation"]) == {0}, kinds
    half = to_fp16(path, tmp_path / "m.fp16.onnx")
    from vitshrink.runtime.ort import OrtRunner

    got = OrtRunner(half).run(x)
    assert got.dtype == np.float32 and 0 < np.abs(got - want).max() <= 5e-2  # fp16 inside, fp32 at the edges
    # a broken artifact is caught: another model's int8 IR against these logits
    other = quantize_openvino(path, tmp_path / "o.int8.xml", x)
    r = compare_with_torch(lambda: make_runner("openvino-int8", other, 2), x, -want, tol, "broken", metric)
    assert not r["passed"] and r["rel_l2"] > 1


def _activation_ranges(xml) -> list[tuple[float, float]]:
    """(output_low, output_high) of every activation FakeQuantize of an OpenVINO IR (not a weight's)."""
    import openvino as ov

    out = []
    for op in ov.Core().read_model(str(xml)).get_ops():
        src = op.input(0).get_source_output().get_node() if op.get_type_name() == "FakeQuantize" else None
        if src is not None and src.get_type_name() != "Constant":
            lo, hi = (float(np.asarray(op.input(i).get_source_output().get_node().get_data()).ravel()[0]) for i in (3, 4))
            out.append((lo, hi))
    return out


def test_openvino_activations_symmetric_on_amx_asymmetric_elsewhere(small, tmp_path, monkeypatch):
    need("nncf", "engines")
    from vitshrink.runtime import quantize as q

    path, x, _ = small
    sym = _activation_ranges(q.quantize_openvino(path, tmp_path / "s.int8.xml", x, activations="symmetric"))
    asym = _activation_ranges(q.quantize_openvino(path, tmp_path / "a.int8.xml", x, activations="asymmetric"))
    assert len(sym) >= 4 * 4 and len(asym) == len(sym)  # qkv, proj, fc1, fc2 inputs per block

    def signed(lo, hi):  # no zero point: [-s, s * 127/128] (or unsigned [0, s])
        return lo == 0 or abs(hi / -lo - 127 / 128) < 1e-3
    assert all(signed(*r) for r in sym), sym
    assert not all(signed(*r) for r in asym), asym  # fc2 reads GELU's output: [-0.17, max] takes a zero point
    monkeypatch.setattr(q, "cpu_flags", lambda: {"avx512f", "avx512_vnni", "amx_int8", "amx_tile"})
    assert q.openvino_activations() == "symmetric"
    monkeypatch.setattr(q, "cpu_flags", lambda: {"avx512f", "avx512_vnni"})
    assert q.openvino_activations() == "asymmetric"
    with pytest.raises(ValueError, match="activations='signed'"):
        q.quantize_openvino(path, tmp_path / "x.int8.xml", x, activations="signed")
    assert not (tmp_path / "x.int8.xml").exists()


def test_a_quantizer_failure_is_one_error_and_leaves_nothing(small, tmp_path, monkeypatch):
    nncf = need("nncf", "engines")
    from vitshrink.runtime.quantize import quantize_openvino

    def boom(*a, **k):
        (tmp_path / "m.int8.xml").write_text("half")
        raise RuntimeError("statistics collection failed\nlong traceback")

    monkeypatch.setattr(nncf, "quantize", boom)
    with pytest.raises(VerificationError) as e:
        quantize_openvino(small[0], tmp_path / "m.int8.xml", small[1], what="original")
    assert str(e.value) == "NNCF (openvino-int8) could not quantize the original model: RuntimeError: statistics collection failed"
    assert not (tmp_path / "m.int8.xml").exists()


def test_int8_profile_classes_on_a_small_model(small, tmp_path):
    """benchmarks/int8_profile.py's classes on the small ViT's INT8 IR (depth 4): every LayerNorm (MVN) fixed,
    the blocks' FullyConnected layers width and the classifier fixed, attention found in every block, and
    the per-class counters of a short profile cover the executed work."""
    need("nncf", "engines")
    import openvino as ov
    import runpy

    from vitshrink.runtime.quantize import quantize_openvino

    prof = runpy.run_path(str(REPO / "benchmarks" / "int8_profile.py"))
    path, x, _ = small
    xml = quantize_openvino(path, tmp_path / "m.int8.xml", x)
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(xml)), "CPU", {"INFERENCE_NUM_THREADS": 2})
    cls = prof["classify"](compiled)
    ops = {op.get_friendly_name(): op for op in compiled.get_runtime_model().get_ordered_ops()}
    kind = lambda n: ops[n].get_rt_info()["layerType"].astype(str)  # noqa: E731
    mvn = [n for n in cls if kind(n) == "MVN"]
    fcs = [n for n in cls if kind(n).startswith("FullyConnected")]
    assert len(mvn) == 2 * 4 + 1 and {cls[n] for n in mvn} == {"LayerNorm (+ fused scale, quantize)"}
    assert [cls[n] for n in fcs[:-1]] == ["int8 layers of the blocks"] * (len(fcs) - 1) and len(fcs) - 1 >= 2 * 4
    assert cls[fcs[-1]] == "stem and classifier"  # the head reads the unpruned embedding
    assert sum(c == "attention" for c in cls.values()) >= 4
    got = prof["profile"]({"m": xml}, 2, 2, shape=(3, 32, 32), rounds=1, calls=3, skip=1)["m"]
    assert set(got) == set(prof["FIXED"] + prof["WIDTH"])
    assert got["int8 layers of the blocks"] > 0 and got["LayerNorm (+ fused scale, quantize)"] > 0 and got["attention"] > 0
