"""Latency measurement: dense and pruned timed interleaved in one run, so that drift cancels.

Each *round* runs every runner once, the order rotating from round to round; per-runner latencies
give p50/p90/p99, and the per-round ratio dense/pruned gives a drift-robust speed-up (its median).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

import numpy as np

from .base import Runner


@dataclass
class LatencyResult:
    """Latencies in milliseconds per runner name, one entry per round (same order across runners)."""

    batch: int
    ms: dict[str, list[float]] = field(default_factory=dict)

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
