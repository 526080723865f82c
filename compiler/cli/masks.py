"""``vitshrink masks``: the reference mask producer -- L1 width criteria without data; with ``--data``,
data-aware scores, one budget for the whole model and least-squares reconstruction; token schedules.
Written as spec v1 (and, reconstructed, the re-fitted weights in timm's layout)."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

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
""" + EXIT_CODES)
@click.argument("model")
@click.option("--checkpoint", default=None, help="Weights to score (random weights when omitted).")
@click.option("--img-size", default=None, callback=img_size_option,
              help="Input size H[,W] to create the model at (as compile --img-size; recorded in the spec).")
@click.option("--heads", type=float, default=None, help="Keep ratio of heads per block (largest score).")
@click.option("--mlp", type=float, default=None, help="Keep ratio of MLP hidden neurons per block (largest score).")
@click.option("--embed", type=float, default=None, help="Keep ratio of embedding channels (largest score).")
@click.option("--macs", type=float, default=None,
              help="With --data: one budget, the pruned MACs at most R x the dense model's; heads and MLP neurons "
                   "allocated across blocks by score per MAC (instead of --heads / --mlp).")
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
                   "evit or lfe (dynamic); e.g. evit:0.7@4,7,10, slim:0.8@2-11.")
@click.option("--token-mode", type=click.Choice(["drop", "query"]), default=None,
              help="Static tokens: drop (leave the sequence) or query (Patch Slimming). Default: drop for uniform, query for slim.")
@click.option("--fuse", is_flag=True, help="Dynamic rules: merge pruned tokens into one (EViT).")
@click.option("--out", "out", required=True, help="Spec file to write (.json or .safetensors); its folder is created.")
@click.option("--quiet", is_flag=True, help="No progress display.")
def masks_cmd(model, checkpoint, img_size, heads, mlp, embed, macs, data, calib_images, criterion, steps, round_to, no_reconstruct, weights_out,
              tokens, token_mode, fuse, out, quiet):
    """Write a mask spec for MODEL: L1 width criteria, or with --data data-aware masks (per block or one --macs
    budget) and re-fitted weights; and/or a token schedule."""
    from .. import families  # lazy: the compile stack loads only for commands that use it
    from ..frontends.timm import eval_transform  # lazy: as above
    from ..importers import import_dense  # lazy: as above
    from ..masks.tokens import token_spec  # lazy: as above
    from ..pipeline.calibration import choose, find_images, load_images, record  # lazy: as above
    from ..pipeline.progress import Log  # lazy: as above
    from ..spec.format import Spec, save_spec  # lazy: as above

    written = []
    try:
        if heads is None and mlp is None and embed is None and macs is None and tokens is None:
            raise VitshrinkError("give at least one of --heads, --mlp, --embed, --macs, --tokens")
        out_path = Path(out)
        if out_path.suffix not in (".json", ".safetensors"):
            raise VitshrinkError(f"--out '{out}': use a .json or .safetensors file name")
        if macs is not None and not data:
            raise VitshrinkError("--macs needs calibration images (--data DIR): the budget is allocated by data-aware scores")
        if weights_out and not Path(weights_out).suffix == ".safetensors":
            raise VitshrinkError(f"--weights-out '{weights_out}': use a .safetensors file name")
        if steps < 1:
            raise VitshrinkError(f"--steps {steps}: give a positive number of rounds")
        if calib_images < 1:
            raise VitshrinkError(f"--calib-images {calib_images}: give a positive number of images")
        paths = choose(find_images(data, "--data"), calib_images) if data else None
        log = Log(not quiet)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            timm_model, ir, extras = import_dense(model, checkpoint, img_size)  # a transformers directory too
        family = families.family_of(ir)
        if tokens and not family.token_pruning:
            raise VitshrinkError(f"--tokens: token schedules do not apply to {model} ({family.title}: {family.no_tokens_because})")
        transform = eval_transform(timm_model)
        images = None
        if paths:
            with log.stage("calibration", f"read {len(paths)} calibration images"):
                images = load_images(paths, transform)
        base = Spec(meta={"producer": "vitshrink masks"})
        if tokens:
            token_masks, settings = token_spec(ir, tokens, mode=token_mode, fuse=fuse, calib=images)
            # the family's own rules, now (Eva / BEiT: positions; CaiT: class attention), not at compile time
            family.spec.resolve(Spec(masks=token_masks, settings=settings), ir, {})
            base.masks.update(token_masks)
            base.settings.update(settings)
        widths = heads is not None or mlp is not None or embed is not None or macs is not None
        result = None
        if widths and images is not None:
            result = _posttrain(family, ir, images, heads, mlp, embed, macs, criterion, steps, round_to, not no_reconstruct,
                                 base, log)
            spec = result.spec
        elif widths:
            spec = family.masks.l1_spec(ir, heads=heads, mlp=mlp, embed=embed)
            spec.masks.update(base.masks)
            spec.settings.update(base.settings)
        else:
            spec = base
        if tokens:
            spec.meta["tokens"] = {"schedule": tokens}
        if paths:  # compile --data leaves these images out of its accuracy
            spec.meta["calibration"] = record(paths, data, "vitshrink masks --data")
        spec.meta.setdefault("model", model)  # compile refuses it for another model (--allow-model-mismatch)
        if img_size:
            spec.meta["img_size"] = list(img_size)  # compile it with the same --img-size
        out_path.parent.mkdir(parents=True, exist_ok=True)
        if result is not None and result.pruned_ir is not None:
            weights_out = weights_out or str(out_path.with_name(out_path.stem + ".weights.safetensors"))
            spec.meta["weights"] = {"file": Path(weights_out).name, "note": "compile this spec with --checkpoint on this file"}
            spec.meta["refit"] = result.refit
            _write_weights(family, timm_model, ir, result.pruned_ir, extras, weights_out, spec.meta, written)
        tmp = out_path.with_name(f".{out_path.name}.tmp")
        save_spec(spec, tmp, resolved_shapes=family.spec.mask_shapes(ir), form=out_path.suffix.lstrip("."))
        os.replace(tmp, out_path)
    except VitshrinkError as e:
        for p in written:  # nothing half written
            Path(p).unlink(missing_ok=True)
        fail(e)
    # width criteria and Patch Slimming score the weights; uniform/evit/lfe schedules read none
    if heads or mlp or embed or macs or (tokens and tokens.split(":")[0].strip() == "slim"):
        for w in caught:
            if "RANDOM" in str(w.message):
                click.echo(f"warning: {w.message}", err=True)
    click.echo(f"wrote {out}: {len(spec.masks)} masks, settings {sorted(spec.settings)} for {model}"
               + (f" ({spec.meta['criterion']} scores on {len(paths)} images)" if result is not None else ""))
    if result is not None and result.budget is not None:
        b = result.budget
        click.echo(f"budget: MACs {b['macs'] / 1e9:.3f} G of {b['dense_macs'] / 1e9:.3f} G dense "
                   f"({b['macs'] / b['dense_macs']:.3f}; --macs {macs})")
    if result is not None and result.refit:
        done = [r for r in result.refit if r.get("mlp") or r.get("attn")]
        click.echo(f"re-fitted {len(done)} blocks (attn.proj, mlp.fc2) -> {weights_out}")


def _posttrain(family, ir, images, heads, mlp, embed, macs, criterion, steps, round_to, reconstruct, base, log):
    """:func:`vitshrink.masks.posttrain.posttrain` with one progress bar per stage."""
    from contextlib import nullcontext  # lazy: as above

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # lazy: as above

    from ..masks.posttrain import posttrain  # lazy: torch work only for this path

    labels = {"scores": f"{criterion} scores (images)", "reconstruct": "least-squares reconstruction (blocks)",
              **{f"scores {k}": f"round {k}: {criterion} scores of the re-fitted model (images)" for k in range(2, steps + 1)},
              **{f"reconstruct {k}": f"round {k}: least-squares reconstruction (blocks)" for k in range(1, steps)}}
    bar = (Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=log.console, transient=True) if log.console else nullcontext())
    tasks = {}

    def progress(stage, done, total):
        if log.console:
            if stage not in tasks:
                tasks[stage] = bar.add_task(labels.get(stage, stage), total=total)
            bar.update(tasks[stage], completed=done, total=total)

    shape = (ir.in_chans, *ir.img_size)
    with log.stage("posttrain", f"data-aware masks ({criterion}{', --macs %g' % macs if macs else ''}"
                                f"{', reconstruction' if reconstruct else ''}) on {len(images)} images"), bar:
        return posttrain(family, ir, images, shape, heads=heads, mlp=mlp, embed=embed, macs=macs, criterion=criterion,
                         round_to=round_to, reconstruct=reconstruct, steps=steps, base=base, progress=progress)


def _write_weights(family, timm_model, dense_ir, pruned_ir, extras, path, meta, written) -> None:
    """The re-fitted weights in timm's keys and shapes (+ the checkpoint's extra tensors), as safetensors."""
    import json  # lazy: as above

    from safetensors.torch import save_file  # lazy: as above

    from ..masks.posttrain import dense_state  # lazy: as above

    state = {**{k: v.contiguous() for k, v in extras.items()}, **dense_state(family, timm_model, dense_ir, pruned_ir)}
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    written.append(tmp)
    save_file(state, str(tmp), metadata={"producer": "vitshrink masks", "reconstruction": "least squares (attn.proj, mlp.fc2)",
                                         "spec_meta": json.dumps({k: meta[k] for k in ("criterion", "model") if k in meta})})
    os.replace(tmp, p)
    written.append(p)
