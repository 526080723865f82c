"""ONNX export of a generated model (:class:`~vitshrink.codegen.layers.PrunedModel`) and its check in ONNX Runtime.

Attention is exported in its explicit form (two MatMuls and a Softmax, :func:`vitshrink.codegen.attention_form`),
not through SDPA: the SDPA form exports with extra Shape/Slice/Concat/Reshape nodes and measured slower on
both CPU engines (``python benchmarks/attention_form.py``: paired per-round ratios explicit/SDPA, 2 threads,
deit_small heads+MLP 50% -- ONNX Runtime 0.984 / 0.979 at batch 1 / 8, OpenVINO 0.976 / 0.980;
swin_tiny -- ONNX Runtime 0.983 / 1.000).

One self-contained file (weights inside, no external data), input ``images`` [batch, C, H, W] with a
dynamic batch axis, output ``logits`` [batch, num_classes], opset 20 (native Gelu), cleaned by
:mod:`vitshrink.passes.onnx_cleanup`.

The exporter: torch's TorchScript-based ``torch.onnx.export(dynamo=False)`` first, its ``torch.export``-based
exporter (``dynamo=True``, torch's default since 2.9) when that fails. Both give the same operators for these
models (the qkv projection split by one ``Split`` instead of three ``Slice``; the class token expanded through
``Shape``/``Where``) and the same logits; the TorchScript one is 15-20x faster -- 0.6-0.8 s against 8-11 s for
a DeiT-Tiny on the 2-vCPU AVX2 EPYC, where the export was most of every compile (three per timed compile: the
original, the dense and the pruned model). It is deprecated by torch, hence the fallback; which one made a file
is written into it (``metadata_props["vitshrink.exporter"]``: :func:`exporter_of`) and into the report. The
original, the dense and the pruned model go through the same exporter, so their latency differs by the pruning,
not by the exporter.
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


EXPORTERS = ("torchscript", "dynamo")  # tried in this order
EXPORTER_KEY = "vitshrink.exporter"


def _torchscript(model: nn.Module, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    leaves = len(torch.utils._pytree.tree_leaves(model(example)))  # a traced model returns (logits, kept ids)
    names = [OUTPUT_NAME] + [f"output_{i}" for i in range(1, leaves)]
    buf = io.BytesIO()
    torch.onnx.export(model, (example,), buf, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                      output_names=names, dynamic_axes={n: {0: "batch"} for n in [INPUT_NAME, *names]})
    return onnx.load_from_string(buf.getvalue())


def _shape_inference(proto: onnx.ModelProto) -> onnx.ModelProto | None:
    """ONNX shape inference with data propagation on a copy of ``proto`` whose large initializers are graph
    inputs of the same type and shape (their values are never needed: no 350 MB copy for a Base model); None
    where it fails."""
    g = proto.graph
    inputs = {i.name for i in g.input}
    big = [t for t in g.initializer if int(np.prod(t.dims)) > 1024 and t.name not in inputs]
    names = {t.name for t in big}
    light = onnx.helper.make_model(
        onnx.helper.make_graph(g.node, g.name, [*g.input, *(onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                                                           for t in big)],
                               g.output, [t for t in g.initializer if t.name not in names], value_info=g.value_info),
        opset_imports=proto.opset_import, ir_version=proto.ir_version)
    try:
        return onnx.shape_inference.infer_shapes(light, data_prop=True)
    except Exception:  # noqa: BLE001 - the model keeps what the exporter inferred
        return None


def _inferred(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` with every tensor's inferred shape (``value_info``): the cleanup then folds the shape arithmetic
    the TorchScript exporter left (``Shape`` -> ``Gather`` -> ``Concat`` of static dimensions)."""
    inferred = _shape_inference(proto)
    if inferred is not None:
        del proto.graph.value_info[:]
        proto.graph.value_info.extend(inferred.graph.value_info)
    return proto


def _static_output_dims(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The TorchScript exporter names a dimension it did not infer (a token count after TopK); ONNX's shape
    inference with data propagation derives it: every dimension but the batch is static in these models."""
    outputs = [o for o in proto.graph.output if any(d.dim_param for d in list(o.type.tensor_type.shape.dim)[1:])]
    if not outputs:
        return proto
    for o in outputs:
        for d in list(o.type.tensor_type.shape.dim)[1:]:
            if d.dim_param:
                d.Clear()
    inferred = _shape_inference(proto)
    if inferred is not None:
        types = {o.name: o.type for o in inferred.graph.output}
        for o in outputs:
            o.type.CopyFrom(types[o.name])
    return proto


def _dynamo(model: nn.Module, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(model, (example,), None, dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                                output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},), verbose=False, report=False)
    return program.model_proto  # in memory: the file is written once, after the cleanup


def export_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, int, int], opset: int = OPSET,
                fused_attention: bool = False, exporters: tuple[str, ...] = EXPORTERS) -> Path:
    """Export ``model`` (images [B, *input_shape] -> logits) to ``path`` with a dynamic batch axis; a
    generated model's attention in its explicit form unless ``fused_attention`` (any other module, e.g.
    timm's own, as it is). ``exporters``: tried in order (module docstring); the one that made the file is
    recorded in it (:func:`exporter_of`).

    Raises:
        VerificationError: every exporter failed (each one's first error line), or the file fails ``onnx.checker``.
    """
    path = Path(path)
    example = torch.zeros((2, *input_shape))
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    errors, proto = [], None
    for name in exporters:
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad(), \
                    attention_form(model, fused_attention):
                warnings.simplefilter("ignore")
                proto = {"torchscript": _torchscript, "dynamo": _dynamo}[name](model.eval(), example, opset)
            break
        except Exception as e:  # noqa: BLE001 - report any exporter failure as a broken promise
            errors.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    if proto is None:
        raise VerificationError("ONNX export failed (" + "; ".join(errors) + ")")
    if name == "torchscript":  # shapes for the cleanup's folding of Shape ops
        proto = _inferred(proto)
    proto = cleanup(proto)
    if name == "torchscript":
        proto = _static_output_dims(proto)
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, EXPORTER_KEY: name})
    onnx.save(proto, str(path))
    del proto
    try:
        onnx.checker.check_model(str(path), full_check=True)  # from the file: no second in-memory copy
    except Exception as e:  # noqa: BLE001
        raise VerificationError(f"ONNX checker rejected {path.name}: {str(e).splitlines()[0]}") from e
    return path


def exporter_of(path: str | Path) -> str | None:
    """Which exporter of :data:`EXPORTERS` made the ONNX file at ``path`` (None: not one of :func:`export_onnx`'s)."""
    model = onnx.load(str(path), load_external_data=False)
    return next((p.value for p in model.metadata_props if p.key == EXPORTER_KEY), None)


def onnx_max_abs_diff(onnx_path: str | Path, images: torch.Tensor, expected: torch.Tensor, threads: int = 2) -> float:
    """max |ONNX Runtime(images) - expected| over the logits (fp32, CPU); ``expected`` = torch's logits."""
    got = OrtRunner(onnx_path, threads=threads).run(images.numpy())
    return float(np.abs(got - expected.numpy()).max())
