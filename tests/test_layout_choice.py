"""`--layout auto` (issue 7 item 5): the head layout is chosen by timing both forms on the target engine."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vitshrink.families import apply_spec
from vitshrink.pipeline import CompileOptions
from vitshrink.pipeline.progress import Log as _Log
from vitshrink.runtime.latency import LatencyResult
from vitshrink.spec import Spec
from vitshrink.families import resolve_spec
from vitshrink.pipeline.layout_choice import choose_layout, irregular, UNTIMED_DEFAULT

SHAPE = (3, 32, 32)


def _irregular(ir):
    qk = torch.ones(4, 12, dtype=torch.bool)
    qk[0, 5:] = False
    qk[3, 9:] = False
    return apply_spec(ir, resolve_spec(Spec({"blocks.1.qk": qk, "blocks.2.mlp": list(range(10))}), ir))


def test_regular_heads_need_no_choice(small_model, tmp_path):
    _, ir = small_model
    pruned = apply_spec(ir, resolve_spec(Spec({"blocks.1.heads": [0, 2]}), ir))
    assert not irregular(pruned)
    layout, info, _ = choose_layout(pruned, CompileOptions(bench_seconds=5), SHAPE, tmp_path, _Log(False))
    assert layout == "pad" and "measured" not in info and "same graph" in info["reason"]


def test_explicit_layout_and_untimed_default(small_model, tmp_path):
    _, ir = small_model
    pruned = _irregular(ir)
    assert irregular(pruned)
    assert choose_layout(pruned, CompileOptions(layout="pad"), SHAPE, tmp_path, _Log(False))[0] == "pad"
    layout, info, _ = choose_layout(pruned, CompileOptions(bench_seconds=0), SHAPE, tmp_path, _Log(False))
    assert layout == UNTIMED_DEFAULT and "not timed (--bench-seconds 0)" in info["reason"]


@pytest.mark.parametrize("faster", ["pad", "group"])
def test_the_faster_measured_form_is_chosen(small_model, tmp_path, monkeypatch, faster):
    """The decision follows the measurement (a stand-in timer makes one form 20% faster at batch 1 and
    5% slower at batch 8: the geometric mean decides), and both exports are what was timed."""
    import vitshrink.runtime.engines as engines

    _, ir = small_model
    seen = {}

    def fake_measure(name, arts, batches, threads, shape, budget):
        seen.update(name=name, arts={k: str(v) for k, v in arts.items()}, batches=batches)
        fast, slow = ("pad", "group") if faster == "pad" else ("group", "pad")
        return {1: LatencyResult(1, {fast: [8.0] * 5, slow: [10.0] * 5}),
                8: LatencyResult(8, {fast: [63.0] * 5, slow: [60.0] * 5})}

    monkeypatch.setattr(engines, "measure", fake_measure)
    import vitshrink.pipeline.layout_choice as lc  # the forms as files (their real export: test_real_timing_on_onnx_runtime)
    monkeypatch.setattr(lc, "export_onnx", lambda module, path, shape: Path(path).write_bytes(b"") or Path(path))
    opt = CompileOptions(bench_seconds=5, batch=(1, 8), engines="native,openvino")  # ENGINES order: openvino first
    layout, info, _ = choose_layout(_irregular(ir), opt, SHAPE, tmp_path, _Log(False))
    assert layout == faster and info["measured"]["engine"] == "openvino" == seen["name"]
    assert seen["batches"] == [1, 8] and all(p.endswith(".onnx") for p in seen["arts"].values())
    assert info["measured"]["batches"][1][f"{faster}_ms"] == 8.0


def test_known_winner_is_not_timed_again(small_model, tmp_path):
    """ONNX Runtime at batch 1..8: group won at every batch size of benchmarks/layout.py -- no export, no timing."""
    _, ir = small_model
    layout, info, art = choose_layout(_irregular(ir), CompileOptions(bench_seconds=5, batch=(1, 8)), SHAPE, tmp_path, _Log(False))
    assert layout == "group" and "not timed" in info["reason"] and "measured" not in info and art == {}
    assert list(tmp_path.iterdir()) == []


def test_real_timing_on_onnx_runtime(small_model, tmp_path):
    """Outside the batch sizes the benchmark measured, the candidates are timed."""
    _, ir = small_model
    layout, info, _ = choose_layout(_irregular(ir), CompileOptions(bench_seconds=0.3, batch=(9,)), SHAPE, tmp_path, _Log(False))
    m = info["measured"]["batches"][9]
    assert layout == ("pad" if m["pad_ms"] <= m["group_ms"] else "group") and m["pad_ms"] > 0 and m["group_ms"] > 0


def test_gpu_engines_also_time_the_fused_kernel_layout(small_model, tmp_path, monkeypatch):
    """On a CUDA engine (its status faked: no GPU here) the candidates are pad, group and fused buckets,
    each saved once; the measured fastest is chosen and its saved module is handed on for reuse."""
    import vitshrink.runtime.engines as engines

    _, ir = small_model
    seen = {}

    def fake_measure(name, arts, batches, threads, shape, budget):
        seen.update(name=name, arts=dict(arts))
        ms = {"pad": 10.0, "group": 9.0, "fused": 7.0}
        return {b: LatencyResult(b, {n: [ms[n] * b] * 5 for n in arts}) for b in batches}

    monkeypatch.setattr(engines, "measure", fake_measure)
    monkeypatch.setattr(engines, "status", lambda name: None)
    opt = CompileOptions(bench_seconds=5, batch=(1, 4), engines="torch-cuda-graph")
    layout, info, art = choose_layout(_irregular(ir), opt, SHAPE, tmp_path, _Log(False))
    assert set(seen["arts"]) == {"pad", "group", "fused"} and seen["name"] == "torch-cuda-graph"
    assert layout == "fused" and art == {"module": seen["arts"]["fused"]} and (art["module"] / "arch.json").is_file()
    assert "fused x1.286 faster than group" in info["reason"]
