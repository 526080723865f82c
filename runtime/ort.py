"""ONNX Runtime runner (CPU execution provider; CUDA where the GPU package is installed)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .base import Runner


class OrtRunner(Runner):
    """Runs an ONNX file with ONNX Runtime.

    Args:
        path: the ONNX file (input [B, C, H, W] float32 -> logits [B, num_classes]).
        threads: intra-op threads (on the 2-core CI machines use at most 2; 4 is 2-3x slower).
        providers: execution providers, default ``["CPUExecutionProvider"]``.
        allow_spinning: let idle intra-op threads spin-wait for the next op. Off by default: when two
            sessions are timed interleaved on few cores, the idle session's spinning threads steal
            the cores from the running one (measured here: dense deit_small at batch 1 went from
            33 ms to 60 ms). A single-session deployment may turn it on.
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
    ):
        import onnxruntime as ort

        providers = list(providers or ["CPUExecutionProvider"])
        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            raise RuntimeError(f"onnxruntime has no {missing[0]} (available: {ort.get_available_providers()})")
        opts = ort.SessionOptions()
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
