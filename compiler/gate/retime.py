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


def _artifact(directory: Path, name: str) -> Optional[Path]:
    """The file engine ``name`` runs in a compile's output directory (``model.onnx`` or ``model`` + the suffix of
    its low-precision artifact), or None: a module engine, an unknown name, or the file is not there."""
    spec = engines.ENGINES.get(name)
    if spec is None or (spec.artifact != "onnx" and spec.artifact not in engines.LOW_PRECISION_ARTIFACTS):
        return None
    path = directory / ("model.onnx" if spec.artifact == "onnx" else "model" + engines.LOW_PRECISION_ARTIFACTS[spec.artifact][0])
    return path if path.is_file() else None


def retimer(new_dir: Optional[str | Path], old_dir: Optional[str | Path], seconds: float = 10.0,
            progress: Optional[Callable[[str], None]] = None):
    """A ``retime(new_entry, old_entry)`` for :func:`vitshrink.gate.evaluate.evaluate`, or None when either
    output directory lacks its ``model.onnx`` (a bare report.json) or ``seconds`` is 0.

    Each call times the baseline's and the new file of the entry's engine -- ``model.onnx`` (ort, openvino,
    native, ort-cuda) or the low-precision artifact beside it (``model.int8.xml`` for openvino-int8,
    ``model.int8.onnx`` for ort-int8: :data:`vitshrink.runtime.engines.LOW_PRECISION_ARTIFACTS`) -- at its batch
    and threads for ``seconds`` (up to 3x while unstable) and returns ``(median(new/old) - 1, bootstrap 95%
    interval, note)``; None for an engine whose files are not both there or that cannot run here.
    """
    if not seconds or new_dir is None or old_dir is None:
        return None
    new_onnx = Path(new_dir) / "model.onnx"
    if not (new_onnx.is_file() and (Path(old_dir) / "model.onnx").is_file()):
        return None

    def retime(e_new: dict, e_old: dict):
        name = entry_engine(e_new)
        files = [_artifact(Path(d), name) for d in (new_dir, old_dir)]
        if None in files or engines.status(name):
            return None
        if progress:
            progress(f"re-timing baseline and new {files[0].name} on {name}, batch {e_new['batch']}, {e_new['threads']} threads")
        res = engines.measure(name, {"new": files[0], "old": files[1]}, [e_new["batch"]], e_new["threads"],
                              onnx_input_shape(new_onnx), budget_s=seconds, extend_s=2 * seconds)[e_new["batch"]]
        lo, hi = stability(res, "new", "old")["speedup_ci95"]
        return (res.paired_ratio("new", "old") - 1, (lo - 1, hi - 1),
                f"baseline and new {files[0].name} re-timed interleaved now ({res.rounds} rounds)")

    return retime
