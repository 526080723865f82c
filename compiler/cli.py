"""``vitshrink`` command line.

Exit codes: 0 success; 1 verification failed (exactness, import fidelity or export) or an
internal error; 2 bad input (spec, checkpoint, model name, unreadable file, bad option) -- always
one line ``error: ...`` on stderr, and no output directory left behind; 3 a gate check failed
(``check``, ``compile`` with thresholds, ``run``; the output directory is kept).
"""
from __future__ import annotations

import os
import sys
import warnings

import click

from .cli_gate import gate_options
from .cli_gate import register as _register_gate_commands
from .cli_import import parse_options as _parse_options
from .cli_run import register as _register_run_command
from .cli_import import register as _register_import_commands
from .errors import VitshrinkError


def _int_list(ctx, param, value: str) -> list[int]:
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not out or any(v < 1 for v in out):
        raise click.BadParameter(f"expected positive integers, got {value!r}")
    return out


def _engines(value: str) -> tuple[str, ...]:
    from vitshrink.runtime.engines import parse_engines

    try:
        return parse_engines(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _fail(e: VitshrinkError) -> None:
    click.echo(f"error: {str(e).splitlines()[0]}", err=True)
    sys.exit(e.exit_code)


EXIT_CODES = """\b
Exit codes:
  0  success
  1  verification failed (import fidelity, exactness, export): nothing written
  2  bad input (spec, checkpoint, model name, file, option): one line 'error: ...', nothing written
  3  a gate check failed (check, compile with thresholds, run): the table says which
"""


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}, epilog=EXIT_CODES)
@click.version_option(package_name="vitshrink")
def main() -> None:
    """vitshrink: make pruned vision transformers physically smaller, verified exact, and faster."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", category=UserWarning, module="timm")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.showwarning = _one_line_warning


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings (e.g. random weights under ``--quiet``) as one ``warning: ...`` line on stderr."""
    click.echo(f"warning: {str(message).splitlines()[0]}", err=True)


@main.command("compile", epilog="""\b
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
@click.option("--trust-pickle", is_flag=True, help="Let a pickled checkpoint run its own code (default: never).")
@click.option("--import-option", "import_options", multiple=True, callback=lambda c, p, v: _parse_options(v),
              help="KEY=VALUE for the format of a pruned --checkpoint, repeatable (WDPruning: exit=11).")
@click.option("--data", default=None, help="ImageFolder directory for top-1/top-5 of dense and pruned.")
@click.option("--batch", "batches", default="1", callback=_int_list, show_default=True, help="Batch sizes to time, e.g. 1,8.")
@click.option("--threads", "threads", default="2", callback=_int_list, show_default=True, help="ONNX Runtime intra-op threads, e.g. 1,2.")
@click.option("--bench-seconds", default=10.0, show_default=True,
              help="Timing budget in seconds per batch/threads setting; extended up to 3x while the speed-up is not yet stable.")
@click.option("--limit", "limit", type=int, default=None, help="Evaluate only the first N images of --data.")
@click.option("--layout", type=click.Choice(["auto", "pad", "group"]), default="auto", show_default=True,
              help="Irregular head widths: time both forms on the first engine (auto), pad to one width per "
                   "block, or group equal widths.")
@click.option("--token-layout", type=click.Choice(["prefix", "gather"]), default="prefix", show_default=True,
              help="Static token masks: permute tokens once so kept sets are prefixes (slice), or gather/scatter per block.")
@click.option("--tolerance", default=1e-4, show_default=True, help="Max abs diff on logits for exactness and export.")
@click.option("--trt", is_flag=True, help="Also build a TensorRT fp16 engine (skipped with a reason when unavailable).")
@click.option("--engines", default="ort", show_default=True, callback=lambda c, p, v: _engines(v),
              help="Engines to verify against torch and time: ort,openvino,native,torch (CPU); torch-cuda, "
                   "torch-cuda-fp16, torch-cuda-graph, ort-cuda, tensorrt (GPU); or all. Unavailable ones are "
                   "listed as skipped with the reason.")
@click.option("--quiet", is_flag=True, help="No progress display.")
@gate_options
def compile_cmd(model, spec, out, checkpoint, source_format, dense_checkpoint, trust_pickle, import_options, data, batches, threads, bench_seconds, limit, layout, token_layout,
                tolerance, trt, engines, quiet, **gate_kwargs):
    """Prune MODEL (a timm ViT/DeiT name) as SPEC says -- or as a pruned --checkpoint of another tool says --,
    verify, export ONNX, measure, report into OUT. With gate thresholds (--gate FILE, --min-speedup ...)
    the report is then gated as `vitshrink check` does: exit 3 when a check fails (OUT is kept)."""
    from .cli_gate import prepare_gate, run_gate, split_gate_kwargs
    from .pipeline import CompileOptions, compile_model

    thresholds, outputs = split_gate_kwargs(gate_kwargs)
    gating = any(v not in (None, (), False) for v in thresholds.values()) or outputs["gate_file"]
    try:
        gate, baseline = prepare_gate(thresholds, outputs, pyproject=None) if gating else (None, None)
    except VitshrinkError as e:
        _fail(e)
    opts = CompileOptions(checkpoint=checkpoint, data=data, batch=batches, threads=threads,
                          bench_seconds=bench_seconds, limit=limit, layout=layout, token_layout=token_layout,
                          tolerance=tolerance, trt=trt, progress=not quiet, source_format=source_format,
                          dense_checkpoint=dense_checkpoint, trust_pickle=trust_pickle, import_options=import_options,
                          engines=engines)
    try:
        report = compile_model(model, spec, out, opts)
    except VitshrinkError as e:
        _fail(e)
    _summary(report)
    if gating:
        try:
            run_gate(report, gate, baseline, outputs, f"vitshrink gate: {out}", quiet=False, report_dir=out)
        except VitshrinkError as e:
            _fail(e)


def _summary(report: dict) -> None:
    m = report["macs"]
    click.echo(f"MACs {m['dense'] / 1e9:.3f} G -> {m['pruned'] / 1e9:.3f} G (x{m['dense'] / m['pruned']:.2f}); "
               f"exactness {report['exactness']['max_abs_diff']:.1e}; ONNX {report['export']['onnx_max_abs_diff']:.1e}")
    for name, e in report.get("engines", {}).items():
        if e.get("status") == "ok":
            click.echo(f"engine {name}: {e['runtime']} {e['version']} {e['device']} {e['precision']}, max abs diff vs torch "
                       f"{max(e['max_abs_diff'], e['dense_max_abs_diff']):.1e}, top-1 agreement {e['top1_agreement']:.3f}")
        elif e.get("status") == "skipped":
            click.echo(f"engine {name}: skipped ({e['reason']})")
    for e in report["latency"]:
        click.echo(f"{e.get('engine', e['runtime'])} {e['device']} batch {e['batch']} threads {e['threads']}: dense {e['dense_ms']['p50']:.2f} ms, "
                   f"pruned {e['pruned_ms']['p50']:.2f} ms, speed-up x{e['speedup']:.3f} "
                   f"(ideal x{e['ideal_speedup']:.3f}, realization {e['realization']:.3f})")
    if "accuracy" in report:
        a = report["accuracy"]
        click.echo(f"top-1 dense {a['dense_top1']:.4f} pruned {a['pruned_top1']:.4f} (agreement {a['top1_agreement']:.4f}, n={a['n']})")


@main.command("masks", epilog="""\b
Examples:
  vitshrink masks deit_small_patch16_224 --checkpoint w.safetensors --heads 0.5 --mlp 0.5 --out spec.json
  vitshrink masks deit_tiny_patch16_224 --tokens evit:0.7@4,7,10 --out evit.json
""" + EXIT_CODES)
@click.argument("model")
@click.option("--checkpoint", default=None, help="Weights to score (random weights when omitted).")
@click.option("--heads", type=float, default=None, help="Keep ratio of heads per block (largest L1).")
@click.option("--mlp", type=float, default=None, help="Keep ratio of MLP hidden neurons per block (largest fc1-row L1).")
@click.option("--embed", type=float, default=None, help="Keep ratio of embedding channels (largest L1).")
@click.option("--tokens", "tokens", default=None,
              help="Token schedule KIND:RATIO@BLOCKS -- uniform (static), slim (static, Patch Slimming, needs --calib), "
                   "evit or lfe (dynamic); e.g. evit:0.7@4,7,10, slim:0.8@2-11.")
@click.option("--token-mode", type=click.Choice(["drop", "query"]), default=None,
              help="Static tokens: drop (leave the sequence) or query (Patch Slimming). Default: drop for uniform, query for slim.")
@click.option("--fuse", is_flag=True, help="Dynamic rules: merge pruned tokens into one (EViT).")
@click.option("--calib", default=None, help="ImageFolder directory of calibration images (slim).")
@click.option("--calib-n", default=100, show_default=True, help="Calibration images, evenly spaced over the directory.")
@click.option("--out", "out", required=True, help="Spec file to write (.json or .safetensors).")
def masks_cmd(model, checkpoint, heads, mlp, embed, tokens, token_mode, fuse, calib, calib_n, out):
    """Write a reference mask spec for MODEL: L1 width criteria and/or a token schedule."""
    from pathlib import Path

    from .frontends.timm import eval_transform, import_model
    from .maskgen import l1_spec, token_spec
    from .spec import Spec, mask_shapes, save_spec

    try:
        if heads is None and mlp is None and embed is None and tokens is None:
            raise VitshrinkError("give at least one of --heads, --mlp, --embed, --tokens")
        out_path = Path(out)
        if out_path.suffix not in (".json", ".safetensors"):
            raise VitshrinkError(f"--out '{out}': use a .json or .safetensors file name")
        if not out_path.parent.resolve().is_dir():
            raise VitshrinkError(f"--out '{out}': directory '{out_path.parent}' does not exist")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            timm_model, ir, _ = import_model(model, checkpoint)
        spec = l1_spec(ir, heads=heads, mlp=mlp, embed=embed) if (heads or mlp or embed) else Spec(meta={"producer": "vitshrink masks"})
        if tokens and getattr(ir, "family", "vit") == "swin":
            raise VitshrinkError(f"--tokens: token schedules do not apply to {model} (Swin's windows need every token)")
        if tokens:
            images = _calibration_images(calib, calib_n, eval_transform(timm_model), ir.num_classes) if calib else None
            token_masks, settings = token_spec(ir, tokens, mode=token_mode, fuse=fuse, calib=images)
            spec.masks.update(token_masks)
            spec.settings.update(settings)
            spec.meta["tokens"] = {"schedule": tokens, "calibration": {"dir": calib, "n": int(images.shape[0])} if images is not None else None}
        tmp = out_path.with_name(f".{out_path.name}.tmp")
        save_spec(spec, tmp, resolved_shapes=mask_shapes(ir))
        os.replace(tmp, out_path)
    except VitshrinkError as e:
        _fail(e)
    # width criteria and Patch Slimming score the weights; uniform/evit/lfe schedules read none
    if heads or mlp or embed or (tokens and tokens.split(":")[0].strip() == "slim"):
        for w in caught:
            if "RANDOM" in str(w.message):
                click.echo(f"warning: {w.message}", err=True)
    click.echo(f"wrote {out}: {len(spec.masks)} masks, settings {sorted(spec.settings)} for {model}")


def _calibration_images(directory: str, n: int, transform, num_classes: int):
    """``n`` images evenly spaced over an ImageFolder directory, transformed: [n, C, H, W]."""
    import torch
    from PIL import Image

    from .runtime.accuracy import list_images

    items = list_images(directory, num_classes)
    step = max(1, len(items) // n)
    picked = items[::step][:n]
    xs = []
    for path, _ in picked:
        with Image.open(path) as im:
            xs.append(transform(im.convert("RGB")))
    return torch.stack(xs)


@main.command("bench", epilog="""\b
Example:
  vitshrink bench deit_small_patch16_224 --spec spec.json --batch 1,8 --bench-seconds 30 --json lat.json
""" + EXIT_CODES)
@click.argument("model")
@click.option("--spec", "spec", required=True, help="Mask spec v1.")
@click.option("--checkpoint", default=None)
@click.option("--batch", "batches", default="1,8", callback=_int_list, show_default=True)
@click.option("--threads", "threads", default="2", callback=_int_list, show_default=True)
@click.option("--bench-seconds", default=30.0, show_default=True, help="Timing budget per setting.")
@click.option("--engines", default="ort", show_default=True, callback=lambda c, p, v: _engines(v),
              help="Engines to time (as compile --engines), e.g. ort,openvino,native or all.")
@click.option("--json", "json_out", default=None, help="Also write the latency entries to this JSON file.")
def bench_cmd(model, spec, checkpoint, batches, threads, bench_seconds, engines, json_out):
    """Latency benchmark: compile MODEL with SPEC into a temporary directory and time dense vs pruned."""
    import json
    import tempfile

    from .pipeline import CompileOptions, compile_model

    opts = CompileOptions(checkpoint=checkpoint, batch=batches, threads=threads, bench_seconds=bench_seconds, engines=engines)
    try:
        with tempfile.TemporaryDirectory(prefix="vitshrink-bench-") as d:
            report = compile_model(model, spec, os.path.join(d, "out"), opts)
    except VitshrinkError as e:
        _fail(e)
    _summary(report)
    if json_out:
        with open(json_out, "w") as f:
            json.dump({"model": model, "spec": spec, "machine": report["machine"], "toolchain": report["toolchain"],
                       "macs": report["macs"], "engines": report["engines"], "latency": report["latency"]}, f, indent=1)


@main.command("build-runner", epilog="""\b
Example:
  vitshrink build-runner                       # -> ~/.cache/vitshrink/runner/vitshrink-run
  vitshrink build-runner --build-dir build/native
""" + EXIT_CODES)
@click.option("--build-dir", default=None, help="CMake build directory (default $VITSHRINK_RUNNER_DIR or ~/.cache/vitshrink/runner).")
def build_runner_cmd(build_dir):
    """Build vitshrink-run, the native C++ runner (OpenVINO C++ API from the openvino wheel), with cmake
    and the system C++ compiler. `--engines native` finds it there (or builds it on first use)."""
    from vitshrink.runtime.native_runner import build_runner

    try:
        path = build_runner(build_dir)
    except RuntimeError as e:
        click.echo(f"error: {str(e).splitlines()[0]}", err=True)
        for line in str(e).splitlines()[1:]:
            click.echo(f"  {line}", err=True)
        sys.exit(1)
    click.echo(str(path))


_register_import_commands(main, _fail)
_register_gate_commands(main, _fail)
_register_run_command(main, _fail)

if __name__ == "__main__":  # pragma: no cover
    main()
