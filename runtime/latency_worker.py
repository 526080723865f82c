"""The latency worker process: ``python -m vitshrink.runtime.latency_worker``.

Started by :func:`vitshrink.runtime.latency.measure_onnx` as a plain subprocess (never through
``multiprocessing``, whose spawn method re-imports the caller's ``__main__``: a user's script would
run a second time in the child, and a script read from stdin cannot be re-imported at all).

Protocol: one JSON object on stdin ``{"paths": {name: onnx file or module dir}, "batches": [int], "threads": int,
"input_shape": [C, H, W], "budget_s": float, "min_rounds": int, "max_rounds": int, "extend_s": float,
"engine": name in vitshrink.runtime.engines.ENGINES (default "ort"), "engines": {name: engine} for runners
of another engine of the same runtime}``; one JSON line
per event on stdout: ``["pool", str]``, ``["progress", batch, done, planned]``,
``["result", batch, {name: [ms, ...]}, {name: warm-up s}, load, {name: calls per block}]``, ``["error", str]``, and finally ``["done"]``.
"""
from __future__ import annotations

import json
import sys

from .engines import ENGINES, make_runner
from .latency import measure_interleaved, stability
from .ort import use_global_thread_pool


def _send(*msg) -> None:
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def run(job: dict) -> None:
    """Time the job's ONNX files (see the module docstring); every event goes to stdout."""
    threads, engine = int(job["threads"]), job.get("engine", "ort")
    runtime = ENGINES[engine].runtime
    if runtime == "onnxruntime":
        shared = use_global_thread_pool(threads)  # else per-session pools, which must not spin
        _send("pool", "global, spinning" if shared else "per-session, no spinning")
    else:
        shared = False
        _send("pool", {"openvino": f"OpenVINO CPU streams, {threads} threads per model ({ENGINES[engine].precision})",
                       "torch": f"torch intra-op pool, {threads} threads"}.get(runtime, engine))
    per = job.get("engines") or {}
    runners = {n: make_runner(per.get(n, engine), p, threads, shared_pool=shared) for n, p in job["paths"].items()}
    names = list(runners)
    pair = ("dense", "pruned") if {"dense", "pruned"} <= set(names) else tuple(names[:2])
    until = (lambda res: stability(res, *pair)["verdict"] == "stable") if len(pair) == 2 else None
    for batch in job["batches"]:
        res = measure_interleaved(
            runners, batch, tuple(job["input_shape"]), min_rounds=job["min_rounds"],
            max_rounds=job["max_rounds"], budget_s=job["budget_s"], extend_s=job.get("extend_s", 0.0), until=until,
            progress=lambda done, planned, b=batch: _send("progress", b, done, planned))
        _send("result", batch, res.ms, res.warmup_s, res.load, res.calls_per_block)


def main() -> int:
    try:
        run(json.loads(sys.stdin.read()))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises
        _send("error", f"{type(e).__name__}: {e}")
        return 1
    finally:
        _send("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
