"""The runner interface shared by torch, ONNX Runtime and TensorRT: load (constructor), run, time."""
from __future__ import annotations

import time

import numpy as np


class Runner:
    """A loaded model that maps images [B, C, H, W] float32 (numpy) to logits [B, num_classes].

    Subclasses set ``runtime`` (name), ``device`` ("cpu"/"cuda") and ``threads`` (None where it does
    not apply) and implement :meth:`run`.
    """

    runtime: str = "?"
    device: str = "cpu"
    threads: int | None = None

    def run(self, images: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def time_once(self, images: np.ndarray) -> float:
        """Wall-clock milliseconds of one :meth:`run` (the result is complete when run returns)."""
        t0 = time.perf_counter()
        self.run(images)
        return (time.perf_counter() - t0) * 1e3
