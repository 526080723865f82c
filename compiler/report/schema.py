"""The report of a compile run: report.json (``vitshrink.report/1``) -- the fields, and the names a latency
entry goes by.

report.json fields (``vitshrink.report/1``; all MACs per image, all times in ms):

- ``model``, ``family`` (the frontend family: vit, swin, eva, relpos, swinv2), ``input`` ([C, H, W] of one
  image), ``created``, ``inputs`` (spec/checkpoint paths and sha256, data dir), ``toolchain`` (versions),
  ``machine``, ``timings_s`` (seconds per stage), ``preprocessing`` (what images go through before the model:
  ``input_size``, ``interpolation``, ``mean``, ``std``, ``crop_pct``, ``crop_mode``, ``transform``, ``from`` -- an HF
  image processor's ``preprocessor_config.json`` or timm's ``pretrained_cfg`` --, ``layer_norm_eps``)
- ``params.dense``, ``params.pruned``; ``macs.dense``, ``macs.pruned`` (structure after pruning),
  ``macs.executed`` (what the exported graph computes, including layout padding), ``macs.ratio``
- ``structure``: ``embed_dim`` [dense, pruned], ``exit_after``, ``token_mode`` (static masks),
  ``token_layout``, ``blocks``: per source block ``kept``, ``status`` (kept / removed / after exit),
  ``heads``, ``qk``/``v`` (channels summed over heads), ``mlp`` -- each [dense, pruned] -- ``tokens``
  (``keys``, ``queries``, ``mlp``: tokens through attention as keys and as queries, and through the
  MLP, [dense, pruned]) and ``token_rule`` (a dynamic rule)
- ``import.max_abs_diff`` (codegen of the unpruned IR vs timm), ``exactness.max_abs_diff``,
  ``exactness.passed``, ``exactness.reload_max_abs_diff``, ``exactness.token_ids_identical`` (dynamic
  rules: the kept tokens of compiled model and reference agree on every verification image), with
  ``--verify-each`` ``exactness.per_pass`` (per pass in the order they ran: ``pass``, ``what``,
  ``max_abs_diff`` against the reference with the masks so far, ``passed``); ``export.onnx_max_abs_diff`` (ONNX
  Runtime vs torch, pruned), ``export.dense_onnx_max_abs_diff`` (null when nothing timed or measured the dense
  model: ``--bench-seconds 0`` without ``--data``), ``export.passed``, ``export.exporter`` (``torchscript`` or
  ``dynamo``: :func:`vitshrink.export.export_onnx`); ``verified``
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
  ``stability_vs_original``, ``dense_vs_original``; a low-precision entry (``precision`` ``int8``, ``bf16``,
  ``fp16``) times the original *at that precision* (quantized by the same tool with the same calibration
  images) as ``baseline_ms`` / ``speedup_vs_original``, and the fp32 original in the same rounds:
  ``original_fp32_ms``, ``speedup_vs_original_fp32``, ``stability_vs_original_fp32``
- ``calibration``: the images that calibrated the INT8 engines -- ``source`` (``--calib``, ``--data, held
  out from accuracy``, the spec's mask calibration images, or the verification inputs), ``dir``, ``n``,
  ``files``, ``sha256`` (names and contents), ``seed`` -- or ``source: none``
- ``precision``: per low-precision artifact kind (``ov-int8``, ``ort-qdq``, ``onnx-fp16``) the ``tool``, ``file``,
  ``engines``, ``calibration_images``, ``seconds`` per model (``ov-int8``: ``activations``, ``symmetric`` or
  ``asymmetric``); ``cpu_note`` when the CPU lacks int8 instructions
- ``accuracy`` (with ``--data``): ``n``, ``images`` (``dir``, ``n``, ``excluded``: images left out because they
  calibrated or chose the masks, ``excluded_because``, ``what``, ``labels``: how class folders map to outputs --
  ImageNet-1k wnids, the model's label names and where they were read, or sorted folder order), ``dense_top1``, ``pruned_top1``,
  ``dense_top5``, ``pruned_top5``, ``top1_agreement`` (fractions; ONNX Runtime fp32), and ``engines``: per
  engine run a row ``{engine, precision, original_top1, pruned_top1, original_top5, pruned_top5,
  top1_agreement, original}`` -- the ``ort`` fp32 row first, then every low-precision engine (its
  original at that precision)
- ``engines``: per engine of ``--engines`` (:mod:`vitshrink.runtime.engines`): ``status`` (ok / skipped
  with ``reason``), ``runtime``, ``version``, ``device``, ``precision`` (and ``precision_reported``: what the
  engine says it ran at: ``i8+f32`` or ``i8+bf16`` for an INT8 model), ``threads``, ``max_abs_diff`` / ``dense_max_abs_diff`` (null as above)
  / ``rel_l2`` / ``top1_agreement`` vs torch fp32 on the verification images, ``metric`` (``max_abs``; int8:
  ``rel_l2``, on the real verification images when they calibrated on real ones: ``images``),
  ``tolerance``, ``passed``, ``file``; a low-precision engine also ``original_rel_l2`` / ``original_passed``;
  ``tensorrt`` / ``tensorrt-int8`` (``--trt``): file or ``skipped`` with the reason. Latency entries carry
  ``engine`` and ``precision``.
"""
from __future__ import annotations

FORMAT = "vitshrink.report/1"


def entry_engine(entry: dict) -> str:
    """The ``--engines`` name of a latency entry (reports before engines existed: ONNX Runtime)."""
    return entry.get("engine") or {"onnxruntime": "ort"}.get(entry.get("runtime", "onnxruntime"), entry.get("runtime"))


def entry_label(entry: dict) -> str:
    """``"ort cpu b8 t2"``: engine, device, batch, threads of a latency entry."""
    return f"{entry_engine(entry)} {entry.get('device', 'cpu')} b{entry['batch']} t{entry['threads']}"
