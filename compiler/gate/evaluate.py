"""Deployment gates over ``report.json``: thresholds, a baseline, and statistics a noisy runner can trust.

A gate is a set of thresholds (:data:`THRESHOLDS`), each optional. :func:`evaluate` turns a report
(and optionally a baseline report) into a list of :class:`Check` rows -- one per threshold and, for
latency thresholds, one per latency entry (engine, device, batch, threads) -- each ``pass``, ``fail``
or ``skip`` with the value, the threshold and, for latency, a 95% confidence interval.

Latency checks fail only when the **whole interval** is on the wrong side of the threshold (a speed-up
whose interval straddles 1.5 passes ``--min-speedup 1.5``, and the table says it was inconclusive):
a gate on a shared CI runner must not flap. The intervals are percentile bootstraps
(:func:`scipy.stats.bootstrap`):

- speed-up and realization: the report's own ``stability.speedup_ci95`` (median of the per-round
  dense/pruned ratios, one run);
- slowdown vs a baseline: the two runs' per-round ``pruned/dense`` ratios (``rounds_ms``) resampled
  independently, statistic ``median(new) / median(old) - 1``. The dense model timed in the same
  rounds is the control that cancels a machine that is faster or slower today than last week; with
  ``absolute=True`` the pruned milliseconds themselves are compared (sees a toolchain that slows
  dense and pruned alike, but also every drift of the machine).

Thresholds come from ``[tool.vitshrink.gate]`` in pyproject.toml, a TOML file (``--gate FILE``, its
``[gate]`` table or top level) and command-line flags, later ones overriding earlier ones
(:func:`~vitshrink.gate.thresholds.load_gate`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy.stats import bootstrap

from ..errors import VitshrinkError
from ..report.schema import entry_engine, entry_label
from .thresholds import ACCURACY_ROWS, PER_ENTRY, THRESHOLDS, Gate


@dataclass
class Check:
    """One row of the gate table. ``status`` is ``pass``, ``fail`` or ``skip``; ``interval`` the 95%
    confidence interval of ``value`` where it is a latency statistic."""

    name: str
    threshold_name: str
    value: Optional[float]
    threshold: float
    status: str
    interval: Optional[tuple[float, float]] = None
    note: str = ""

    @property
    def op(self) -> str:
        return THRESHOLDS[self.threshold_name][0]




def _applies(sel: str, entry: dict) -> bool:
    if sel == "*":
        return True
    eng, _, batch = sel.partition("@")
    eng = {"onnxruntime": "ort"}.get(eng, eng)
    return (not eng or eng == entry_engine(entry)) and (not batch or int(batch) == entry.get("batch"))


def threshold_for(gate: Gate, key: str, entry: dict) -> Optional[float]:
    """The most specific matching selector wins (ENGINE@BATCH > ENGINE / @BATCH > *)."""
    best, rank = None, -1
    for sel, v in gate.values.get(key, []):
        if _applies(sel, entry):
            r = 0 if sel == "*" else (2 if "@" in sel and not sel.startswith("@") else 1)
            if r >= rank:
                best, rank = v, r
    return best


def _doubts(e: dict) -> list[str]:
    """What the report says against trusting a latency entry: timed while the machine was busy, or
    faster than the MACs promise."""
    out = []
    if (e.get("stability") or {}).get("contended"):
        out.append(f"CONTENDED: other processes used {e['load']['other_cores']:.2f} cores while it was timed")
    if e.get("suspect"):
        out.append("SUSPECT: " + e["suspect"])
    return out


def _speedup_against(e: dict, against: Optional[str]) -> tuple[float, Optional[list], str, str]:
    """(speed-up, its 95% interval, the check-name suffix, a note) of a latency entry against the user's
    original model (the default, when the entry timed one) or vitshrink's dense model."""
    if against != "dense" and "speedup_vs_original" in e:
        return e["speedup_vs_original"], e["stability_vs_original"].get("speedup_ci95"), " vs original", ""
    why = "" if against == "dense" else "no original timed in this report: against vitshrink's dense model"
    st = e.get("stability") or {}
    return e.get("speedup_paired", e.get("speedup")), st.get("speedup_ci95"), " vs dense" if against == "dense" else "", why


def _verdict(key: str, value: Optional[float], thr: float, interval=None) -> tuple[str, str]:
    """pass/fail; a latency figure fails only when its whole interval is on the wrong side."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "fail", "not in the report"
    op = THRESHOLDS[key][0]
    ok = value >= thr if op == ">=" else value <= thr
    if interval is None:
        return ("pass" if ok else "fail"), ""
    lo, hi = interval
    if op == ">=":
        if hi < thr:
            return "fail", "whole 95% interval below the threshold"
        return "pass", "" if lo >= thr else "inconclusive: the 95% interval straddles the threshold"
    if lo > thr:
        return "fail", "whole 95% interval above the threshold"
    return "pass", "" if hi <= thr else "inconclusive: the 95% interval straddles the threshold"


def machine_fingerprint(report: dict) -> dict:
    """What must match for latencies to be comparable: CPU model, core count, GPU."""
    m = report.get("machine", {})
    return {k: m.get(k) for k in ("cpu", "cores", "cuda")}


def slowdown(new: dict, old: dict, absolute: bool = False, seed: int = 0) -> tuple[float, Optional[tuple[float, float]]]:
    """Relative slowdown of latency entry ``new`` vs ``old`` (0.05 = 5% slower) and its bootstrap 95%
    interval (None without per-round data in both).

    Relative (default): per-round ``pruned/dense`` ratios of each run, statistic
    ``median(new) / median(old) - 1``, the two samples resampled independently (999 resamples).
    ``absolute``: pruned ms per round instead of the ratio.
    """
    def series(e):
        r = e.get("rounds_ms")
        if not r:
            return None
        p = np.asarray(r["pruned"], dtype=float)
        return p if absolute else p / np.asarray(r["dense"], dtype=float)

    a, b = series(new), series(old)
    if a is None or b is None:
        pn, po = new["pruned_ms"]["p50"], old["pruned_ms"]["p50"]
        if not absolute:
            pn, po = pn / new["dense_ms"]["p50"], po / old["dense_ms"]["p50"]
        return pn / po - 1, None
    point = float(np.median(a) / np.median(b) - 1)
    if len(a) < 3 or len(b) < 3:
        return point, None

    def stat(x, y, axis=-1):
        return np.median(x, axis=axis) / np.median(y, axis=axis) - 1

    ci = bootstrap((a, b), stat, n_resamples=999, confidence_level=0.95, method="percentile", paired=False,
                   vectorized=True, random_state=np.random.default_rng(seed)).confidence_interval
    return point, (float(ci.low), float(ci.high))


def accuracy_rows(acc: dict) -> list[dict]:
    """The rows an accuracy threshold applies to: the fp32 row (engine ``ort``: dense vs pruned, ONNX Runtime)
    and every low-precision row of ``accuracy.engines`` (its original vs its pruned model, both at its
    precision). Each: ``engine``, ``precision``, ``pruned`` (top-1, 0-1 or None), ``drop`` (points or None)."""
    fp32 = acc.get("pruned_top1")
    rows = [{"engine": "ort", "batch": None, "precision": "fp32", "pruned": fp32,
             "drop": 100 * (acc["dense_top1"] - fp32) if fp32 is not None and acc.get("dense_top1") is not None else None}]
    for r in acc.get("engines") or []:
        if r.get("precision") != "fp32":
            d = None if r.get("original_top1") is None or r.get("pruned_top1") is None else 100 * (r["original_top1"] - r["pruned_top1"])
            rows.append({"engine": r["engine"], "batch": None, "precision": r["precision"], "pruned": r.get("pruned_top1"), "drop": d})
    return rows


def accuracy_checks(checks: list[Check], gate: Gate, acc: dict, key: str) -> None:
    """``max_top1_drop`` (points: dense minus pruned in fp32; a low-precision engine's original minus its pruned)
    or ``min_top1`` (the pruned model's top-1), per row of :func:`accuracy_rows` under the selectors ``*`` and
    ``ort`` (fp32) or the engine's name (the most specific wins). A selector that matches no row fails."""
    rows = accuracy_rows(acc)
    what = "top-1 drop" if key == "max_top1_drop" else "top-1"
    for sel, thr in gate.values[key]:
        if not any(_applies(sel, row) for row in rows):
            checks.append(Check(f"{what} {sel}", key, None, thr, "fail", None,
                                f"no accuracy row for {sel!r} in the report (compile with --data and --engines {sel})"))
    for row in rows:
        thr = threshold_for(gate, key, row)
        if thr is None:
            continue
        low = row["precision"] != "fp32"
        if key == "max_top1_drop":
            value = row["drop"]
            name = (f"top-1 drop {row['engine']} (points, {row['precision']} original vs {row['precision']} pruned)" if low
                    else "top-1 drop (points)")
        else:
            value = row["pruned"]
            name = f"top-1 {row['engine']} ({row['precision']} pruned)" if low else "top-1 (pruned)"
        status, note = _verdict(key, value, thr)
        if value is None:
            note = ("top-1 is not in the report (compile with --data)" if not low else
                    "no original at this precision" if key == "max_top1_drop" else "no top-1 at this precision")
        checks.append(Check(name, key, value, thr, status, None, note))


def evaluate(report: dict, gate: Gate, baseline: Optional[dict] = None, retime=None) -> list[Check]:
    """Every check of ``gate`` on ``report`` (a parsed report.json), in :data:`THRESHOLDS` order.

    ``retime(new_entry, old_entry)``: optional, measures the slowdown of the new pruned model against
    the baseline's by timing both now, interleaved, in one process (:func:`vitshrink.gate.retime.retimer`):
    returns ``(slowdown, (lo, hi), note)`` or None where it cannot (then the two reports' own rounds
    are compared, :func:`slowdown`).

    Raises:
        VitshrinkError: ``max_slowdown`` without a baseline; a baseline from another machine (CPU,
            cores or GPU differ) unless ``gate.allow_machine_change``.
    """
    checks: list[Check] = []
    v = gate.values

    def single(key, name, value):
        for _, thr in v.get(key, []):
            status, note = _verdict(key, value, thr)
            if value is None:
                note = f"{name} is not in the report" + (" (compile with --data)" if "top1" in key else "")
            checks.append(Check(name, key, value, thr, status, None, note))

    if "max_abs_diff" in v:
        diffs = [report.get("exactness", {}).get("max_abs_diff"), report.get("export", {}).get("onnx_max_abs_diff")]
        diffs = [d for d in diffs if d is not None]
        single("max_abs_diff", "max abs diff (exactness, ONNX)", max(diffs) if diffs else None)
    acc = report.get("accuracy") or {}
    if "min_top1_agreement" in v:
        single("min_top1_agreement", "top-1 agreement", acc.get("top1_agreement"))
    for key in ACCURACY_ROWS:
        if key in v:
            accuracy_checks(checks, gate, acc, key)

    entries = report.get("latency", [])
    for key in PER_ENTRY:  # a selector that matches no latency entry is a failure, not a silent pass
        for sel, thr in v.get(key, []):
            if not any(_applies(sel, e) for e in entries):
                checks.append(Check(f"{key.replace('min_', '').replace('max_', '')} {sel}", key, None, thr, "fail", None,
                                    f"no latency entry matches {sel!r} in the report (engines, --batch, --bench-seconds 0?)"))
    for key in ("min_speedup", "min_realization"):
        if key not in v:
            continue
        for e in entries:
            thr = threshold_for(gate, key, e)
            if thr is None:
                continue
            value, ci, vs, why = _speedup_against(e, gate.against)
            if key == "min_realization":
                value, ci = value / e["ideal_speedup"], ci and [c / e["ideal_speedup"] for c in ci]
            status, note = _verdict(key, value, thr, tuple(ci) if ci else None)
            checks.append(Check(f"{key.replace('min_', '')}{vs} {entry_label(e)}", key, value, thr, status,
                                tuple(ci) if ci else None, "; ".join(n for n in (note, why, *_doubts(e)) if n)))

    if "max_slowdown" in v:
        if baseline is None:
            raise VitshrinkError("gate threshold 'max_slowdown' needs --baseline OLD_REPORT.json")
        fa, fb = machine_fingerprint(report), machine_fingerprint(baseline)
        if fa != fb and not gate.allow_machine_change:
            diff = ", ".join(f"{k} {fb[k]!r} -> {fa[k]!r}" for k in fa if fa[k] != fb[k])
            raise VitshrinkError(f"baseline was measured on another machine ({diff}): latencies are not "
                                 "comparable; pass --allow-machine-change to compare anyway")
        old = {(entry_engine(e), e.get("device"), e["batch"], e["threads"]): e for e in baseline.get("latency", [])}
        for e in entries:
            thr = threshold_for(gate, "max_slowdown", e)
            if thr is None:
                continue
            b = old.get((entry_engine(e), e.get("device"), e["batch"], e["threads"]))
            name = f"slowdown vs baseline {entry_label(e)}"
            if b is None:
                checks.append(Check(name, "max_slowdown", None, thr, "skip", None, "no entry with this engine, batch and threads in the baseline"))
                continue
            timed = retime(e, b) if retime is not None else None
            if timed is not None:
                value, ci, how = timed
            else:
                value, ci = slowdown(e, b, gate.absolute)
                how = ("no per-round data in one report: point comparison" if ci is None else
                       "the two runs' rounds compared (" + ("pruned ms" if gate.absolute else "pruned/dense per round") + ")")
            status, note = _verdict("max_slowdown", value, thr, ci)
            checks.append(Check(name, "max_slowdown", value, thr, status, ci, "; ".join(x for x in (note, how) if x)))

    if "max_params" in v:
        single("max_params", "parameters (pruned)", report.get("params", {}).get("pruned"))
    if "max_macs" in v:
        single("max_macs", "MACs per image (pruned)", report.get("macs", {}).get("pruned"))
    return checks


def passed(checks: list[Check]) -> bool:
    """True when no check failed (skips do not fail a gate)."""
    return all(c.status != "fail" for c in checks)
