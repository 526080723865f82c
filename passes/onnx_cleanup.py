"""ONNX -> ONNX cleanup before an engine is built (onnx-graphsurgeon).

Folds constants, removes dead nodes and unused initialisers, and sorts the graph topologically.
Exact: no arithmetic changes beyond evaluating constant sub-graphs once at compile time.
"""
from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.logger import G_LOGGER


def cleanup(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding + dead-node removal + toposort with onnx-graphsurgeon.

    Args:
        model: an in-memory ONNX model (weights embedded).
    Returns:
        The cleaned model (a new ModelProto; opset and IR version kept).
    """
    graph = gs.import_onnx(model)
    severity = G_LOGGER.severity
    G_LOGGER.severity = G_LOGGER.ERROR  # folding large constants (Swin's bias + mask) is intended
    try:
        graph.fold_constants().cleanup(remove_unused_graph_inputs=False).toposort()
    finally:
        G_LOGGER.severity = severity
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    del out.opset_import[:]
    out.opset_import.extend(model.opset_import)
    return out
