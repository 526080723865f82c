"""Engine outputs against torch, compared by polygraphy's ``Comparator`` (issue 7 item 1).

polygraphy has no backend for OpenVINO, the native runner or the generated torch module, so each
vitshrink :class:`~vitshrink.runtime.base.Runner` is wrapped in polygraphy's ``BaseRunner`` shape
(:class:`AsPolygraphyRunner`: feed ``{"images": [B, C, H, W]}`` -> ``{"logits": [B, classes]}``), and
torch's logits, computed once by the compile, are replayed by :class:`TorchLogits`. ``Comparator.run``
then runs them on the verification images and ``Comparator.compare_accuracy`` with
``SimpleCompareFunc(atol=tolerance, rtol=0)`` decides: every logit within ``tolerance`` of torch's.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from polygraphy.comparator import Comparator, SimpleCompareFunc
from polygraphy.logger import G_LOGGER

INPUT, OUTPUT = "images", "logits"


def make_adapters():
    """The two polygraphy runner classes: a vitshrink runner as a polygraphy runner, torch's logits replayed."""
    class AsPolygraphyRunner(BaseRunner):
        """A vitshrink runner (made by ``make`` on activation, released on deactivation) as a polygraphy runner."""

        def __init__(self, make: Callable, name: str, input_shape):
            super().__init__(name=name)
            self._make, self._shape, self.runner, self.precision = make, tuple(input_shape), None, None

        def activate_impl(self):
            self.runner = self._make()
            self.precision = getattr(self.runner, "precision", None)

        def get_input_metadata_impl(self):
            return TensorMetadata().add(INPUT, np.float32, (-1, *self._shape))

        def infer_impl(self, feed_dict):
            t0 = time.perf_counter()
            out = np.asarray(self.runner.run(feed_dict[INPUT]), dtype=np.float32)
            self.inference_time = time.perf_counter() - t0  # what polygraphy's last_inference_time() reports
            return OrderedDict([(OUTPUT, out)])

        def deactivate_impl(self):
            self.runner = None

    class TorchLogits(BaseRunner):
        """torch's logits for the one verification batch, replayed (the compile computed them already)."""

        def __init__(self, logits: np.ndarray, input_shape, name: str = "torch"):
            super().__init__(name=name)
            self._logits, self._shape = np.asarray(logits, dtype=np.float32), tuple(input_shape)

        def activate_impl(self):
            pass

        def get_input_metadata_impl(self):
            return TensorMetadata().add(INPUT, np.float32, (-1, *self._shape))

        def infer_impl(self, feed_dict):
            self.inference_time = 0.0
            return OrderedDict([(OUTPUT, self._logits)])

        def deactivate_impl(self):
            pass

    return AsPolygraphyRunner, TorchLogits


def compare_with_torch(make: Callable, images: np.ndarray, torch_logits: np.ndarray, tolerance: float,
                       name: str, metric: str = "max_abs") -> dict:
    """Run an engine (``make()`` -> a :class:`~vitshrink.runtime.base.Runner`) on ``images``
    [B, C, H, W] float32 through polygraphy's Comparator and compare with ``torch_logits`` [B, classes].

    ``metric``: ``"max_abs"`` -- polygraphy's verdict at ``atol=tolerance, rtol=0`` (every logit within
    ``tolerance``); ``"rel_l2"`` -- the relative L2 error ``||engine - torch|| / ||torch||`` over the batch
    at most ``tolerance`` (quantized engines, whose error has no absolute scale).

    Returns:
        ``{"max_abs_diff", "mean_abs_diff", "rel_l2", "passed", "top1_agreement", "logits", "precision"}``
        (the engine's logits as a numpy array; ``precision``: what the runner reports running at, or None).
    """
    AsPolygraphyRunner, TorchLogits = make_adapters()
    severity = G_LOGGER.module_severity
    G_LOGGER.module_severity = G_LOGGER.CRITICAL  # the compile prints its own lines (and fails by name)
    try:
        ref, eng = TorchLogits(torch_logits, images.shape[1:]), AsPolygraphyRunner(make, name, images.shape[1:])
        results = Comparator.run([ref, eng], data_loader=[{INPUT: images}])
        atol = tolerance if metric == "max_abs" else 1e30  # rel_l2 is decided below, on the same outputs
        accuracy = Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(atol=atol, rtol=0.0))
    finally:
        G_LOGGER.module_severity = severity
    (result,) = list(accuracy)  # one comparison function -> one AccuracyResult: {(ref, engine): [iterations]}
    ((_, iterations),) = result.items()
    out = iterations[0][OUTPUT]
    got = np.asarray(results[1][1][0][OUTPUT])
    want = np.asarray(torch_logits, dtype=np.float32)
    rel = float(np.linalg.norm(got - want) / max(float(np.linalg.norm(want)), 1e-12))
    passed = bool(out) if metric == "max_abs" else rel <= tolerance
    return {"max_abs_diff": float(out.max_absdiff), "mean_abs_diff": float(out.mean_absdiff), "rel_l2": rel, "passed": passed,
            "top1_agreement": float((got.argmax(1) == np.asarray(torch_logits).argmax(1)).mean()), "logits": got,
            "precision": eng.precision}
