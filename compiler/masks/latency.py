"""A latency budget for ``vitshrink masks --latency-ms T --engine E --batch B``: heads and MLP neurons priced
in milliseconds measured on the deployment engine, so that the budget is what the deployment pays.

The table (:func:`measure_table`): the model with every block keeping a share of its heads and neurons
(:data:`POINTS`, the dense model first), each exported to ONNX and timed interleaved with the others in
one worker on engine E at batch B (:func:`vitshrink.runtime.engines.measure`; medians of the rounds). A
non-negative least-squares fit (:func:`scipy.optimize.nnls`) of the points' medians,

    t = t0 + a * (MACs of the kept heads) + b * (MACs of the kept neurons),

prices one head of block s at ``a * head_macs[s]`` and one neuron at ``b * neuron_macs[s]``
(:func:`costs_from_table`; per-unit MACs from :func:`vitshrink.masks.budget.unit_costs`, so a block that
runs on fewer tokens is cheaper, as it is on the engine). The allocation is then the ``--macs`` search of
:mod:`.budget` with these costs and the ratio T / (dense ms). The table is cached beside the spec
(``SPEC.latency.json``) and reused while model, input, base masks, engine, batch, threads and CPU are the same.
"""
from __future__ import annotations

import json
import math
import statistics
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from scipy.optimize import nnls

from ..errors import VitshrinkError
from ..export import export_onnx
from ..runtime import engines
from ..runtime.machine import machine
from ..spec.format import Spec
from .budget import Costs

#: (share of heads, share of MLP neurons) every block keeps, per point of the table; the dense model first
POINTS = ((1.0, 1.0), (0.5, 1.0), (1.0, 0.5), (0.25, 0.25))
FORMAT = "vitshrink-latency-table/1"


def check_engine(name: str) -> None:
    """Raises VitshrinkError: ``name`` is not an engine that times ONNX files here (int8 engines time a
    quantized artifact per width: not priced yet)."""
    if name not in engines.ENGINES:
        raise VitshrinkError(f"--engine {name!r}: unknown engine (known: {', '.join(engines.ENGINES)})")
    if engines.ENGINES[name].artifact != "onnx":
        onnx = [e for e, s in engines.ENGINES.items() if s.artifact == "onnx"]
        raise VitshrinkError(f"--engine {name}: the latency table times ONNX exports; price with one of {', '.join(onnx)} "
                             f"({name} runs a {engines.ENGINES[name].artifact} artifact)")
    why = engines.status(name)
    if why:
        raise VitshrinkError(f"--engine {name}: cannot run here ({why})")


def _width_masks(family, ir, head_share: float, mlp_share: float) -> dict:
    """Every block keeps its first ceil(share x units) heads and neurons (at least one head)."""
    masks = {}
    for b in ir.blocks:
        name = family.spec.block_name(ir, b.source_index)
        for kind, n, share in (("heads", b.attn.num_heads, head_share), ("mlp", b.mlp.hidden, mlp_share)):
            if n and share < 1:
                keep = torch.zeros(n, dtype=torch.bool)
                keep[: max(1, math.ceil(share * n))] = True
                masks[f"{name}.{kind}"] = keep
    return masks


def export_widths(family, ir, masks: dict, shape: tuple[int, int, int], path: Path, settings: Optional[dict] = None) -> Path:
    """The generated model of ``ir`` pruned by ``masks`` and ``settings`` (a dynamic token rule; layout ``pad``),
    exported to ONNX at ``path``."""
    pruned = family.passes.apply_spec(ir, family.spec.resolve(Spec(masks=masks, settings=dict(settings or {})), ir, {}), {})
    return export_onnx(family.codegen.build_module(family.passes.lay_out(pruned, "pad", "prefix"), True, False), path, shape)


def time_models(name: str, paths: dict[str, Path], batch: int, threads: int, shape: tuple[int, int, int],
                seconds: float) -> dict[str, float]:
    """Median ms per run of each ONNX file, timed interleaved on engine ``name`` at ``batch``."""
    res = engines.measure(name, paths, [batch], threads, shape, budget_s=seconds)
    res = res[0] if isinstance(res, tuple) else res
    return {n: float(statistics.median(v)) for n, v in res[batch].ms.items()}


def _key(ir, shape, base: Spec, engine: str, batch: int, threads: int) -> dict:
    return {"model": ir.name, "input": list(shape), "engine": engine, "batch": batch, "threads": threads,
            "cpu": machine()["cpu"], "base_masks": sorted(base.masks), "base_settings": json.loads(json.dumps(base.settings)),
            "points": [list(p) for p in POINTS]}


def measure_table(family, ir, shape: tuple[int, int, int], base: Spec, macs: Costs, engine: str, batch: int,
                  threads: int, seconds: float, cache: Optional[Path] = None,
                  progress: Optional[Callable[[str], None]] = None) -> dict:
    """The latency table of the module docstring (read from ``cache`` when it holds one with the same key).

    Args:
        base: masks and settings that stay (a token schedule), applied at every point; macs: the MACs per unit.
        seconds: timing budget of the interleaved rounds.
    Returns:
        ``{"format", "key", "points": [{"heads", "mlp" (shares kept), "head_macs", "neuron_macs" (kept), "ms"}],
        "fit": {"t0_ms", "ms_per_head_mac", "ms_per_neuron_mac", "max_residual_ms"}, "dense_ms"}``.
    """
    key = _key(ir, shape, base, engine, batch, threads)
    if cache is not None and cache.is_file():
        try:
            old = json.loads(cache.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if isinstance(old, dict) and old.get("format") == FORMAT and old.get("key") == key:
            return {**old, "cached": True}
    rows = []
    with tempfile.TemporaryDirectory(prefix="vitshrink-latency-") as work:
        paths = {}
        for i, (hs, ns) in enumerate(POINTS):
            if progress:
                progress(f"export {i + 1}/{len(POINTS)}")
            masks = {**base.masks, **_width_masks(family, ir, hs, ns)}
            paths[f"p{i}"] = export_widths(family, ir, masks, shape, Path(work) / f"p{i}.onnx", base.settings)
            kept_h = sum(macs.head[b.source_index] * int(masks.get(f"{family.spec.block_name(ir, b.source_index)}.heads",
                                                                   torch.ones(b.attn.num_heads)).sum()) for b in ir.blocks)
            kept_n = sum(macs.neuron[b.source_index] * int(masks.get(f"{family.spec.block_name(ir, b.source_index)}.mlp",
                                                                     torch.ones(b.mlp.hidden)).sum()) for b in ir.blocks)
            rows.append({"heads": hs, "mlp": ns, "head_macs": int(kept_h), "neuron_macs": int(kept_n)})
        if progress:
            progress(f"time {len(POINTS)} models on {engine}, batch {batch}")
        ms = time_models(engine, paths, batch, threads, shape, seconds)
    for i, r in enumerate(rows):
        r["ms"] = ms[f"p{i}"]
    A = np.array([[1.0, r["head_macs"] / 1e9, r["neuron_macs"] / 1e9] for r in rows])
    t = np.array([r["ms"] for r in rows])
    coef, _ = nnls(A, t)
    fit = {"t0_ms": float(coef[0]), "ms_per_head_mac": float(coef[1]) / 1e9, "ms_per_neuron_mac": float(coef[2]) / 1e9,
           "max_residual_ms": float(np.abs(A @ coef - t).max())}
    table = {"format": FORMAT, "key": key, "points": rows, "fit": fit, "dense_ms": rows[0]["ms"]}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(table, indent=1) + "\n")
    return {**table, "cached": False}


def costs_from_table(table: dict, macs: Costs) -> Costs:
    """Per-unit costs in nanoseconds (:class:`~.budget.Costs`; ``total``: the dense model's measured median)."""
    a, b = table["fit"]["ms_per_head_mac"] * 1e6, table["fit"]["ms_per_neuron_mac"] * 1e6
    return Costs(int(round(table["dense_ms"] * 1e6)), {s: a * c for s, c in macs.head.items()},
                 {s: b * c for s, c in macs.neuron.items()}, unit="ns")
