"""torch runner: the generated ``nn.Module`` in eager mode, or compiled with ``torch.compile``."""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from vitshrink.codegen.checkpoint import load

from .base import Runner


class TorchRunner(Runner):
    """Runs a module on ``device`` ("cpu" or "cuda") in ``dtype`` (float32 or float16).

    Args:
        compile: wrap the module with ``torch.compile`` (first calls are slow; warm up before timing).
        threads: torch intra-op threads on CPU (``torch.set_num_threads``; process-wide).
    """

    runtime = "torch"

    def __init__(self, model: nn.Module, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 compile: bool = False, threads: int | None = None):
        self.device, self.dtype, self.threads = device, dtype, threads
        if threads and device == "cpu":
            torch.set_num_threads(threads)
        self.model = model.to(device=device, dtype=dtype).eval()
        self.fn = torch.compile(self.model) if compile else self.model
        if compile:
            self.runtime = "torch.compile"

    @torch.inference_mode()
    def run(self, images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device, self.dtype)
        return self.fn(x).float().cpu().numpy()

    @torch.inference_mode()
    def time_once(self, images: np.ndarray) -> float:
        """Milliseconds of the forward pass alone (input already on the device; CUDA synchronised)."""
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device, self.dtype)
        if self.device != "cpu":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        self.fn(x)
        if self.device != "cpu":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1e3


class CudaGraphRunner(TorchRunner):
    """The module captured once per input shape as a CUDA graph and replayed (no per-kernel launch
    cost): static input/output buffers, 3 warm-up runs on a side stream before capture. CUDA only."""

    runtime = "torch-cuda-graph"

    def __init__(self, model: nn.Module, device: str = "cuda", dtype: torch.dtype = torch.float16, threads=None):
        super().__init__(model, device=device, dtype=dtype)
        self.graphs: dict[tuple, tuple] = {}

    def _graph(self, shape: tuple):
        if shape not in self.graphs:
            x = torch.zeros(shape, device=self.device, dtype=self.dtype)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.inference_mode():
                for _ in range(3):
                    self.model(x)
            torch.cuda.current_stream().wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g), torch.inference_mode():
                y = self.model(x)
            self.graphs[shape] = (g, x, y)
        return self.graphs[shape]

    @torch.inference_mode()
    def run(self, images: np.ndarray) -> np.ndarray:
        g, x, y = self._graph(tuple(images.shape))
        x.copy_(torch.from_numpy(np.ascontiguousarray(images)).to(self.device, self.dtype))
        g.replay()
        return y.float().cpu().numpy()

    @torch.inference_mode()
    def time_once(self, images: np.ndarray) -> float:
        """Milliseconds of one replay (input already in the static buffer; synchronised)."""
        g, x, _ = self._graph(tuple(images.shape))
        x.copy_(torch.from_numpy(np.ascontiguousarray(images)).to(self.device, self.dtype))
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        g.replay()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1e3


def module_runner(directory, device: str = "cpu", precision: str = "fp32", graph: bool = False,
                  threads: int | None = None) -> TorchRunner:
    """A runner over a saved generated module (:func:`vitshrink.codegen.load`): eager, or replayed as a
    CUDA graph; ``precision`` ``"fp32"`` or ``"fp16"``."""
    dtype = torch.float16 if precision == "fp16" else torch.float32
    cls = CudaGraphRunner if graph else TorchRunner
    return cls(load(directory), device=device, dtype=dtype, threads=threads)
