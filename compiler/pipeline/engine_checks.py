"""Compile stages per engine (``--engines``): verify each engine against torch, then time dense vs
pruned on each, one engine after another (never two engines' thread pools alive at once).
See :mod:`vitshrink.runtime.engines` for the engines themselves; ``--trt`` builds TensorRT."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from rich.markup import escape

from ..codegen.checkpoint import save
from ..errors import VerificationError
from ..runtime import engines
from ..runtime.compare import compare_with_torch
from ..runtime.latency import latency_entry
from ..runtime.tensorrt import build_engine, tensorrt_status


def verify_engines(names: Sequence[str], artifacts: dict, x: torch.Tensor, want: dict, threads: int,
                   tolerance: float, log, low_rows: Optional[slice] = None) -> dict:
    """For every engine in ``names``: run the pruned and the dense artifact on the verification images
    ``x`` [B, C, H, W] and compare with torch's fp32 logits ``want`` ({"pruned", "dense"}: [B, classes];
    ``"original"``: timm's logits, for the original's low-precision artifact) through polygraphy's Comparator
    (:func:`vitshrink.runtime.compare.compare_with_torch`).

    ``artifacts``: {kind: {"original", "dense", "pruned"}} paths per artifact kind (``onnx``, ``module``,
    the low-precision ones). ``low_rows``: the rows of ``x`` int8 engines are verified on -- images like
    their calibration images (real ones when they calibrated on real images: a quantizer's ranges do not
    cover noise); None: all. Returns ``report["engines"]``: per engine its ``runtime``, ``version``,
    ``device``, ``precision`` (and ``precision_reported``: what it really ran at, where the engine reports
    it), ``threads``, ``max_abs_diff`` (pruned), ``dense_max_abs_diff``, ``rel_l2`` (pruned),
    ``top1_agreement`` (pruned engine vs pruned torch), ``tolerance``, ``metric`` (``max_abs`` or
    ``rel_l2``), ``images``, ``passed``, ``file``; a low-precision engine also ``original_max_abs_diff`` /
    ``original_rel_l2`` / ``original_passed`` (a failing original is not timed as the baseline, and
    not fatal); or ``status: skipped`` with the ``reason``.

    Raises:
        VerificationError: an engine differs from torch by more than its precision's tolerance
            (:func:`vitshrink.runtime.engines.tolerance`: fp32 ``tolerance``, fp16/bf16 absolute, int8 relative
            L2), naming it.
    """
    out = {}
    for name in names:
        spec = engines.ENGINES[name]
        reason = engines.status(name)
        if spec.runtime == "tensorrt":
            reason = reason or "built by --trt (polygraphy); not compared here"
        if reason:
            out[name] = {"status": "skipped", "reason": reason, "runtime": spec.runtime, "device": spec.device,
                         "precision": spec.precision}
            log.info(escape(f"engine {name}: skipped ({reason})"))
            continue
        tol, metric = engines.tolerance(spec.precision, tolerance)
        rows = low_rows if (metric == "rel_l2" and low_rows is not None) else slice(None)
        xs = x[rows].numpy()
        with log.stage(f"engine_{name}", f"verify engine {name} ({spec.what}) against torch"):
            arts = artifacts[spec.artifact]
            row = {"status": "ok", "runtime": spec.runtime, "version": engines.version(name), "device": spec.device,
                   "precision": spec.precision, "threads": threads, "tolerance": tol, "metric": metric, "images": len(xs),
                   "file": {"onnx": "model.onnx", "module": "model/"}.get(spec.artifact,
                                                                       "model" + engines.LOW_PRECISION_ARTIFACTS.get(spec.artifact, ("",))[0])}
            cmp = {}
            which_all = ("pruned",) + (("dense",) if arts.get("dense") is not None else ()) + \
                (("original",) if engines.low_precision(name) and arts.get("original") else ())
            for which in which_all:
                path = arts[which]
                cmp[which] = compare_with_torch(lambda p=path: engines.make_runner(name, p, threads), xs,
                                                want[which][rows].numpy(), tol, f"{name} {which}", metric)
                if cmp[which]["precision"]:
                    row["precision_reported"] = str(cmp[which]["precision"])
            dense = cmp.get("dense", {})  # absent where nothing times or measures the dense model
            row["max_abs_diff"] = cmp["pruned"]["max_abs_diff"]
            row["dense_max_abs_diff"] = dense.get("max_abs_diff")
            row["rel_l2"], row["dense_rel_l2"] = cmp["pruned"]["rel_l2"], dense.get("rel_l2")
            row["top1_agreement"] = cmp["pruned"]["top1_agreement"]
            row["passed"] = cmp["pruned"]["passed"] and dense.get("passed", True)
            if "original" in cmp:
                row["original_max_abs_diff"] = cmp["original"]["max_abs_diff"]
                row["original_rel_l2"] = cmp["original"]["rel_l2"]
                row["original_passed"] = cmp["original"]["passed"]
                if not cmp["original"]["passed"]:
                    log.warn(f"engine {name}: the original model's {spec.precision} artifact differs from timm beyond its "
                             f"tolerance ({metric} {cmp['original'][metric if metric == 'rel_l2' else 'max_abs_diff']:.3g}): "
                             "it is not timed as the baseline")
            row["compared_by"] = ("polygraphy Comparator, SimpleCompareFunc(atol=tolerance, rtol=0)" if metric == "max_abs" else
                                  "polygraphy Comparator run; relative L2 error of the logits <= tolerance")
        out[name] = row
        if not row["passed"]:
            worst = max(v for v in ((row["rel_l2"], row["dense_rel_l2"]) if metric == "rel_l2" else
                                    (row["max_abs_diff"], row["dense_max_abs_diff"])) if v is not None)
            raise VerificationError(f"engine {name} failed verification: {'relative L2 error' if metric == 'rel_l2' else 'it differs from torch by'} "
                                    f"{worst:.3g} > {tol:.3g} ({spec.precision})")
    return out


def time_engines(names: Sequence[str], artifacts: dict, batches: Sequence[int], threads_list: Sequence[int], shape,
                 bench_seconds: float, ideal: float, log, checked: Optional[dict] = None) -> list[dict]:
    """Latency entries (``report["latency"]``) of every runnable engine: the user's original model (where
    ``artifacts`` has one for the engine's artifact kind), vitshrink's dense and the pruned model timed
    interleaved, per thread count and batch size (:func:`vitshrink.runtime.latency.latency_entry`, plus
    ``engine``, ``precision`` and ``warmup_s``). A low-precision engine times the original *at its own
    precision* (built with the same tool and calibration) as the baseline, and the fp32 original in its
    fp32 engine in the same rounds (``original_fp32_ms``, ``speedup_vs_original_fp32``). Engines are timed
    one after another, each in its own worker process. ``checked``: ``report["engines"]`` (an original
    whose low-precision artifact failed verification is not timed)."""
    checked = checked or {}
    entries = []
    for name in names:
        spec = engines.ENGINES[name]
        if spec.runtime == "tensorrt" or engines.status(name):
            continue
        arts = artifacts[spec.artifact]
        paths = {k: arts[k] for k in ("original", "dense", "pruned") if arts.get(k) is not None}
        if checked.get(name, {}).get("original_passed") is False:
            paths.pop("original", None)
        per = {}
        if spec.fp32 is not None and artifacts["onnx"].get("original") is not None and spec.artifact != "module":
            paths["original_fp32"], per["original_fp32"] = artifacts["onnx"]["original"], spec.fp32  # where the user is today
        for threads in threads_list:
            label = f"latency {name} {spec.device}, {threads} threads, batch {','.join(map(str, batches))}"
            with log.stage(f"latency_{name}_t{threads}", label), log.bar(f"{name} {threads} threads", 10 * len(batches)) as bar:
                done = {}

                def tick(batch, d, planned):
                    done[batch] = (d, planned)
                    bar(sum(v[0] for v in done.values()), sum(v[1] for v in done.values()) + 10 * (len(batches) - len(done)))

                results = engines.measure(name, paths, batches, threads, shape, budget_s=bench_seconds,
                                          extend_s=2 * bench_seconds, progress=tick, engines=per)
            for b in batches:
                provider = ({"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}[spec.device]
                            if spec.runtime == "onnxruntime" else None)
                e = latency_entry(results[b], ideal, threads=threads, runtime=spec.runtime, device=spec.device, provider=provider)
                entries.append({"engine": name, "precision": spec.precision, **e})
    return entries


def save_dense_module(dense, work: Path) -> Path:
    """The dense baseline module saved for the torch engines (they load module directories)."""
    return save(dense, work / "dense_model")


def build_tensorrt(tmp: Path, onnx_path: Path, input_name: str, shape, opt, calibration: Callable, log) -> dict:
    """``--trt``: TensorRT engines of the pruned ONNX through polygraphy, as ``report["engines"]`` rows:
    ``tensorrt`` (fp16, ``model.trt``) and, for ``tensorrt-int8``, an int8 one calibrated on
    ``calibration()`` images [N, C, H, W] (``model.int8.trt``); or ``status: skipped`` with the reason where
    TensorRT cannot run here."""
    names = [n for n in ("tensorrt", "tensorrt-int8") if n in opt.engines] or ["tensorrt"]
    out = {}
    for name in names:
        int8 = name == "tensorrt-int8"
        reason = tensorrt_status()
        if reason:
            log.warn(f"TensorRT{' int8' if int8 else ''} skipped: {reason}")
            out[name] = {"runtime": "tensorrt", "device": "cuda", "status": "skipped", "reason": reason, "skipped": reason}
            continue
        file = "model.int8.trt" if int8 else "model.trt"
        with log.stage(name.replace("-", "_"), f"build TensorRT engine ({'int8 + ' if int8 else ''}fp16)"):
            hi = max(max(opt.batch), 1)
            build_engine(onnx_path, tmp / file, input_name, shape, batches=(1, hi, hi), fp16=True,
                         timing_cache=tmp / "trt.timing-cache", calibration=calibration() if int8 else None)
        out[name] = {"runtime": "tensorrt", "device": "cuda", "status": "built", "file": file, "fp16": True, "int8": int8}
    return out
