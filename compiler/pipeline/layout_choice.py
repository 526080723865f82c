"""Compile stage: choose the head layout (``--layout auto``) by measuring the candidates on the target engine.

Irregular per-head widths (VTC-LFC's q/k and v channels) run padded to one width per block
(:func:`vitshrink.passes.layout.pad_heads`), grouped by equal width (:func:`~vitshrink.passes.layout.group_heads`)
or, for GPU engines, padded to the widths fused attention kernels take (q/k = v, multiples of 8) in
at most two groups per block (:func:`~vitshrink.passes.layout.bucket_heads`). All are exact; which is
faster depends on the engine and the batch size -- measured in ``benchmarks/layout.py`` on deit_small
(realization pad / group): ONNX Runtime 0.79 / 0.84 at batch 1 and 0.83 / 0.91 at batch 8, OpenVINO
0.82 / 0.77 and 0.81 / 0.93, torch 0.83 / 0.98 and 0.80 / 0.98. So ``auto`` builds the candidates of
the first requested engine (``--engines``, in the order of :data:`vitshrink.runtime.engines.ENGINES`),
drops those that are the same graph as another (regular heads: all of them), takes the known winner on
engines where one layout won at every batch size measured (:data:`KNOWN`), and otherwise -- when more
than one is left -- exports each once and times them interleaved at every requested batch size, keeping the one
with the smaller geometric mean of latency ratios. The chosen candidate's export is handed on, so the
compile does not export it again.
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
#: engines on which one layout won at every batch size measured (``benchmarks/layout.py`` on deit_small,
#: batch 1 and 8: ONNX Runtime group by 7% and 10%, torch group by 16% and 21%), and that range of batch
#: sizes: there the choice is known and not timed again (openvino and native split: pad at 1, group at 8)
KNOWN = {"ort": ("group", 1, 8), "torch": ("group", 1, 8)}


def candidates(engine: str) -> tuple[str, ...]:
    """The head layouts worth timing on ``engine``: ``fused`` buckets only where fused kernels run (CUDA)."""
    return ("pad", "group", "fused") if engines.ENGINES[engine].device == "cuda" else ("pad", "group")


def _widths(ir) -> tuple:
    """What makes two layouts the same graph: every block's head widths, in order."""
    return tuple((b.attn.qk_dims, b.attn.v_dims) for b in ir.blocks)


def irregular(ir) -> bool:
    """Whether some block's heads differ in q/k or v width (then padding and grouping differ)."""
    return any(len(set(b.attn.qk_dims)) > 1 or len(set(b.attn.v_dims)) > 1 for b in ir.blocks if b.attn.num_heads)


def choose_layout(pruned_ir, opt, shape: tuple[int, int, int], work: Path, log) -> tuple[str, dict, dict]:
    """The layout to compile and the report's ``layout`` section.

    Args:
        pruned_ir: the IR after the structural passes (before any layout pass).
        opt: the :class:`~vitshrink.pipeline.options.CompileOptions` (``layout``, ``token_layout``,
            ``engines``, ``batch``, ``threads``, ``bench_seconds``).
        shape: input [C, H, W]; work: scratch directory for the candidate exports.
    Returns:
        (layout, info, artifact): ``info`` has ``policy``, ``chosen``, ``reason`` and, when timed,
        ``measured``: ``{"engine", "threads", "batches": {b: {"<layout>_ms": p50}}}``; ``artifact``:
        the chosen layout's export for the timed engine (``{"onnx": path}`` or ``{"module": dir}``),
        empty when nothing was exported.
    """
    if opt.layout != "auto":
        return opt.layout, {"policy": opt.layout, "chosen": opt.layout, "reason": "--layout " + opt.layout}, {}
    family = family_of(pruned_ir)
    # a low-precision engine's layout is timed on its fp32 engine: timing INT8 candidates would quantize each
    engine = engines.ENGINES[opt.engines[0]].fp32 or opt.engines[0]
    forms: dict[tuple, tuple[str, object]] = {}
    for name in candidates(engine):
        ir = family.passes.lay_out(pruned_ir, name, opt.token_layout)
        forms.setdefault(_widths(ir), (name, ir))
    if len(forms) == 1:
        name = next(iter(forms.values()))[0]
        return name, {"policy": "auto", "chosen": name,
                      "reason": "regular heads: every layout is the same graph" if not irregular(pruned_ir) else
                      "every layout is the same graph here"}, {}
    why_not = "--bench-seconds 0" if opt.bench_seconds <= 0 else engines.status(engine)
    known = KNOWN.get(engine)
    if not why_not and known and known[0] in (n for n, _ in forms.values()) and all(known[1] <= b <= known[2] for b in opt.batch):
        return known[0], {"policy": "auto", "chosen": known[0],
                          "reason": f"not timed: {known[0]} was faster on {engine} at every batch size from {known[1]} to "
                                    f"{known[2]} in benchmarks/layout.py"}, {}
    if why_not:
        return UNTIMED_DEFAULT, {"policy": "auto", "chosen": UNTIMED_DEFAULT,
                                 "reason": f"not timed ({why_not}): {UNTIMED_DEFAULT}, the faster form in benchmarks/layout.py"}, {}
    arts = {}
    kind = engines.ENGINES[engine].artifact
    names = [n for n, _ in forms.values()]
    with log.stage("layout", f"time {', '.join(names)} heads on {engine}"):
        for name, ir in forms.values():
            module = family.codegen.build_module(ir, share=True)
            arts[name] = save(module, work / f"layout-{name}") if kind == "module" else \
                export_onnx(module, work / f"layout-{name}.onnx", shape)
            del module
        res = engines.measure(engine, arts, list(opt.batch), max(opt.threads), shape, min(SECONDS, opt.bench_seconds))
    batches = {b: {f"{n}_ms": r.stats(n)["p50"] for n in names} for b, r in res.items()}
    mean_log = {n: sum(math.log(m[f"{n}_ms"]) for m in batches.values()) / len(batches) for n in names}
    chosen = min(names, key=lambda n: mean_log[n])
    runner_up = min((n for n in names if n != chosen), key=lambda n: mean_log[n])
    ratio = math.exp(mean_log[runner_up] - mean_log[chosen])
    return chosen, {"policy": "auto", "chosen": chosen,
                    "reason": f"timed on {engine}: {chosen} x{ratio:.3f} faster than {runner_up} (geometric mean over batch sizes)",
                    "measured": {"engine": engine, "threads": max(opt.threads), "batches": batches}}, {kind: arts[chosen]}
