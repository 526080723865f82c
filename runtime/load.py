"""How busy the rest of the machine was while we timed: CPU time other processes took, read around a
timing from ``/proc/stat`` (every process's busy time) minus our own (``getrusage`` of this process and
its children), and the load average.

A figure timed while another process held the cores is not the figure of an idle machine: on the
2-core VM of this project a busy neighbour moved dense ONNX Runtime latency from 16 to 47 ms while
the dense/pruned ratio still looked steady (issue 18). :data:`MAX_OTHER_CORES` of other work on
average marks an entry ``contended``.
"""
from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Optional

#: other processes' average CPU use, in cores, above which a timing is flagged as contended
MAX_OTHER_CORES = 0.25
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_seconds() -> Optional[float]:
    """CPU seconds every process of the machine has spent busy since boot (None off Linux)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    v = [int(x) for x in fields]
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    guest = sum(v[8:10]) if len(v) > 9 else 0  # counted inside user/nice already
    return (sum(v) - idle - guest) / _TICK


def _own_seconds() -> float:
    """CPU seconds this process and its finished children have used (user + system)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


class LoadMeter:
    """Start before a timing, :meth:`stop` after it: what the rest of the machine did meanwhile."""

    def __init__(self):
        self.t0, self.busy0, self.own0 = time.perf_counter(), _busy_seconds(), _own_seconds()
        self.loadavg0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    def stop(self) -> dict:
        """``{"seconds", "other_cores", "loadavg_1m": [before, after], "contended"}``: ``other_cores``
        is the CPU time other processes took divided by the wall time (0.5 = half a core on average;
        None where /proc/stat cannot be read); ``contended`` when it exceeds :data:`MAX_OTHER_CORES`."""
        wall = time.perf_counter() - self.t0
        busy, own = _busy_seconds(), _own_seconds()
        other = None
        if busy is not None and self.busy0 is not None and wall > 0:
            other = max(0.0, (busy - self.busy0) - (own - self.own0)) / wall
        after = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        return {"seconds": round(wall, 3), "other_cores": None if other is None else round(other, 3),
                "loadavg_1m": [self.loadavg0, after],
                "contended": other is not None and other > MAX_OTHER_CORES}
