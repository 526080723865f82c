"""Where OpenVINO's INT8 time goes, original vs pruned: the work no mask touches, and how each kind of
work scales with the widths -- what lies behind benchmarks/precision.py's realization.

For each row (the rows of benchmarks/precision.py, the same masks): ``vitshrink masks`` and ``vitshrink
compile --engines openvino-int8`` build the pruned model's ONNX file, timm's original is exported as the
compile exports it (``vitshrink.export.export_onnx``), and both are quantized here by the compile's
quantizer (``vitshrink.runtime.quantize.quantize_openvino``) on the same calibration inputs (seeded
normal noise: the profile is of latency only). Then per batch size:

- the two INT8 models are timed interleaved in rounds (``vitshrink.runtime.latency.measure_interleaved``,
  the compile's rule) -- the measured speed-up and realization;
- each is run again with OpenVINO's per-layer counters (``PERF_COUNT``), in long blocks of back-to-back
  calls (the median over blocks per class), and every executed node of its
  runtime graph is put in one class by its place in the graph: *fixed* -- the work no head or MLP mask
  changes (the stem and the classifier; the LayerNorms with what OpenVINO fused after them, i.e. their
  affine, NNCF's SmoothQuant scale and the quantizer of the next layer; the residual adds on the token
  stream) -- or *width* -- the work that reads a pruned width (the blocks' int8 layers, the attention, the
  transposes, reshapes and scales between them);
- the *proportional* model: the pruned model if every width class took the original's time times the
  share of the blocks' MACs that is left, the fixed classes the original's time --
  ``proportional_realization`` = (original / that) / (dense MACs / pruned MACs). It is what the fixed part
  alone costs the realization; the pruned model beats it where its kernels or its graph scale better
  than the MACs (vitshrink's graph has fewer transposes than timm's export) and falls below it where a
  kernel runs less efficiently at the pruned width (per class: ``pruned / original`` time against the
  MACs share).

Writes benchmarks/results/int8_profile.json and int8_profile.png (stacked time per class: original,
pruned, proportional), prints the table.

    python benchmarks/int8_profile.py [--only deit_small,deit_tiny_posttrain] [--batch 1,8] [--seconds 8]
"""
from __future__ import annotations

import argparse
import collections
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from precision import CKPT, ROWS, run  # noqa: E402 - the same rows and masks

REPO = Path(__file__).resolve().parents[1]
#: classes of executed nodes, in plot order; the first three do not change with the masks
FIXED = ("stem and classifier", "LayerNorm (+ fused scale, quantize)", "residual adds")
WIDTH = ("int8 layers of the blocks", "attention", "transposes, reshapes, scales")
CALIB = 32


def _type(op) -> str:
    return op.get_rt_info()["layerType"].astype(str)


def _sources(op) -> list:
    """The non-constant producers of ``op``'s inputs, through Reorder nodes (layout copies)."""
    out = []
    for i in op.inputs():
        node = i.get_source_output().get_node()
        while _type(node) == "Reorder" and node.get_input_size():
            node = node.input(0).get_source_output().get_node()
        if _type(node) not in ("Const", "Constant"):
            out.append(node)
    return out


def classify(compiled) -> dict[str, str]:
    """``{node name: class}`` (:data:`FIXED` + :data:`WIDTH`) for every node of ``compiled``'s runtime graph:
    before the first MVN or after the last one, the stem and classifier; MVN and a node fed only by one,
    LayerNorm; a node adding two activations of the token stream's shape, a residual add; a FullyConnected,
    an int8 layer; a node with two or more activation inputs of rank 4 or more, attention; the rest width."""
    ops = [op for op in compiled.get_runtime_model().get_ordered_ops() if _type(op) not in ("Const", "Constant", "Input", "Output")]
    mvn = [i for i, op in enumerate(ops) if _type(op) == "MVN"]
    if not mvn:
        raise SystemExit("no MVN (LayerNorm) node in the runtime graph: not a ViT-style model")
    stream = tuple(ops[mvn[0]].output(0).get_partial_shape())
    cls = {}
    for i, op in enumerate(ops):
        t, srcs = _type(op), _sources(op)
        if t == "MVN" or (srcs and all(_type(s) == "MVN" for s in srcs)):
            c = FIXED[1]
        elif i < mvn[0] or i > mvn[-1]:
            c = FIXED[0]
        elif t.startswith("FullyConnected"):
            c = WIDTH[0]
        elif len(srcs) >= 2 and sum(len(s.get_output_partial_shape(0)) >= 4 for s in srcs) >= 2:
            c = WIDTH[1]
        elif len(srcs) >= 2 and tuple(op.output(0).get_partial_shape()) == stream \
                and sum(tuple(s.get_output_partial_shape(0)) == stream for s in srcs) >= 2:
            c = FIXED[2]
        else:
            c = WIDTH[2]
        cls[op.get_friendly_name()] = c
    return cls


def profile(xmls: dict[str, Path], batch: int, threads: int, shape: tuple[int, int, int] = (3, 224, 224), rounds: int = 5,
            calls: int = 30, skip: int = 5) -> dict[str, dict[str, float]]:
    """Microseconds per call in each class for each model of ``xmls``, from OpenVINO's per-layer counters:
    the models run in ``rounds`` long blocks (``calls`` back-to-back calls, the first ``skip`` dropped: the
    counters of the first calls after the other model ran carry its caches), the order rotating, and each
    class's time is the median over rounds of its mean per call."""
    import openvino as ov

    from vitshrink.runtime.openvino_runner import default_hint

    core = ov.Core()
    reqs, classes = {}, {}
    for name, xml in xmls.items():
        compiled = core.compile_model(core.read_model(str(xml)), "CPU", {
            "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": default_hint(),
            "PERF_COUNT": True})
        classes[name], reqs[name] = classify(compiled), compiled.create_infer_request()
    x = np.random.default_rng(1).standard_normal((batch, *shape), dtype=np.float32)
    per_round = {n: collections.defaultdict(list) for n in reqs}
    names = list(reqs)
    for r in range(rounds + 1):
        for n in names[r % len(names):] + names[:r % len(names)]:
            us = collections.defaultdict(float)
            for k in range(calls):
                reqs[n].infer({0: x})
                if k < skip:
                    continue
                for p in reqs[n].profiling_info:
                    if p.status == p.Status.EXECUTED:
                        us[classes[n].get(p.node_name, WIDTH[2])] += p.real_time.total_seconds() * 1e6 / (calls - skip)
            if r > 0:  # the first round warms up
                for c in FIXED + WIDTH:
                    per_round[n][c].append(us.get(c, 0.0))
    return {n: {c: round(float(np.median(per_round[n][c])), 1) for c in FIXED + WIDTH} for n in names}


def block_macs(model_name: str) -> tuple[int, int]:
    """(MACs per image of the dense model, of its blocks) -- what lies outside the blocks no mask changes."""
    import vitshrink

    vitshrink.ensure_timm_importable()
    from vitshrink.counting import count_macs_by_module
    from vitshrink.families import build_module, import_model
    from vitshrink.masks.scores import block_modules

    _, ir, _ = import_model(model_name)
    module = build_module(ir)
    names = {m: n for n, m in module.named_modules()}
    blocks = [names[b] for _, b, _ in block_modules(module)]
    got = count_macs_by_module(module, blocks, (1, 3, *ir.img_size))
    return got[""], sum(got[n] for n in blocks)


def build(name: str, d: Path) -> tuple[dict, Path, Path]:
    """``vitshrink masks`` + ``vitshrink compile`` for a row; timm's original exported; both quantized alike.
    Returns (the compile's report, original INT8 .xml, pruned INT8 .xml)."""
    import torch

    import vitshrink

    vitshrink.ensure_timm_importable()
    from vitshrink.export import export_onnx
    from vitshrink.families import import_model
    from vitshrink.runtime.quantize import quantize_openvino

    model, masks, real = ROWS[name]
    exe = str(Path(sys.executable).with_name("vitshrink"))
    spec, out = d / f"{name}.json", d / name
    weights = ["--checkpoint", CKPT] if real else []
    run([exe, "masks", model, *weights, *masks, "--out", spec, "--quiet"])
    if "--data" in masks:
        weights = ["--checkpoint", spec.with_name(spec.stem + ".weights.safetensors")]
    run([exe, "compile", model, *weights, "--spec", spec, "--engines", "ort", "--bench-seconds", "0", "--out", out, "--quiet"])
    report = json.loads((out / "report.json").read_text())
    torch.manual_seed(0)
    timm_model, _, _ = import_model(model, str(CKPT) if real else None)
    original = export_onnx(timm_model.eval(), d / f"{name}.original.onnx", (3, 224, 224))
    calib = np.random.default_rng(0).standard_normal((CALIB, 3, 224, 224), dtype=np.float32)
    xml = {w: quantize_openvino(src, d / f"{name}.{w}.int8.xml", calib, w) for w, src in (("original", original), ("pruned", out / "model.onnx"))}
    return report, xml["original"], xml["pruned"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="deit_small,deit_tiny_posttrain")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--plot-only", default=None, help="redraw the plot from this results file")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "int8_profile.json"))
    a = ap.parse_args()
    if a.plot_only:
        plot(json.loads(Path(a.plot_only).read_text()), Path(a.plot_only).with_suffix(".png"))
        return 0
    from vitshrink.runtime.latency import measure_interleaved
    from vitshrink.runtime.openvino_runner import OpenVinoRunner

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.only.split(","):
            if name not in ROWS:
                raise SystemExit(f"--only {name}: not a row of benchmarks/precision.py ({', '.join(ROWS)})")
            print(f"{name}: masks, compile, export, quantize ...", flush=True)
            report, xo, xp = build(name, Path(tmp))
            dense, pruned = report["macs"]["dense"], report["macs"]["pruned"]
            total, blocks = block_macs(ROWS[name][0])
            share = (pruned - (total - blocks)) / blocks  # of the blocks' MACs, what the masks leave
            for b in (int(s) for s in a.batch.split(",")):
                runners = {"original": OpenVinoRunner(xo, a.threads, "default"), "pruned": OpenVinoRunner(xp, a.threads, "default")}
                res = measure_interleaved(runners, b, budget_s=a.seconds)
                del runners
                got = profile({"original": xo, "pruned": xp}, b, a.threads)
                po, pp = got["original"], got["pruned"]
                fixed, width = sum(po[c] for c in FIXED), sum(po[c] for c in WIDTH)
                proportional = fixed + width * share
                ideal = dense / pruned
                ms = {n: res.stats(n)["p50"] for n in ("original", "pruned")}
                row = {"name": name, "model": ROWS[name][0], "batch": b, "macs": [dense, pruned], "ideal_speedup": ideal,
                       "block_macs_share": share, "original_ms": ms["original"], "pruned_ms": ms["pruned"],
                       "speedup": res.paired_ratio("original", "pruned"), "profile_us": {"original": po, "pruned": pp},
                       "fixed_share_of_original": fixed / (fixed + width), "proportional_us": proportional,
                       "proportional_speedup": (fixed + width) / proportional,
                       "scaling": {c: pp[c] / po[c] for c in WIDTH if po[c] > 0}}
                row["realization"] = row["speedup"] / ideal
                row["profiled_realization"] = sum(po.values()) / sum(pp.values()) / ideal
                row["proportional_realization"] = row["proportional_speedup"] / ideal
                rows.append(row)
                print(f"{name} b{b}: {ms['original']:.2f} -> {ms['pruned']:.2f} ms, x{row['speedup']:.3f} (ideal x{ideal:.2f}, "
                      f"realization {row['realization']:.2f}; profiled {row['profiled_realization']:.2f}); fixed "
                      f"{row['fixed_share_of_original']:.0%} of the original's time; proportional x{row['proportional_speedup']:.2f}, "
                      f"realization {row['proportional_realization']:.2f} (blocks' MACs kept {share:.2f})", flush=True)
                for c in FIXED + WIDTH:
                    ratio = f" (x{pp[c] / po[c]:.2f})" if c in WIDTH and po[c] else ""
                    print(f"    {c:40s} {po[c]:8.0f} -> {pp[c]:8.0f} us{ratio}", flush=True)
    lscpu = report.get("machine", {})
    out = {"engine": "openvino-int8", "threads": a.threads, "calibration": f"{CALIB} seeded normal images (latency only)",
           "machine": lscpu or {"platform": platform.platform()}, "rows": rows}
    Path(a.out).write_text(json.dumps(out, indent=1))
    plot(out, Path(a.out).with_suffix(".png"))
    return 0


COLORS = dict(zip(FIXED + WIDTH, ("#9a9a9a", "#bdbdbd", "#dcdcdc", "#DD8452", "#4C72B0", "#55A868")))


def plot(out: dict, path: Path) -> None:
    """One panel per row and batch: stacked microseconds per class for timm's INT8 original, the pruned
    INT8 model and the proportional model (width classes scaled by the blocks' MACs share), realization labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = out["rows"]
    fig, axes = plt.subplots(1, len(rows), figsize=(max(8.0, 3.6 * len(rows)), 5.0), squeeze=False)
    for ax, r in zip(axes[0], rows):
        po, pp = r["profile_us"]["original"], r["profile_us"]["pruned"]
        prop = {c: po[c] * (r["block_macs_share"] if c in WIDTH else 1.0) for c in FIXED + WIDTH}
        bars = (("timm's\noriginal", po, None),
                ("vitshrink\npruned", pp, f"realization {r['realization']:.2f}\n(counters: {r['profiled_realization']:.2f})"),
                ("proportional\n(width x MACs kept)", prop, f"realization\n{r['proportional_realization']:.2f}"))
        for k, (_, p, real) in enumerate(bars):
            bottom = 0.0
            for c in FIXED + WIDTH:
                ax.bar(k, p[c] / 1e3, 0.6, bottom=bottom, color=COLORS[c], edgecolor="white", lw=0.5)
                bottom += p[c] / 1e3
            if real is not None:
                ax.annotate(real, (k, bottom), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
        ax.set_xticks(range(3))
        ax.set_xticklabels([b[0] for b in bars], fontsize=8)
        ax.set_ylim(0, sum(po.values()) / 1e3 * 1.25)
        ax.set_ylabel("ms per batch (sum of per-layer counters)", fontsize=8)
        ax.set_title(f"{r['name']}, batch {r['batch']}\nMACs x{r['ideal_speedup']:.2f}, fixed {r['fixed_share_of_original']:.0%} of the original",
                     fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    handles = [Patch(facecolor=COLORS[c], label=("fixed: " if c in FIXED else "width: ") + c) for c in FIXED + WIDTH]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    cpu = (out.get("machine") or {}).get("cpu", "")
    fig.suptitle(f"OpenVINO INT8 time by class, {cpu}, {out['threads']} threads\n"
                 "proportional: the original's fixed classes + its width classes x the share of the blocks' MACs kept", fontsize=9)
    fig.tight_layout(rect=(0, 0.12, 1, 0.93))
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
