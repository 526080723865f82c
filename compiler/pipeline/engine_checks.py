"""Compile stages per engine (``--engines``): verify each engine against torch, then time dense vs
pruned on each, one engine after another (never two engines' thread pools alive at once).
See :mod:`vitshrink.runtime.engines` for the engines themselves; ``--trt`` builds TensorRT."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from rich.markup import escape

from ..codegen.checkpoint import save
from ..errors import VerificationError
from ..runtime import engines
from ..runtime.compare import compare_with_torch
from ..runtime.latency import latency_entry
from ..runtime.tensorrt import build_engine, tensorrt_status


def verify_engines(names: Sequence[str], artifacts: dict, x: torch.Tensor, want: dict, threads: int,
                   tolerance: float, log) -> dict:
    """For every engine in ``names``: run the pruned and the dense artifact on the verification images
    ``x`` [B, C, H, W] and compare with torch's logits ``want`` ({"pruned", "dense"}: [B, classes])
    through polygraphy's Comparator (:func:`vitshrink.runtime.compare.compare_with_torch`).

    ``artifacts``: {"onnx": {"dense", "pruned"}, "module": {"dense", "pruned"}} paths. Returns
    ``report["engines"]``: per engine its ``runtime``, ``version``, ``device``, ``precision`` (what it
    really ran at, where the engine reports it), ``threads``, ``max_abs_diff`` (pruned),
    ``dense_max_abs_diff``, ``top1_agreement`` (pruned engine vs pruned torch), ``tolerance`` and
    ``passed``; or ``status: skipped`` with the ``reason``.

    Raises:
        VerificationError: an engine differs from torch by more than its precision's tolerance
            (fp32: ``tolerance``; fp16: :data:`vitshrink.runtime.engines.TOLERANCE`), naming it.
    """
    out = {}
    for name in names:
        spec = engines.ENGINES[name]
        reason = engines.status(name)
        if name == "tensorrt":
            reason = reason or "built by --trt (polygraphy); not compared here"
        if reason:
            out[name] = {"status": "skipped", "reason": reason, "runtime": spec.runtime, "device": spec.device}
            log.info(escape(f"engine {name}: skipped ({reason})"))
            continue
        tol = engines.TOLERANCE.get(spec.precision, tolerance)
        with log.stage(f"engine_{name}", f"verify engine {name} ({spec.what}) against torch"):
            row = {"status": "ok", "runtime": spec.runtime, "version": engines.version(name), "device": spec.device,
                   "precision": spec.precision, "threads": threads, "tolerance": tol,
                   "file": "model.onnx" if spec.artifact == "onnx" else "model/"}
            cmp = {}
            for which in ("pruned", "dense"):
                path = artifacts[spec.artifact][which]
                cmp[which] = compare_with_torch(lambda p=path: engines.make_runner(name, p, threads), x.numpy(),
                                                want[which].numpy(), tol, f"{name} {which}")
                if cmp[which]["precision"]:
                    row["precision_reported"] = str(cmp[which]["precision"])
            row["max_abs_diff"] = cmp["pruned"]["max_abs_diff"]
            row["dense_max_abs_diff"] = cmp["dense"]["max_abs_diff"]
            row["top1_agreement"] = cmp["pruned"]["top1_agreement"]
            row["passed"] = cmp["pruned"]["passed"] and cmp["dense"]["passed"]
            row["compared_by"] = "polygraphy Comparator, SimpleCompareFunc(atol=tolerance, rtol=0)"
        out[name] = row
        if not row["passed"]:
            raise VerificationError(f"engine {name} failed verification: it differs from torch by "
                                    f"{max(row['max_abs_diff'], row['dense_max_abs_diff']):.3g} > {tol:g} ({spec.precision})")
    return out


def time_engines(names: Sequence[str], artifacts: dict, batches: Sequence[int], threads_list: Sequence[int], shape,
                 bench_seconds: float, ideal: float, log) -> list[dict]:
    """Latency entries (``report["latency"]``) of every runnable engine: the user's original model (where
    ``artifacts`` has one for the engine's artifact kind), vitshrink's dense and the pruned model timed
    interleaved, per thread count and batch size (:func:`vitshrink.runtime.latency.latency_entry`, plus
    ``engine``, ``precision`` and ``warmup_s``). Engines are timed one after another, each in its own
    worker process."""
    entries = []
    for name in names:
        spec = engines.ENGINES[name]
        if name == "tensorrt" or engines.status(name):
            continue
        arts = artifacts[spec.artifact]
        paths = {k: arts[k] for k in ("original", "dense", "pruned") if arts.get(k) is not None}
        for threads in threads_list:
            label = f"latency {name} {spec.device}, {threads} threads, batch {','.join(map(str, batches))}"
            with log.stage(f"latency_{name}_t{threads}", label), log.bar(f"{name} {threads} threads", 10 * len(batches)) as bar:
                done = {}

                def tick(batch, d, planned):
                    done[batch] = (d, planned)
                    bar(sum(v[0] for v in done.values()), sum(v[1] for v in done.values()) + 10 * (len(batches) - len(done)))

                results = engines.measure(name, paths, batches, threads, shape, budget_s=bench_seconds,
                                          extend_s=2 * bench_seconds, progress=tick)
            for b in batches:
                provider = {"ort": "CPUExecutionProvider", "ort-cuda": "CUDAExecutionProvider"}.get(name)
                e = latency_entry(results[b], ideal, threads=threads, runtime=spec.runtime, device=spec.device, provider=provider)
                entries.append({"engine": name, "precision": spec.precision, **e})
    return entries


def save_dense_module(dense, work: Path) -> Path:
    """The dense baseline module saved for the torch engines (they load module directories)."""
    return save(dense, work / "dense_model")


def build_tensorrt(tmp: Path, onnx_path: Path, input_name: str, shape, batches: Sequence[int], log) -> dict:
    """``--trt``: a TensorRT fp16 engine of the pruned ONNX through polygraphy (``model.trt`` in ``tmp``), or
    ``{"skipped": reason}`` where TensorRT cannot run here."""
    reason = tensorrt_status()
    if reason:
        log.warn(f"TensorRT skipped: {reason}")
        return {"skipped": reason}
    with log.stage("tensorrt", "build TensorRT engine (fp16)"):
        hi = max(max(batches), 1)
        build_engine(onnx_path, tmp / "model.trt", input_name, shape, batches=(1, hi, hi), fp16=True,
                     timing_cache=tmp / "trt.timing-cache")
    return {"file": "model.trt", "fp16": True}
