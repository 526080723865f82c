"""Low-precision artifacts of an exported ONNX file, built by the engines' own tools (no quantizer here):

- :func:`quantize_openvino`: NNCF post-training quantization (``nncf.quantize`` with
  ``model_type=TRANSFORMER``: SmoothQuant, min-max / mean statistics, fast bias correction; per-channel
  int8 weights, per-tensor activations) of the model read by OpenVINO, saved as an OpenVINO IR
  (``.xml`` + ``.bin``) -- the deployable INT8 artifact of the ``openvino-int8`` and ``native-int8`` engines;
- :func:`quantize_ort`: ONNX Runtime static quantization in the QDQ format
  (``onnxruntime.quantization.quantize_static`` after ``quant_pre_process``): per-channel int8 weights,
  uint8 activations (U8S8, the form x86's int8 kernels run fastest; S8S8 measured slower on an Intel Xeon);
- :func:`to_fp16` : ``onnxruntime.transformers.float16`` (fp16 weights and compute, fp32 input/output),
  the artifact of ``ort-cuda-fp16``.

Calibration images are [N, C, H, W] float32 after the model's own eval transform, fed one image per
sample. Every failure of a tool is one :class:`~vitshrink.errors.VerificationError` naming the model and
the tool; the output file is then not left behind.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from vitshrink.errors import VerificationError

#: int8 kernels of the CPU: VNNI (``avx512_vnni`` / ``avx_vnni``) or AMX multiply int8 in one instruction;
#: without them int8 GEMMs run on AVX2 (``vpmaddubsw``) and were slower than fp32 here (AMD EPYC, 2 vCPUs)
INT8_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where it cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def int8_note() -> str | None:
    """None when the CPU has int8 dot-product instructions, else a sentence for the report."""
    flags = cpu_flags()
    if not flags or any(f in flags for f in INT8_CPU_FLAGS):
        return None
    return ("this CPU has no VNNI or AMX int8 instructions (avx512_vnni / avx_vnni / amx_int8): int8 GEMMs run on "
            "AVX2 and can be slower than fp32 here; the speed-up against the INT8 original still holds")


def _fail(tool: str, what: str, out: Path, e: Exception) -> VerificationError:
    for p in (out, out.with_suffix(".bin")):
        with contextlib.suppress(OSError):
            p.unlink()
    msg = str(e).strip().splitlines()
    return VerificationError(f"{tool} could not quantize the {what} model: {type(e).__name__}"
                             + (f": {msg[0][:200]}" if msg else ""))


@contextlib.contextmanager
def _quiet():
    """The quantizers' progress bars and INFO logs off (the compile prints its own lines)."""
    sink = io.StringIO()
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        nncf_log.setLevel(level)


def quantize_openvino(onnx_path: str | Path, out_xml: str | Path, calib: np.ndarray, what: str = "pruned") -> Path:
    """NNCF post-training INT8 quantization of an ONNX file read by OpenVINO, saved as OpenVINO IR.

    Args:
        onnx_path: input [B, C, H, W] float32 -> logits.
        out_xml: the IR's ``.xml`` (its ``.bin`` beside it).
        calib: calibration images [N, C, H, W] float32; ``subset_size`` = N.
        what: which model (for the error message): original, dense, pruned.
    Returns:
        ``out_xml``.
    Raises:
        VerificationError: NNCF or OpenVINO failed (named; no file is left).
    """
    out = Path(out_xml)
    try:
        import nncf  # lazy: optional ([engines] extra)
        import openvino as ov  # lazy: optional ([engines] extra)

        with _quiet():
            model = ov.Core().read_model(str(onnx_path))
            data = nncf.Dataset([calib[i:i + 1] for i in range(len(calib))])
            q = nncf.quantize(model, data, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib))
            ov.save_model(q, str(out), compress_to_fp16=False)
    except Exception as e:  # noqa: BLE001 - any tool failure is one clear error
        raise _fail("NNCF (openvino-int8)", what, out, e) from e
    return out


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over [N, C, H, W] images, one per call."""

    def __init__(self, name: str, calib: np.ndarray):
        self.name, self.calib, self.i = name, calib, 0

    def get_next(self):
        if self.i >= len(self.calib):
            return None
        self.i += 1
        return {self.name: self.calib[self.i - 1:self.i]}

    def rewind(self):
        self.i = 0


def quantize_ort(onnx_path: str | Path, out_path: str | Path, calib: np.ndarray, what: str = "pruned") -> Path:
    """ONNX Runtime static INT8 quantization, QDQ format: ``quant_pre_process`` (shape inference and
    graph optimisation), then ``quantize_static`` with min-max calibration, per-channel symmetric int8
    weights and asymmetric uint8 activations (U8S8).

    Args:
        onnx_path: input [B, C, H, W] float32 -> logits; out_path: the QDQ ONNX file.
        calib: calibration images [N, C, H, W] float32.
    Returns:
        ``out_path``.
    Raises:
        VerificationError: the quantizer failed (named; no file is left).
    """
    out = Path(out_path)
    try:
        import onnx  # lazy: the quantizers load only when an engine needs them
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static  # lazy: as above
        from onnxruntime.quantization.shape_inference import quant_pre_process  # lazy: as above

        name = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].name
        with _quiet(), tempfile.TemporaryDirectory(prefix="vitshrink-qdq-") as d:
            pre = os.path.join(d, "pre.onnx")
            quant_pre_process(str(onnx_path), pre, skip_symbolic_shape=True)
            quantize_static(pre, str(out), _Reader(name, calib), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
    except Exception as e:  # noqa: BLE001 - any tool failure is one clear error
        raise _fail("onnxruntime.quantization (ort-int8)", what, out, e) from e
    return out


def to_fp16(onnx_path: str | Path, out_path: str | Path, what: str = "pruned") -> Path:
    """An fp16 copy of an ONNX file (``onnxruntime.transformers.float16.convert_float_to_float16``,
    input and output kept fp32).

    Raises:
        VerificationError: the conversion failed (named; no file is left).
    """
    out = Path(out_path)
    try:
        import onnx  # lazy: the converter loads only when an engine needs it
        from onnxruntime.transformers.float16 import convert_float_to_float16  # lazy: as above

        with _quiet():
            onnx.save(convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True), str(out))
    except Exception as e:  # noqa: BLE001 - any tool failure is one clear error
        raise _fail("onnxruntime float16 converter (ort-cuda-fp16)", what, out, e) from e
    return out
