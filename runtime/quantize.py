"""Low-precision artifacts of an exported ONNX file, built by the engines' own tools (no quantizer here):

- :func:`quantize_openvino`: NNCF post-training quantization (``nncf.quantize`` with
  ``model_type=TRANSFORMER``: SmoothQuant, min-max / mean statistics, fast bias correction; per-channel
  int8 weights, per-tensor activations; the attention's activation x activation MatMuls in its ignored
  scope, :func:`activation_products`; activations signed and symmetric on CPUs with AMX, NNCF's default
  asymmetric ones elsewhere, :func:`openvino_activations`) of the model read by OpenVINO, saved as an
  OpenVINO IR (``.xml`` + ``.bin``) -- the deployable INT8 artifact of the ``openvino-int8`` and
  ``native-int8`` engines;
- :func:`quantize_ort`: ONNX Runtime static quantization in the QDQ format
  (``onnxruntime.quantization.quantize_static`` after ``quant_pre_process``): per-channel int8 weights,
  uint8 activations (U8S8, the form x86's int8 kernels run fastest; S8S8 measured slower on an Intel Xeon),
  on the layers that have weights only (:func:`weight_layers`): the attention's activation x activation
  MatMuls (q k^T, softmax x v) stay fp32 -- min-max uint8 on the softmax output cost DeiT-Tiny 2.2 top-1
  points, the weight layers alone 0.5;
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
#: the CPU features that decide a benchmark's speed (vector width, int8 and bf16 instructions)
ISA_FLAGS = ("avx2", "avx512f", *INT8_CPU_FLAGS, "avx512_bf16", "avx512_fp16", "amx_bf16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where it cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def isa_flags() -> list[str]:
    """Which of :data:`ISA_FLAGS` this CPU has (sorted; what a benchmark's results record beside its times)."""
    return sorted(cpu_flags() & set(ISA_FLAGS))


def int8_note() -> str | None:
    """None when the CPU has int8 dot-product instructions, else a sentence for the report."""
    flags = cpu_flags()
    if not flags or any(f in flags for f in INT8_CPU_FLAGS):
        return None
    return ("this CPU has no VNNI or AMX int8 instructions (avx512_vnni / avx_vnni / amx_int8): int8 GEMMs run on "
            "AVX2 and can be slower than fp32 here; the speed-up against the INT8 original still holds")


#: NNCF's activation modes (its presets: ``MIXED`` -- the TRANSFORMER default -- and ``PERFORMANCE``)
ACTIVATIONS = ("asymmetric", "symmetric")


def openvino_activations() -> str:
    """How :func:`quantize_openvino` quantizes activations on this CPU: ``"symmetric"`` (signed int8, no zero
    point: NNCF's ``PERFORMANCE`` preset) where the CPU has AMX (``amx_int8``: s8 x s8 tiles), else
    ``"asymmetric"`` (unsigned with a zero point: NNCF's default ``MIXED`` for transformers, u8 x s8 as
    VNNI multiplies).

    Why: OpenVINO's CPU plugin ran an int8 layer whose input quantizer has a zero point through a slower
    kernel path (``FullyConnected`` instead of ``FullyConnectedQuantizedLegacy`` in ``PERF_COUNT``; which
    layers got a zero point was up to the calibration ranges). On a 2-vCPU Xeon with AMX, batch 1,
    symmetric activations made timm's INT8 DeiT-Tiny 4.76 -> 4.07 ms and the L1-pruned one 3.55 -> 3.04
    (top-1 0.788 -> 0.787 for the original, fp32 0.794; 128 calibration images, 872 others measured), the
    post-training one (``masks --data --macs 0.7``) 4.08 -> 3.49 against its original's 5.14 -> 4.25, and
    deit_small heads + MLP 50% 5.05 -> 4.63 against 7.48 -> 7.10 ms: both models faster, the pruned
    model's share of its MACs cut -0.04 to +0.04. Not measured on a CPU without AMX: there the default stays.
    """
    return "symmetric" if "amx_int8" in cpu_flags() else "asymmetric"


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


#: ops a weight reaches a MatMul through in an OpenVINO model read from ONNX (fp16 weights, transposed ``B``)
_WEIGHT_PATH = ("Convert", "Transpose", "Reshape")


def activation_products(model) -> list[str]:
    """The friendly names of the MatMul ops of an OpenVINO ``model`` whose two inputs are both activations
    (no Constant behind either, through :data:`_WEIGHT_PATH` ops): attention's q k^T and softmax x v.

    :func:`quantize_openvino` leaves them to the float precision the CPU plugin runs (NNCF's
    ``ignored_scope``), as :func:`quantize_ort` does. With NNCF's int8 attention the CPU plugin reordered
    a pruned block's q and k into a 16-channel blocked layout around its quantizers (2 heads padded to 16:
    DeiT-Tiny with 2 of 3 heads ran *slower* than the INT8 original with bf16 for the float layers, a 2-vCPU
    Xeon with AMX); the weight layers alone gave 0.85 / 0.95 of the MACs cut at batch 1 / 8 there, with the
    INT8 original itself faster (9.2 vs 12.6 ms), and DeiT-Tiny's top-1 0.788 (NNCF's default 0.787, fp32
    0.794; 128 calibration images, 872 others measured).
    """
    def constant(node) -> bool:
        while node.get_type_name() in _WEIGHT_PATH:
            node = node.input(0).get_source_output().get_node()
        return node.get_type_name() == "Constant"

    return [op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "MatMul"
            and not any(constant(i.get_source_output().get_node()) for i in op.inputs())]


def quantize_openvino(onnx_path: str | Path, out_xml: str | Path, calib: np.ndarray, what: str = "pruned",
                      activations: str | None = None) -> Path:
    """NNCF post-training INT8 quantization of an ONNX file read by OpenVINO, saved as OpenVINO IR.

    Args:
        onnx_path: input [B, C, H, W] float32 -> logits.
        out_xml: the IR's ``.xml`` (its ``.bin`` beside it).
        calib: calibration images [N, C, H, W] float32; ``subset_size`` = N.
        what: which model (for the error message): original, dense, pruned.
        activations: ``"symmetric"`` or ``"asymmetric"`` (:data:`ACTIVATIONS`); None: :func:`openvino_activations`.
    Returns:
        ``out_xml``.
    Raises:
        ValueError: an unknown ``activations``.
        VerificationError: NNCF or OpenVINO failed (named; no file is left).
    """
    activations = activations or openvino_activations()
    if activations not in ACTIVATIONS:
        raise ValueError(f"activations={activations!r}: one of {', '.join(ACTIVATIONS)}")
    out = Path(out_xml)
    try:
        import nncf  # lazy: optional ([engines] extra)
        import openvino as ov  # lazy: optional ([engines] extra)

        with _quiet():
            model = ov.Core().read_model(str(onnx_path))
            data = nncf.Dataset([calib[i:i + 1] for i in range(len(calib))])
            preset = nncf.QuantizationPreset.PERFORMANCE if activations == "symmetric" else nncf.QuantizationPreset.MIXED
            q = nncf.quantize(model, data, model_type=nncf.ModelType.TRANSFORMER, preset=preset, subset_size=len(calib),
                              ignored_scope=nncf.IgnoredScope(names=activation_products(model), validate=False))
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


def weight_layers(graph) -> list[str]:
    """The names of the MatMul / Gemm / Conv nodes of an ONNX ``graph`` that read a weight (an initializer
    or a Constant node's output): the nodes :func:`quantize_ort` quantizes.

    Attention's q k^T and softmax x v MatMuls multiply two activations and are left out: with per-tensor
    min-max uint8 the softmax probabilities (most of them near 1/tokens) round to a few levels.
    Measured on DeiT-Tiny with its ImageNet weights (128 calibration images, top-1 on 872 others, this
    module's settings): fp32 0.794, every MatMul quantized 0.772, the weight layers only 0.789.
    """
    consts = {i.name for i in graph.initializer}
    consts |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm", "Conv") and any(i in consts for i in n.input)]


def quantize_ort(onnx_path: str | Path, out_path: str | Path, calib: np.ndarray, what: str = "pruned") -> Path:
    """ONNX Runtime static INT8 quantization, QDQ format: ``quant_pre_process`` (shape inference and
    graph optimisation), then ``quantize_static`` with min-max calibration, per-channel symmetric int8
    weights and asymmetric uint8 activations (U8S8), on the :func:`weight_layers` only.

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
            nodes = weight_layers(onnx.load(pre, load_external_data=False).graph)
            if not nodes:
                raise ValueError("no MatMul / Gemm / Conv node reads a weight")
            quantize_static(pre, str(out), _Reader(name, calib), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_quantize=nodes)
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
