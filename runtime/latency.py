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

import multiprocessing
import queue
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

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
) -> LatencyResult:
    """Time ``runners`` on the same random batch [batch, *input_shape], interleaved.

    Runs ``warmup`` untimed rounds, then rounds until ``max_rounds`` or until ``budget_s`` seconds
    have passed and at least ``min_rounds`` were taken. ``progress(done, planned)`` is called after
    each round.

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
    while r < max_rounds and (r < min_rounds or time.perf_counter() - t0 < budget_s):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            res.ms[n].append(runners[n].time_once(x))
        r += 1
        if progress:
            progress(r, max(min_rounds, r))
    return res


def _onnx_worker(paths, batches, threads, input_shape, budget_s, min_rounds, max_rounds, q) -> None:
    try:
        from .ort import OrtRunner, use_global_thread_pool

        shared = use_global_thread_pool(threads)  # else per-session pools, which must not spin
        q.put(("pool", "global, spinning" if shared else "per-session, no spinning"))
        runners = {n: OrtRunner(p, threads=threads, allow_spinning=shared, global_pool=shared) for n, p in paths.items()}
        for batch in batches:
            res = measure_interleaved(
                runners, batch, input_shape, min_rounds=min_rounds, max_rounds=max_rounds, budget_s=budget_s,
                progress=lambda done, planned, b=batch: q.put(("progress", b, done, planned)))
            q.put(("result", batch, res.ms))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        q.put(("error", f"{type(e).__name__}: {e}"))
    q.put(("done",))


def measure_onnx(
    paths: Mapping[str, str | Path],
    batches: Sequence[int],
    threads: int,
    input_shape: tuple[int, int, int] = (3, 224, 224),
    budget_s: float = 20.0,
    min_rounds: int = 10,
    max_rounds: int = 5000,
    progress: Optional[Callable[[int, int, int], None]] = None,
) -> dict[int, LatencyResult]:
    """Time ONNX files interleaved with ONNX Runtime (CPU) in a fresh worker process.

    The worker creates one global intra-op pool of ``threads`` threads, spinning allowed, shared by
    a session per file, then runs :func:`measure_interleaved` for each batch size.

    Args:
        paths: runner name -> ONNX file (input [B, *input_shape] -> logits).
        progress: ``progress(batch, done, planned)`` after each round.
    Returns:
        batch size -> :class:`LatencyResult` (ms per run).
    Raises:
        RuntimeError: the worker failed (its error is included).
    """
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_onnx_worker, daemon=True, args=(
        {n: str(p) for n, p in paths.items()}, list(batches), threads, tuple(input_shape), budget_s,
        min_rounds, max_rounds, q))
    proc.start()
    results: dict[int, LatencyResult] = {}
    error, pool = None, ""
    while True:
        try:
            msg = q.get(timeout=5)
        except queue.Empty:
            if not proc.is_alive():
                error = error or f"latency worker exited with code {proc.exitcode}"
                break
            continue
        if msg[0] == "progress" and progress:
            progress(*msg[1:])
        elif msg[0] == "pool":
            pool = msg[1]
        elif msg[0] == "result":
            results[msg[1]] = LatencyResult(msg[1], msg[2], pool)
        elif msg[0] == "error":
            error = msg[1]
        elif msg[0] == "done":
            break
    proc.join(timeout=30)
    if error:
        raise RuntimeError(f"latency measurement failed: {error}")
    return results
