"""``vitshrink compile`` (one model: prune, verify, export, time, report; optionally gated) and
``vitshrink bench`` (the same into a temporary directory, latency only)."""
from __future__ import annotations

import json
import os
import tempfile

import click

from ..errors import VitshrinkError
from .common import EXIT_CODES, engines_option, fail, img_size_option, int_list
from .gate import gate_options, split_gate_kwargs
from .imports import parse_options


@click.command("compile", epilog="""\b
Examples:
  vitshrink compile deit_tiny_patch16_224 --spec compiler/examples/deit_tiny_example.json --out runs/demo
  vitshrink compile deit_tiny_patch16_224 --checkpoint deit_tiny.safetensors --spec spec.json \\
      --data imagenet/val --batch 1,8 --threads 2 --out runs/tiny
""" + EXIT_CODES)
@click.argument("model")
@click.option("--spec", "spec", default=None,
              help="Mask spec v1 (.json or .safetensors). Omitted: --checkpoint is a pruned checkpoint of another tool, imported.")
@click.option("--out", "out", required=True, help="Output directory (written atomically).")
@click.option("--checkpoint", default=None,
              help="Weights (.safetensors or .pth); random weights when omitted. Without --spec: a pruned checkpoint "
                   "(Torch-Pruning, torch.nn.utils.prune, NNI masks, zeroed structure).")
@click.option("--from", "source_format", default=None, help="Format of a pruned --checkpoint (skip detection).")
@click.option("--dense-checkpoint", default=None, help="Dense weights, for pruned formats that hold masks only (NNI).")
@click.option("--original-checkpoint", default=None,
              help="Weights of the original model (latency baseline, original top-1) when --checkpoint holds others; "
                   "default: the weights `vitshrink masks` started from (the spec's meta.source), else --checkpoint.")
@click.option("--trust-pickle", is_flag=True, help="Let a pickled checkpoint run its own code (default: never).")
@click.option("--allow-model-mismatch", is_flag=True, help="Compile a spec whose meta.model names another model.")
@click.option("--img-size", default=None, callback=img_size_option,
              help="Input size H[,W]: the timm model is created at it (position embeddings of the checkpoint resampled "
                   "as timm does), e.g. 224 for DINOv2 (518 by default).")
@click.option("--num-classes", type=int, default=None,
              help="Classes of the model's head where the checkpoint does not say (0: a feature extractor); default: "
                   "the checkpoint's classifier (a head fine-tuned to N classes gets N).")
@click.option("--labels", default=None,
              help="Label names, one per output in output order (.txt one per line, or .json list / {index: name}): "
                   "--data's folders map to outputs by name. Default: the model's own (HF id2label, timm label_names), "
                   "else ImageNet wnids, else sorted folder order.")
@click.option("--import-option", "import_options", multiple=True, callback=lambda c, p, v: parse_options(v),
              help="KEY=VALUE for the format of a pruned --checkpoint, repeatable (WDPruning: exit=11).")
@click.option("--data", default=None, help="ImageFolder directory for top-1/top-5 of the original, dense and pruned models "
                                           "(images that calibrated are left out).")
@click.option("--calib", default=None, help="Folder of calibration images for the INT8 engines (class folders or not; labels "
                                            "unused). Default: --calib-images of --data, held out from accuracy.")
@click.option("--calib-images", default=128, show_default=True, help="Number of calibration images (a seeded choice).")
@click.option("--batch", "batches", default="1", callback=int_list, show_default=True, help="Batch sizes to time, e.g. 1,8.")
@click.option("--threads", "threads", default="2", callback=int_list, show_default=True, help="ONNX Runtime intra-op threads, e.g. 1,2.")
@click.option("--bench-seconds", default=10.0, show_default=True,
              help="Timing budget in seconds per batch/threads setting; extended up to 3x while the speed-up is not yet stable.")
@click.option("--limit", "limit", type=int, default=None, help="Evaluate only the first N images of --data.")
@click.option("--layout", type=click.Choice(["auto", "pad", "group", "fused"]), default="auto", show_default=True,
              help="Irregular head widths: time the distinct forms on the first engine (auto), pad to one width per "
                   "block, group equal widths, or pad to fused-kernel widths in at most two groups per block.")
@click.option("--token-layout", type=click.Choice(["prefix", "gather"]), default="prefix", show_default=True,
              help="Static token masks: permute tokens once so kept sets are prefixes (slice), or gather/scatter per block.")
@click.option("--tolerance", default=1e-4, show_default=True, help="Max abs diff on logits for exactness and export.")
@click.option("--verify-each", is_flag=True,
              help="Check every pass's output against the reference with the masks so far (report.json exactness.per_pass); "
                   "automatic, to name the pass, when the final exactness check fails.")
@click.option("--trt", is_flag=True, help="Also build a TensorRT fp16 engine (skipped with a reason when unavailable).")
@click.option("--engines", default="ort", show_default=True, callback=engines_option,
              help="Engines to verify against torch and time: ort,openvino,native,torch (CPU fp32); ort-int8, "
                   "openvino-int8, native-int8, openvino-bf16, openvino-fp16 (CPU, low precision: timed against "
                   "the original at the same precision); torch-cuda, torch-cuda-fp16, torch-cuda-graph, ort-cuda, "
                   "ort-cuda-fp16, tensorrt, tensorrt-int8 (GPU); or all. Unavailable ones are listed as skipped "
                   "with the reason.")
@click.option("--quiet", is_flag=True, help="No progress display.")
@gate_options
def compile_cmd(model, spec, out, checkpoint, source_format, dense_checkpoint, original_checkpoint, trust_pickle, allow_model_mismatch, img_size, num_classes, labels,
                import_options, data, calib, calib_images, batches, threads, bench_seconds, limit, layout, token_layout, tolerance, verify_each, trt, engines, quiet, **gate_kwargs):
    """Prune MODEL (a timm ViT/DeiT or Swin name) as SPEC says -- or as a pruned --checkpoint of another tool says --,
    verify, export ONNX, measure, report into OUT. With gate thresholds (--gate FILE, --min-speedup ...)
    the report is then gated as `vitshrink check` does: exit 3 when a check fails (OUT is kept)."""
    from ..gate.flow import prepare_gate, run_gate  # lazy: the compile stack loads only for commands that use it
    from ..pipeline import CompileOptions, compile_model  # lazy: as above

    thresholds, outputs = split_gate_kwargs(gate_kwargs)
    gating = any(v not in (None, (), False) for k, v in thresholds.items() if k != "against") or outputs["gate_file"]
    try:
        gate, baseline = prepare_gate(thresholds, outputs, pyproject=None) if gating else (None, None)
    except VitshrinkError as e:
        fail(e)
    opts = CompileOptions(checkpoint=checkpoint, data=data, calib=calib, calib_images=calib_images, batch=batches, threads=threads,
                          bench_seconds=bench_seconds, limit=limit, layout=layout, token_layout=token_layout,
                          tolerance=tolerance, verify_each=verify_each, trt=trt, progress=not quiet, source_format=source_format,
                          dense_checkpoint=dense_checkpoint, original_checkpoint=original_checkpoint, trust_pickle=trust_pickle,
                          import_options=import_options,
                          engines=engines, allow_model_mismatch=allow_model_mismatch, img_size=img_size,
                          num_classes=num_classes, labels=labels)
    try:
        report = compile_model(model, spec, out, opts)
    except VitshrinkError as e:
        fail(e)
    summary(report)
    if gating:
        try:
            run_gate(report, gate, baseline, outputs, f"vitshrink gate: {out}", quiet=False, report_dir=out,
                     say=lambda m: click.echo(m, err=True))
        except VitshrinkError as e:
            fail(e)


def summary(report: dict) -> None:
    """The compile's result in a few lines on stdout: MACs, exactness, engines, latency, accuracy."""
    m, imp = report["macs"], report["import"]
    if "format" in imp:
        d = imp.get("source_max_abs_diff")
        click.echo(f"imported {imp['format']} ({imp['detected_because']}); compiled vs the source: "
                   + (f"max abs diff {d:.1e}" if d is not None else f"not run -- {imp.get('source_reference')}"))
    click.echo(f"MACs {m['dense'] / 1e9:.3f} G -> {m['pruned'] / 1e9:.3f} G (x{m['dense'] / m['pruned']:.2f}); "
               f"exactness {report['exactness']['max_abs_diff']:.1e}; ONNX {report['export']['onnx_max_abs_diff']:.1e}")
    for name, e in report.get("engines", {}).items():
        if e.get("status") == "ok":
            click.echo(f"engine {name}: {e['runtime']} {e['version']} {e['device']} {e['precision']}, max abs diff vs torch "
                       f"{max(d for d in (e['max_abs_diff'], e['dense_max_abs_diff']) if d is not None):.1e}, top-1 agreement {e['top1_agreement']:.3f}")
        elif e.get("status") == "skipped":
            click.echo(f"engine {name}: skipped ({e['reason']})")
    for e in report["latency"]:
        prec = e.get("precision", "fp32")
        where = f"{e.get('engine', e['runtime'])} {e['device']} batch {e['batch']} threads {e['threads']}"
        flags = [w for w in (("CONTENDED" if e["stability"].get("contended") else "NOISY") if e["stability"]["verdict"] != "stable"
                             else None, "SUSPECT" if e.get("suspect") else None) if w]
        flag = f" [{', '.join(flags)}: see report.md]" if flags else ""
        if "speedup_vs_original" in e:
            orig = "timm's original" + ("" if prec == "fp32" else f" {prec}")
            click.echo(f"{where}: {orig} {e['baseline_ms']['p50']:.2f} ms -> pruned {e['pruned_ms']['p50']:.2f} ms, "
                       f"speed-up x{e['speedup_vs_original']:.3f} (ideal x{e['ideal_speedup']:.3f}, realization "
                       f"{e['realization_vs_original']:.3f}); vs vitshrink dense {e['dense_ms']['p50']:.2f} ms: "
                       f"x{e['speedup']:.3f}, realization {e['realization']:.3f}{flag}")
            if "speedup_vs_original_fp32" in e:
                click.echo(f"{where}: timm's original fp32 {e['original_fp32_ms']['p50']:.2f} ms -> pruned {prec} "
                           f"{e['pruned_ms']['p50']:.2f} ms, speed-up x{e['speedup_vs_original_fp32']:.3f}")
        else:
            click.echo(f"{where}: dense {e['dense_ms']['p50']:.2f} ms -> pruned {e['pruned_ms']['p50']:.2f} ms, speed-up "
                       f"x{e['speedup']:.3f} (ideal x{e['ideal_speedup']:.3f}, realization {e['realization']:.3f}){flag}")
    if "accuracy" in report:
        a = report["accuracy"]
        imgs = a.get("images") or {}
        on = imgs.get("what") or f"{a['n']} images"  # rows of compiles on other images are not comparable: say which
        left = f"; {imgs['excluded']} left out: they {imgs['excluded_because']}" if imgs.get("excluded") else ""
        click.echo(f"top-1 on {on}{left}" + (f" (folders to outputs by {imgs['labels']})" if imgs.get("labels") else ""))
        click.echo(f"top-1 dense {a['dense_top1']:.4f} pruned {a['pruned_top1']:.4f} (agreement {a['top1_agreement']:.4f}, n={a['n']})")
        first = (a.get("engines") or [{}])[0]
        if first.get("original_top1") is not None:  # the drop that max_top1_drop gates, and from which model
            click.echo(f"top-1 ort (fp32): original {first['original_top1']:.4f} -> pruned {first['pruned_top1']:.4f}, "
                       f"drop {100 * (first['original_top1'] - first['pruned_top1']):.1f} points (original: {first['original']})")
        for r in a.get("engines", [])[1:]:
            o = f"original {r['original_top1']:.4f} -> " if r["original_top1"] is not None else ""
            click.echo(f"top-1 {r['engine']} ({r['precision']}): {o}pruned {r['pruned_top1']:.4f}")


@click.command("bench", epilog="""\b
Example:
  vitshrink bench deit_small_patch16_224 --spec spec.json --batch 1,8 --bench-seconds 30 --json lat.json
""" + EXIT_CODES)
@click.argument("model")
@click.option("--spec", "spec", required=True, help="Mask spec v1.")
@click.option("--checkpoint", default=None)
@click.option("--batch", "batches", default="1,8", callback=int_list, show_default=True)
@click.option("--threads", "threads", default="2", callback=int_list, show_default=True)
@click.option("--bench-seconds", default=30.0, show_default=True, help="Timing budget per setting.")
@click.option("--engines", default="ort", show_default=True, callback=engines_option,
              help="Engines to time (as compile --engines), e.g. ort,openvino,native or all.")
@click.option("--json", "json_out", default=None, help="Also write the latency entries to this JSON file.")
@click.option("--allow-model-mismatch", is_flag=True, help="Time a spec whose meta.model names another model.")
def bench_cmd(model, spec, checkpoint, batches, threads, bench_seconds, engines, json_out, allow_model_mismatch):
    """Latency benchmark: compile MODEL with SPEC into a temporary directory and time dense vs pruned."""
    from ..pipeline import CompileOptions, compile_model  # lazy: the compile stack loads only for commands that use it

    opts = CompileOptions(checkpoint=checkpoint, batch=batches, threads=threads, bench_seconds=bench_seconds, engines=engines,
                          allow_model_mismatch=allow_model_mismatch)
    try:
        with tempfile.TemporaryDirectory(prefix="vitshrink-bench-") as d:
            report = compile_model(model, spec, os.path.join(d, "out"), opts)
    except VitshrinkError as e:
        fail(e)
    summary(report)
    if json_out:
        with open(json_out, "w") as f:
            json.dump({"model": model, "spec": spec, "machine": report["machine"], "toolchain": report["toolchain"],
                       "macs": report["macs"], "engines": report["engines"], "latency": report["latency"]}, f, indent=1)
