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
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from .codegen.attention import attention_form
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
            torch.onnx.export(
                model.eval(), (example,), str(path), dynamo=True, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},), external_data=False, verbose=False, report=False,
            )
    except Exception as e:  # noqa: BLE001 - report any exporter failure as a broken promise
        raise VerificationError(f"ONNX export failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    onnx.save(cleanup(onnx.load(str(path))), str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)  # from the file: no second in-memory copy
    except Exception as e:  # noqa: BLE001
        raise VerificationError(f"ONNX checker rejected {path.name}: {str(e).splitlines()[0]}") from e
    return path


def onnx_max_abs_diff(onnx_path: str | Path, images: torch.Tensor, expected: torch.Tensor, threads: int = 2) -> float:
    """max |ONNX Runtime(images) - expected| over the logits (fp32, CPU); ``expected`` = torch's logits."""
    got = OrtRunner(onnx_path, threads=threads).run(images.numpy())
    return float(np.abs(got - expected.numpy()).max())
