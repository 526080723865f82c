"""TensorRT engines through polygraphy's TRT backend (thin: polygraphy does the building and running).

TensorRT cannot be installed on the build and CI machines; :func:`tensorrt_status` says why, and
callers skip with that message. Nothing here is faked: without ``tensorrt`` no engine exists.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Optional

import numpy as np

from .base import Runner


def tensorrt_status() -> Optional[str]:
    """None when TensorRT can build and run engines here, else the reason it cannot."""
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt is not installed (its Python package needs an NVIDIA GPU machine)"
    try:
        import torch  # lazy: only asked when tensorrt is installed

        if not torch.cuda.is_available():
            return "no CUDA device is visible"
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return None


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    input_name: str,
    input_shape: tuple[int, int, int],
    batches: tuple[int, int, int] = (1, 8, 64),
    fp16: bool = True,
    timing_cache: Optional[str | Path] = None,
    calibration: Optional[np.ndarray] = None,
) -> Path:
    """Build a TensorRT engine from an ONNX file and save it with a ``.json`` metadata file beside it.

    Args:
        batches: (min, opt, max) batch sizes of the single optimisation profile.
        fp16: allow FP16 kernels (TensorRT picks per layer).
        timing_cache: file to load and update, so rebuilds are fast.
        calibration: images [N, C, H, W] float32: also allow INT8 kernels, calibrated on them by
            polygraphy's ``Calibrator`` (TensorRT's entropy calibrator, one image per batch).
    Raises:
        RuntimeError: TensorRT is unavailable (the reason is given).
    """
    reason = tensorrt_status()
    if reason:
        raise RuntimeError(f"TensorRT engine not built: {reason}")
    from polygraphy.backend.trt import (Calibrator, CreateConfig, EngineFromNetwork, NetworkFromOnnxPath, Profile,  # lazy: needs tensorrt
                                        SaveEngine)

    lo, opt, hi = batches
    profile = Profile().add(input_name, (lo, *input_shape), (opt, *input_shape), (hi, *input_shape))
    cache = str(timing_cache) if timing_cache else None
    calibrator = None
    if calibration is not None:
        calibrator = Calibrator([{input_name: np.ascontiguousarray(calibration[i:i + 1])} for i in range(len(calibration))])
    config = CreateConfig(fp16=fp16, int8=calibration is not None, calibrator=calibrator, profiles=[profile],
                          load_timing_cache=cache)
    engine = EngineFromNetwork(NetworkFromOnnxPath(str(onnx_path)), config=config, save_timing_cache=cache)
    SaveEngine(engine, str(engine_path))()
    import tensorrt as trt  # lazy: optional (GPU machines only)

    meta = {"onnx": Path(onnx_path).name, "tensorrt": trt.__version__, "fp16": fp16, "int8": calibration is not None,
            "calibration_images": None if calibration is None else len(calibration),
            "profile": {"input": input_name, "min": lo, "opt": opt, "max": hi, "shape": list(input_shape)}}
    Path(str(engine_path) + ".json").write_text(json.dumps(meta, indent=1) + "\n")
    return Path(engine_path)


class TrtRunner(Runner):
    """Runs a saved engine with polygraphy's ``TrtRunner``. Latency includes host<->device copies."""

    runtime = "tensorrt"
    device = "cuda"

    def __init__(self, engine_path: str | Path, input_name: str = "images"):
        reason = tensorrt_status()
        if reason:
            raise RuntimeError(f"TensorRT runner unavailable: {reason}")
        from polygraphy.backend.trt import EngineFromPath  # lazy: needs tensorrt
        from polygraphy.backend.trt import TrtRunner as PolygraphyTrtRunner  # lazy: needs tensorrt

        self.input_name = input_name
        self._runner = PolygraphyTrtRunner(EngineFromPath(str(engine_path)))
        self._runner.activate()

    def run(self, images: np.ndarray) -> np.ndarray:
        out = self._runner.infer({self.input_name: np.ascontiguousarray(images, dtype=np.float32)})
        return np.asarray(next(iter(out.values())))

    def close(self) -> None:
        self._runner.deactivate()
