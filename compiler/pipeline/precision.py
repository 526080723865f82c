"""Compile stage: the low-precision artifacts the requested engines run (:data:`vitshrink.runtime.engines.LOW_PRECISION_ARTIFACTS`).

Each kind is built once per model by the engine's own tool (:mod:`vitshrink.runtime.quantize`) from that
model's exported ONNX file, for the pruned model, vitshrink's dense model and the user's original model
(timm's own export) alike -- with the same calibration images and settings -- so an INT8 pruned model is
timed against the INT8 original, the thing a user who quantizes would deploy. ``openvino-int8`` and
``native-int8`` share one NNCF model. The pruned model's artifact is a deliverable and lands in the
output directory (``model.int8.xml`` + ``.bin``, ``model.int8.onnx``, ``model.fp16.onnx``); the others are
scratch.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..runtime import engines
from ..runtime.quantize import int8_note, openvino_activations, quantize_openvino, quantize_ort, to_fp16

BUILDERS = {"ov-int8": quantize_openvino, "ort-qdq": quantize_ort, "onnx-fp16": lambda src, dst, calib, what: to_fp16(src, dst, what)}


def kinds_needed(names: Sequence[str]) -> list[str]:
    """The low-precision artifact kinds of the engines in ``names`` that can run here, in a fixed order."""
    want = {engines.ENGINES[n].artifact for n in names if not engines.status(n)}
    return [k for k in engines.LOW_PRECISION_ARTIFACTS if k in want]


def build_low_precision(names: Sequence[str], artifacts: dict, calib: np.ndarray, calib_source: str, tmp: Path,
                        work: Path, log) -> dict:
    """Build every low-precision artifact ``names`` need into ``artifacts[kind] = {"original", "dense",
    "pruned"}`` (a model without an fp32 ONNX file is left out) and return the report's ``precision``
    section: per kind the tool, the file, the calibration (count and source) and seconds per model.

    Args:
        artifacts: the compile's artifacts (``artifacts["onnx"]`` has the fp32 ONNX files).
        calib: calibration images [N, C, H, W] float32 (the model's eval transform applied).
    Raises:
        VerificationError: a quantizer failed (named; nothing of it is left).
    """
    section: dict = {}
    for kind in kinds_needed(names):
        suffix, tool = engines.LOW_PRECISION_ARTIFACTS[kind]
        built, seconds = {}, {}
        with log.stage(f"build_{kind}", f"{tool}: original, dense and pruned ({len(calib)} calibration images)"):
            for which in ("original", "dense", "pruned"):
                src = artifacts["onnx"].get(which)
                if src is None:
                    continue
                dst = (tmp / f"model{suffix}") if which == "pruned" else (work / f"{which}{suffix}")
                t = time.perf_counter()
                built[which] = BUILDERS[kind](src, dst, calib, which)
                seconds[which] = round(time.perf_counter() - t, 1)
        artifacts[kind] = built
        section[kind] = {"tool": tool, "file": f"model{suffix}", "engines": [n for n in names if engines.ENGINES[n].artifact == kind],
                         "calibration_images": None if kind == "onnx-fp16" else len(calib),
                         "calibration": None if kind == "onnx-fp16" else calib_source, "seconds": seconds}
        if kind == "ov-int8":  # the same for the three models
            section[kind]["activations"] = openvino_activations()
    note = int8_note()
    if note and any(engines.ENGINES[n].precision == "int8" for n in names if not engines.status(n)):
        section["cpu_note"] = note
        log.warn(note)
    return section
