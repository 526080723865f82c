"""``vitshrink sweep``: the deployer's question -- the fastest model within N points of top-1 on the engine and
precision they ship -- as one job: ``masks`` + ``compile`` at every budget and method, then the Pareto front per
engine and batch.

Each point is :func:`vitshrink.pipeline.masks.make_masks` (data-aware scores and least-squares reconstruction on
the calibration images) and :func:`vitshrink.pipeline.job.compile_model` (top-1 on the other images of ``data``,
latency against timm's original at the same precision, in the same rounds), kept in ``OUT/points/<point>/``:
``spec.json``, ``spec.weights.safetensors`` and the compile's output ``out/``. A point whose ``out/report.json``
exists is finished and is not recomputed when the sweep runs again (the compile writes its output directory
atomically, so an interrupted point has none and is run again).

The calibration / held-out split is the same for every point: ``masks`` chooses ``calib_images`` images of
``data`` with a fixed seed and records them in the spec; ``compile`` leaves them out of top-1 and calibrates the
INT8 engines on them. The answer, per engine and batch: the points no other point beats on both speed-up
against the original and top-1 (the front), and the fastest point whose top-1 is within ``max_top1_drop`` points of
the original's at that precision (the original's top-1 is the same images, same engine row).
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from .errors import VitshrinkError

#: method -> ``make_masks`` keywords beside ``macs`` (the width split: data-aware scores, least-squares re-fit)
METHODS = {"widths": {}, "evit": {"tokens": "evit:auto"}, "tome": {"tokens": "tome:auto"}}
#: the 95% half-width of top-1 (at 50%, in points) above which a held-out split cannot tell budgets apart
MAX_HALF_WIDTH = 5.0


@dataclass(frozen=True)
class Point:
    """One (method, MACs budget) of a sweep; ``name`` is its folder under ``OUT/points``."""

    method: str
    macs: float

    @property
    def name(self) -> str:
        return f"{self.method}@{self.macs:g}"


def half_width(n: int) -> float:
    """The 95% half-width, in points, of a top-1 of 50% measured on ``n`` images (binomial, normal approximation):
    ``1.96 * sqrt(0.25 / n) * 100``."""
    return 196 * math.sqrt(0.25 / n)


def check_inputs(budgets: Sequence[float], methods: Sequence[str], engines: Sequence[str], data: Optional[str],
                 held_out: int) -> None:
    """Bad input before any heavy work.

    Raises:
        VitshrinkError: no ``data``; a budget outside (0, 1]; an unknown method; an engine that cannot run here
            (the reason); a held-out split whose top-1 is too coarse to tell budgets apart (the images it needs).
    """
    from .runtime import engines as engine_table  # lazy: the runtime loads only once the input is known

    if not data:
        raise VitshrinkError("--data DIR is needed: the masks are chosen on its calibration images and top-1 is "
                             "measured on the others")
    bad = [b for b in budgets if not 0 < b <= 1]
    if bad or not budgets:
        raise VitshrinkError(f"--macs {','.join(f'{b:g}' for b in budgets)}: give budgets in (0, 1], e.g. 0.9,0.7,0.5")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise VitshrinkError(f"--methods: unknown method '{unknown[0] if unknown else ''}' (known: {', '.join(METHODS)})")
    for e in engines:
        reason = engine_table.status(e)
        if reason:
            raise VitshrinkError(f"--engines: {e} cannot run here ({reason})")
    if half_width(max(held_out, 1)) > MAX_HALF_WIDTH:
        need = math.ceil((196 * 0.5 / MAX_HALF_WIDTH) ** 2)
        raise VitshrinkError(f"--data: {held_out} held-out images measure top-1 to +-{half_width(max(held_out, 1)):.1f} points "
                             f"(95%), too coarse to tell budgets apart; the sweep needs at least {need} (+-{MAX_HALF_WIDTH:g})")


def _row(report: dict, engine: str, batch: int) -> Optional[dict]:
    """One point's figures on ``engine`` at ``batch``: latency (ms, p50), the paired speed-up against the original
    at the same precision, top-1 of the pruned model and of the original (that precision's accuracy row; fp32
    engines: the ONNX Runtime fp32 row), the drop in points. None where the compile has no such entry."""
    lat = next((e for e in report.get("latency", []) if e.get("engine") == engine and e["batch"] == batch), None)
    rows = (report.get("accuracy") or {}).get("engines") or []
    acc = next((r for r in rows if r["engine"] == engine), None) or next(
        (r for r in rows if r["precision"] == "fp32" and (lat or {}).get("precision", "fp32") == "fp32"), None)
    if lat is None or acc is None or "speedup_vs_original" not in lat:
        return None
    return {"ms": lat["pruned_ms"]["p50"], "original_ms": lat["baseline_ms"]["p50"], "speedup": lat["speedup_vs_original"],
            "top1": acc["pruned_top1"], "original_top1": acc["original_top1"],
            "drop": 100 * (acc["original_top1"] - acc["pruned_top1"]), "macs_ratio": report["macs"]["ratio"]}


def front(rows: dict[str, dict]) -> list[str]:
    """The Pareto front of ``{point: row}``: the points no other point beats on both speed-up (higher) and top-1
    (higher), fastest first."""
    names = [n for n, r in rows.items() if not any(o["speedup"] >= r["speedup"] and o["top1"] >= r["top1"] and
                                                   (o["speedup"], o["top1"]) != (r["speedup"], r["top1"]) for o in rows.values())]
    return sorted(names, key=lambda n: -rows[n]["speedup"])


def best(rows: dict[str, dict], max_drop: float) -> Optional[str]:
    """The fastest point (speed-up against the original) whose top-1 drop is at most ``max_drop`` points, or None."""
    ok = [n for n, r in rows.items() if r["drop"] <= max_drop]
    return max(ok, key=lambda n: rows[n]["speedup"]) if ok else None


def run_sweep(model: str, checkpoint: str, data: str, out: str | Path, budgets: Sequence[float],
              methods: Sequence[str] = ("widths", "evit", "tome"), engines: Sequence[str] = ("ort",),
              batches: Sequence[int] = (1,), threads: int = 2, bench_seconds: float = 3.0, calib_images: int = 256,
              max_top1_drop: float = 1.0, img_size: Optional[tuple[int, int]] = None,
              say: Callable[[str], None] = lambda m: None) -> dict:
    """Every (method, budget) point -- masks, then compile --, the fronts and the best point per engine and batch;
    writes ``OUT/sweep.json``, ``sweep.md``, ``sweep.png`` and ``OUT/best/`` (the best point of the first engine and
    batch: its spec, weights and compile output). ``say`` gets one progress line per point.

    Returns:
        ``sweep.json``'s content: ``points`` (per point its files, ``seconds``, ``error`` and ``exit_code`` -- 1: it
        failed verification, 2: the model refuses it -- or per ``engine@batch`` its :func:`_row`), ``fronts`` and
        ``best`` per ``engine@batch``, the ``split``, ``max_top1_drop``.
    Raises:
        VitshrinkError: bad input (:func:`check_inputs`; an unreadable checkpoint), before any point runs.
    """
    from .pipeline import CompileOptions, compile_model, make_masks  # lazy: the compile stack (torch, timm) loads only here
    from .pipeline.calibration import find_images  # lazy: as above
    from .report.plots import plot_sweep  # lazy: matplotlib, as above

    if not data:
        check_inputs(budgets, methods, engines, data, 0)  # says --data first
    if not Path(checkpoint).exists():
        raise VitshrinkError(f"--checkpoint {checkpoint}: no such file or directory")
    images = len(find_images(data, "--data"))
    check_inputs(budgets, methods, engines, data, images - calib_images)
    out = Path(out)
    (out / "points").mkdir(parents=True, exist_ok=True)
    points = [Point(m, b) for m in methods for b in budgets]
    result: dict = {"model": model, "checkpoint": str(Path(checkpoint).resolve()), "max_top1_drop": max_top1_drop,
                    "split": {"dir": str(data), "calibration": calib_images, "held_out": images - calib_images,
                              "half_width": round(half_width(images - calib_images), 2),
                              "what": f"masks and INT8 calibration on {calib_images} seeded images of {data}, top-1 on the "
                                      f"other {images - calib_images} (+-{half_width(images - calib_images):.1f} points, 95%)"},
                    "engines": list(engines), "batches": list(batches), "points": {}}
    t0, done = time.time(), 0
    for i, p in enumerate(points):
        where = out / "points" / p.name
        report_file = where / "out" / "report.json"
        entry = {"method": p.method, "macs": p.macs, "dir": str(where)}
        if report_file.is_file():
            entry["resumed"] = True
        else:
            start = time.time()
            try:
                m = make_masks(model, where / "spec.json", checkpoint=checkpoint, img_size=img_size, macs=p.macs, data=data,
                               calib_images=calib_images, **METHODS[p.method])
                compile_model(model, m.path, where / "out", CompileOptions(
                    checkpoint=str(m.weights or checkpoint), data=data, engines=list(engines), batch=list(batches),
                    threads=threads, bench_seconds=bench_seconds, img_size=img_size, progress=False))
            except VitshrinkError as e:  # a point the model refuses, or one that fails verification: said, not fatal
                entry["error"], entry["exit_code"] = str(e).splitlines()[0], e.exit_code
            entry["seconds"] = round(time.time() - start, 1)
            done += 1
        if report_file.is_file():
            report = json.loads(report_file.read_text())
            entry["rows"] = {f"{e}@{b}": _row(report, e, b) for e in engines for b in batches}
        result["points"][p.name] = entry
        left = (time.time() - t0) / done * sum(1 for q in points[i + 1:] if not (out / "points" / q.name / "out" / "report.json").is_file()) if done else 0
        say(f"[{i + 1}/{len(points)}] {p.name}: " + (entry.get("error") or ("resumed" if entry.get("resumed") else f"{entry['seconds']:.0f} s"))
            + (f"; about {left / 60:.0f} min left" if left else ""))
    _answer(result, engines, batches, max_top1_drop, out)
    plot_sweep(result, out / "sweep.png")
    (out / "sweep.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "sweep.md").write_text(markdown(result))
    return result


def _answer(result: dict, engines, batches, max_drop: float, out: Path) -> None:
    """Fronts and best points per engine@batch; the first target's best point copied to ``out/best``."""
    result["fronts"], result["best"] = {}, {}
    for key in (f"{e}@{b}" for e in engines for b in batches):
        rows = {n: p["rows"][key] for n, p in result["points"].items() if (p.get("rows") or {}).get(key)}
        result["fronts"][key], result["best"][key] = front(rows), best(rows, max_drop)
    first = result["best"].get(f"{engines[0]}@{batches[0]}")
    if (out / "best").exists():
        shutil.rmtree(out / "best")
    if first:
        shutil.copytree(result["points"][first]["dir"], out / "best")


def markdown(result: dict) -> str:
    """sweep.md: the split, then per engine@batch the points (front marked, best named) as a table."""
    lines = [f"# vitshrink sweep: {result['model']}", "", f"Images: {result['split']['what']}.", "",
             f"Best: the fastest point within {result['max_top1_drop']:g} points of top-1 of timm's original at the same "
             "precision (speed-up: paired, against the original in the same rounds).", ""]
    for key, names in result["fronts"].items():
        b = result["best"][key]
        lines += [f"## {key}: best {b or 'none (no point within the drop)'}", "",
                  "| point | MACs | top-1 | drop (points) | latency ms | speed-up | front |", "|---|---|---|---|---|---|---|"]
        for name, p in result["points"].items():
            r = (p.get("rows") or {}).get(key)
            if r is None:
                lines.append(f"| {name} | | | | | | {p.get('error', 'no entry')} |")
                continue
            lines.append(f"| {name}{' **best**' if name == b else ''} | {r['macs_ratio']:.3f} | {r['top1']:.3f} | {r['drop']:.1f} | "
                         f"{r['ms']:.2f} (original {r['original_ms']:.2f}) | x{r['speedup']:.2f} | {'yes' if name in names else ''} |")
        lines.append("")
    return "\n".join(lines)
