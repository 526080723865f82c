"""Latency measurement: dense and pruned timed interleaved in one run, so that drift cancels.

Each *round* runs every runner once -- a *block* of back-to-back calls (:func:`block_calls`), the
first discarded -- the order rotating from round to round; per-runner latencies give p50/p90/p99, and
the per-round ratio dense/pruned gives a drift-robust speed-up (its median).

Why blocks: the first call after another model ran pays for that model's caches and threads. Measured
with OpenVINO INT8 on a 2-vCPU Xeon (AMX), deit_small at batch 1, one call per model per round: timm's
original 12.1 ms, the heads + MLP 50% model 7.95 ms; in blocks of 8 (first dropped, median of the rest)
10.3 / 6.25 ms -- about 1.7 ms per call that a deployment, which runs one model back to back, never pays,
and which shrinks every speed-up of a fast model towards 1.

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
from .load import LoadMeter


@dataclass
class LatencyResult:
    """Latencies in milliseconds per runner name, one entry per round (same order across runners).
    ``thread_pool``: how ONNX Runtime's threads were set up (:func:`measure_onnx`); ``warmup_s``: per
    runner, seconds of its first (untimed) call -- for ``torch.compile``, the compile; ``load``: what
    the rest of the machine did during the rounds (:class:`vitshrink.runtime.load.LoadMeter`)."""

    batch: int
    ms: dict[str, list[float]] = field(default_factory=dict)
    thread_pool: str = ""
    warmup_s: dict[str, float] = field(default_factory=dict)
    load: dict = field(default_factory=dict)
    calls_per_block: dict[str, int] = field(default_factory=dict)

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


#: A block lasts about this long (ms) per runner and round (:func:`block_calls`).
BLOCK_MS = 100.0
#: At most this many calls per block (the first dropped).
MAX_BLOCK_CALLS = 9


def block_calls(warm_ms: float, block_ms: float = BLOCK_MS) -> int:
    """Calls per block for a runner whose warm call takes ``warm_ms`` milliseconds: 1 when
    ``warm_ms >= block_ms`` or ``block_ms <= 0`` (one call per round: the switch costs such a model under
    2%), else ``1 + ceil(block_ms / warm_ms)`` capped at :data:`MAX_BLOCK_CALLS` -- the first call of a block
    is dropped and the round's latency is the median of the others."""
    if block_ms <= 0 or warm_ms >= block_ms:
        return 1
    return int(min(MAX_BLOCK_CALLS, 1 + np.ceil(block_ms / max(warm_ms, 1e-6))))


def time_block(runner: Runner, x: np.ndarray, calls: int) -> float:
    """One round's latency (ms) of ``runner`` on ``x``: one call, or the median of calls 2..``calls``."""
    if calls <= 1:
        return runner.time_once(x)
    ts = [runner.time_once(x) for _ in range(calls)]
    return float(np.median(ts[1:]))


#: What a trustworthy latency figure needs (:func:`stability`).
MIN_ROUNDS = 20
MAX_CI_HALF_WIDTH = 0.03  # 95% interval of the paired speed-up within +-3% of it
MAX_P50_PAIRED_GAP = 0.05  # speed-up from p50s and median per-round speed-up within 5%
MAX_TAIL = 0.5  # p90 at most 50% above p50
MAX_REALIZATION = 1.02  # faster than the MACs promise by more than 2%: suspect (noise, contention, a broken dense)


def stability(res: LatencyResult, num: str = "dense", den: str = "pruned", seed: int = 0) -> dict:
    """Is the speed-up ``num``/``den`` of ``res`` a figure to trust? A verdict with its evidence.

    The speed-up is the median of the per-round ratios ``ms[num] / ms[den]`` (the two timed in the same
    round, so drift cancels); its 95% confidence interval is a percentile bootstrap
    (:func:`scipy.stats.bootstrap`, 999 resamples). The figure is ``"noisy"`` when any of: fewer than
    :data:`MIN_ROUNDS` rounds; the interval wider than +-:data:`MAX_CI_HALF_WIDTH` of the ratio; the
    ratio of the p50s and the paired one more than :data:`MAX_P50_PAIRED_GAP` apart; a runner's
    p90 more than :data:`MAX_TAIL` above its p50 (a long tail: another process, throttling); other
    processes busy during the rounds (``res.load["contended"]``).

    Returns:
        ``{"verdict": "stable"|"noisy", "reasons": [str], "rounds": int, "speedup": median ratio,
        "speedup_ci95": [lo, hi], "contended": bool}``.
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
    contended = bool(res.load.get("contended"))
    if contended:
        reasons.append(f"contended: other processes used {res.load['other_cores']:.2f} cores on average during the rounds")
    return {"verdict": "noisy" if reasons else "stable", "reasons": reasons, "rounds": n, "speedup": paired,
            "speedup_ci95": [lo, hi], "contended": contended}


def _ms(st: dict) -> dict:
    return {k: st[k] for k in ("p50", "p90", "p99", "mean")}


def latency_entry(res: LatencyResult, ideal_speedup: float, threads: int, runtime: str = "onnxruntime",
                  device: str = "cpu", provider: Optional[str] = "CPUExecutionProvider") -> dict:
    """One ``report.json`` latency entry from an interleaved ``res`` of ``dense`` and ``pruned`` (and,
    when timed, the user's ``original`` model).

    Speed-up is defined once: the median of the per-round latency ratios (:func:`stability`), with the
    bootstrap 95% interval around it; realization = speed-up / ``ideal_speedup`` (the MACs ratio). Per
    runner p50/p90/p99/mean ms and throughput (images/s at p50) are the raw latencies.

    Returns:
        ``{runtime, device, provider, batch, threads, thread_pool, rounds, load, dense_ms, pruned_ms,
        dense_throughput, pruned_throughput, speedup, ideal_speedup, realization, stability, suspect,
        calls_per_block, rounds_ms}``; with an original also ``baseline_ms``, ``baseline_throughput``,
        ``speedup_vs_original``, ``realization_vs_original``, ``stability_vs_original`` and
        ``dense_vs_original`` (original / dense per round: above 1, vitshrink's dense model is faster);
        with the fp32 original timed beside a low-precision run (``original_fp32``) also
        ``original_fp32_ms``, ``speedup_vs_original_fp32`` and ``stability_vs_original_fp32``: how far the
        pruned low-precision model is from what the user runs in fp32 today.
    """
    d, p = res.stats("dense"), res.stats("pruned")
    st = stability(res, "dense", "pruned")
    e = {
        "runtime": runtime, "device": device, "provider": provider,
        "batch": res.batch, "threads": threads, "thread_pool": res.thread_pool, "rounds": res.rounds, "load": res.load,
        "dense_ms": _ms(d), "pruned_ms": _ms(p), "dense_throughput": d["throughput"], "pruned_throughput": p["throughput"],
        "speedup": st["speedup"], "ideal_speedup": ideal_speedup, "realization": st["speedup"] / ideal_speedup,
        "stability": st,
    }
    if "original" in res.ms:
        o, so = res.stats("original"), stability(res, "original", "pruned")
        e.update(baseline_ms=_ms(o), baseline_throughput=o["throughput"], speedup_vs_original=so["speedup"],
                 realization_vs_original=so["speedup"] / ideal_speedup, stability_vs_original=so,
                 dense_vs_original=res.paired_ratio("original", "dense"))
    if "original_fp32" in res.ms:
        f, sf = res.stats("original_fp32"), stability(res, "original_fp32", "pruned")
        e.update(original_fp32_ms=_ms(f), speedup_vs_original_fp32=sf["speedup"], stability_vs_original_fp32=sf)
    # against the dense model of the same codegen, beating the MACs promise means the measurement is off
    # (against the original it may not: vitshrink's dense can be faster than timm's, see dense_vs_original)
    e["suspect"] = (f"realization {e['realization']:.3f} > {MAX_REALIZATION} against vitshrink's dense model: faster "
                    "than the MACs promise -- check the machine's load before trusting it"
                    if e["realization"] > MAX_REALIZATION else None)
    if res.calls_per_block:  # how each round was timed: calls per block, the first dropped (1: one call)
        e["calls_per_block"] = dict(res.calls_per_block)
    if res.warmup_s:
        e["warmup_s"] = {k: round(v, 3) for k, v in res.warmup_s.items()}
    e["rounds_ms"] = {k: [round(float(v), 4) for v in res.ms[k]] for k in res.ms}
    return e


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
    block_ms: float = BLOCK_MS,
) -> LatencyResult:
    """Time ``runners`` on the same random batch [batch, *input_shape], interleaved.

    Runs ``warmup`` untimed rounds (their fastest call sets each runner's :func:`block_calls` for
    ``block_ms``; ``block_ms=0`` or ``warmup=0``: one call per round), then rounds until ``max_rounds``
    or until ``budget_s`` seconds have passed and at least ``min_rounds`` were taken. Past the budget, rounds go on for up to
    ``extend_s`` more seconds while ``until(result)`` is False (checked every 10 rounds; e.g. "the
    speed-up is :func:`stability` stable"). ``progress(done, planned)`` is called after each round.

    Returns:
        :class:`LatencyResult` with per-round latencies in ms.
    """
    names = list(runners)
    x = np.random.default_rng(seed).standard_normal((batch, *input_shape), dtype=np.float32)
    warmup_s, fastest = {}, {n: float("inf") for n in names}
    for i in range(warmup):
        for n in names:
            t = time.perf_counter()
            runners[n].run(x)
            dt = time.perf_counter() - t
            if i == 0:
                warmup_s[n] = dt
            if i > 0 or warmup == 1:
                fastest[n] = min(fastest[n], dt * 1e3)
    calls = {n: block_calls(fastest[n], block_ms) for n in names}
    res = LatencyResult(batch, {n: [] for n in names}, warmup_s=warmup_s, calls_per_block=calls)
    meter = LoadMeter()
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
            res.ms[n].append(time_block(runners[n], x, calls[n]))
        r += 1
        if progress:
            progress(r, max(min_rounds, r))
    res.load = meter.stop()
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
    engines: Optional[Mapping[str, str]] = None,
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
        engines: runner name -> the engine of that runner where it is not ``engine`` (same runtime).
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
           "min_rounds": int(min_rounds), "max_rounds": int(max_rounds), "extend_s": float(extend_s), "engine": engine,
           "engines": dict(engines or {})}
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
                    results[msg[1]] = LatencyResult(msg[1], msg[2], pool, *msg[3:6])
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
