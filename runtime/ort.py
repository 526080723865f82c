"""ONNX Runtime runner (CPU execution provider; CUDA where the GPU package is installed)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import _pybind_state

from .base import Runner

# errors only: the graph optimizer logs through the default logger, whatever a session's severity (e.g. one
# "UnsqueezeElimination cannot remove node" warning per block of timm's exported SDPA attention)
ort.set_default_logger_severity(3)


class OrtRunner(Runner):
    """Runs an ONNX file with ONNX Runtime.

    Args:
        path: the ONNX file (input [B, C, H, W] float32 -> logits [B, num_classes]).
        threads: intra-op threads (on the 2-core CI machines use at most 2; 4 is 2-3x slower).
        providers: execution providers, default ``["CPUExecutionProvider"]``.
        allow_spinning: let idle intra-op threads spin-wait for the next op (faster: no wake-up per
            op). Off by default for per-session pools: when two sessions with their own pools are
            timed interleaved on few cores, the idle session's spinning threads steal the cores from
            the running one (measured here: dense deit_small at batch 1 went from 33 ms to 60 ms).
        global_pool: use the process-wide thread pool made by :func:`use_global_thread_pool` instead
            of a pool per session (``threads`` is then the pool's size); sessions sharing it can
            spin without stealing from each other. This is how latency is measured.
    Raises:
        RuntimeError: a requested provider is not available in this onnxruntime build.
    """

    runtime = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        threads: int = 2,
        providers: Optional[Sequence[str]] = None,
        allow_spinning: bool = False,
        global_pool: bool = False,
    ):
        providers = list(providers or ["CPUExecutionProvider"])
        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            raise RuntimeError(f"onnxruntime has no {missing[0]} (available: {ort.get_available_providers()})")
        opts = ort.SessionOptions()
        if global_pool:
            opts.use_per_session_threads = False
        else:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        self.threads = threads
        self.device = "cuda" if providers[0].startswith("CUDA") else "cpu"
        self.input_name = self.session.get_inputs()[0].name

    def run(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(images, dtype=np.float32)})[0]


def use_global_thread_pool(threads: int) -> bool:
    """Create ONNX Runtime's process-wide thread pool (``threads`` intra-op, 1 inter-op); False if
    this onnxruntime build has no such entry point (callers then use per-session pools).

    Must run before the first session of the process; the size cannot change afterwards, which is
    why latency is measured in a fresh worker process per thread count
    (:func:`vitshrink.runtime.latency.measure_onnx`). Uses onnxruntime's pybind entry point
    ``set_global_thread_pool_sizes`` (the Python face of the C API's global thread pools).
    """
    setter = getattr(_pybind_state, "set_global_thread_pool_sizes", None)
    if setter is None:
        return False
    ort.set_default_logger_severity(3)  # it warns that per-session thread options are ignored
    setter(threads, 1)
    return True
