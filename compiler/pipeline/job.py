"""The compile job (``vitshrink compile``): checkpoint + spec -> verified pruned model, ONNX, report.

:class:`CompileJob` runs the stages in order, one method each (any failure leaves no output directory):

1. :meth:`~CompileJob.read_inputs`: the spec file (or a pruned checkpoint, imported), the timm model and
   its checkpoint, the spec validated (bad input: :class:`~vitshrink.errors.VitshrinkError`, before
   any heavy work);
2. :meth:`~CompileJob.check_fidelity`: the codegen of the unpruned IR against timm's own forward;
3. :meth:`~CompileJob.prune` (the family's passes) and :meth:`~CompileJob.lay_out` (head layout chosen,
   exact re-layouts, codegen);
4. :meth:`~CompileJob.check_exactness`: the pruned module vs the family's masked dense reference (max
   abs diff on logits <= tolerance; dynamic token rules also keep identical tokens; then per pass,
   :mod:`~.verify_each`), and the saved
   checkpoint reloaded with :func:`vitshrink.load`; :meth:`~CompileJob.count`: MACs, parameters, structure;
5. :meth:`~CompileJob.export`: ONNX of dense and pruned, onnx.checker, ONNX Runtime vs torch; every
   requested engine against torch;
6. :meth:`~CompileJob.time`: latency per engine (dense and pruned interleaved), optional TensorRT;
7. :meth:`~CompileJob.measure_accuracy` on an ImageFolder directory when given;
8. report.json + report.md + plots, then the temporary directory is moved into place.

A failed verification raises :class:`~vitshrink.errors.VerificationError` (CLI exit 1).
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Optional

import torch

from .. import families
from ..codegen.checkpoint import load, save
from ..counting import count_macs
from ..errors import ModelError, VerificationError, VitshrinkError
from ..export import INPUT_NAME, OPSET, export_onnx, exporter_of, onnx_max_abs_diff
from ..frontends.timm import eval_transform, preprocessing
from ..importers import import_checkpoint, import_dense
from ..importers.verify import import_report, source_logits
from ..report.schema import FORMAT as REPORT_FORMAT
from ..report.write import write_report
from ..runtime import engines
from ..runtime.machine import machine
from ..spec.format import load_spec, save_spec
from .engine_checks import build_tensorrt, save_dense_module, time_engines, verify_engines
from .inputs import check_spec_model, label_names, referenced_tensors, verification_images
from .accuracy import accuracy_section
from .calibration import load_images, plan as plan_images
from .layout_choice import choose_layout
from .options import CompileOptions, with_overrides
from .original import OriginalBaseline, original_weights
from .precision import build_low_precision, kinds_needed
from .output import check_output, commit_output, prepare_output, scratch_dir, sha256, toolchain
from .progress import Log
from .verify_each import check_each_pass


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


class CompileJob:
    """One compile of ``model_name`` pruned as the spec at ``spec_path`` says (None: ``opt.checkpoint`` is
    a pruned checkpoint of another tool) into ``out``. :meth:`run` runs every stage; large objects
    (the dense IR, modules) are dropped as soon as no later stage needs them, so peak memory is the
    dense weights once plus what the exporter needs."""

    def __init__(self, model_name: str, spec_path: Optional[str | Path], out: Optional[str | Path], opt: CompileOptions):
        if spec_path is None and opt.checkpoint is None:
            raise VitshrinkError("no spec: give a mask spec file (spec=... / --spec), or a pruned checkpoint to import (--checkpoint)")
        if out is None:
            raise VitshrinkError("no output directory: give out=... / --out")
        opt.check()
        self.model_name, self.spec_path, self.out, self.opt = model_name, spec_path, Path(out), opt
        check_output(self.out)
        self.log = Log(opt.progress)
        self.report: dict = {}
        self.original: Optional[OriginalBaseline] = None
        self._calib = None  # calibration images, read on first use (calibration_images)

    # ------------------------------------------------------------------------------------ 1-2 inputs

    def read_inputs(self) -> None:
        """Stage 1: the spec (or the imported checkpoint), the timm model, the resolved spec, the
        verification images. Warnings are shown only once the input is known to be good."""
        opt, log = self.opt, self.log
        self.imported, self.original_weights, self.original_model = None, None, None
        with log.stage("import", f"import {self.model_name}"):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if self.spec_path is None:
                    self.imported = import_checkpoint(opt.checkpoint, self.model_name, opt.source_format, opt.dense_checkpoint,
                                                      opt.trust_pickle, opt.import_options)
                    self.spec = self.imported.spec
                    timm_model, dense_ir, extras = families.import_model(
                        self.model_name, state_dict=self.imported.state_dict, configure=self.imported.configure,
                        img_size=opt.img_size, model_kwargs=self.imported.model_kwargs, num_classes=opt.num_classes)
                else:
                    self.spec = load_spec(self.spec_path)
                    check_spec_model(self.spec, self.model_name, opt.allow_model_mismatch)
                    self.original_weights = original_weights(opt.checkpoint, opt.original_checkpoint, self.spec.meta)
                    like = self.original_weights["checkpoint"] if self.original_weights.get("separate") else None
                    timm_model, dense_ir, extras = import_dense(self.model_name, opt.checkpoint, opt.img_size, opt.num_classes, like)
                    if like:  # masks' re-fitted weights: the original is the user's (an HF directory configures both)
                        self.original_model = import_dense(self.model_name, like, opt.img_size, opt.num_classes)[0]
            checkpoint = {**timm_model.state_dict(), **extras}
            self.family = families.family_of(dense_ir)
            self.resolved = self.family.spec.resolve(self.spec, dense_ir, checkpoint)
            if opt.data and not dense_ir.num_classes:
                raise ModelError(f"--data: {self.model_name} is a feature extractor (num_classes=0, output "
                                 f"[B, {dense_ir.num_outputs}]); top-1 accuracy needs a classifier")
            calibrates = any(engines.ENGINES[e].precision == "int8" and not engines.status(e) for e in opt.engines)
            self.images = plan_images(opt.calib, opt.calib_images, opt.data, dense_ir.num_classes, self.spec.meta, calibrates,
                                      opt.limit, label_names(opt.labels, timm_model))
            if self.images.warning:
                warnings.warn(self.images.warning)
            self.transform, self.preprocessing = eval_transform(timm_model), preprocessing(timm_model)
        for w in caught:  # bad input has ended with its one error line before any warning is shown
            log.warn(str(w.message))
        self.shape = (dense_ir.in_chans, *dense_ir.img_size)
        self.tensors = referenced_tensors(self.resolved, checkpoint)  # exit classifier, token predictors
        real = [p for p, _ in self.images.accuracy_items or []] or self.images.calib_paths
        self.x, self.real_rows = verification_images(opt.verify_images, self.shape, real, self.transform, dense_ir.patch_size)
        self.timm_model, self.dense_ir = timm_model, dense_ir

    def check_fidelity(self, work: Path) -> None:
        """Stage 2: the codegen of the unpruned IR against timm's own forward; for an import, what the
        source computes; then the original model is kept for the latency baseline
        (:class:`~.original.OriginalBaseline`) and dropped: the IR holds the weights."""
        opt = self.opt
        with self.log.stage("fidelity", "import fidelity (IR codegen vs timm)"), torch.no_grad():
            timm_logits = self.timm_model(self.x)
            fidelity = _max_diff(self.family.codegen.build_module(self.dense_ir, share=True)(self.x), timm_logits)
            self.source = source_logits(self.imported, self.model_name, self.x) if self.imported is not None else None
        original, original_logits = self.timm_model, timm_logits
        if self.original_model is not None:
            with torch.no_grad():
                original, original_logits = self.original_model, self.original_model(self.x)
        self.original = OriginalBaseline(original, self.model_name, self.imported is not None, self.opt,
                                         self.shape, work, original_logits, self.log, self.original_weights)
        self.report["original"] = self.original.info
        self.timm_model = self.original_model = None
        if fidelity > opt.tolerance:
            raise VerificationError(f"import fidelity failed: IR codegen differs from timm by {fidelity:.3g} > {opt.tolerance:g}")
        spec_path, ckpt = self.spec_path, opt.checkpoint
        self.report.update({
            "format": REPORT_FORMAT, "model": self.model_name, "family": self.family.name, "input": list(self.shape),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "preprocessing": self.preprocessing,
            "inputs": {
                "spec": ({"path": str(spec_path), "sha256": sha256(spec_path)} if spec_path is not None
                         else {"path": None, "imported_from": str(ckpt)}),
                "checkpoint": ({"path": str(ckpt), "sha256": sha256(ckpt)} if ckpt else
                               {"path": None, "random_init": True, "seed": families.RANDOM_INIT_SEED}),
                "data": opt.data,
            },
            "toolchain": toolchain(), "machine": machine(), "calibration": self.images.calibration,
            "import": {"max_abs_diff": fidelity, "tolerance": opt.tolerance, "passed": True},
        })
        if self.imported is not None:
            self.report["import"].update(import_report(self.imported))

    # ------------------------------------------------------------------------------ 3-4 the model

    def prune(self) -> None:
        """Stage 3: the family's structural (and token) passes."""
        with self.log.stage("passes", "structural and token passes"):
            self.pruned_ir = self.family.passes.apply_spec(self.dense_ir, self.resolved, self.tensors)

    def lay_out(self, work: Path) -> None:
        """Stage 3b: the head layout (timed on the first engine with ``--layout auto``), the exact
        re-layouts and codegen."""
        self.layout, self.report["layout"], self.timed_layout = choose_layout(self.pruned_ir, self.opt, self.shape, work, self.log)
        with self.log.stage("codegen", f"layout ({self.layout}) + codegen"):
            self.laid_out = self.family.passes.lay_out(self.pruned_ir, self.layout, self.opt.token_layout)
            self.pruned = self.family.codegen.build_module(self.laid_out)
        self.padded = any(sum(b.attn.qk_dims) != sum(c.attn.qk_dims) or sum(b.attn.v_dims) != sum(c.attn.v_dims)
                          for b, c in zip(self.pruned_ir.blocks, self.laid_out.blocks))  # grouping only reorders
        self.report["layout"]["padded"] = self.padded

    def check_exactness(self, tmp: Path) -> None:
        """Stage 4: the pruned module against the family's masked dense reference, the kept tokens of
        dynamic rules, the saved checkpoint reloaded, and an import against what its source computes.

        Raises:
            VerificationError: any of them differs by more than the tolerance.
        """
        opt, tol, x = self.opt, self.opt.tolerance, self.x
        with self.log.stage("exactness", "exactness vs masked dense reference"), torch.no_grad():
            ref, ref_ids = self.family.reference.reference_forward(self.dense_ir, self.resolved, x, self.tensors, trace=True)
            self.logits = self.pruned(x)
            exact = _max_diff(self.logits, ref)
            ids_same = None
            if ref_ids:  # dynamic token rules: the kept tokens must be the same ones
                _, ids = self.family.codegen.build_module(self.laid_out, share=True, trace=True)(x)
                ids_same = len(ids) == len(ref_ids) and all(torch.equal(a, b) for a, b in zip(ids, ref_ids))
            save(self.pruned, tmp / "model")
            reload_diff = _max_diff(load(tmp / "model")(x), self.logits)
        self.report["exactness"] = {
            "max_abs_diff": exact, "tolerance": tol, "passed": exact <= tol, "reload_max_abs_diff": reload_diff,
            "inputs": f"{opt.verify_images} random + 2 flat-block" + (f" + {self.real_rows} real images" if self.real_rows else ""),
            "reference": "dense model with masks as zeros (heads/channels/neurons), identity (blocks), "
                         "LayerNorm over kept embed channels, early-exit classifier, tokens as alive/key masks",
        }
        if self.source is not None:  # an imported checkpoint: what the source tool computes
            ref_logits, note = self.source
            d = _max_diff(self.logits, ref_logits) if ref_logits is not None else None
            self.report["import"].update(source_max_abs_diff=d, source_reference=note)
            if d is not None and d > tol:
                raise VerificationError(f"import failed: the compiled model differs from what the source checkpoint "
                                        f"computes by {d:.3g} > {tol:g}")
        if ids_same is not None:
            self.report["exactness"]["token_ids_identical"] = ids_same
            if not ids_same:
                raise VerificationError("exactness failed: token rules kept (or merged) other tokens than the reference")
        failure = (f"exactness failed: pruned model differs from the masked dense reference by {exact:.3g} "
                   f"(reload {reload_diff:.3g}) > {tol:g}") if exact > tol or reload_diff > tol else None
        if failure or opt.verify_each:  # name the pass that broke it (check every pass with --verify-each)
            with self.log.stage("verify-each", "verify after each pass"):
                self.report["exactness"]["per_pass"] = check_each_pass(
                    self.family, self.dense_ir, self.resolved, x, self.tensors, (self.layout, opt.token_layout), tol, failure)

    def count(self) -> None:
        """MACs (structure after pruning, and what the laid-out graph executes), parameters, structure;
        then the IRs are dropped."""
        shape, family = self.shape, self.family
        self.dense = family.codegen.build_module(self.dense_ir, share=True)
        with self.log.stage("count", "count MACs and parameters"):
            structural = family.codegen.build_module(self.pruned_ir, share=True) if self.padded else self.pruned
            macs_dense, macs_pruned = count_macs(self.dense, (1, *shape)), count_macs(structural, (1, *shape))
            macs_exec = count_macs(self.pruned, (1, *shape)) if self.padded else macs_pruned
            del structural
        self.report["params"] = {"dense": self.dense_ir.num_params(), "pruned": self.pruned_ir.num_params()}
        self.report["macs"] = {"dense": macs_dense, "pruned": macs_pruned, "executed": macs_exec,
                               "ratio": macs_pruned / macs_dense, "unit": "MACs per image"}
        self.report["structure"] = family.report.block_table(self.dense_ir, self.pruned_ir)
        self.num_classes = self.dense_ir.num_classes
        self.dense_ir = self.pruned_ir = self.laid_out = None

    # ---------------------------------------------------------------------------- 5-7 the engines

    def export(self, tmp: Path, work: Path) -> None:
        """Stage 5: ONNX of the pruned model (``tmp/model.onnx``) and of the dense baseline (``work``; only when
        an ONNX engine times it or ``--data`` measures it), each checked in ONNX Runtime against torch --
        through the ``ort`` engine's verification when that engine is requested --, then every engine.

        Raises:
            VerificationError: the exporter, onnx.checker, ONNX Runtime or an engine disagrees.
        """
        opt, tol, x = self.opt, self.opt.tolerance, self.x
        onnx_engines = any(engines.source_artifact(e) == "onnx" for e in opt.engines)
        dense_onnx = (onnx_engines and opt.bench_seconds > 0) or bool(opt.data)
        with self.log.stage("export", "export ONNX" + (" (dense baseline + pruned)" if dense_onnx else " (pruned)")), torch.no_grad():
            want_pruned, want_dense = self.logits, self.dense(x)
            onnx_dense = export_onnx(self.dense, work / "dense.onnx", self.shape) if dense_onnx else None
            if "onnx" in self.timed_layout:  # the layout choice exported this very graph already
                onnx_pruned = Path(shutil.move(self.timed_layout["onnx"], tmp / "model.onnx"))
            else:
                onnx_pruned = export_onnx(self.pruned, tmp / "model.onnx", self.shape)
            self.pruned = None
            dense_dir = save_dense_module(self.dense, work) if any(e.startswith("torch") for e in opt.engines) else None
            self.dense = None
            self.original.finish(self.x)
        originals = self.original.artifacts
        self.artifacts = {"onnx": {"original": originals.get("onnx"), "dense": onnx_dense, "pruned": onnx_pruned},
                          "module": {"original": originals.get("module"), "dense": dense_dir, "pruned": tmp / "model"}}
        if kinds_needed(opt.engines):
            self.quantize(tmp, work)
        # int8 engines calibrated on real images are verified on real images (their ranges do not cover noise)
        low_rows = slice(x.shape[0] - self.real_rows, None) if self.real_rows and self.images.calib_paths else None
        self.report["engines"] = verify_engines(opt.engines, self.artifacts, x, {"pruned": want_pruned, "dense": want_dense,
                                                "original": self.original.timm_logits}, max(opt.threads), tol, self.log,
                                                low_rows)
        ort = self.report["engines"].get("ort", {})
        if ort.get("status") == "ok" and (onnx_dense is None) == (ort["dense_max_abs_diff"] is None):  # the same check, done once
            d_pruned, d_dense = ort["max_abs_diff"], ort["dense_max_abs_diff"]
        else:
            d_pruned = onnx_max_abs_diff(onnx_pruned, x, want_pruned, threads=max(opt.threads))
            d_dense = onnx_max_abs_diff(onnx_dense, x, want_dense, threads=max(opt.threads)) if onnx_dense else None
        self.report["export"] = {
            "onnx_max_abs_diff": d_pruned, "dense_onnx_max_abs_diff": d_dense, "tolerance": tol,
            "passed": d_pruned <= tol and (d_dense is None or d_dense <= tol), "opset": OPSET, "input": INPUT_NAME,
            "dynamic_batch": True, "file": "model.onnx", "bytes": onnx_pruned.stat().st_size,
            "exporter": exporter_of(onnx_pruned),
        }
        if not self.report["export"]["passed"]:
            raise VerificationError(f"export verification failed: ONNX Runtime differs from torch by "
                                    f"{max(d_pruned, d_dense or 0):.3g} > {tol:g}")
        self.report["verified"] = True

    def quantize(self, tmp: Path, work: Path) -> None:
        """Stage 5b: the low-precision artifacts of the requested engines (:mod:`.precision`), calibrated on
        the calibration images of :mod:`.calibration` (the verification inputs when there are none)."""
        self.report["precision"] = build_low_precision(self.opt.engines, self.artifacts, self.calibration_images(),
                                                       self.images.calibration["source"], tmp, work, self.log)

    def calibration_images(self):
        """The calibration images [N, C, H, W] float32 (read once): :mod:`.calibration`'s choice, else the
        verification inputs."""
        if self._calib is None:
            paths = self.images.calib_paths
            if paths is not None:
                with self.log.stage("calibration", f"read {len(paths)} calibration images"):
                    self._calib = load_images(paths, self.transform).numpy()
            else:
                self._calib = self.x.numpy()
        return self._calib

    def time(self, tmp: Path) -> None:
        """Stage 6: latency per engine (a fresh worker process per engine and thread count), and TensorRT."""
        opt, macs = self.opt, self.report["macs"]
        if opt.bench_seconds <= 0:  # nothing is timed: no entry (a 20-round figure would be noise)
            self.report["latency"] = []
        else:
            self.report["latency"] = time_engines(opt.engines, self.artifacts, opt.batch, opt.threads, self.shape,
                                                  opt.bench_seconds, macs["dense"] / macs["pruned"], self.log,
                                                  self.report.get("engines"))
        if opt.trt:
            self.report["engines"].update(build_tensorrt(tmp, self.artifacts["onnx"]["pruned"], INPUT_NAME, self.shape, opt,
                                                         self.calibration_images, self.log))

    def measure_accuracy(self) -> None:
        """Stage 7: top-1/top-5 on ``--data``'s accuracy images (:func:`.accuracy.accuracy_section`)."""
        if self.opt.data:
            self.report["accuracy"] = accuracy_section(self.report.get("engines", {}), self.artifacts, self.images,
                                                       self.opt.data, self.transform, self.num_classes,
                                                       max(self.opt.threads), self.log, self.report["original"]["model"])

    # ------------------------------------------------------------------------------------- the run

    def write(self, tmp: Path) -> None:
        """Stage 8: spec.json (and import.json), report.json, report.md and the plots into ``tmp``."""
        with self.log.stage("report", "write report"):
            save_spec(self.spec, tmp / "spec.json")
            if self.imported is not None:
                (tmp / "import.json").write_text(json.dumps(self.report["import"], indent=1) + "\n")
            self.report.update(timings_s=self.log.timings, peak_rss_gb=self.log.peak_rss_gb)  # peak RSS after each stage
            write_report(self.report, tmp)

    def run(self) -> dict:
        """Every stage in order; the output directory appears only when all passed. Returns the report."""
        work = Path(tempfile.mkdtemp(prefix="vitshrink-work-", dir=scratch_dir()))
        tmp = created_parent = None
        try:
            self.read_inputs()
            self.check_fidelity(work)
            tmp, created_parent = prepare_output(self.out)
            self.prune()
            self.lay_out(work)
            self.check_exactness(tmp)
            self.count()
            self.export(tmp, work)
            self.time(tmp)
            self.measure_accuracy()
            self.write(tmp)
            commit_output(tmp, self.out)
        except BaseException:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            if created_parent is not None:
                shutil.rmtree(created_parent, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        self.log.info(f"[bold green]wrote[/] {self.out}/ (report.md, report.json, widths.png, latency.png, model.onnx, model/, spec.json)")
        return self.report


def compile_model(model_name: str, spec: str | Path | None = None, out: str | Path | None = None,
                  options: Optional[CompileOptions] = None, **kwargs) -> dict:
    """Compile ``model_name`` pruned as ``spec`` says into the directory ``out`` (``vitshrink compile``).

    The stages are :class:`CompileJob`'s (latency in ms, speed-up, realization = speed-up / MACs ratio).

    Example::

        report = vitshrink.compile_model("deit_tiny_patch16_224", "spec.json", "out/",
                                         checkpoint="deit_tiny.safetensors", batch=(1, 8), threads=2)
        report["latency"][0]["speedup"]

    Args:
        model_name: a timm model name (ViT/DeiT or Swin), e.g. ``"deit_small_patch16_224"``.
        spec: mask spec v1 file (``.json`` or ``.safetensors``); None: ``checkpoint`` is a checkpoint
            pruned by another tool (Torch-Pruning, torch.nn.utils.prune, NNI, zeroed structure), imported
            with its masks (see :mod:`vitshrink.importers`) and checked against what the source computes.
        out: output directory; written atomically (built in a temporary sibling, then moved).
        options: a :class:`~vitshrink.pipeline.options.CompileOptions`; or give its fields as
            keyword arguments (``checkpoint=``, ``data=``, ``batch=``, ``threads=``, ``bench_seconds=``, ``limit=``,
            ``layout=``, ``token_layout=``, ``tolerance=``, ``verify_images=``, ``verify_each=``, ``trt=``,
            ``progress=``), which override the fields of ``options``.
    Returns:
        The report, a dict (the content of ``out/report.json``; fields in :mod:`vitshrink.report.schema`).
    Raises:
        VitshrinkError: bad input (spec, checkpoint, model, data, an unknown keyword) -- nothing is written.
        VerificationError: exactness, import fidelity or export verification failed -- nothing is written.
    """
    return CompileJob(model_name, spec, out, with_overrides(options, kwargs)).run()
