"""``vitshrink masks``: the reference mask producer -- L1 width criteria without data; with ``--data``,
data-aware scores, one budget for the whole model and least-squares reconstruction; token schedules.
Written as spec v1 (and, reconstructed, the re-fitted weights in timm's layout). The job itself:
:func:`vitshrink.pipeline.masks.make_masks`."""
from __future__ import annotations

import click

from ..errors import VitshrinkError
from .common import EXIT_CODES, fail, img_size_option


@click.command("masks", epilog="""\b
Examples:
  vitshrink masks deit_small_patch16_224 --checkpoint w.safetensors --heads 0.5 --mlp 0.5 --out spec.json
  vitshrink masks deit_tiny_patch16_224 --checkpoint w.safetensors --data imagenet/val --macs 0.6 \\
      --out spec.json --weights-out refit.safetensors
  vitshrink compile deit_tiny_patch16_224 --checkpoint refit.safetensors --spec spec.json --data imagenet/val --out o
  vitshrink masks deit_tiny_patch16_224 --tokens evit:0.7@4,7,10 --out evit.json
  vitshrink masks deit_tiny_patch16_224 --checkpoint w.safetensors --data imagenet/val --macs 0.7 --tokens evit:auto \\
      --out spec.json
  vitshrink masks deit_tiny_patch16_224 --tokens tome:8 --out tome.json          # ToMe: 8 tokens merged per block
""" + EXIT_CODES)
@click.argument("model")
@click.option("--checkpoint", default=None, help="Weights to score (random weights when omitted).")
@click.option("--img-size", default=None, callback=img_size_option,
              help="Input size H[,W] to create the model at (as compile --img-size; recorded in the spec).")
@click.option("--num-classes", type=int, default=None,
              help="Classes of the model's head where the checkpoint does not say (0: a feature extractor); default: its classifier's.")
@click.option("--heads", type=float, default=None, help="Keep ratio of heads per block (largest score).")
@click.option("--mlp", type=float, default=None, help="Keep ratio of MLP hidden neurons per block (largest score).")
@click.option("--embed", type=float, default=None, help="Keep ratio of embedding channels (largest score).")
@click.option("--macs", type=float, default=None,
              help="With --data: one budget, the pruned MACs at most R x the dense model's; heads and MLP neurons "
                   "allocated across blocks by score per MAC (instead of --heads / --mlp), after what a token schedule "
                   "or --embed removes.")
@click.option("--latency-ms", type=float, default=None,
              help="With --data: one budget in milliseconds per batch on --engine at --batch (instead of --macs): heads and "
                   "MLP neurons priced by a latency table measured on that engine (cached beside the spec as SPEC.latency.json).")
@click.option("--engine", default="ort", show_default=True, help="--latency-ms: the engine the table is measured on (ONNX engines).")
@click.option("--batch", type=int, default=1, show_default=True, help="--latency-ms: the batch size the budget is for.")
@click.option("--threads", type=int, default=2, show_default=True, help="--latency-ms: intra-op threads of the engine.")
@click.option("--bench-seconds", type=float, default=6.0, show_default=True,
              help="--latency-ms: timing budget in seconds of the table (and of the check of the result).")
@click.option("--data", "--calib", "data", default=None,
              help="Folder of calibration images (class folders or not; labels unused): data-aware scores and "
                   "reconstruction; the images token schedule 'slim' needs. compile --data leaves them out of accuracy.")
@click.option("--calib-images", "--calib-n", "calib_images", default=256, show_default=True,
              help="Calibration images (a seeded choice when the folder has more).")
@click.option("--criterion", type=click.Choice(["obs", "activation", "fisher"]), default="obs", show_default=True,
              help="With --data: obs (the output error least squares cannot undo, Optimal Brain Surgeon), activation "
                   "(the energy a unit writes into the residual stream) or fisher (Fisher information of unit masks, "
                   "Kwon et al. 2022).")
@click.option("--steps", type=int, default=2, show_default=True,
              help="--macs with reconstruction: prune in N rounds (geometric schedule), re-fitting and re-scoring between rounds.")
@click.option("--round-to", type=int, default=1, show_default=True, help="--macs: MLP neurons per block in multiples of N.")
@click.option("--no-reconstruct", is_flag=True, help="With --data: keep the weights; do not re-fit proj / fc2.")
@click.option("--weights-out", default=None,
              help="With --data: the re-fitted weights (timm keys and shapes, .safetensors) for compile --checkpoint. "
                   "Default: SPEC's name with .weights.safetensors.")
@click.option("--tokens", "tokens", default=None,
              help="Token schedule KIND:RATIO@BLOCKS -- uniform (static), slim (static, Patch Slimming, needs --data), "
                   "evit or lfe (dynamic); e.g. evit:0.7@4,7,10, slim:0.8@2-11; or token merging tome:R[@BLOCKS] (ToMe: R "
                   "tokens merged per block, every block by default). With --macs, RATIO 'auto' (evit:auto, "
                   "@BLOCKS optional: EViT's 4,7,10 scaled to the depth): the tokens take most of the budget, the widths the "
                   "rest; tome:auto: the smallest R that meets the budget alone.")
@click.option("--token-mode", type=click.Choice(["drop", "query"]), default=None,
              help="Static tokens: drop (leave the sequence) or query (Patch Slimming). Default: drop for uniform, query for slim.")
@click.option("--fuse", is_flag=True, help="Dynamic rules: merge pruned tokens into one (EViT).")
@click.option("--out", "out", required=True, help="Spec file to write (.json or .safetensors); its folder is created.")
@click.option("--quiet", is_flag=True, help="No progress display.")
def masks_cmd(model, checkpoint, img_size, num_classes, heads, mlp, embed, macs, latency_ms, engine, batch, threads, bench_seconds, data, calib_images, criterion, steps, round_to, no_reconstruct, weights_out,
              tokens, token_mode, fuse, out, quiet):
    """Write a mask spec for MODEL: L1 width criteria, or with --data data-aware masks (per block or one --macs
    budget) and re-fitted weights; and/or a token schedule."""
    from ..pipeline.masks import make_masks  # lazy: the compile stack loads only for commands that use it

    try:
        r = make_masks(model, out, checkpoint=checkpoint, img_size=img_size, num_classes=num_classes, heads=heads, mlp=mlp,
                       embed=embed, macs=macs, latency_ms=latency_ms, engine=engine, batch=batch, threads=threads,
                       bench_seconds=bench_seconds, data=data, calib_images=calib_images, criterion=criterion, steps=steps,
                       round_to=round_to, reconstruct=not no_reconstruct, weights_out=weights_out, tokens=tokens,
                       token_mode=token_mode, fuse=fuse, progress=not quiet)
    except VitshrinkError as e:
        fail(e)
    for w in r.warnings:
        click.echo(f"warning: {w}", err=True)
    spec = r.spec
    click.echo(f"wrote {out}: {len(spec.masks)} masks, settings {sorted(spec.settings)} for {model}"
               + (f" ({spec.meta['criterion']} scores on {r.images} images)" if r.images else ""))
    if "latency_budget" in spec.meta:
        lb = spec.meta["latency_budget"]
        click.echo(f"budget: {lb['measured_ms']:.2f} ms measured on {lb['engine']} at batch {lb['batch']} (target "
                   f"{lb['target_ms']:g} ms, dense {lb['dense_ms']:.2f} ms, table {'cached' if lb['table_cached'] else 'measured'}: "
                   f"{lb['table']})")
    elif r.budget is not None:
        b = r.budget
        click.echo(f"budget: MACs {b['macs'] / 1e9:.3f} G of {b['dense_macs'] / 1e9:.3f} G dense "
                   f"({b['macs'] / b['dense_macs']:.3f}; --macs {macs})")
    if r.refit:
        done = [x for x in r.refit if x.get("mlp") or x.get("attn")]
        click.echo(f"re-fitted {len(done)} blocks (attn.proj, mlp.fc2) -> {r.weights}")
