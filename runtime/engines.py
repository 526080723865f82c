"""The engines vitshrink builds, verifies and times, behind one interface.

Every engine takes one of the compile's two artifacts -- the exported ONNX file (``onnx``) or the
saved pruned/dense module directory (``module``, :func:`vitshrink.codegen.save`) -- and provides:

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

from .latency import MIN_ROUNDS, LatencyResult, measure_onnx
from .load import LoadMeter
from .native_runner import NativeRunner, ensure_runner, native_status, run_native


@dataclass(frozen=True)
class EngineSpec:
    """``name`` (the ``--engines`` word), ``runtime`` (report name), ``device``, ``precision``
    (``fp32``/``fp16``/``bf16``: it sets the verification tolerance), ``artifact`` (``onnx`` or
    ``module``), ``mode`` of a module engine (``eager``, ``graph``: CUDA-graph replay, ``compile``:
    ``torch.compile`` with inductor)."""

    name: str
    runtime: str
    device: str
    precision: str
    artifact: str
    what: str
    mode: str = "eager"


ENGINES = {e.name: e for e in (
    EngineSpec("ort", "onnxruntime", "cpu", "fp32", "onnx", "ONNX Runtime, CPU execution provider"),
    EngineSpec("openvino", "openvino", "cpu", "fp32", "onnx", "OpenVINO CPU plugin from Python (precision forced to f32)"),
    EngineSpec("native", "vitshrink-run", "cpu", "fp32", "onnx", "the C++ runner over OpenVINO's C++ API (no Python)"),
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
    EngineSpec("tensorrt", "tensorrt", "cuda", "fp16", "onnx", "TensorRT through polygraphy (built by --trt)"),
)}
ALIASES = {"onnxruntime": "ort", "all": "all"}
#: absolute tolerance on logits per precision, for engines compared with fp32 torch (fp16: measured on
#: an H200, fp16 vs fp32 <= 0.017 on every case of benchmarks/gpu.py; bf16 keeps 3 fewer mantissa bits: 8x)
TOLERANCE = {"fp16": 5e-2, "bf16": 4e-1}


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


def status(name: str) -> Optional[str]:
    """None when engine ``name`` can run here, else the reason it cannot."""
    if name == "ort":
        return None
    if name == "openvino":
        from .openvino_runner import openvino_status  # lazy: openvino is optional ([engines] extra)

        return openvino_status()
    if name == "native":
        return native_status()
    if name == "torch":
        return None
    if name.startswith(("torch-cuda", "torch-compile")):
        return _cuda()
    if name == "ort-cuda":
        import onnxruntime as ort  # lazy: as torch above

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return "this onnxruntime build has no CUDAExecutionProvider (install onnxruntime-gpu on a GPU machine)"
        return _cuda()
    if name == "tensorrt":
        from .tensorrt import tensorrt_status  # lazy: tensorrt is optional (GPU machines only)

        return tensorrt_status()
    raise ValueError(f"unknown engine {name!r}")


def version(name: str) -> Optional[str]:
    """The version of the library behind engine ``name``."""
    pkg = {"ort": "onnxruntime", "ort-cuda": "onnxruntime", "openvino": "openvino", "native": "openvino",
           "tensorrt": "tensorrt"}.get(name, "torch")
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
    if name in ("ort", "ort-cuda"):
        from .ort import OrtRunner  # lazy: each engine's runtime loads only when that engine runs

        providers = ["CUDAExecutionProvider"] if name == "ort-cuda" else None
        return OrtRunner(artifact, threads=threads, providers=providers, allow_spinning=shared_pool, global_pool=shared_pool)
    if name == "openvino":
        from .openvino_runner import OpenVinoRunner  # lazy: openvino is optional ([engines] extra)

        return OpenVinoRunner(artifact, threads=threads)
    if name == "native":
        return NativeRunner(artifact, threads=threads)
    if name == "tensorrt":
        raise RuntimeError("engine tensorrt is built and run by --trt (polygraphy)")
    from .torch_runner import module_runner  # lazy: each engine's runtime loads only when that engine runs

    spec = ENGINES[name]
    return module_runner(artifact, device=spec.device, precision=spec.precision, mode=spec.mode,
                         threads=threads if spec.device == "cpu" else None)


def measure(name: str, artifacts: Mapping[str, str | Path], batches: Sequence[int], threads: int,
            input_shape: tuple[int, int, int], budget_s: float, extend_s: float = 0.0,
            progress: Optional[Callable[[int, int, int], None]] = None):
    """Time ``artifacts`` (runner name -> file or directory; dense first) with engine ``name``,
    interleaved, per batch size: ``{batch: LatencyResult}`` and the thread-pool description.

    ``native``: one ``vitshrink-run`` call per batch size with both models, rounds interleaved inside
    the binary (the run count is chosen from a short first call so the budget is met). Every other
    engine: :func:`vitshrink.runtime.latency.measure_onnx` with this engine in its worker.
    """
    if name != "native":
        return measure_onnx(artifacts, batches, threads, input_shape, budget_s=budget_s, extend_s=extend_s,
                            progress=progress, engine=name)
    binary, names = ensure_runner(), list(artifacts)
    out = {}
    for b in batches:
        probe, _ = run_native(binary, [artifacts[n] for n in names], b, threads, runs=3, warmup=2)
        per_round = sum(m["p50"] for m in probe["models"]) / 1e3
        runs = int(min(5000, max(MIN_ROUNDS, (budget_s + extend_s / 2) / max(per_round, 1e-4))))
        meter = LoadMeter()
        info, _ = run_native(binary, [artifacts[n] for n in names], b, threads, runs=runs, warmup=3)
        res = LatencyResult(b, {n: m["ms"] for n, m in zip(names, info["models"])},
                            f"OpenVINO C++ ({info['precision']}), {threads} threads, rounds inside the binary",
                            load=meter.stop())
        out[b] = res
        if progress:
            progress(b, runs, runs)
    return out
