"""Compile stage: choose the head layout (``--layout auto``) by measuring both on the target engine.

Irregular per-head widths (VTC-LFC's q/k and v channels) run either padded to one width per block
(:func:`vitshrink.passes.layout.pad_heads`) or grouped by equal width (:func:`vitshrink.passes.layout.group_heads`).
Both are exact; which is faster depends on the engine and the batch size -- measured in
``benchmarks/layout.py`` on deit_small (realization pad / group): ONNX Runtime 0.79 / 0.84 at batch 1 and
0.83 / 0.91 at batch 8, OpenVINO 0.82 / 0.77 and 0.81 / 0.93, torch 0.83 / 0.98 and 0.80 / 0.98. So
``auto`` exports both and times them interleaved on the first requested engine (``--engines``, in the
order of :data:`vitshrink.runtime.engines.ENGINES`: ``ort`` when requested, else ``openvino``, ...) at
every requested batch size, and keeps the one with the smaller geometric mean of
latency ratios. Regular heads: both layouts are the same graph, nothing is timed.
"""
from __future__ import annotations

import math
from pathlib import Path

from ..codegen.checkpoint import save
from ..export import export_onnx
from ..families import family_of
from ..runtime import engines

#: the layout used when ``auto`` cannot time (``--bench-seconds 0``, or the target engine cannot run
#: here): the faster one on ONNX Runtime at batch 1 and 8 and on every engine at batch 8 (benchmarks/layout.py)
UNTIMED_DEFAULT = "group"
SECONDS = 3.0  # timing budget per batch size for the choice (at most --bench-seconds)


def irregular(ir) -> bool:
    """Whether some block's heads differ in q/k or v width (then the layouts differ)."""
    return any(len(set(b.attn.qk_dims)) > 1 or len(set(b.attn.v_dims)) > 1 for b in ir.blocks if b.attn.num_heads)


def choose_layout(pruned_ir, opt, shape: tuple[int, int, int], work: Path, log) -> tuple[str, dict]:
    """The layout to compile (``pad`` or ``group``) and the report's ``layout`` section.

    Args:
        pruned_ir: the IR after the structural passes (before any layout pass).
        opt: the :class:`~vitshrink.pipeline.options.CompileOptions` (``layout``, ``engines``, ``batch``,
            ``threads``, ``bench_seconds``).
        shape: input [C, H, W]; work: scratch directory for the two candidate exports.
    Returns:
        (layout, info): ``info`` has ``policy``, ``chosen``, ``reason`` and, when timed, ``measured``:
        ``{"engine", "threads", "batches": {b: {"pad_ms", "group_ms"}}}`` (p50 ms per batch).
    """
    if opt.layout != "auto":
        return opt.layout, {"policy": opt.layout, "chosen": opt.layout, "reason": "--layout " + opt.layout}
    if not irregular(pruned_ir):
        return "pad", {"policy": "auto", "chosen": "pad", "reason": "regular heads: both layouts are the same graph"}
    family = family_of(pruned_ir)
    engine = opt.engines[0]
    why_not = "--bench-seconds 0" if opt.bench_seconds <= 0 else engines.status(engine)
    if why_not:
        return UNTIMED_DEFAULT, {"policy": "auto", "chosen": UNTIMED_DEFAULT,
                                 "reason": f"not timed ({why_not}): {UNTIMED_DEFAULT}, the faster form in benchmarks/layout.py"}
    arts = {}
    with log.stage("layout", f"time padded vs grouped heads on {engine}"):
        for name in ("pad", "group"):
            module = family.codegen.build_module(family.passes.lay_out(pruned_ir, name, "gather"), share=True)
            if engines.ENGINES[engine].artifact == "module":
                arts[name] = save(module, work / f"layout-{name}")
            else:
                arts[name] = export_onnx(module, work / f"layout-{name}.onnx", shape)
            del module
        res = engines.measure(engine, arts, list(opt.batch), max(opt.threads), shape, min(SECONDS, opt.bench_seconds))
    batches = {b: {"pad_ms": r.stats("pad")["p50"], "group_ms": r.stats("group")["p50"]} for b, r in res.items()}
    log_ratio = sum(math.log(m["pad_ms"] / m["group_ms"]) for m in batches.values()) / len(batches)
    chosen = "group" if log_ratio > 0 else "pad"
    ratio = math.exp(abs(log_ratio))
    return chosen, {"policy": "auto", "chosen": chosen,
                    "reason": f"timed on {engine}: {chosen} x{ratio:.3f} faster (geometric mean over batch sizes)",
                    "measured": {"engine": engine, "threads": max(opt.threads), "batches": batches}}
