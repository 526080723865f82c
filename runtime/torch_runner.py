"""torch runners: a module in eager mode, compiled with ``torch.compile`` (inductor), or replayed as a
CUDA graph; in fp32, fp16 or bf16. :func:`module_runner` opens a saved module directory: a generated
model (``arch.json``, :func:`vitshrink.codegen.load`) or the user's original model (``original.pt``,
:func:`save_original`) -- the baseline every latency entry also times."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vitshrink.codegen.checkpoint import load
from vitshrink.compat import ensure_timm_importable

from .base import Runner

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ORIGINAL = "original.pt"


class TorchRunner(Runner):
    """Runs a module on ``device`` ("cpu" or "cuda") in ``dtype`` (float32, float16 or bfloat16).

    Args:
        compile: wrap the module with ``torch.compile`` (inductor; the first call per input shape
            compiles: warm up before timing).
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


def save_original(model: nn.Module, directory: Path) -> Path:
    """The user's original model (a timm module with its weights) pickled into ``directory`` for the
    torch engines' baseline: a file this compile writes and reads back itself."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model, directory / ORIGINAL)
    return directory


def module_runner(directory, device: str = "cpu", precision: str = "fp32", mode: str = "eager",
                  threads: int | None = None) -> TorchRunner:
    """A runner over a saved module directory -- a generated model (:func:`vitshrink.codegen.load`) or an
    original (:func:`save_original`) --: ``mode`` ``eager``, ``compile`` (``torch.compile``) or
    ``graph`` (CUDA-graph replay); ``precision`` ``fp32``, ``fp16`` or ``bf16``."""
    directory = Path(directory)
    if (directory / ORIGINAL).is_file():
        ensure_timm_importable()  # the pickle names timm's classes
        model = torch.load(directory / ORIGINAL, map_location="cpu", weights_only=False)  # written by this compile
    else:
        model = load(directory)
    if mode == "graph":
        return CudaGraphRunner(model, device=device, dtype=DTYPES[precision])
    return TorchRunner(model, device=device, dtype=DTYPES[precision], compile=mode == "compile", threads=threads)
