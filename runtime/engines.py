"""The engines vitshrink builds, verifies and times, behind one interface.

Every engine takes one of the compile's artifacts -- the exported ONNX file (``onnx``), the saved
pruned/dense module directory (``module``, :func:`vitshrink.codegen.save`), or a low-precision artifact
built from the ONNX file by the engine's own tool (:data:`LOW_PRECISION_ARTIFACTS`,
:mod:`vitshrink.runtime.quantize`: ``ov-int8`` an NNCF-quantized OpenVINO IR, ``ort-qdq`` a QDQ ONNX file,
``onnx-fp16``) -- and provides:

- :func:`status` (None, or why it cannot run here: a missing package, no GPU -- the report lists the
  engine as skipped with that reason; nothing is faked);
- :func:`make_runner` (a :class:`vitshrink.runtime.base.Runner`: images [B, C, H, W] float32 ->
  logits [B, classes]) for verification against torch on the verification images;
- :func:`measure` (dense and pruned interleaved in rounds, per batch size: a
  :class:`vitshrink.runtime.latency.LatencyResult`), in a fresh worker process per call, or inside the
  native binary for ``native``;
- :data:`ENGINES` metadata: the report's ``runtime`` name, device and precision.

TensorRT stays on polygraphy (:mod:`vitshrink.runtime.tensorrt`, ``--trt``); here it is only listed,
skipped with its reason where it cannot be installed.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from .latency import BLOCK_MS, MIN_ROUNDS, LatencyResult, block_calls, measure_onnx
from .load import LoadMeter
from .native_runner import NativeRunner, ensure_runner, native_status, run_native


@dataclass(frozen=True)
class EngineSpec:
    """``name`` (the ``--engines`` word), ``runtime`` (report name), ``device``, ``precision``
    (``fp32``/``fp16``/``bf16``/``int8``: it sets the verification tolerance and the baseline's
    precision), ``artifact`` (``onnx``, ``module`` or a key of :data:`LOW_PRECISION_ARTIFACTS`),
    ``mode`` of a module engine (``eager``, ``graph``: CUDA-graph replay, ``compile``: ``torch.compile``
    with inductor), ``hint``: OpenVINO's ``INFERENCE_PRECISION_HINT`` (``f32``, ``bf16``, ``f16``; for an
    INT8 IR the precision of the layers left unquantized; ``default``: none set, the CPU plugin's own choice,
    :func:`vitshrink.runtime.openvino_runner.default_hint`), ``fp32``: the engine that runs the fp32
    original model in the same rounds (``original_fp32_ms``), None for fp32 engines."""

    name: str
    runtime: str
    device: str
    precision: str
    artifact: str
    what: str
    mode: str = "eager"
    hint: str = "f32"
    fp32: Optional[str] = None


ENGINES = {e.name: e for e in (
    EngineSpec("ort", "onnxruntime", "cpu", "fp32", "onnx", "ONNX Runtime, CPU execution provider"),
    EngineSpec("openvino", "openvino", "cpu", "fp32", "onnx", "OpenVINO CPU plugin from Python (precision forced to f32)"),
    EngineSpec("native", "vitshrink-run", "cpu", "fp32", "onnx", "the C++ runner over OpenVINO's C++ API (no Python)"),
    EngineSpec("ort-int8", "onnxruntime", "cpu", "int8", "ort-qdq",
               "ONNX Runtime, CPU, static INT8 QDQ (per-channel int8 weights, uint8 activations)", fp32="ort"),
    EngineSpec("openvino-int8", "openvino", "cpu", "int8", "ov-int8",
               "OpenVINO CPU plugin on the NNCF INT8 IR (unquantized layers at the plugin's default: bf16 where "
               "the CPU has it, else f32)", hint="default", fp32="openvino"),
    EngineSpec("native-int8", "vitshrink-run", "cpu", "int8", "ov-int8",
               "the C++ runner on the NNCF INT8 IR (unquantized layers f32)", fp32="native"),
    EngineSpec("openvino-bf16", "openvino", "cpu", "bf16", "onnx", "OpenVINO CPU plugin, bfloat16 inference precision",
               hint="bf16", fp32="openvino"),
    EngineSpec("openvino-fp16", "openvino", "cpu", "fp16", "onnx", "OpenVINO CPU plugin, float16 inference precision",
               hint="f16", fp32="openvino"),
    EngineSpec("torch", "torch", "cpu", "fp32", "module", "the generated nn.Module, eager, CPU"),
    EngineSpec("torch-cuda", "torch", "cuda", "fp32", "module", "the generated nn.Module, eager, CUDA"),
    EngineSpec("torch-cuda-fp16", "torch", "cuda", "fp16", "module", "the generated nn.Module, eager, CUDA, half precision"),
    EngineSpec("torch-cuda-bf16", "torch", "cuda", "bf16", "module", "the generated nn.Module, eager, CUDA, bfloat16"),
    EngineSpec("torch-cuda-graph", "torch-cuda-graph", "cuda", "fp16", "module",
               "the generated nn.Module replayed as a CUDA graph, fp16", "graph"),
    EngineSpec("torch-cuda-graph-bf16", "torch-cuda-graph", "cuda", "bf16", "module",
               "the generated nn.Module replayed as a CUDA graph, bfloat16", "graph"),
    EngineSpec("torch-compile", "torch.compile", "cuda", "fp16", "module",
               "the generated nn.Module compiled by torch.compile (inductor), CUDA, fp16", "compile"),
    EngineSpec("torch-compile-bf16", "torch.compile", "cuda", "bf16", "module",
               "the generated nn.Module compiled by torch.compile (inductor), CUDA, bfloat16", "compile"),
    EngineSpec("ort-cuda", "onnxruntime", "cuda", "fp32", "onnx", "ONNX Runtime, CUDA execution provider"),
    EngineSpec("ort-cuda-fp16", "onnxruntime", "cuda", "fp16", "onnx-fp16",
               "ONNX Runtime, CUDA execution provider, fp16 graph (fp32 input/output)", fp32="ort-cuda"),
    EngineSpec("tensorrt", "tensorrt", "cuda", "fp16", "onnx", "TensorRT fp16 through polygraphy (built by --trt)"),
    EngineSpec("tensorrt-int8", "tensorrt", "cuda", "int8", "onnx",
               "TensorRT int8 (+fp16) through polygraphy, calibrated on the calibration images (built by --trt)"),
)}
ALIASES = {"onnxruntime": "ort", "tensorrt-fp16": "tensorrt", "all": "all"}
#: the low-precision artifacts: artifact kind -> (file suffix, the tool that builds it from the ONNX file)
LOW_PRECISION_ARTIFACTS = {"ov-int8": (".int8.xml", "NNCF post-training quantization, OpenVINO IR"),
                           "ort-qdq": (".int8.onnx", "onnxruntime.quantization static QDQ"),
                           "onnx-fp16": (".fp16.onnx", "onnxruntime.transformers.float16")}
#: absolute tolerance on logits per precision, for engines compared with fp32 torch (fp16: measured on
#: an H200, fp16 vs fp32 <= 0.017 on every case of benchmarks/gpu.py; bf16 keeps 3 fewer mantissa bits: 8x)
TOLERANCE = {"fp16": 5e-2, "bf16": 4e-1}
#: int8 has no absolute scale, and its error is not in the largest logit: the tolerance is on the relative L2
#: error of the logits, ||engine - fp32|| / ||fp32|| over the batch, on images like the calibration images
#: (measured on timm's DeiT-Tiny, real weights, held-out ImageNet images: NNCF 0.21, ONNX Runtime QDQ 0.39 --
#: top-1 0.787 and 0.793 against fp32's 0.80 --, the many small logits of the 1000 classes carrying most of it;
#: a real-calibrated model fed noise: 0.96, which is why int8 is verified on real images). A broken graph
#: is above 1; how much accuracy int8 costs is what ``accuracy.engines`` and ``--max-top1-drop`` measure.
RELATIVE_TOLERANCE = {"int8": 0.6}


def tolerance(precision: str, fp32_tolerance: float) -> tuple[float, str]:
    """The verification tolerance of an engine of ``precision`` against torch fp32 logits and its rule:
    ``(value, "max_abs")`` (fp32: ``fp32_tolerance``; fp16, bf16: :data:`TOLERANCE`) or ``(value, "rel_l2")``
    (int8: :data:`RELATIVE_TOLERANCE`)."""
    if precision in RELATIVE_TOLERANCE:
        return RELATIVE_TOLERANCE[precision], "rel_l2"
    return TOLERANCE.get(precision, fp32_tolerance), "max_abs"


def source_artifact(name: str) -> str:
    """What engine ``name``'s artifact is built from: ``onnx`` (the ONNX file itself, or a low-precision
    artifact made from it) or ``module``."""
    art = ENGINES[name].artifact
    return "onnx" if art in LOW_PRECISION_ARTIFACTS else art


def low_precision(name: str) -> bool:
    """Whether engine ``name`` runs below fp32 (it then needs calibration or a converted artifact, and its
    latency baseline is the original at the same precision)."""
    return ENGINES[name].precision != "fp32"


def parse_engines(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"ort,openvino"`` / ``"all"`` / a sequence -> engine names in :data:`ENGINES` order.

    Raises:
        ValueError: an unknown engine (named, with the list).
    """
    words = [w.strip() for w in (value.split(",") if isinstance(value, str) else value) if w.strip()]
    names = set()
    for w in words:
        w = ALIASES.get(w, w)
        if w == "all":
            names.update(ENGINES)
        elif w in ENGINES:
            names.add(w)
        else:
            raise ValueError(f"unknown engine {w!r} (engines: {', '.join(ENGINES)}, all)")
    if not names:
        raise ValueError("no engine given")
    return tuple(n for n in ENGINES if n in names)


def _cuda() -> Optional[str]:
    import torch  # lazy: the engine names (CLI options) need no torch

    return None if torch.cuda.is_available() else "no CUDA device is visible on this machine"


def _nncf() -> Optional[str]:
    return None if importlib.util.find_spec("nncf") else "nncf is not installed (pip install 'vitshrink[engines]')"


def status(name: str) -> Optional[str]:
    """None when engine ``name`` can run here, else the reason it cannot."""
    if name in ("ort", "ort-int8", "torch"):
        return None  # onnxruntime.quantization ships with onnxruntime
    if name.startswith("openvino") or name == "native-int8":
        from .openvino_runner import openvino_status  # lazy: openvino is optional ([engines] extra)

        reason = openvino_status() if not name.startswith("native") else native_status()
        if reason or name in ("openvino",):
            return reason
        if name.endswith("int8"):
            return _nncf() or openvino_status("INT8")
        return openvino_status({"bf16": "BF16", "f16": "FP16"}[ENGINES[name].hint])
    if name == "native":
        return native_status()
    if name.startswith(("torch-cuda", "torch-compile")):
        return _cuda()
    if name.startswith("ort-cuda"):
        import onnxruntime as ort  # lazy: as torch above

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return "this onnxruntime build has no CUDAExecutionProvider (install onnxruntime-gpu on a GPU machine)"
        return _cuda()
    if name.startswith("tensorrt"):
        from .tensorrt import tensorrt_status  # lazy: tensorrt is optional (GPU machines only)

        return tensorrt_status()
    raise ValueError(f"unknown engine {name!r}")


def version(name: str) -> Optional[str]:
    """The version of the library behind engine ``name``."""
    pkg = {"onnxruntime": "onnxruntime", "openvino": "openvino", "vitshrink-run": "openvino",
           "tensorrt": "tensorrt"}.get(ENGINES[name].runtime, "torch")
    if importlib.util.find_spec(pkg) is None:
        return None
    try:
        return package_version(pkg)
    except PackageNotFoundError:  # pragma: no cover
        return None


def make_runner(name: str, artifact: str | Path, threads: int, shared_pool: bool = False):
    """A runner of engine ``name`` over ``artifact`` (ONNX file or module directory).

    ``shared_pool``: ONNX Runtime sessions use the process-wide spinning pool (the latency worker).
    Raises:
        RuntimeError: the engine cannot run here (:func:`status`).
    """
    reason = status(name)
    if reason:
        raise RuntimeError(f"engine {name}: {reason}")
    spec = ENGINES[name]
    if spec.runtime == "onnxruntime":
        from .ort import OrtRunner  # lazy: each engine's runtime loads only when that engine runs

        providers = ["CUDAExecutionProvider"] if spec.device == "cuda" else None
        return OrtRunner(artifact, threads=threads, providers=providers, allow_spinning=shared_pool, global_pool=shared_pool)
    if spec.runtime == "openvino":
        from .openvino_runner import OpenVinoRunner  # lazy: openvino is optional ([engines] extra)

        return OpenVinoRunner(artifact, threads=threads, precision=spec.hint)
    if spec.runtime == "vitshrink-run":
        return NativeRunner(artifact, threads=threads, hint=spec.hint)
    if spec.runtime == "tensorrt":
        raise RuntimeError(f"engine {name} is built and run by --trt (polygraphy)")
    from .torch_runner import module_runner  # lazy: each engine's runtime loads only when that engine runs

    return module_runner(artifact, device=spec.device, precision=spec.precision, mode=spec.mode,
                         threads=threads if spec.device == "cpu" else None)


def measure(name: str, artifacts: Mapping[str, str | Path], batches: Sequence[int], threads: int,
            input_shape: tuple[int, int, int], budget_s: float, extend_s: float = 0.0,
            progress: Optional[Callable[[int, int, int], None]] = None, engines: Optional[Mapping[str, str]] = None):
    """Time ``artifacts`` (runner name -> file or directory; dense first) with engine ``name``,
    interleaved, per batch size: ``{batch: LatencyResult}`` and the thread-pool description.

    ``engines``: runner name -> another engine of the same runtime for that runner (the fp32 original
    timed beside INT8 models: ``{"original_fp32": "openvino"}``); default ``name`` for all.
    ``native`` / ``native-int8``: one ``vitshrink-run`` call per batch size with every model (ONNX files
    and OpenVINO IRs alike), rounds interleaved inside the binary, in blocks as
    :func:`~vitshrink.runtime.latency.block_calls` (the run count is chosen from a short first call so the
    budget is met). Every other engine: :func:`vitshrink.runtime.latency.measure_onnx`
    with this engine in its worker.
    """
    if ENGINES[name].runtime != "vitshrink-run":
        return measure_onnx(artifacts, batches, threads, input_shape, budget_s=budget_s, extend_s=extend_s,
                            progress=progress, engine=name, engines=engines)
    binary, names = ensure_runner(), list(artifacts)
    out = {}
    for b in batches:
        probe, _ = run_native(binary, [artifacts[n] for n in names], b, threads, runs=3, warmup=2)
        per_round = sum(m["p50"] * block_calls(m["p50"]) for m in probe["models"]) / 1e3
        runs = int(min(5000, max(MIN_ROUNDS, (budget_s + extend_s / 2) / max(per_round, 1e-4))))
        meter = LoadMeter()
        info, _ = run_native(binary, [artifacts[n] for n in names], b, threads, runs=runs, warmup=3, block_ms=BLOCK_MS)
        res = LatencyResult(b, {n: m["ms"] for n, m in zip(names, info["models"])},
                            f"OpenVINO C++ ({info['precision']}), {threads} threads, rounds inside the binary",
                            load=meter.stop(), calls_per_block={n: m.get("calls_per_block", 1) for n, m in zip(names, info["models"])})
        out[b] = res
        if progress:
            progress(b, runs, runs)
    return out
