"""The report of a compile run: report.json (``vitshrink.report/1``) -- the fields, and the names a latency
entry goes by.

report.json fields (``vitshrink.report/1``; all MACs per image, all times in ms):

- ``model``, ``family`` (the frontend family: vit, swin, eva, relpos, swinv2), ``input`` ([C, H, W] of one
  image), ``created``, ``inputs`` (spec/checkpoint paths and sha256, data dir), ``toolchain`` (versions),
  ``machine``, ``timings_s`` (seconds per stage)
- ``params.dense``, ``params.pruned``; ``macs.dense``, ``macs.pruned`` (structure after pruning),
  ``macs.executed`` (what the exported graph computes, including layout padding), ``macs.ratio``
- ``structure``: ``embed_dim`` [dense, pruned], ``exit_after``, ``token_mode`` (static masks),
  ``token_layout``, ``blocks``: per source block ``kept``, ``status`` (kept / removed / after exit),
  ``heads``, ``qk``/``v`` (channels summed over heads), ``mlp`` -- each [dense, pruned] -- ``tokens``
  (``keys``, ``queries``, ``mlp``: tokens through attention as keys and as queries, and through the
  MLP, [dense, pruned]) and ``token_rule`` (a dynamic rule)
- ``import.max_abs_diff`` (codegen of the unpruned IR vs timm), ``exactness.max_abs_diff``,
  ``exactness.passed``, ``exactness.reload_max_abs_diff``, ``exactness.token_ids_identical`` (dynamic
  rules: the kept tokens of compiled model and reference agree on every verification image); ``export.onnx_max_abs_diff`` (ONNX
  Runtime vs torch, pruned), ``export.dense_onnx_max_abs_diff``, ``export.passed``; ``verified``
- ``layout``: ``policy`` (``--layout``), ``chosen``, ``reason`` (and the timings when ``auto`` timed the
  candidates), ``padded``
- ``latency``: entries with ``runtime``, ``engine``, ``precision``, ``device``, ``batch``, ``threads``,
  ``rounds``, ``load`` (other processes' CPU use while timing: ``contended``), ``dense_ms.{p50,p90,p99,mean}``,
  ``pruned_ms.{...}``, ``dense_throughput``/``pruned_throughput`` (images/s at p50), ``speedup`` (median
  of the per-round dense/pruned ratios), ``ideal_speedup`` (MACs ratio), ``realization`` (speedup /
  ideal_speedup), ``stability`` (``verdict`` stable/noisy, ``reasons``, ``rounds``, ``speedup_ci95``:
  bootstrap interval of the paired speed-up; see :func:`vitshrink.runtime.latency.stability`),
  ``suspect`` (realization above 1.02 against the dense model: the measurement is off), ``rounds_ms``
  (per-round latencies, what ``vitshrink check --baseline`` bootstraps); against the user's original
  model (timm's own module or its ``torch.onnx.export``, timed in the same rounds): ``baseline_ms``,
  ``baseline_throughput``, ``speedup_vs_original``, ``realization_vs_original``,
  ``stability_vs_original``, ``dense_vs_original``
- ``accuracy`` (with ``--data``): ``n``, ``dense_top1``, ``pruned_top1``, ``dense_top5``,
  ``pruned_top5``, ``top1_agreement`` (fractions)
- ``engines``: per engine of ``--engines`` (:mod:`vitshrink.runtime.engines`): ``status`` (ok / skipped
  with ``reason``), ``runtime``, ``version``, ``device``, ``precision`` (and ``precision_reported``: what the
  engine says it ran at), ``threads``, ``max_abs_diff`` / ``dense_max_abs_diff`` / ``top1_agreement`` vs
  torch on the verification images, ``tolerance``, ``passed``; ``tensorrt`` (``--trt``): file or
  ``skipped`` with the reason. Latency entries carry ``engine`` and ``precision``.
"""
from __future__ import annotations

FORMAT = "vitshrink.report/1"


def entry_engine(entry: dict) -> str:
    """The ``--engines`` name of a latency entry (reports before engines existed: ONNX Runtime)."""
    return entry.get("engine") or {"onnxruntime": "ort"}.get(entry.get("runtime", "onnxruntime"), entry.get("runtime"))


def entry_label(entry: dict) -> str:
    """``"ort cpu b8 t2"``: engine, device, batch, threads of a latency entry."""
    return f"{entry_engine(entry)} {entry.get('device', 'cpu')} b{entry['batch']} t{entry['threads']}"
