"""The user's original model as the latency and accuracy baseline: what every latency entry compares the pruned
model with first, and what ``max_top1_drop`` measures from -- timm's own module with the user's original weights
(:func:`original_weights`: not ``vitshrink masks``' re-fitted ones; for an imported checkpoint, the source's
weights in the dense layout), in the same engine: the module itself for the torch engines,
timm's own ``torch.onnx.export`` for the ONNX engines (through :func:`~vitshrink.export.export_onnx`, the
exporter the dense and the pruned model go through, checked against timm's logits before it is timed)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..errors import VerificationError, VitshrinkError
from ..export import OPSET, export_onnx, exporter_of, onnx_max_abs_diff
from ..runtime import engines
from ..runtime.torch_runner import save_original
from .output import sha256


def original_weights(checkpoint: Optional[str], original_checkpoint: Optional[str], meta: dict) -> dict:
    """Which weights the original model -- the latency baseline and the accuracy ``max_top1_drop`` compares
    with -- has: ``--original-checkpoint``, else the checkpoint ``vitshrink masks`` started from (the spec's
    ``meta.source``: path and sha256) when ``checkpoint`` is another file (its re-fitted weights), else
    ``checkpoint`` itself.

    Returns:
        ``{"checkpoint", "sha256", "from", "separate"}`` -- ``separate``: the original is not ``checkpoint``
        (then built from ``checkpoint`` of this dict); ``{"known": False, "reason"}`` where ``checkpoint`` was
        re-fitted by ``vitshrink masks`` and the weights it started from are not here (the report then says
        "the given weights").
    Raises:
        VitshrinkError: ``--original-checkpoint`` is not a file (named).
    """
    given = sha256(checkpoint) if checkpoint else None
    same = {"checkpoint": checkpoint, "sha256": given, "from": "--checkpoint", "separate": False}
    if original_checkpoint is not None:
        if not Path(original_checkpoint).exists():  # a weights file or a transformers directory
            raise VitshrinkError(f"--original-checkpoint {original_checkpoint}: no such file or directory")
        h = sha256(original_checkpoint)
        return same if h == given else {"checkpoint": original_checkpoint, "sha256": h, "from": "--original-checkpoint",
                                        "separate": True}
    src, refit = meta.get("source") or {}, bool(meta.get("refit") or meta.get("weights"))
    if not src.get("sha256") or src["sha256"] == given:
        if refit and not src.get("sha256"):
            return {"known": False, "reason": "the spec's weights were re-fitted by vitshrink masks and it does not say "
                                              "which weights it started from (--original-checkpoint)"}
        return same
    path = Path(src.get("checkpoint", ""))
    if path.exists() and src.get("checkpoint") and sha256(path) == src["sha256"]:  # a file or a transformers directory
        return {"checkpoint": str(path), "sha256": src["sha256"], "from": "the spec's meta.source (the weights vitshrink "
                "masks started from)", "separate": True}
    return {"known": False, "reason": f"the weights vitshrink masks started from ({path}, sha256 {src['sha256'][:12]}) "
                                      "are not there (--original-checkpoint)"}


def original_label(weights: dict) -> str:
    """How the report names the original's weights (:func:`original_weights`)."""
    if weights.get("known", True) is False:
        return "the given weights (the original weights are unknown: " + weights["reason"] + ")"
    if weights["separate"]:
        return f"the original weights {Path(weights['checkpoint']).name} (sha256 {weights['sha256'][:12]}, {weights['from']})"
    return "the given weights" if weights.get("checkpoint") else "random weights"


class OriginalBaseline:
    """Made ready at the fidelity stage (the timm model is alive then), finished before timing.

    ``timm_model``: timm's model with the original's weights (:func:`original_weights`; ``timm_logits`` its
    logits on the verification images). ``info``: the report's ``original`` section; ``artifacts``:
    ``{"onnx": file, "module": dir}`` for the artifact kinds of the engines that will be timed, and the ONNX
    file when ``--data`` measures the original's accuracy (a kind whose baseline failed is left out, said in
    ``info``)."""

    def __init__(self, timm_model: nn.Module, model_name: str, imported: bool, opt, shape, work: Path,
                 timm_logits: torch.Tensor, log, weights: Optional[dict] = None):
        self.opt, self.timm_logits, self.artifacts, self.onnx, self.onnx_error = opt, timm_logits, {}, None, None
        timed = [e for e in opt.engines if e != "tensorrt" and not engines.status(e)] if opt.bench_seconds > 0 else []
        kinds = {engines.source_artifact(e) for e in timed} | ({"onnx"} if opt.data else set())
        weights = weights or {"checkpoint": opt.checkpoint, "separate": False}
        self.info: dict = {"model": f"timm's own {model_name}" + (" with the imported weights in the dense layout"
                                                                   if imported else f" with {original_label(weights)}"),
                           "weights": {k: v for k, v in weights.items() if k != "separate"}}
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
