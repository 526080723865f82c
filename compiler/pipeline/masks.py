"""The masks job -- what ``vitshrink masks`` runs, as a function the CLI, tests and benchmarks call: L1 width
criteria without data; with calibration images data-aware scores, one MACs or latency budget for the whole model
and least-squares reconstruction (:mod:`vitshrink.masks.posttrain`); token schedules (:mod:`vitshrink.masks.tokens`). Writes spec v1 (and,
re-fitted, the weights in timm's layout) atomically: on any error nothing is left half written."""
from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .. import families
from ..errors import VitshrinkError
from ..frontends.timm import eval_transform
from ..importers import import_dense
from ..masks.tokens import AUTO_MIN_KEEP, AUTO_WIDTH_SHARE, auto_schedule, is_auto, token_spec
from ..spec.format import Spec, save_spec
from .calibration import choose, find_images, load_images, record
from .output import sha256
from .progress import Log


@dataclass
class MasksResult:
    """What :func:`make_masks` wrote and found.

    Attributes:
        spec: the spec written (:class:`~vitshrink.spec.format.Spec`); path: its file.
        weights: the re-fitted weights file (safetensors, timm keys), or None (no reconstruction).
        images: how many calibration images scored the masks (0: none).
        budget: ``{"macs", "budget", "dense_macs", ...}`` (MACs per image) under ``macs`` / merging, else None.
        refit: per block what reconstruction re-fitted (``attn``, ``mlp``), or None.
        warnings: warnings a user should see (random weights where the masks score the weights).
    """

    spec: object
    path: Path
    weights: Optional[Path] = None
    images: int = 0
    budget: Optional[dict] = None
    refit: Optional[list] = None
    warnings: list = field(default_factory=list)


def make_masks(model: str, out: str | Path, *, checkpoint: Optional[str] = None, img_size: Optional[tuple[int, int]] = None,
               num_classes: Optional[int] = None, heads: Optional[float] = None, mlp: Optional[float] = None,
               embed: Optional[float] = None, macs: Optional[float] = None, latency_ms: Optional[float] = None,
               engine: str = "ort", batch: int = 1, threads: int = 2, bench_seconds: float = 6.0, data: Optional[str] = None,
               calib_images: int = 256, criterion: str = "obs", steps: int = 2, round_to: int = 1, reconstruct: bool = True,
               weights_out: Optional[str] = None, tokens: Optional[str] = None, token_mode: Optional[str] = None,
               fuse: bool = False, progress: bool = False) -> MasksResult:
    """Write a mask spec for timm ``model`` into ``out`` (``.json`` / ``.safetensors``): each keyword is the
    ``vitshrink masks`` flag of the same name (``reconstruct=False``: ``--no-reconstruct``).

    Keep ratios (``heads``, ``mlp``, ``embed``) in (0, 1]; ``macs``: the pruned MACs at most that share of the dense
    model's (MACs per image); ``latency_ms``: a budget in ms per batch of ``batch`` on ``engine``. Scores: L1 (Chen et
    al. 2021) without ``data``; with it, ``criterion`` (OBS: Hassibi & Stork 1993, activation energy, or Fisher:
    Kwon et al. 2022) on ``calib_images`` seeded images, then least-squares re-fits of ``attn.proj`` / ``mlp.fc2``
    (:mod:`vitshrink.masks.posttrain`). ``tokens``: a schedule ``KIND:RATIO@BLOCKS`` or ToMe's ``tome:R``
    (Bolya et al. 2023), ``auto`` with ``macs``.

    The spec records the checkpoint it started from (``meta.source``: path, sha256), the calibration files,
    ``img_size`` and the budget; re-fitted weights go to ``weights_out`` (default ``OUT``'s name with
    ``.weights.safetensors``).

    Returns:
        :class:`MasksResult`.
    Raises:
        VitshrinkError: bad input (an option out of range or missing, an unknown model, an unreadable checkpoint,
            a budget no allocation meets), named; nothing is written then.
    """
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
        log = Log(progress)
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
                                     steps, round_to, reconstruct, base, log, out_path)
            spec = result.spec
        elif widths and images is not None:
            result = _posttrain(family, ir, images, heads, mlp, embed, macs, criterion, steps, round_to, reconstruct,
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
    except BaseException:
        for p in written:  # nothing half written
            Path(p).unlink(missing_ok=True)
        raise
    # width criteria and Patch Slimming score the weights; uniform/evit/lfe schedules read none
    scored = heads or mlp or embed or macs or (tokens and tokens.split(":")[0].strip() == "slim")
    return MasksResult(spec, out_path, Path(weights_out) if result is not None and result.pruned_ir is not None else None,
                       len(paths) if result is not None else 0,
                       (spec.meta.get("budget") if result is None else result.budget), result.refit if result is not None else None,
                       [str(w.message) for w in caught if scored and "RANDOM" in str(w.message)])


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
