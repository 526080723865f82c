"""``vitshrink masks``: the reference mask producer -- L1 width criteria without data; with ``--data``,
data-aware scores, one budget for the whole model and least-squares reconstruction; token schedules.
Written as spec v1 (and, reconstructed, the re-fitted weights in timm's layout)."""
from __future__ import annotations

import os
import tempfile
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
    from .. import families  # lazy: the compile stack loads only for commands that use it
    from ..frontends.timm import eval_transform  # lazy: as above
    from ..importers import import_dense  # lazy: as above
    from ..masks.tokens import AUTO_MIN_KEEP, AUTO_WIDTH_SHARE, auto_schedule, is_auto, token_spec  # lazy: as above
    from ..pipeline.calibration import choose, find_images, load_images, record  # lazy: as above
    from ..pipeline.progress import Log  # lazy: as above
    from ..spec.format import Spec, save_spec  # lazy: as above

    written = []
    try:
        if heads is None and mlp is None and embed is None and macs is None and latency_ms is None and tokens is None:
            raise VitshrinkError("give at least one of --heads, --mlp, --embed, --macs, --latency-ms, --tokens")
        if latency_ms is not None:
            if macs is not None or heads is not None or mlp is not None:
                raise VitshrinkError("--latency-ms is a budget for the whole model: give it without --macs / --heads / --mlp")
            if latency_ms <= 0 or batch < 1 or threads < 1:
                raise VitshrinkError(f"--latency-ms {latency_ms} --batch {batch} --threads {threads}: give positive values")
            if not data:
                raise VitshrinkError("--latency-ms needs calibration images (--data DIR): the budget is allocated by data-aware scores")
            from ..masks.latency import check_engine  # lazy: as above
            check_engine(engine)
        out_path = Path(out)
        if out_path.suffix not in (".json", ".safetensors"):
            raise VitshrinkError(f"--out '{out}': use a .json or .safetensors file name")
        if tokens and is_auto(tokens) and macs is None:
            raise VitshrinkError(f"--tokens {tokens}: 'auto' takes its keep ratio from the budget; give it with --macs R --data DIR")
        if (macs is not None) and not data:
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
            timm_model, ir, extras = import_dense(model, checkpoint, img_size, num_classes)  # a transformers directory too
        family = families.family_of(ir)
        if tokens and not family.token_pruning:
            raise VitshrinkError(f"--tokens: token schedules do not apply to {model} ({family.title}: {family.no_tokens_because})")
        requested = tokens
        if tokens and is_auto(tokens):  # the keep ratio at which the schedule takes its part of the --macs budget
            tokens = auto_schedule(family, ir, tokens, macs, (ir.in_chans, *ir.img_size), mode=token_mode, fuse=fuse)
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
        widths = heads is not None or mlp is not None or embed is not None or macs is not None or latency_ms is not None
        merged_budget = _merging_meets(family, ir, base, tokens, macs, heads, mlp, embed)
        if merged_budget is not None:  # no width to search: leave the weights as they are (no scores, no re-fit)
            widths = False
            base.meta["budget"] = merged_budget
        result = None
        if latency_ms is not None:
            result = _latency_budget(family, ir, images, latency_ms, (engine, batch, threads, bench_seconds), embed, criterion,
                                     steps, round_to, not no_reconstruct, base, log, out_path)
            spec = result.spec
        elif widths and images is not None:
            result = _posttrain(family, ir, images, heads, mlp, embed, macs, criterion, steps, round_to, not no_reconstruct,
                                 base, log)
            spec = result.spec
        elif widths:
            spec = family.masks.l1_spec(ir, heads=heads, mlp=mlp, embed=embed)
            spec.masks.update(base.masks)
            spec.settings.update(base.settings)
        else:
            spec = base
        if requested:
            spec.meta["tokens"] = {"schedule": tokens}
            if requested != tokens:
                rule = ("the smallest r whose merging alone meets --macs, else the largest r and the widths the rest"
                        if requested.startswith("tome:") else f"the schedule alone to --macs / {AUTO_WIDTH_SHARE} of the "
                        f"dense MACs (keep ratio >= {AUTO_MIN_KEEP}), the widths the rest")
                spec.meta["tokens"].update(requested=requested, rule=rule)
        if paths:  # compile --data leaves these images out of its accuracy
            spec.meta["calibration"] = record(paths, data, "vitshrink masks --data")
        spec.meta.setdefault("model", model)  # compile refuses it for another model (--allow-model-mismatch)
        if checkpoint:  # the original weights: compile measures the original with them (not the re-fitted ones)
            from ..pipeline.output import sha256  # lazy: as the compile stack
            spec.meta["source"] = {"checkpoint": str(Path(checkpoint).resolve()), "sha256": sha256(checkpoint)}
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
    if result is not None and "latency_budget" in spec.meta:
        lb = spec.meta["latency_budget"]
        click.echo(f"budget: {lb['measured_ms']:.2f} ms measured on {lb['engine']} at batch {lb['batch']} (target "
                   f"{lb['target_ms']:g} ms, dense {lb['dense_ms']:.2f} ms, table {'cached' if lb['table_cached'] else 'measured'}: "
                   f"{lb['table']})")
    elif result is not None and result.budget is not None or "budget" in spec.meta:
        b = result.budget if result is not None else spec.meta["budget"]
        click.echo(f"budget: MACs {b['macs'] / 1e9:.3f} G of {b['dense_macs'] / 1e9:.3f} G dense "
                   f"({b['macs'] / b['dense_macs']:.3f}; --macs {macs})")
    if result is not None and result.refit:
        done = [r for r in result.refit if r.get("mlp") or r.get("attn")]
        click.echo(f"re-fitted {len(done)} blocks (attn.proj, mlp.fc2) -> {weights_out}")


def _latency_budget(family, ir, images, target_ms, timing, embed, criterion, steps, round_to, reconstruct, base, log, out_path):
    """``--latency-ms``: the latency table (:mod:`vitshrink.masks.latency`), the allocation at the ratio target /
    dense ms, timed against the dense model on the engine before reconstruction; re-allocated (same scores) at
    a ratio scaled by target / measured while it misses the target by more than 3%, twice at most. The outcome
    goes into the spec's meta."""
    from ..masks.budget import smallest, unit_costs  # lazy: as above
    from ..masks.latency import costs_from_table, export_widths, measure_table, time_models  # lazy: as above

    engine, batch, threads, seconds = timing
    shape = (ir.in_chans, *ir.img_size)
    cache = out_path.with_name(out_path.stem + ".latency.json")
    with log.stage("latency-table", f"latency table on {engine}, batch {batch}"):
        macs = unit_costs(family, ir, shape, base)  # MACs per unit: what the table prices, counted once
        table = measure_table(family, ir, shape, base, macs, engine,
                              batch, threads, seconds, cache, progress=lambda what: log.info(f"  {what}"))
    dense_ms = table["dense_ms"]
    if target_ms >= dense_ms:
        raise VitshrinkError(f"--latency-ms {target_ms:g}: the dense model already runs in {dense_ms:.2f} ms on {engine} at "
                             f"batch {batch}; nothing to prune")
    costs, ratio, tries = costs_from_table(table, macs), target_ms / dense_ms, []
    if ratio < smallest(ir, costs):  # before any scoring: say it now
        raise VitshrinkError(f"--latency-ms {target_ms:g}: below the {smallest(ir, costs) * dense_ms:.2f} ms that one head per "
                             f"block and no MLP neuron take on {engine} at batch {batch} (dense {dense_ms:.2f} ms)")

    def adjust(width: dict, r: float):  # time the allocation; ask for a smaller share while it misses the target by > 3%
        with log.stage("latency-check", f"time the allocation ({r:.3f} of the dense latency) on {engine}"):
            dense = Path(work) / "d.onnx"  # exported once, timed beside every try
            paths = {"dense": dense if dense.is_file() else export_widths(family, ir, dict(base.masks), shape, dense, base.settings),
                     "pruned": export_widths(family, ir, {**base.masks, **width}, shape, Path(work) / "p.onnx", base.settings)}
            ms = time_models(engine, paths, batch, threads, shape, seconds)
        tries.append({"ratio": r, "measured_ms": ms["pruned"], "dense_ms_now": ms["dense"]})
        return None if ms["pruned"] <= 1.03 * target_ms else r * target_ms / ms["pruned"]

    with tempfile.TemporaryDirectory(prefix="vitshrink-latency-check-") as work:
        result = _posttrain(family, ir, images, None, None, embed, ratio, criterion, steps, round_to, reconstruct, base, log,
                            costs, adjust)
    result.spec.meta["latency_budget"] = {
        "target_ms": target_ms, "engine": engine, "batch": batch, "threads": threads, "dense_ms": dense_ms,
        "measured_ms": tries[-1]["measured_ms"], "predicted_ms": result.budget["macs"] / 1e6, "tries": tries,
        "table": cache.name, "table_cached": table["cached"], "fit": table["fit"],
        "note": "medians of interleaved rounds in one worker; the compile's latency stage measures the same engine again"}
    result.spec.meta.pop("budget", None)
    return result


def _merging_meets(family, ir, base, tokens, macs, heads, mlp, embed):
    """``--macs R`` with token merging (``tome:``) and no width option: the budget record when merging alone keeps at
    most R of the dense MACs (the widths then have nothing to take), else None."""
    if macs is None or not tokens or not tokens.startswith("tome:") or (heads, mlp, embed) != (None, None, None):
        return None
    from ..masks.budget import model_macs  # lazy: counting builds the model

    shape = (ir.in_chans, *ir.img_size)
    dense, got = model_macs(family, ir, shape), model_macs(family, ir, shape, base)
    if got > macs * dense:
        return None
    return {"macs": got, "budget": int(macs * dense), "dense_macs": dense, "base_macs": got, "width_share": 0.0}


def _posttrain(family, ir, images, heads, mlp, embed, macs, criterion, steps, round_to, reconstruct, base, log, costs=None,
               adjust=None):
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
    what = (f", --macs {macs:g}" if costs is None else f", {macs:.3f} of the dense latency") if macs else ""
    with log.stage("posttrain", f"data-aware masks ({criterion}{what}"
                                f"{', reconstruction' if reconstruct else ''}) on {len(images)} images"), bar:
        return posttrain(family, ir, images, shape, heads=heads, mlp=mlp, embed=embed, macs=macs, criterion=criterion,
                         round_to=round_to, reconstruct=reconstruct, steps=steps, base=base, progress=progress, costs=costs, adjust=adjust)


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
