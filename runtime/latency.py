"""Latency measurement: dense and pruned timed interleaved in one run, so that drift cancels.

Each *round* runs every runner once, the order rotating from round to round; per-runner latencies
give p50/p90/p99, and the per-round ratio dense/pruned gives a drift-robust speed-up (its median).

ONNX files are timed by :func:`measure_onnx` in a fresh worker process whose sessions share one
global ONNX Runtime thread pool with spinning allowed -- the deployment condition (hot threads, no
wake-up per op) without two per-session pools fighting over the cores. Measured here for deit_small
at batch 1 (2 threads): per-session pools without spinning 32.2 / 18.4 ms (dense / pruned),
shared spinning pool 26.8 / 14.3 ms.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
from scipy.stats import bootstrap

from .base import Runner


@dataclass
class LatencyResult:
    """Latencies in milliseconds per runner name, one entry per round (same order across runners).
    ``thread_pool``: how ONNX Runtime's threads were set up (:func:`measure_onnx`)."""

    batch: int
    ms: dict[str, list[float]] = field(default_factory=dict)
    thread_pool: str = ""

    def stats(self, name: str) -> dict[str, float]:
        """``{"p50", "p90", "p99", "mean", "throughput"}``: ms, ms, ms, ms, images/s (from p50)."""
        a = np.asarray(self.ms[name])
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(a.mean()),
                "throughput": float(self.batch * 1e3 / p50)}

    def paired_ratio(self, num: str, den: str) -> float:
        """Median over rounds of ``ms[num] / ms[den]`` (for num=dense, den=pruned: the speed-up)."""
        return float(np.median(np.asarray(self.ms[num]) / np.asarray(self.ms[den])))

    @property
    def rounds(self) -> int:
        return len(next(iter(self.ms.values())))


#: What a trustworthy latency figure needs (:func:`stability`).
MIN_ROUNDS = 20
MAX_CI_HALF_WIDTH = 0.03  # 95% interval of the paired speed-up within +-3% of it
MAX_P50_PAIRED_GAP = 0.05  # speed-up from p50s and median per-round speed-up within 5%
MAX_TAIL = 0.5  # p90 at most 50% above p50


def stability(res: LatencyResult, num: str = "dense", den: str = "pruned", seed: int = 0) -> dict:
    """Is the speed-up ``num``/``den`` of ``res`` a figure to trust? A verdict with its evidence.

    The 95% confidence interval of the median per-round ratio is a percentile bootstrap
    (:func:`scipy.stats.bootstrap`, 999 resamples). The figure is ``"noisy"`` when any of: fewer than
    :data:`MIN_ROUNDS` rounds; the interval wider than +-:data:`MAX_CI_HALF_WIDTH` of the ratio; the
    speed-up from the p50s and the paired one more than :data:`MAX_P50_PAIRED_GAP` apart; a runner's
    p90 more than :data:`MAX_TAIL` above its p50 (a long tail: another process, throttling).

    Returns:
        ``{"verdict": "stable"|"noisy", "reasons": [str], "rounds": int, "speedup_ci95": [lo, hi]}``.
    """
    ratios = np.asarray(res.ms[num]) / np.asarray(res.ms[den])
    paired = float(np.median(ratios))
    n = len(ratios)
    reasons = []
    if n >= 3 and np.ptp(ratios) > 0:
        ci = bootstrap((ratios,), np.median, n_resamples=999, confidence_level=0.95, method="percentile",
                       random_state=np.random.default_rng(seed)).confidence_interval
        lo, hi = float(ci.low), float(ci.high)
    else:
        lo = hi = paired
    if n < MIN_ROUNDS:
        reasons.append(f"only {n} rounds (< {MIN_ROUNDS})")
    half = max(paired - lo, hi - paired) / paired
    if half > MAX_CI_HALF_WIDTH:
        reasons.append(f"speed-up 95% interval [{lo:.3f}, {hi:.3f}] is +-{100 * half:.0f}% (> {100 * MAX_CI_HALF_WIDTH:.0f}%)")
    p50 = res.stats(num)["p50"] / res.stats(den)["p50"]
    if abs(p50 - paired) / paired > MAX_P50_PAIRED_GAP:
        reasons.append(f"speed-up from p50s x{p50:.3f} and paired x{paired:.3f} disagree")
    for name in (num, den):
        st = res.stats(name)
        if st["p90"] > (1 + MAX_TAIL) * st["p50"]:
            reasons.append(f"{name} p90 is {100 * (st['p90'] / st['p50'] - 1):.0f}% above p50")
    return {"verdict": "noisy" if reasons else "stable", "reasons": reasons, "rounds": n, "speedup_ci95": [lo, hi]}


def latency_entry(res: LatencyResult, ideal_speedup: float, threads: int, runtime: str = "onnxruntime",
                  device: str = "cpu", provider: Optional[str] = "CPUExecutionProvider") -> dict:
    """One ``report.json`` latency entry (dense vs pruned) from an interleaved ``res``: p50/p90/p99/mean
    ms, throughput (images/s), speed-up from the p50s and paired (median per-round ratio), ideal
    speed-up (MACs ratio), realization (speed-up / ideal), :func:`stability`, and the per-round ms
    (``rounds_ms``, what ``vitshrink check --baseline`` bootstraps)."""
    d, p = res.stats("dense"), res.stats("pruned")
    speedup = d["p50"] / p["p50"]
    return {
        "runtime": runtime, "device": device, "provider": provider,
        "batch": res.batch, "threads": threads, "thread_pool": res.thread_pool, "rounds": res.rounds,
        "dense_ms": {k: d[k] for k in ("p50", "p90", "p99", "mean")},
        "pruned_ms": {k: p[k] for k in ("p50", "p90", "p99", "mean")},
        "dense_throughput": d["throughput"], "pruned_throughput": p["throughput"],
        "speedup": speedup, "speedup_paired": res.paired_ratio("dense", "pruned"),
        "ideal_speedup": ideal_speedup, "realization": speedup / ideal_speedup,
        "stability": stability(res),
        "rounds_ms": {k: [round(float(v), 4) for v in res.ms[k]] for k in ("dense", "pruned")},
    }


def measure_interleaved(
    runners: Mapping[str, Runner],
    batch: int,
    input_shape: tuple[int, int, int] = (3, 224, 224),
    warmup: int = 3,
    min_rounds: int = 10,
    max_rounds: int = 200,
    budget_s: float = 20.0,
    progress: Optional[Callable[[int, int], None]] = None,
    seed: int = 0,
    extend_s: float = 0.0,
    until: Optional[Callable[[LatencyResult], bool]] = None,
) -> LatencyResult:
    """Time ``runners`` on the same random batch [batch, *input_shape], interleaved.

    Runs ``warmup`` untimed rounds, then rounds until ``max_rounds`` or until ``budget_s`` seconds
    have passed and at least ``min_rounds`` were taken. Past the budget, rounds go on for up to
    ``extend_s`` more seconds while ``until(result)`` is False (checked every 10 rounds; e.g. "the
    speed-up is :func:`stability` stable"). ``progress(done, planned)`` is called after each round.

    Returns:
        :class:`LatencyResult` with per-round latencies in ms.
    """
    names = list(runners)
    x = np.random.default_rng(seed).standard_normal((batch, *input_shape), dtype=np.float32)
    for _ in range(warmup):
        for n in names:
            runners[n].run(x)
    res = LatencyResult(batch, {n: [] for n in names})
    t0 = time.perf_counter()
    r = 0
    settled = until is None or extend_s <= 0
    while r < max_rounds:
        elapsed = time.perf_counter() - t0
        if r >= min_rounds and elapsed >= budget_s:
            if settled or elapsed >= budget_s + extend_s:
                break
            if r % 10 == 0:
                settled = until(res)
                if settled:
                    break
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            res.ms[n].append(runners[n].time_once(x))
        r += 1
        if progress:
            progress(r, max(min_rounds, r))
    return res


def measure_onnx(
    paths: Mapping[str, str | Path],
    batches: Sequence[int],
    threads: int,
    input_shape: tuple[int, int, int] = (3, 224, 224),
    budget_s: float = 20.0,
    min_rounds: int = MIN_ROUNDS,
    max_rounds: int = 5000,
    progress: Optional[Callable[[int, int, int], None]] = None,
    extend_s: float = 0.0,
    engine: str = "ort",
) -> dict[int, LatencyResult]:
    """Time ONNX files (or module directories, for the torch engines) interleaved in a fresh worker
    process, with ONNX Runtime on the CPU or another ``engine`` of :mod:`vitshrink.runtime.engines`.

    The worker is ``python -m vitshrink.runtime.latency_worker``, a plain subprocess fed on stdin: it
    never imports the caller's ``__main__``, so this works the same from a script, a script piped to
    ``python -``, a notebook or a REPL. It creates one global intra-op pool of ``threads`` threads,
    spinning allowed, shared by a session per file, then runs :func:`measure_interleaved` for each
    batch size. Other engines make their runners in the same worker (OpenVINO: its own pool of
    ``threads`` per compiled model; torch: ``torch.set_num_threads``).

    Args:
        paths: runner name -> ONNX file (input [B, *input_shape] -> logits).
        budget_s: seconds per batch size; ``extend_s``: up to this many more while the speed-up of
            the first two runners is not :func:`stability` stable.
        progress: ``progress(batch, done, planned)`` after each round.
    Returns:
        batch size -> :class:`LatencyResult` (ms per run).
    Raises:
        RuntimeError: the worker failed (its error is included).
    """
    job = {"paths": {n: str(Path(p).resolve()) for n, p in paths.items()}, "batches": [int(b) for b in batches],
           "threads": int(threads), "input_shape": list(input_shape), "budget_s": float(budget_s),
           "min_rounds": int(min_rounds), "max_rounds": int(max_rounds), "extend_s": float(extend_s), "engine": engine}
    results: dict[int, LatencyResult] = {}
    error, pool = None, ""
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "vitshrink.runtime.latency_worker"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            proc.stdin.write(json.dumps(job))
            proc.stdin.close()
            for line in proc.stdout:
                try:
                    msg = json.loads(line)
                except json.JSONDecodeError:
                    msg = None
                if not isinstance(msg, list) or not msg:
                    continue  # a library printing to stdout: not a message
                if msg[0] == "progress" and progress:
                    progress(*msg[1:])
                elif msg[0] == "pool":
                    pool = msg[1]
                elif msg[0] == "result":
                    results[msg[1]] = LatencyResult(msg[1], msg[2], pool)
                elif msg[0] == "error":
                    error = msg[1]
            code = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if error is None and (code != 0 or len(results) != len(job["batches"])):
            err.seek(0)
            tail = [ln for ln in err.read().splitlines() if ln.strip()][-1:]
            error = f"latency worker exited with code {code}" + (f": {tail[0]}" if tail else "")
    if error:
        raise RuntimeError(f"latency measurement failed: {error}")
    return results
