"""OpenVINO runner (CPU plugin; reads the exported ONNX file directly, or an OpenVINO IR such as the NNCF INT8 model)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from .base import Runner


def openvino_status(capability: Optional[str] = None) -> Optional[str]:
    """None when OpenVINO can run here (with ``capability``, one of the CPU plugin's
    ``OPTIMIZATION_CAPABILITIES``: ``INT8``, ``BF16``, ``FP16``), else why not."""
    try:
        import openvino  # noqa: F401  (lazy: optional, [engines] extra)
    except ImportError:
        return "openvino is not installed (pip install 'vitshrink[engines]')"
    if capability is None:
        return None
    caps = cpu_capabilities()
    if capability not in caps:
        return (f"OpenVINO's CPU plugin has no {capability} support on this CPU (its capabilities: {', '.join(caps)}); "
                "it would run fp32 instead")
    return None


def default_hint() -> str:
    """The ``INFERENCE_PRECISION_HINT`` OpenVINO's CPU plugin uses when none is set: ``bf16`` on CPUs with
    native bfloat16 (``BF16`` among :func:`cpu_capabilities`: AVX512-BF16 or AMX), else ``f32``.

    This is what a user who quantizes with NNCF and compiles the IR without options deploys, so the
    ``openvino-int8`` engine runs its INT8 IR (original and pruned alike) this way. Measured on a 2-vCPU
    Xeon with AMX (deit_small, heads + MLP 50%, 2 threads, NNCF's default int8 attention): f32 for the
    unquantized layers realized 0.69 / 0.82 of the MACs cut at batch 1 / 8, bf16 0.87 / 1.15; with the weight
    layers only quantized (:func:`vitshrink.runtime.quantize.activation_products`) bf16 was as fast as f32
    or faster. DeiT-Tiny's INT8 top-1 (872 held-out images) 0.783 with f32, 0.788 with bf16 (fp32 0.794).
    """
    return "bf16" if "BF16" in cpu_capabilities() else "f32"


def cpu_capabilities() -> list[str]:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of the CPU (``FP32``, ``INT8``, ``BF16``, ``FP16``, ...)."""
    import openvino as ov  # lazy: optional, [engines] extra

    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


class OpenVinoRunner(Runner):
    """Runs an ONNX file with OpenVINO on the CPU.

    Args:
        path: the ONNX file or OpenVINO IR ``.xml`` (input [B, C, H, W] float32 -> logits [B, num_classes]);
            any batch.
        threads: ``INFERENCE_NUM_THREADS``.
        precision: ``INFERENCE_PRECISION_HINT``, default ``"f32"`` (for an INT8 IR: the precision of the
            layers left unquantized; ``"default"``: :func:`default_hint`). The CPU plugin otherwise picks bf16 on CPUs with AVX512-BF16
            (logits then differ from fp32 by ~0.04 on a pruned deit_small); the precision it really runs
            at is read back into :attr:`precision` (``"i8+f32"`` or ``"i8+bf16"`` for an INT8 IR).
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
            "INFERENCE_NUM_THREADS": int(threads), "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": default_hint() if precision == "default" else precision})
        self.request = self.compiled.create_infer_request()
        self.threads = threads
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)  # "f32", "bf16"
        if _int8_layers(self.compiled):
            self.precision = f"i8+{self.precision}"
        self.version = ov.get_version()

    def run(self, images: np.ndarray) -> np.ndarray:
        out = self.request.infer({0: np.ascontiguousarray(images, dtype=np.float32)})
        return np.array(out[self.compiled.output(0)])


#: the layers whose int8 ``runtimePrecision`` means int8 arithmetic (a u8 constant or Reorder does not)
COMPUTE_LAYERS = ("FullyConnected", "FullyConnectedQuantizedLegacy", "MatMul", "Convolution")


def _int8_layers(compiled) -> bool:
    """Whether the compiled model runs some GEMM or convolution in int8 (``runtimePrecision`` of its runtime graph)."""
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if ("runtimePrecision" in info and info["runtimePrecision"].astype(str) in ("i8", "u8")
                and info["layerType"].astype(str) in COMPUTE_LAYERS):
            return True
    return False
