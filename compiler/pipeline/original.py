"""The user's original model as the latency baseline: what every latency entry compares the pruned
model with first -- timm's own module with this compile's weights (for an imported checkpoint, the
source's weights in the dense layout), in the same engine: the module itself for the torch engines,
timm's own ``torch.onnx.export`` for the ONNX engines (exported in a child process beside the compile,
checked against timm's logits before it is timed)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import VerificationError
from ..export import BackgroundExport, onnx_max_abs_diff
from ..runtime import engines
from ..runtime.torch_runner import save_original


class OriginalBaseline:
    """Made ready at the fidelity stage (the timm model is alive then), finished before timing.

    ``info``: the report's ``original`` section; ``artifacts``: ``{"onnx": file, "module": dir}`` for the
    artifact kinds of the engines that will be timed (a kind whose baseline failed is left out, said in
    ``info``)."""

    def __init__(self, timm_model: nn.Module, model_name: str, imported: bool, opt, shape, work: Path,
                 timm_logits: torch.Tensor, log):
        self.opt, self.timm_logits, self.artifacts, self.export = opt, timm_logits, {}, None
        timed = [e for e in opt.engines if e != "tensorrt" and not engines.status(e)] if opt.bench_seconds > 0 else []
        kinds = {engines.source_artifact(e) for e in timed}
        self.info: dict = {"model": f"timm's own {model_name}" + (" with the imported weights in the dense layout"
                                                                   if imported else "")}
        if not kinds:
            self.info.update(status="not timed", reason="no latency timed (--bench-seconds 0 or no engine runs here)")
            return
        with log.stage("original", "save the original model (timm's own) as the latency baseline"):
            module_dir = save_original(timm_model, work / "original_module")
            if "module" in kinds:
                self.artifacts["module"] = module_dir
                self.info["module"] = {"status": "ok", "how": "timm's nn.Module, as the user runs it"}
            if "onnx" in kinds:  # exported on the other core while the compile goes on; checked in finish()
                self.export = BackgroundExport(module_dir / "original.pt", work / "original.onnx", shape)
        self.info["status"] = "ok"

    def finish(self, x: torch.Tensor) -> None:
        """Wait for the ONNX export and check it against timm's logits on the verification images ``x``; a
        failure is reported and that baseline left out -- the compile does not fail for it."""
        if self.export is None:
            return
        try:
            path = self.export.wait()
        except VerificationError as e:  # timm's model would not export: time without it, say why
            self.info["onnx"] = {"status": "skipped", "reason": str(e)}
            return
        d = onnx_max_abs_diff(path, x, self.timm_logits, threads=max(self.opt.threads))
        self.info["onnx"] = {"status": "ok", "how": "torch.onnx.export (dynamo) of timm's module, opset 20",
                             "max_abs_diff": d, "export_s": round(self.export.seconds, 1)}
        if d <= self.opt.tolerance:
            self.artifacts["onnx"] = path
        else:
            self.info["onnx"].update(status="skipped", reason=f"timm's export differs from timm by {d:.3g}")

    def cancel(self) -> None:
        """Stop the background export if the compile ends before it is needed."""
        if self.export is not None:
            self.export.cancel()
