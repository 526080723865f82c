"""The user's original model as the latency baseline: what every latency entry compares the pruned
model with first -- timm's own module with this compile's weights (for an imported checkpoint, the
source's weights in the dense layout), in the same engine: the module itself for the torch engines,
timm's own ``torch.onnx.export`` for the ONNX engines (through :func:`~vitshrink.export.export_onnx`, the
exporter the dense and the pruned model go through, checked against timm's logits before it is timed)."""
from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from ..errors import VerificationError
from ..export import OPSET, export_onnx, exporter_of, onnx_max_abs_diff
from ..runtime import engines
from ..runtime.torch_runner import save_original


class OriginalBaseline:
    """Made ready at the fidelity stage (the timm model is alive then), finished before timing.

    ``info``: the report's ``original`` section; ``artifacts``: ``{"onnx": file, "module": dir}`` for the
    artifact kinds of the engines that will be timed (a kind whose baseline failed is left out, said in
    ``info``)."""

    def __init__(self, timm_model: nn.Module, model_name: str, imported: bool, opt, shape, work: Path,
                 timm_logits: torch.Tensor, log):
        self.opt, self.timm_logits, self.artifacts, self.onnx, self.onnx_error = opt, timm_logits, {}, None, None
        timed = [e for e in opt.engines if e != "tensorrt" and not engines.status(e)] if opt.bench_seconds > 0 else []
        kinds = {engines.source_artifact(e) for e in timed}
        self.info: dict = {"model": f"timm's own {model_name}" + (" with the imported weights in the dense layout"
                                                                   if imported else "")}
        if not kinds:
            self.info.update(status="not timed", reason="no latency timed (--bench-seconds 0 or no engine runs here)")
            return
        with log.stage("original", "save the original model (timm's own) as the latency baseline"
                       + (" and export it to ONNX" if "onnx" in kinds else "")):
            if "module" in kinds:
                self.artifacts["module"] = save_original(timm_model, work / "original_module")
                self.info["module"] = {"status": "ok", "how": "timm's nn.Module, as the user runs it"}
            if "onnx" in kinds:  # checked in finish(), on the verification images
                t0 = time.perf_counter()
                try:
                    self.onnx = export_onnx(timm_model, work / "original.onnx", shape)
                except VerificationError as e:  # timm's model would not export: time without it, say why
                    self.onnx_error = str(e)
                self.export_s = time.perf_counter() - t0
        self.info["status"] = "ok"

    def finish(self, x: torch.Tensor) -> None:
        """Check the ONNX export against timm's logits on the verification images ``x``; a failure is reported
        and that baseline left out -- the compile does not fail for it."""
        if self.onnx_error is not None:
            self.info["onnx"] = {"status": "skipped", "reason": self.onnx_error}
        if self.onnx is None:
            return
        d = onnx_max_abs_diff(self.onnx, x, self.timm_logits, threads=max(self.opt.threads))
        self.info["onnx"] = {"status": "ok", "how": f"torch.onnx.export ({exporter_of(self.onnx)}) of timm's module, "
                             f"opset {OPSET}", "max_abs_diff": d, "export_s": round(self.export_s, 1)}
        if d <= self.opt.tolerance:
            self.artifacts["onnx"] = self.onnx
        else:
            self.info["onnx"].update(status="skipped", reason=f"timm's export differs from timm by {d:.3g}")
