"""The interleaved latency harness (structure only: no timing thresholds in unit tests)."""
from __future__ import annotations

import numpy as np
import pytest

from vitshrink.runtime.base import Runner
from vitshrink.runtime.latency import measure_interleaved


class Recorder(Runner):
    def __init__(self, name, log, ms):
        self.name, self.log, self.ms = name, log, ms

    def run(self, images):
        self.log.append(self.name)
        return images.sum(axis=(1, 2, 3))

    def time_once(self, images):
        self.run(images)
        return self.ms


def test_interleaved_rotating_order_and_stats():
    log = []
    runners = {"dense": Recorder("dense", log, 4.0), "pruned": Recorder("pruned", log, 2.0)}
    res = measure_interleaved(runners, batch=2, input_shape=(3, 8, 8), warmup=1, min_rounds=6, max_rounds=6, budget_s=0,
                              block_ms=0)
    timed = log[2:]  # after one warm-up round of both
    assert timed == ["dense", "pruned", "pruned", "dense"] * 3  # alternating first runner
    assert res.rounds == 6
    assert res.stats("dense")["p50"] == 4.0 and res.stats("pruned")["throughput"] == 2 * 1e3 / 2.0
    assert res.paired_ratio("dense", "pruned") == 2.0


class SwitchCost(Runner):
    """A runner whose first call after another runner's costs ``switch`` ms more (cold caches)."""

    def __init__(self, name, state, ms, switch=5.0):
        self.name, self.state, self.ms, self.switch, self.calls = name, state, ms, switch, 0

    def run(self, images):
        self.state["last"] = self.name

    def time_once(self, images):
        cold = self.state.get("last") != self.name
        self.run(images)
        self.calls += 1
        return self.ms + (self.switch if cold else 0.0)


def test_blocks_drop_the_switch_from_the_previous_model():
    """Timed in blocks, a round's latency is the warm one (the first call of a block is dropped); one call
    per round (``block_ms=0``) pays the switch whenever the other model ran just before (the rotation
    sometimes runs one model twice in a row)."""
    from vitshrink.runtime.latency import MAX_BLOCK_CALLS, block_calls

    state = {}
    runners = {"dense": SwitchCost("dense", state, 4.0), "pruned": SwitchCost("pruned", state, 2.0)}
    res = measure_interleaved(runners, batch=1, input_shape=(3, 4, 4), warmup=2, min_rounds=5, max_rounds=5, budget_s=0)
    assert res.calls_per_block == {"dense": MAX_BLOCK_CALLS, "pruned": MAX_BLOCK_CALLS}  # warm-up calls take microseconds
    assert runners["dense"].calls == 5 * MAX_BLOCK_CALLS
    assert np.allclose(res.ms["dense"], 4.0) and np.allclose(res.ms["pruned"], 2.0)
    res = measure_interleaved(runners, batch=1, input_shape=(3, 4, 4), warmup=2, min_rounds=5, max_rounds=5, budget_s=0,
                              block_ms=0)
    assert res.calls_per_block == {"dense": 1, "pruned": 1}
    assert np.median(res.ms["dense"]) == 9.0 and np.median(res.ms["pruned"]) == 7.0
    assert block_calls(150.0) == 1 and block_calls(50.0) == 3 and block_calls(10.0) == MAX_BLOCK_CALLS


def test_budget_stops_after_min_rounds():
    runners = {"a": Recorder("a", [], 1.0)}
    res = measure_interleaved(runners, batch=1, input_shape=(3, 4, 4), warmup=0, min_rounds=3, max_rounds=1000, budget_s=0)
    assert res.rounds == 3
    assert np.allclose(res.ms["a"], 1.0)


def test_measure_onnx_in_a_worker(tmp_path, small_model):
    """The worker process times real ONNX files and reports how its thread pool was set up."""
    from vitshrink.families import build_module
    from vitshrink.export import export_onnx
    from vitshrink.runtime.latency import measure_onnx

    _, ir = small_model
    path = export_onnx(build_module(ir), tmp_path / "m.onnx", (3, 32, 32))
    seen = []
    res = measure_onnx({"a": path, "b": path}, [1, 2], threads=1, input_shape=(3, 32, 32), budget_s=0, min_rounds=3,
                       progress=lambda b, d, p: seen.append((b, d)))
    assert sorted(res) == [1, 2] and res[2].rounds == 3 and res[1].thread_pool in ("global, spinning", "per-session, no spinning")
    assert all(len(v) == 3 and min(v) > 0 for v in res[2].ms.values()) and (2, 3) in seen


def test_a_busy_neighbour_is_flagged(small_model, tmp_path):
    """Issue 18 item 5: another process spinning on the other core while ONNX Runtime (1 thread) is timed
    is seen -- the entry says how many cores others took, is flagged contended and not stable -- and a
    realization above 1.02 against the same codegen is flagged as suspect."""
    import subprocess
    import sys

    from vitshrink.export import export_onnx
    from vitshrink.families import build_module
    from vitshrink.runtime.latency import latency_entry, measure_onnx

    _, ir = small_model
    path = export_onnx(build_module(ir), tmp_path / "m.onnx", (3, 32, 32))
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 120: pass"])
    try:
        res = measure_onnx({"dense": path, "pruned": path}, [1], 1, (3, 32, 32), budget_s=2)[1]
    finally:
        busy.kill()
        busy.wait()
    e = latency_entry(res, ideal_speedup=0.9, threads=1)
    assert e["load"]["other_cores"] > 0.5 and e["stability"]["contended"] and e["stability"]["verdict"] == "noisy"
    assert any("contended" in r for r in e["stability"]["reasons"])
    assert e["realization"] > 1.02 and "realization" in e["suspect"]  # the same model twice: x1.0 of an ideal x0.9


@pytest.mark.parametrize("engines", [["ort"], ["ort", "openvino", "native", "torch"]])
def test_latency_plot_keeps_title_and_legend_inside(tmp_path, monkeypatch, engines):
    """Issue 25 item 5: with one engine the title and legend ran past both edges of latency.png."""
    import matplotlib.pyplot as plt

    from vitshrink.report import plots

    def entry(eng, batch):
        ms = {"p50": 10.0 * batch}
        return {"engine": eng, "runtime": eng, "device": "cpu", "batch": batch, "threads": 2, "baseline_ms": ms,
                "dense_ms": ms, "pruned_ms": {"p50": 6.0 * batch}, "ideal_speedup": 1.72, "speedup_vs_original": 1.65,
                "realization_vs_original": 0.96, "speedup": 1.6, "realization": 0.93, "stability": {"verdict": "stable"}}
    report = {"model": "deit_tiny_patch16_224", "latency": [entry(e, b) for e in engines for b in (1, 8)]}
    figs = []
    monkeypatch.setattr(plots.plt, "close", lambda fig=None: figs.append(fig))
    plots.plot_latency(report, tmp_path / "latency.png")
    (fig,) = figs
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    for artist in [fig._suptitle, *fig.legends]:
        ext = artist.get_window_extent(renderer)
        assert ext.x0 >= box.x0 - 1 and ext.x1 <= box.x1 + 1 and ext.y1 <= box.y1 + 1, (artist, ext, box)
    plt.close(fig)
    assert (tmp_path / "latency.png").stat().st_size > 0
