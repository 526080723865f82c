"""Baseline regression measured, not inferred: the baseline's and the new pruned ONNX files timed
again, now, interleaved in one worker process (same engine, batch, threads), so the comparison sees
neither the machine's drift between the two runs nor a different process layout.

Why: on a shared 2-core VM the ratio pruned/dense of the *same* ONNX files moves by several percent
from one run to the next (benchmarks/gate_false_alarms.py: -5.6% to +7.7% over 20 identical compiles),
far more than one run's bootstrap interval (+-1-2%). Two runs' rounds cannot be compared at 5%; two
models timed in the same rounds can.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import onnx

from ..report.schema import entry_engine
from ..runtime import engines
from ..runtime.latency import stability


def onnx_input_shape(path: Path) -> tuple[int, int, int]:
    """(C, H, W) of an exported model's single input [batch, C, H, W]."""
    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return tuple(int(d.dim_value) for d in dims[1:])


def retimer(new_dir: Optional[str | Path], old_dir: Optional[str | Path], seconds: float = 10.0,
            progress: Optional[Callable[[str], None]] = None):
    """A ``retime(new_entry, old_entry)`` for :func:`vitshrink.gate.evaluate.evaluate`, or None when either
    output directory lacks its ``model.onnx`` (a bare report.json) or ``seconds`` is 0.

    Each call times ``old/model.onnx`` and ``new/model.onnx`` with the entry's engine (ONNX engines:
    ort, openvino, native, ort-cuda), batch and threads for ``seconds`` (up to 3x while unstable) and
    returns ``(median(new/old) - 1, bootstrap 95% interval, note)``; None for an engine that does not
    run ONNX files or cannot run here.
    """
    if not seconds or new_dir is None or old_dir is None:
        return None
    new_onnx, old_onnx = Path(new_dir) / "model.onnx", Path(old_dir) / "model.onnx"
    if not (new_onnx.is_file() and old_onnx.is_file()):
        return None

    def retime(e_new: dict, e_old: dict):
        name = entry_engine(e_new)
        if name not in engines.ENGINES or engines.ENGINES[name].artifact != "onnx" or engines.status(name):
            return None
        if progress:
            progress(f"re-timing baseline and new model.onnx on {name}, batch {e_new['batch']}, {e_new['threads']} threads")
        res = engines.measure(name, {"new": new_onnx, "old": old_onnx}, [e_new["batch"]], e_new["threads"],
                      onnx_input_shape(new_onnx), budget_s=seconds, extend_s=2 * seconds)[e_new["batch"]]
        lo, hi = stability(res, "new", "old")["speedup_ci95"]
        return (res.paired_ratio("new", "old") - 1, (lo - 1, hi - 1),
                f"baseline and new ONNX re-timed interleaved now ({res.rounds} rounds)")

    return retime
