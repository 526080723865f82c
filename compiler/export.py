"""ONNX export of a generated model (:class:`~vitshrink.codegen.layers.PrunedModel`) and its check in ONNX Runtime.

Attention is exported in its explicit form (two MatMuls and a Softmax, :func:`vitshrink.codegen.attention_form`),
not through SDPA: the SDPA form exports with extra Shape/Slice/Concat/Reshape nodes and measured slower on
both CPU engines (``python benchmarks/attention_form.py``: paired per-round ratios explicit/SDPA, 2 threads,
deit_small heads+MLP 50% -- ONNX Runtime 0.984 / 0.979 at batch 1 / 8, OpenVINO 0.976 / 0.980;
swin_tiny -- ONNX Runtime 0.983 / 1.000).

One self-contained file (weights inside, no external data), input ``images`` [batch, C, H, W] with a
dynamic batch axis, output ``logits`` [batch, num_classes], opset 20 (native Gelu), exported by torch's
``torch.export``-based exporter and cleaned by :mod:`vitshrink.passes.onnx_cleanup`.
"""
from __future__ import annotations

import contextlib
import io
import logging
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from .codegen.attention import attention_form
from .compat import ensure_timm_importable
from .errors import VerificationError
from .passes.onnx_cleanup import cleanup
from .runtime.ort import OrtRunner

OPSET = 20
INPUT_NAME = "images"
OUTPUT_NAME = "logits"


def export_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, int, int], opset: int = OPSET,
                fused_attention: bool = False) -> Path:
    """Export ``model`` (images [B, *input_shape] -> logits) to ``path`` with a dynamic batch axis; a
    generated model's attention in its explicit form unless ``fused_attention`` (any other module, e.g.
    timm's own, as it is).

    Raises:
        VerificationError: the exporter failed or the file fails ``onnx.checker``.
    """
    path = Path(path)
    example = torch.zeros((2, *input_shape))
    batch = torch.export.Dim("batch", min=1, max=4096)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), torch.no_grad(), \
                attention_form(model, fused_attention):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model.eval(), (example,), None, dynamo=True, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},), verbose=False, report=False,
            )
            proto = program.model_proto  # in memory: the file is written once, after the cleanup
        del program
    except Exception as e:  # noqa: BLE001 - report any exporter failure as a broken promise
        raise VerificationError(f"ONNX export failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    proto = cleanup(proto)
    onnx.save(proto, str(path))
    del proto
    try:
        onnx.checker.check_model(str(path), full_check=True)  # from the file: no second in-memory copy
    except Exception as e:  # noqa: BLE001
        raise VerificationError(f"ONNX checker rejected {path.name}: {str(e).splitlines()[0]}") from e
    return path


def onnx_max_abs_diff(onnx_path: str | Path, images: torch.Tensor, expected: torch.Tensor, threads: int = 2) -> float:
    """max |ONNX Runtime(images) - expected| over the logits (fp32, CPU); ``expected`` = torch's logits."""
    got = OrtRunner(onnx_path, threads=threads).run(images.numpy())
    return float(np.abs(got - expected.numpy()).max())


class BackgroundExport:
    """:func:`export_onnx` of a pickled module (``torch.save``: the user's original timm model, vitshrink's
    dense model) in a child process, so that it runs on the other core while the compile goes on: on the
    2-core build machine a deit_base export is ~8-12 s of mostly single-threaded Python. :meth:`wait`
    returns the file."""

    def __init__(self, module_file: Path, path: Path, input_shape: tuple[int, int, int]):
        self.path, self.t0 = Path(path), time.perf_counter()
        self.err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "vitshrink.export", str(module_file), str(path),
                                      *map(str, input_shape)], stdout=subprocess.DEVNULL, stderr=self.err)

    def wait(self) -> Path:
        """The exported file, once the child is done.

        Raises:
            VerificationError: the child failed (its last error line).
        """
        code = self.proc.wait()
        self.seconds = time.perf_counter() - self.t0
        self.err.seek(0)
        tail = [ln for ln in self.err.read().splitlines() if ln.strip()][-1:]
        self.err.close()
        if code != 0:
            raise VerificationError(tail[0] if tail else f"ONNX export of {self.path.name}: exit {code}")
        return self.path


    def cancel(self) -> None:
        """Stop the child if it still runs (the compile failed before it was needed)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self.err.closed:
            self.err.close()


def main(argv: list[str]) -> int:
    """``python -m vitshrink.export MODULE.pt OUT.onnx C H W`` (what :class:`BackgroundExport` runs): the
    pickled module written by this compile is loaded (timm's classes: the compat shim first) and exported."""
    src, out, *shape = argv
    ensure_timm_importable()
    model = torch.load(src, map_location="cpu", weights_only=False)  # written by this compile, not a user file
    try:
        export_onnx(model, out, tuple(int(v) for v in shape))
    except VerificationError as e:
        print(f"{e}".splitlines()[0], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
