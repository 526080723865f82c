"""The compile job (``vitshrink compile``): checkpoint + spec -> verified pruned model, ONNX, report.

Stages, in order (any failure leaves no output directory behind):

1. read the spec file, import the timm model and its checkpoint, validate the spec (bad input:
   :class:`~vitshrink.errors.VitshrinkError`, before any heavy work);
2. import fidelity: the codegen of the unpruned IR against timm's own forward;
3. structural and token passes, then the layout passes (head padding, prefix token order); codegen;
4. exactness: pruned module vs :func:`~vitshrink.reference.reference_forward` (max abs diff on
   logits <= tolerance; for dynamic token rules also identical kept tokens), and the saved
   checkpoint reloaded with :func:`vitshrink.load`;
5. ONNX export of dense and pruned (same codegen), onnx.checker, ONNX Runtime vs torch;
6. latency (ONNX Runtime, dense and pruned interleaved) at each batch size and thread count;
   optional TensorRT engine;
7. accuracy on an ImageFolder directory when given;
8. report.json + report.md + plots, then the temporary directory is moved into place.

A failed verification raises :class:`~vitshrink.errors.VerificationError` (CLI exit 1).
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from .artifacts import check_output, commit_output, machine, prepare_output, sha256, toolchain  # noqa: F401 (re-exported)
from .errors import VerificationError, VitshrinkError
from .pipeline_support import _Log, tie_images, verification_images  # noqa: F401 (re-exported)

DEFAULT_TOLERANCE = 1e-4


@dataclass
class CompileOptions:
    """Options of :func:`compile_model`; each field is the ``vitshrink compile`` flag of the same name.

    Attributes:
        checkpoint: weights of the model (``.safetensors`` / ``.pth``); None: random weights (latency
            and exactness stay meaningful, accuracy does not; a warning says so).
        data: ImageFolder directory for top-1/top-5 of dense and pruned (and 4 real verification images).
        batch: batch sizes to time (an int or a sequence), e.g. ``(1, 8)``.
        threads: ONNX Runtime intra-op thread counts to time (an int or a sequence); at most 2 on 2 cores.
        bench_seconds: timing budget in seconds per (batch, threads) setting; rounds go on past it (up
            to 3x) while the figure is not yet stable (:func:`vitshrink.runtime.latency.stability`).
        limit: evaluate only the first ``limit`` images of ``data``.
        layout: ``"auto"`` (time both on the first requested engine when heads are irregular:
            :mod:`vitshrink.stage_layout`), ``"pad"`` irregular heads to one width per block, or
            ``"group"`` heads of equal width batched together.
        token_layout: static tokens as ``"prefix"`` slices (one permutation) or ``"gather"``/scatter.
        tolerance: max abs diff on logits (fp32) for import fidelity, exactness and export.
        verify_images: seeded random images used for verification (plus 2 flat-block, plus real ones).
        trt: also build a TensorRT fp16 engine (skipped with the reason where TensorRT is missing).
        progress: stage lines and progress bars on stderr (the CLI's ``--quiet`` turns them off).
        source_format: without a spec, ``checkpoint`` is a pruned checkpoint of another tool; its format
            (``--from``), detected when None (:func:`vitshrink.importers.import_checkpoint`).
        dense_checkpoint: dense weights for formats that hold masks only (NNI).
        trust_pickle: let a pickled checkpoint run its own code (off: classes are recorded, not run).
        import_options: format options (``--import-option KEY=VALUE``), e.g. ``{"exit": "11"}`` (WDPruning).
        engines: engines to verify and time (``--engines``): names of
            :data:`vitshrink.runtime.engines.ENGINES` (``ort``, ``openvino``, ``native``, ``torch``, the CUDA
            ones), ``"all"``, or a comma-separated string; engines that cannot run here are listed in the
            report as skipped with the reason. ``tensorrt`` implies ``trt``.
    Raises:
        VitshrinkError: from :func:`compile_model`, for a value out of range (named).
    """

    checkpoint: Optional[str] = None
    data: Optional[str] = None
    batch: Sequence[int] | int = (1,)
    threads: Sequence[int] | int = (2,)
    bench_seconds: float = 10.0
    limit: Optional[int] = None
    layout: str = "auto"
    token_layout: str = "prefix"
    tolerance: float = DEFAULT_TOLERANCE
    verify_images: int = 4
    trt: bool = False
    progress: bool = True
    source_format: Optional[str] = None
    dense_checkpoint: Optional[str] = None
    trust_pickle: bool = False
    import_options: Optional[dict] = None
    engines: Sequence[str] | str = ("ort",)

    def __post_init__(self):
        from vitshrink.runtime.engines import parse_engines

        try:
            self.engines = parse_engines(self.engines)
        except ValueError as e:
            raise VitshrinkError(f"--engines: {e}") from None
        if "tensorrt" in self.engines:
            self.trt = True
        self.batch = (self.batch,) if isinstance(self.batch, int) else tuple(self.batch)
        self.threads = (self.threads,) if isinstance(self.threads, int) else tuple(self.threads)
        if self.checkpoint is not None:
            self.checkpoint = str(self.checkpoint)
        if self.data is not None:
            self.data = str(self.data)


def _options(options: Optional[CompileOptions], kwargs: dict) -> CompileOptions:
    """``options`` (or the defaults) with the keyword arguments of :func:`compile_model` applied."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(CompileOptions)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise VitshrinkError(f"compile_model got an unknown option '{unknown[0]}' (options: {', '.join(sorted(names))})")
    return dataclasses.replace(options or CompileOptions(), **kwargs)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def compile_model(model_name: str, spec: str | Path | None = None, out: str | Path | None = None,
                  options: Optional[CompileOptions] = None, **kwargs) -> dict:
    """Compile ``model_name`` pruned as ``spec`` says into the directory ``out`` (``vitshrink compile``).

    Stages: import, import fidelity, passes + codegen, exactness against the masked dense reference
    (max abs diff on logits, fp32), ONNX export (dense and pruned) checked in ONNX Runtime, latency
    (dense and pruned interleaved; ms, speed-up and realization = speed-up / MACs ratio), accuracy.

    Example::

        report = vitshrink.compile_model("deit_tiny_patch16_224", "spec.json", "out/",
                                         checkpoint="deit_tiny.safetensors", batch=(1, 8), threads=2)
        report["latency"][0]["speedup"]

    Args:
        model_name: a timm model name (DeiT/ViT family), e.g. ``"deit_small_patch16_224"``.
        spec: mask spec v1 file (``.json`` or ``.safetensors``); None: ``checkpoint`` is a checkpoint
            pruned by another tool (Torch-Pruning, torch.nn.utils.prune, NNI, zeroed structure), imported
            with its masks (see :mod:`vitshrink.importers`) and checked against what the source computes.
        out: output directory; written atomically (built in a temporary sibling, then moved).
        options: a :class:`CompileOptions`; or give its fields as keyword arguments
            (``checkpoint=``, ``data=``, ``batch=``, ``threads=``, ``bench_seconds=``, ``limit=``,
            ``layout=``, ``token_layout=``, ``tolerance=``, ``verify_images=``, ``trt=``, ``progress=``),
            which override the fields of ``options``.
    Returns:
        The report, a dict (the content of ``out/report.json``; fields in :mod:`vitshrink.report`).
    Raises:
        VitshrinkError: bad input (spec, checkpoint, model, data, an unknown keyword) -- nothing is written.
        VerificationError: exactness, import fidelity or export verification failed -- nothing is written.
    """
    from . import codegen
    from .frontends.timm import eval_transform, import_model
    from .report import write_report
    from .spec import load_spec, resolve_spec, save_spec

    opt = _options(options, kwargs)
    if spec is None and opt.checkpoint is None:
        raise VitshrinkError("no spec: give a mask spec file (spec=... / --spec), or a pruned checkpoint to import (--checkpoint)")
    if out is None:
        raise VitshrinkError("no output directory: give out=... / --out")
    spec_path = spec
    if opt.layout not in ("auto", "pad", "group"):
        raise VitshrinkError(f"--layout {opt.layout!r}: expected 'auto', 'pad' or 'group'")
    if opt.token_layout not in ("prefix", "gather"):
        raise VitshrinkError(f"--token-layout {opt.token_layout!r}: expected 'prefix' or 'gather'")
    if any(b < 1 for b in opt.batch) or any(t < 1 for t in opt.threads):
        raise VitshrinkError("--batch and --threads take positive integers")
    out = Path(out)
    check_output(out)
    log = _Log(opt.progress)

    # 1. inputs (all validation before any output exists)
    imported = None
    with log.stage("import", f"import {model_name}"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if spec_path is None:
                from .importers import import_checkpoint

                imported = import_checkpoint(opt.checkpoint, model_name, opt.source_format, opt.dense_checkpoint,
                                             opt.trust_pickle, opt.import_options)
                spec = imported.spec
                timm_model, dense_ir, extras = import_model(model_name, state_dict=imported.state_dict,
                                                            configure=imported.configure)
            else:
                spec = load_spec(spec_path)
                timm_model, dense_ir, extras = import_model(model_name, opt.checkpoint)
        checkpoint = {**timm_model.state_dict(), **extras}
        resolved = resolve_spec(spec, dense_ir, checkpoint)
        if opt.data:
            from vitshrink.runtime.accuracy import list_images

            list_images(opt.data, dense_ir.num_classes)
        transform = eval_transform(timm_model)
    for w in caught:  # only once the input is known to be good: bad input ends with its one error line
        log.warn(str(w.message))
    shape = (dense_ir.in_chans, *dense_ir.img_size)
    # keep only the checkpoint tensors the spec references (exit classifier, token predictors)
    tensors = _referenced_tensors(resolved, checkpoint)
    x = verification_images(opt.verify_images, shape, opt.data, transform, dense_ir.num_classes, dense_ir.patch_size)

    # 2. import fidelity (then the timm model is dropped: the IR holds the weights)
    with log.stage("fidelity", "import fidelity (IR codegen vs timm)"), torch.no_grad():
        fidelity = _max_diff(codegen.build_module(dense_ir, share=True)(x), timm_model(x))
        if imported is not None:
            from .importers.verify import source_logits

            owned_source = source_logits(imported, model_name, x)
    del timm_model, extras, checkpoint
    if fidelity > opt.tolerance:
        raise VerificationError(f"import fidelity failed: IR codegen differs from timm by {fidelity:.3g} > {opt.tolerance:g}")

    report: dict = {
        "format": "vitshrink.report/1",
        "model": model_name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": {
            "spec": ({"path": str(spec_path), "sha256": sha256(spec_path)} if spec_path is not None
                     else {"path": None, "imported_from": str(opt.checkpoint)}),
            "checkpoint": ({"path": str(opt.checkpoint), "sha256": sha256(opt.checkpoint)} if opt.checkpoint
                           else {"path": None, "random_init": True}),
            "data": opt.data,
        },
        "toolchain": toolchain(),
        "machine": machine(),
        "import": {"max_abs_diff": fidelity, "tolerance": opt.tolerance, "passed": True},
    }
    tmp, created_parent = prepare_output(out)
    work = Path(tempfile.mkdtemp(prefix="vitshrink-work-"))
    if imported is not None:
        from .importers.verify import import_report

        report["import"].update(import_report(imported))
    owned = {"dense_ir": dense_ir, "source": owned_source if imported is not None else None}  # handed over, so the callee can free the dense weights early
    del dense_ir
    try:
        report.update(_compile_into(tmp, work, owned, resolved, tensors, x, transform, shape, opt, log))
        if "import_source" in report:
            src = report.pop("import_source")
            report["import"].update(source_max_abs_diff=src["max_abs_diff"], source_reference=src["reference"])
        with log.stage("report", "write report"):
            save_spec(spec, tmp / "spec.json")
            if imported is not None:
                (tmp / "import.json").write_text(json.dumps(report["import"], indent=1) + "\n")
            report["timings_s"] = log.timings
            report["peak_rss_gb"] = log.peak_rss_gb  # process peak resident memory after each stage
            write_report(report, tmp)
        commit_output(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created_parent is not None:
            shutil.rmtree(created_parent, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info(f"[bold green]wrote[/] {out}/ (report.md, report.json, widths.png, latency.png, model.onnx, model/, spec.json)")
    return report


def _referenced_tensors(resolved, tensors: dict) -> dict:
    """The checkpoint tensors a resolved spec reads: exit classifier and token predictor weights."""
    prefixes = [r.predictor.prefix for r in resolved.dynamic.values() if r.predictor is not None]
    e = resolved.exit
    if e is not None:
        prefixes += [p for p in (e.head, e.head_dist, e.norm) if p is not None]
    return {k: v for k, v in tensors.items() if any(k.startswith(p + ".") for p in prefixes)}


def _compile_into(tmp, work, owned, resolved, tensors, x, transform, shape, opt, log) -> dict:
    """Stages 3-7 into ``tmp`` (``work``: scratch for the dense baseline). Takes the dense IR out of
    ``owned`` and drops large objects as soon as they are no longer needed: peak memory is the dense
    weights once plus what the exporter needs."""
    from vitshrink.passes import apply_spec, group_heads, pad_heads, prefix_token_order
    from vitshrink.runtime.ort import OrtRunner

    from . import codegen
    from .counting import count_macs
    from .export import INPUT_NAME, OPSET, export_onnx, onnx_max_abs_diff
    from .reference import reference_forward
    from .report import block_table
    from .stage_engines import save_dense_module, time_engines, verify_engines
    from .stage_layout import choose_layout

    rep: dict = {}
    tol = opt.tolerance
    dense_ir = owned.pop("dense_ir")

    # 3. passes + codegen
    with log.stage("passes", "structural and token passes"):
        pruned_ir = apply_spec(dense_ir, resolved, tensors)
    layout, rep["layout"] = choose_layout(pruned_ir, opt, shape, work, log)
    with log.stage("codegen", f"layout ({layout}) + codegen"):
        laid_out = pad_heads(pruned_ir) if layout == "pad" else group_heads(pruned_ir)
        if opt.token_layout == "prefix":
            laid_out = prefix_token_order(laid_out)
        pruned = codegen.build_module(laid_out)
    padded = any(sum(b.attn.qk_dims) != sum(c.attn.qk_dims) or sum(b.attn.v_dims) != sum(c.attn.v_dims)
                 for b, c in zip(pruned_ir.blocks, laid_out.blocks))  # grouping only reorders heads
    rep["layout"]["padded"] = padded

    # 4. exactness + reload
    with log.stage("exactness", "exactness vs masked dense reference"), torch.no_grad():
        ref, ref_ids = reference_forward(dense_ir, resolved, x, tensors, trace=True)
        got = pruned(x)
        exact = _max_diff(got, ref)
        ids_same = None
        if ref_ids:  # dynamic token rules: the kept tokens must be the same ones
            _, ids = codegen.build_module(laid_out, share=True, trace=True)(x)
            ids_same = len(ids) == len(ref_ids) and all(torch.equal(a, b) for a, b in zip(ids, ref_ids))
        codegen.save(pruned, tmp / "model")
        reload_diff = _max_diff(codegen.load(tmp / "model")(x), got)
    rep["exactness"] = {
        "max_abs_diff": exact, "tolerance": tol, "passed": exact <= tol, "reload_max_abs_diff": reload_diff,
        "inputs": f"{opt.verify_images} random + 2 flat-block" + (f" + {opt.verify_images} real images" if opt.data else ""),
        "reference": "dense model with masks as zeros (heads/channels/neurons), identity (blocks), "
                     "LayerNorm over kept embed channels, early-exit classifier, tokens as alive/key masks",
    }
    source = owned.pop("source", None)
    if source is not None:  # an imported checkpoint: what the source tool computes
        ref_logits, note = source
        rep["import_source"] = {"max_abs_diff": _max_diff(got, ref_logits) if ref_logits is not None else None,
                                "reference": note}
        if ref_logits is not None and rep["import_source"]["max_abs_diff"] > tol:
            raise VerificationError(f"import failed: the compiled model differs from what the source checkpoint "
                                    f"computes by {rep['import_source']['max_abs_diff']:.3g} > {tol:g}")
    if ids_same is not None:
        rep["exactness"]["token_ids_identical"] = ids_same
        if not ids_same:
            raise VerificationError("exactness failed: dynamic token rules kept other tokens than the reference")
    if exact > tol or reload_diff > tol:
        raise VerificationError(
            f"exactness failed: pruned model differs from the masked dense reference by {exact:.3g} "
            f"(reload {reload_diff:.3g}) > {tol:g}")

    # counting
    dense = codegen.build_module(dense_ir, share=True)
    with log.stage("count", "count MACs and parameters"):
        structural = codegen.build_module(pruned_ir, share=True) if padded else pruned
        macs_dense, macs_pruned = count_macs(dense, (1, *shape)), count_macs(structural, (1, *shape))
        macs_exec = count_macs(pruned, (1, *shape)) if padded else macs_pruned
        del structural
    rep["params"] = {"dense": dense_ir.num_params(), "pruned": pruned_ir.num_params()}
    rep["macs"] = {"dense": macs_dense, "pruned": macs_pruned, "executed": macs_exec,
                   "ratio": macs_pruned / macs_dense, "unit": "MACs per image"}
    rep["structure"] = block_table(dense_ir, pruned_ir)
    num_classes = dense_ir.num_classes
    del dense_ir, pruned_ir, laid_out

    # 5. export (each module is dropped after its export; the checks use logits computed before)
    with log.stage("export", "export ONNX (dense baseline + pruned) and check with ONNX Runtime"), torch.no_grad():
        want_pruned, want_dense = got, dense(x)
        onnx_pruned = export_onnx(pruned, tmp / "model.onnx", shape)
        del pruned
        onnx_dense = export_onnx(dense, work / "dense.onnx", shape)
        dense_dir = save_dense_module(dense, work) if any(e.startswith("torch") for e in opt.engines) else None
        del dense
        d_pruned = onnx_max_abs_diff(onnx_pruned, x, want_pruned, threads=max(opt.threads))
        d_dense = onnx_max_abs_diff(onnx_dense, x, want_dense, threads=max(opt.threads))
    rep["export"] = {
        "onnx_max_abs_diff": d_pruned, "dense_onnx_max_abs_diff": d_dense, "tolerance": tol,
        "passed": d_pruned <= tol and d_dense <= tol, "opset": OPSET, "input": INPUT_NAME,
        "dynamic_batch": True, "file": "model.onnx", "bytes": onnx_pruned.stat().st_size,
    }
    if not rep["export"]["passed"]:
        raise VerificationError(f"export verification failed: ONNX Runtime differs from torch by {max(d_pruned, d_dense):.3g} > {tol:g}")
    # 5b. every engine against torch (a mismatch fails the compile, naming the engine)
    artifacts = {"onnx": {"dense": onnx_dense, "pruned": onnx_pruned}, "module": {"dense": dense_dir, "pruned": tmp / "model"}}
    rep["engines"] = verify_engines(opt.engines, artifacts, x, {"pruned": want_pruned, "dense": want_dense},
                                    max(opt.threads), tol, log)
    rep["verified"] = True

    # 6. latency per engine (a fresh worker process per engine and thread count: vitshrink.runtime.latency)
    rep["latency"] = time_engines(opt.engines, artifacts, opt.batch, opt.threads, shape, opt.bench_seconds,
                                  macs_dense / macs_pruned, log)
    if opt.trt:
        trt = _tensorrt(tmp, onnx_pruned, shape, opt, log)
        rep["engines"]["tensorrt"] = {"runtime": "tensorrt", "device": "cuda", **trt,
                                      **({"status": "skipped", "reason": trt["skipped"]} if "skipped" in trt else {"status": "built"})}

    # 7. accuracy
    if opt.data:
        from vitshrink.runtime.accuracy import evaluate, list_images

        runners = {"dense": OrtRunner(onnx_dense, threads=max(opt.threads)), "pruned": OrtRunner(onnx_pruned, threads=max(opt.threads))}
        with log.stage("accuracy", f"accuracy on {opt.data}"):
            n = len(list_images(opt.data, num_classes)[:opt.limit])
            with log.bar("images", n) as bar:
                acc = evaluate(runners, opt.data, transform, num_classes, limit=opt.limit, progress=bar)
        rep["accuracy"] = {
            "n": acc["n"], "runtime": "onnxruntime", "transform": "timm eval transform of the model",
            "dense_top1": acc["dense_top1"], "pruned_top1": acc["pruned_top1"],
            "dense_top5": acc["dense_top5"], "pruned_top5": acc["pruned_top5"],
            "top1_agreement": acc["top1_agreement"],
        }
    return rep


def _tensorrt(tmp: Path, onnx_path: Path, shape, opt: CompileOptions, log: _Log) -> dict:
    from vitshrink.runtime.tensorrt import build_engine, tensorrt_status

    from .export import INPUT_NAME

    reason = tensorrt_status()
    if reason:
        log.warn(f"TensorRT skipped: {reason}")
        return {"skipped": reason}
    with log.stage("tensorrt", "build TensorRT engine (fp16)"):
        hi = max(max(opt.batch), 1)
        build_engine(onnx_path, tmp / "model.trt", INPUT_NAME, shape, batches=(1, hi, hi), fp16=True,
                     timing_cache=tmp / "trt.timing-cache")
    return {"file": "model.trt", "fp16": True}
