"""OpenVINO runner (CPU plugin; reads the exported ONNX file directly)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from .base import Runner


def openvino_status() -> Optional[str]:
    """None when OpenVINO can run here, else why not."""
    try:
        import openvino  # noqa: F401  (lazy: optional, [engines] extra)
    except ImportError:
        return "openvino is not installed (pip install 'vitshrink[engines]')"
    return None


class OpenVinoRunner(Runner):
    """Runs an ONNX file with OpenVINO on the CPU.

    Args:
        path: the ONNX file (input [B, C, H, W] float32 -> logits [B, num_classes]); any batch.
        threads: ``INFERENCE_NUM_THREADS``.
        precision: ``INFERENCE_PRECISION_HINT``, default ``"f32"``. The CPU plugin otherwise picks bf16
            on CPUs with AVX512-BF16 (logits then differ from fp32 by ~0.04, ENGINES.md); the precision
            it really runs at is read back into :attr:`precision`.
    Raises:
        RuntimeError: OpenVINO is not installed.
    """

    runtime = "openvino"

    def __init__(self, path: str | Path, threads: int = 2, precision: str = "f32"):
        reason = openvino_status()
        if reason:
            raise RuntimeError(reason)
        import openvino as ov  # lazy: optional ([engines] extra)

        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", {
            "INFERENCE_NUM_THREADS": int(threads), "INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"})
        self.request = self.compiled.create_infer_request()
        self.threads = threads
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)  # "f32", "bf16"
        self.version = ov.get_version()

    def run(self, images: np.ndarray) -> np.ndarray:
        out = self.request.infer({0: np.ascontiguousarray(images, dtype=np.float32)})
        return np.array(out[self.compiled.output(0)])
