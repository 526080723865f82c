"""Compile stage: accuracy on ``--data`` -- the images no calibration used (:mod:`.calibration`), decoded once
and fed to every model: vitshrink's dense and the pruned model in ONNX Runtime fp32 (the report's headline
figures), and per engine the original and the pruned model at that engine's precision."""
from __future__ import annotations

from ..runtime import engines
from ..runtime.accuracy import evaluate
from ..runtime.ort import OrtRunner


def accuracy_section(checked: dict, artifacts: dict, images, data: str, transform, num_classes: int, threads: int,
                     log, original: str = "timm's own model") -> dict:
    """The report's ``accuracy``: ``n``, ``images`` (which were measured, which left out and why), dense and
    pruned top-1/top-5 and their agreement (ONNX Runtime fp32), and ``engines``: rows ``{engine, precision,
    original_top1, pruned_top1, original_top5, pruned_top5, top1_agreement, original}`` -- ``ort`` fp32 first
    (timm's own export of the original -- ``original`` names its weights: the user's, not ``vitshrink masks``'
    re-fitted ones (:func:`~.original.original_weights`) --, vitshrink's dense model when that export failed), then
    every low-precision engine that passed verification (its original at that precision; None when the
    original's artifact failed its check).

    Args:
        checked: ``report["engines"]``; artifacts: the compile's artifacts per kind; images: the
            :class:`~.calibration.ImageSets` (``accuracy_items``).
    Raises:
        VitshrinkError: an image that cannot be decoded (named).
    """
    onnx = artifacts["onnx"]
    runners = {"dense": OrtRunner(onnx["dense"], threads=threads), "pruned": OrtRunner(onnx["pruned"], threads=threads)}
    rows = [("ort", "fp32", "dense", "pruned")]
    if onnx.get("original") is not None:
        runners["ort:original"] = OrtRunner(onnx["original"], threads=threads)
        rows[0] = ("ort", "fp32", "ort:original", "pruned")
    for name, e in checked.items():
        spec = engines.ENGINES[name]
        if e.get("status") != "ok" or not engines.low_precision(name) or spec.runtime == "tensorrt":
            continue
        arts = artifacts[spec.artifact]
        runners[f"{name}:pruned"] = engines.make_runner(name, arts["pruned"], threads)
        orig = None
        if arts.get("original") is not None and e.get("original_passed", True):
            orig = f"{name}:original"
            runners[orig] = engines.make_runner(name, arts["original"], threads)
        rows.append((name, spec.precision, orig, f"{name}:pruned"))
    items = images.accuracy_items
    with log.stage("accuracy", f"accuracy on {len(items)} images of {data} ({len(runners)} models)"):
        with log.bar("images", len(items)) as bar:
            acc = evaluate(runners, data, transform, num_classes, progress=bar, items=items)
    pred = acc["predictions"]
    return {
        "n": acc["n"], "runtime": "onnxruntime", "transform": "timm eval transform of the model",
        "images": images.accuracy_images,
        **{k: acc[k] for k in ("dense_top1", "pruned_top1", "dense_top5", "pruned_top5", "top1_agreement")},
        "engines": [{"engine": name, "precision": prec,
                     "original_top1": acc[f"{o}_top1"] if o else None, "pruned_top1": acc[f"{p}_top1"],
                     "original_top5": acc[f"{o}_top5"] if o else None, "pruned_top5": acc[f"{p}_top5"],
                     "top1_agreement": float((pred[o] == pred[p]).mean()) if o else None,
                     "original": None if not o else (f"{original}, exported" if o.endswith("original")
                                                                      else "vitshrink's dense model")}
                    for name, prec, o, p in rows],
    }
