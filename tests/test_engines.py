"""Engines: OpenVINO and the native C++ runner (built here from a clean tree with cmake and g++) agree with
torch within 1e-4 in fp32; the runner refuses bad input with one line; `compile --engines all` writes
per-engine exactness and latency (GPU engines skipped with their reason), and an engine that computes
something else fails the compile with exit 1 naming it."""
from __future__ import annotations

import json
from pathlib import Path
import os
import subprocess

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import DEIT_TINY_CKPT, REPO, images, need, require_shared, small_vit
from vitshrink.cli import main
from vitshrink.runtime.engines import ENGINES, parse_engines, status

EXAMPLE = str(REPO / "compiler" / "examples" / "deit_tiny_example.json")
TOL = 1e-4


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory):
    """A pruned small ViT exported to ONNX, with torch's logits on 3 images."""
    from vitshrink.families import build_module
    from vitshrink.export import export_onnx
    from vitshrink.frontends.timm import from_timm
    from vitshrink.families import apply_spec
    from vitshrink.passes import pad_heads
    from vitshrink.spec import Spec
    from vitshrink.families import resolve_spec

    ir = from_timm(small_vit(seed=3), "small")
    masks = {"blocks.0.heads": torch.tensor([True, False, True, True]), "blocks.1.mlp": torch.arange(96) % 3 != 0}
    module = build_module(pad_heads(apply_spec(ir, resolve_spec(Spec(masks), ir))))
    path = export_onnx(module, tmp_path_factory.mktemp("onnx") / "small.onnx", (3, 32, 32))
    x = images(3, seed=4)
    with torch.no_grad():
        return path, x.numpy(), module(x).numpy()


@pytest.fixture(scope="module")
def runner_binary(tmp_path_factory):
    """vitshrink-run built from the checkout into an empty build directory (cmake + g++), then used by
    every native test and compile in this module."""
    need("openvino", "engines")
    from vitshrink.runtime.native_runner import build_runner

    path = build_runner(tmp_path_factory.mktemp("native-build"))
    assert path.is_file() and os.access(path, os.X_OK)
    old = os.environ.get("VITSHRINK_RUNNER")
    os.environ["VITSHRINK_RUNNER"] = str(path)
    yield path
    if old is None:
        os.environ.pop("VITSHRINK_RUNNER")
    else:
        os.environ["VITSHRINK_RUNNER"] = old


def test_engine_names():
    assert parse_engines("all") == tuple(ENGINES)
    assert parse_engines("onnxruntime, native") == ("ort", "native")
    with pytest.raises(ValueError, match="unknown engine 'tensor-rt'"):
        parse_engines("ort,tensor-rt")
    res = CliRunner().invoke(main, ["compile", "deit_tiny_patch16_224", "--spec", EXAMPLE, "--out", "x", "--engines", "gpu"])
    assert res.exit_code == 2 and "unknown engine 'gpu'" in res.stderr
    if not torch.cuda.is_available():
        assert status("torch-cuda") == "no CUDA device is visible on this machine"


def test_openvino_matches_torch(small_onnx):
    need("openvino", "engines")
    from vitshrink.runtime.openvino_runner import OpenVinoRunner

    path, x, want = small_onnx
    r = OpenVinoRunner(path, threads=2)
    assert r.precision == "f32"  # forced: the CPU plugin would pick bf16 on AVX512-BF16 CPUs
    for batch in (1, 3):
        assert float(np.abs(r.run(x[:batch]) - want[:batch]).max()) <= TOL


def test_native_runner_matches_torch_and_times(small_onnx, runner_binary):
    from vitshrink.runtime.native_runner import run_native

    path, x, want = small_onnx
    info, logits = run_native(runner_binary, [path, path], batch=3, threads=2, runs=5, images=x)
    assert float(np.abs(logits - want).max()) <= TOL
    assert info["precision"] == "f32" and info["batch"] == 3 and len(info["models"]) == 2
    assert all(len(m["ms"]) == 5 and m["p50"] > 0 and m["output_shape"] == [3, 10] for m in info["models"])
    assert abs(info["models"][0]["checksum"] - float(want.sum(dtype=np.float64))) < 1e-3
    assert all(m["calls_per_block"] == 1 for m in info["models"])
    # timed in blocks (the small model's warm call is far under 100 ms: the longest block), same logits
    info, logits = run_native(runner_binary, [path, path], batch=3, threads=2, runs=4, images=x, block_ms=100)
    assert float(np.abs(logits - want).max()) <= TOL
    assert all(m["calls_per_block"] == 9 and len(m["ms"]) == 4 and m["p50"] > 0 for m in info["models"])
    # the binary's block rule is Python's block_calls: checked on its own warm-up time, with a block a few
    # warm calls long (between one call and the cap of 9, where the two rules could part)
    from vitshrink.runtime.latency import block_calls

    block = max(1, round(3 * max(m["warmup_fastest_ms"] for m in info["models"])))
    info, _ = run_native(runner_binary, [path, path], batch=3, threads=2, runs=2, block_ms=block)
    assert all(m["warmup_fastest_ms"] > 0 and m["calls_per_block"] == block_calls(m["warmup_fastest_ms"], block)
               for m in info["models"])


@pytest.mark.parametrize("case", ["missing", "corrupt", "wrong_input", "bad_flag"])
def test_native_runner_bad_input(tmp_path, small_onnx, runner_binary, case):
    path = small_onnx[0]
    args = {"missing": ["--model", str(tmp_path / "nope.onnx")],
            "corrupt": ["--model", str(tmp_path / "bad.onnx")],
            "wrong_input": ["--model", str(path), "--input", str(tmp_path / "x.f32")],
            "bad_flag": ["--model", str(path), "--runs", "many"]}[case]
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage, not a protobuf")
    np.zeros(10, dtype=np.float32).tofile(tmp_path / "x.f32")
    proc = subprocess.run([str(runner_binary), *args], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert {"missing": "no such file", "corrupt": "not a readable ONNX model", "wrong_input": "40 bytes",
            "bad_flag": "--runs"}[case] in lines[0]


def test_compile_engines_all(tmp_path, runner_binary):
    """The built-in default spec plus ToMe token merging in two blocks, with every engine, on the real DeiT-Tiny
    weights (attention far from uniform, live biases: what fp32 engines must match within 1e-4) at 64 px (17 tokens:
    the suite's time budget): per-engine verification (fp32 engines: the same merges' logits within 1e-4; INT8 and
    16-bit by tolerance) and latency in report.json/.md; the ONNX file holds no op TensorRT's parser lacks."""
    require_shared()
    import onnx

    from test_merge import TENSORRT_OPS

    spec = json.loads(Path(EXAMPLE).read_text())
    spec["settings"]["token_merge"] = {"0": 3, "6": {"r": 2, "prop_attn": True}}  # 17 -> 14 -> 12 tokens
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "o"
    res = CliRunner().invoke(main, ["compile", "deit_tiny_patch16_224", "--spec", str(tmp_path / "spec.json"), "--out", str(out),
                                    "--checkpoint", str(DEIT_TINY_CKPT), "--img-size", "64",
                                    "--bench-seconds", "0.3", "--engines", "all", "--quiet"])
    assert res.exit_code == 0, res.output
    r = json.loads((out / "report.json").read_text())
    ran = {n for n, e in r["engines"].items() if e["status"] == "ok"}
    assert {"ort", "openvino", "native", "torch", "ort-int8", "openvino-int8", "native-int8"} <= ran
    for n in ran:
        e = r["engines"][n]
        if e["precision"] == "fp32":
            assert e["max_abs_diff"] <= TOL and e["dense_max_abs_diff"] <= TOL and e["top1_agreement"] == 1.0, (n, e)
        elif e["precision"] == "int8":  # calibrated on the verification inputs (no images given), checked on them
            assert e["metric"] == "rel_l2" and e["rel_l2"] <= e["tolerance"] and e["passed"], (n, e)
        else:  # bf16 / fp16, where the CPU has them (OpenVINO on AVX512_BF16 / AMX): max abs diff within its tolerance
            assert e["metric"] == "max_abs" and e["max_abs_diff"] <= e["tolerance"] and e["passed"], (n, e)
    skipped = {n: e["reason"] for n, e in r["engines"].items() if e["status"] == "skipped"}
    assert all(reason for reason in skipped.values())
    if not torch.cuda.is_available():
        assert {"torch-cuda", "torch-cuda-fp16", "torch-cuda-graph", "ort-cuda", "ort-cuda-fp16", "tensorrt",
                "tensorrt-int8"} <= set(skipped)
    assert sorted((e["engine"], e["batch"], e["threads"]) for e in r["latency"]) == sorted((n, 1, 2) for n in ran)
    for e in r["latency"]:
        for k in ("runtime", "device", "speedup", "ideal_speedup", "realization", "speedup_vs_original", "realization_vs_original"):
            assert k in e, (k, e["engine"])
        assert all(e[m][k] > 0 for m in ("dense_ms", "pruned_ms", "baseline_ms") for k in ("p50", "p90"))
        assert e["realization"] == pytest.approx(e["speedup"] / e["ideal_speedup"])
        assert e["ideal_speedup"] == pytest.approx(r["macs"]["dense"] / r["macs"]["pruned"])
    low = [e for e in r["latency"] if e["precision"] == "int8"]
    assert low and all(e["baseline_ms"]["p50"] > 0 and e["original_fp32_ms"]["p50"] > 0 for e in low)
    assert r["calibration"]["source"].startswith("verification inputs")
    from vitshrink.runtime.quantize import openvino_activations

    assert r["precision"]["ov-int8"]["activations"] == openvino_activations()  # the three models' NNCF mode
    assert (out / "model.int8.xml").is_file() and (out / "model.int8.bin").is_file() and (out / "model.int8.onnx").is_file()
    md = (out / "report.md").read_text()
    assert "## Engines" in md and "| native | vitshrink-run |" in md and "| openvino-int8 | int8 | cpu |" in md
    if not torch.cuda.is_available():
        assert "skipped: no CUDA" in md
    assert "engine openvino:" in res.stdout and "native cpu batch 1" in res.stdout
    assert "timm's original fp32" in res.stdout  # the int8 entries' second line
    # the merges: verified identical, counted, reported per block, exported without Scatter
    assert r["exactness"]["token_ids_identical"] is True
    rows = {b["block"]: b for b in r["structure"]["blocks"]}
    assert rows[0]["token_rule"] == {"merge": 3, "score": "tome", "where": "mlp", "prop_attn": True}
    assert [rows[i]["tokens"]["mlp"][1] for i in (0, 1, 6, 7)] == [14, 14, 12, 12]
    assert "ToMe: merge 3" in md
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert ops <= TENSORRT_OPS and "ScatterElements" not in ops, sorted(ops - TENSORRT_OPS)


def test_an_engine_that_computes_something_else_fails_the_compile(tmp_path, monkeypatch):
    need("openvino", "engines")
    from vitshrink.runtime.openvino_runner import OpenVinoRunner

    real = OpenVinoRunner.run
    monkeypatch.setattr(OpenVinoRunner, "run", lambda self, x: real(self, x) + np.float32(1e-3))
    res = CliRunner().invoke(main, ["compile", "deit_tiny_patch16_224", "--spec", EXAMPLE, "--out", str(tmp_path / "o"),
                                    "--img-size", "64", "--bench-seconds", "0", "--engines", "ort,openvino", "--quiet"])
    assert res.exit_code == 1 and "engine openvino failed verification" in res.stderr
    assert not (tmp_path / "o").exists()


def test_top_level_cmake_configures_as_the_readme_says(tmp_path):
    """`cmake -S . -B build -DOpenVINO_DIR=...` on the repository's CMakeLists.txt (configure only: the
    build of the same target is done by the runner_binary fixture)."""
    need("openvino", "engines")
    from vitshrink.runtime.native_runner import openvino_cmake_dir

    proc = subprocess.run(["cmake", "-S", str(REPO), "-B", str(tmp_path / "build"), f"-DOpenVINO_DIR={openvino_cmake_dir()}"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "vitshrink-run" in (tmp_path / "build" / "runtime" / "native" / "Makefile").read_text()


def test_polygraphy_comparator_decides_engine_verification():
    """Engines are compared with torch by polygraphy's Comparator (our runners in its BaseRunner shape):
    its verdict and max abs diff match a direct numpy check, at the tolerance and just past it."""
    import numpy as np

    from vitshrink.runtime.base import Runner
    from vitshrink.runtime.compare import compare_with_torch

    rng = np.random.default_rng(0)
    images = rng.standard_normal((3, 3, 8, 8), dtype=np.float32)
    want = rng.standard_normal((3, 10), dtype=np.float32)

    class Fixed(Runner):
        def __init__(self, out):
            self.out = out

        def run(self, x):
            assert x.shape == images.shape
            return self.out

    for delta, passes in ((0.5e-4, True), (2e-4, False)):
        got = want.copy()
        got[1, 3] += delta
        r = compare_with_torch(lambda: Fixed(got), images, want, 1e-4, "fixed")
        assert r["passed"] is passes and abs(r["max_abs_diff"] - float(np.abs(got - want).max())) < 1e-9
        assert r["top1_agreement"] == 1.0 and np.array_equal(r["logits"], got)
    swapped = want.copy()
    swapped[0] = -swapped[0]
    assert compare_with_torch(lambda: Fixed(swapped), images, want, 1e-4, "fixed")["top1_agreement"] < 1.0
