"""``vitshrink sweep``: masks + compile at every budget and method, the Pareto front per engine and batch, and the
fastest point within N points of top-1 (:mod:`vitshrink.sweep`)."""
from __future__ import annotations

import sys

import click

from ..errors import VitshrinkError
from .common import engines_option, fail, img_size_option, int_list

SWEEP_EXIT = """\b
Exit codes:
  0  a point within --max-top1-drop on every engine and batch (the first one's copied to OUT/best)
  2  bad input (no --data, a budget outside (0, 1], an engine that cannot run here, too few held-out images):
     one line 'error: ...', before any point runs
  3  no point within --max-top1-drop on some engine and batch (OUT is kept)
  1  a point failed verification (exactness, export, an engine): the others still ran; sweep.json says which
"""


def _floats(ctx, param, value: str) -> list[float]:
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}") from None


@click.command("sweep", epilog="""\b
Examples:
  vitshrink sweep deit_tiny_patch16_224 --checkpoint w.safetensors --data imagenet/val --out sweeps/tiny
  vitshrink sweep deit_tiny_patch16_224 --checkpoint w.safetensors --data imagenet/val --out sweeps/tiny \\
      --macs 0.9,0.7,0.5 --methods widths,tome --engines ort,openvino-int8 --batch 1,8 --max-top1-drop 1
""" + SWEEP_EXIT)
@click.argument("model")
@click.option("--checkpoint", required=True, help="The weights to prune (.safetensors / .pth, or a transformers directory).")
@click.option("--data", default=None, help="ImageFolder directory: --calib-images of it choose the masks and calibrate INT8, "
                                           "top-1 on the others.")
@click.option("--out", required=True, help="Sweep directory: points/, sweep.{json,md,png}, best/ (a rerun resumes it).")
@click.option("--macs", "budgets", default="0.9,0.8,0.7,0.6,0.5", show_default=True, callback=_floats,
              help="MACs budgets (share of the dense model's), comma-separated.")
@click.option("--methods", default="widths,evit,tome", show_default=True,
              help="widths (data-aware + re-fit), evit (+ EViT tokens), tome (ToMe merging, widths where merging alone "
                   "does not meet the budget), comma-separated.")
@click.option("--engines", default="ort", show_default=True, callback=engines_option, help="Engines to time, as compile's.")
@click.option("--batch", "batches", default="1", show_default=True, callback=int_list, help="Batch sizes, e.g. 1,8.")
@click.option("--threads", default=2, show_default=True, help="Intra-op threads of the engines.")
@click.option("--bench-seconds", default=3.0, show_default=True, help="Timing budget per batch of each point.")
@click.option("--calib-images", default=256, show_default=True, help="Calibration images (masks and INT8), held out of top-1.")
@click.option("--max-top1-drop", default=1.0, show_default=True, help="Points of top-1 the best point may lose.")
@click.option("--img-size", default=None, callback=img_size_option, help="Input size H[,W] (as compile --img-size).")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def sweep_cmd(model, checkpoint, data, out, budgets, methods, engines, batches, threads, bench_seconds, calib_images,
              max_top1_drop, img_size, quiet):
    """Answer 'the fastest model within N points of top-1 on my engine' for MODEL: masks + compile at every budget
    and method, the Pareto front per engine and batch, the best point copied to OUT/best."""
    from ..sweep import run_sweep  # lazy: the compile stack loads only for commands that use it

    say = (lambda m: None) if quiet else (lambda m: click.echo(m, err=True))
    try:
        result = run_sweep(model, checkpoint, data, out, budgets, [m.strip() for m in methods.split(",") if m.strip()],
                           engines, batches, threads, bench_seconds, calib_images, max_top1_drop, img_size, say)
    except VitshrinkError as e:
        fail(e)
    for key, name in result["best"].items():
        row = result["points"][name]["rows"][key] if name else None
        click.echo(f"{key}: " + (f"best {name}: top-1 {row['top1']:.3f} (drop {row['drop']:.1f} points), x{row['speedup']:.2f} "
                                 f"over the original" if row else f"no point within {max_top1_drop:g} points"))
    click.echo(f"wrote {out}/sweep.md, sweep.json, sweep.png" + (", best/" if any(result["best"].values()) else ""))
    broken = [n for n, p in result["points"].items() if p.get("exit_code") == 1]
    if broken:  # a broken promise outranks the answer: exit 1, as compile would
        click.echo(f"error: {len(broken)} point(s) failed verification: {', '.join(broken)} (sweep.json says why)", err=True)
    sys.exit(1 if broken else 0 if all(result["best"].values()) else 3)
