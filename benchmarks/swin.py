"""Swin speed (issue 9): swin_tiny dense vs heads+MLP 50% pruned, and timm's own Swin, on ONNX Runtime.

Three ONNX files, timed interleaved in one worker process (one shared 2-thread ONNX Runtime pool,
:func:`vitshrink.runtime.latency.measure_onnx`), at batch 1 and 8:

- ``timm``: timm's SwinTransformer exported as is (roll, window partition/reverse per block);
- ``dense``: vitshrink's codegen of the unpruned IR (window-order stream, one Gather per block,
  relative bias + shift mask as one constant);
- ``pruned``: the same codegen after ``vitshrink masks --heads 0.5 --mlp 0.5`` (L1).

Reports p50 ms, speed-up and realization (speed-up / MACs ratio) of pruned vs dense, dense codegen vs
timm, every file checked against torch first, and the operators left after ONNX Runtime's graph
optimisation and OpenVINO's CPU compilation (what each fused). Random weights (latency does not depend on them). Writes
benchmarks/results/swin.json and swin.png.

    python benchmarks/swin.py [--seconds 20] [--batch 1,8] [--threads 2]
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
MODEL = "swin_tiny_patch4_window7_224"


def optimized_ops(path: Path, threads: int) -> dict[str, int]:
    """Operator counts of the graph ONNX Runtime runs (after its CPU graph optimisations)."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3  # the "optimized model is hardware specific" warning: known, it is only counted
    so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(path.with_suffix(".opt.onnx"))
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    g = onnx.load(so.optimized_model_filepath)
    return dict(collections.Counter(n.op_type for n in g.graph.node).most_common())


def openvino_ops(path: Path, threads: int) -> dict[str, int]:
    """Layer types of the graph OpenVINO's CPU plugin compiled (``Subgraph``: its fused snippets), or {}
    without openvino."""
    try:
        import openvino as ov
    except ImportError:
        return {}
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads})
    kinds = [op.get_rt_info()["layerType"].astype(str) for op in compiled.get_runtime_model().get_ops()]
    return dict(collections.Counter(k for k in kinds if k not in ("Const", "Input", "Output")).most_common())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="timing budget per batch size")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "swin.json"))
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    from vitshrink.runtime.machine import machine
    from vitshrink.pipeline.output import toolchain
    from vitshrink.families import build_module
    from vitshrink.counting import count_macs
    from vitshrink.export import export_onnx, onnx_max_abs_diff
    from vitshrink.frontends.timm import create_model
    from vitshrink.frontends.timm_swin import from_timm as from_timm_swin
    from vitshrink.masks.vit import l1_spec
    from vitshrink.families import apply_spec
    from vitshrink.families import reference_forward
    from vitshrink.runtime.latency import latency_entry, measure_onnx
    from vitshrink.families import resolve_spec

    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # timm's export leaves Unsqueeze nodes ORT warns about
    batches = [int(b) for b in a.batch.split(",")]
    timm_model = create_model(MODEL)
    ir = from_timm_swin(timm_model, MODEL)
    rs = resolve_spec(l1_spec(ir, heads=0.5, mlp=0.5), ir)
    modules = {"timm": timm_model, "dense": build_module(ir), "pruned": build_module(apply_spec(ir, rs))}
    shape = (3, 224, 224)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = {k: m(x) for k, m in modules.items()}
        exact = float((want["pruned"] - reference_forward(ir, rs, x)).abs().max())
        fidelity = float((want["dense"] - want["timm"]).abs().max())
    macs = {k: count_macs(m, (1, *shape)) for k, m in modules.items() if k != "timm"}
    ideal = macs["dense"] / macs["pruned"]
    print(f"MACs {macs['dense'] / 1e9:.3f} G -> {macs['pruned'] / 1e9:.3f} G (ideal x{ideal:.3f}); "
          f"exactness {exact:.2e}, dense codegen vs timm {fidelity:.2e}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as d:
        paths, checks, ops = {}, {}, {}
        for k, m in modules.items():
            paths[k] = export_onnx(m, Path(d) / f"{k}.onnx", shape)
            checks[k] = onnx_max_abs_diff(paths[k], x, want[k], threads=a.threads)
            ops[k] = {"onnxruntime": optimized_ops(paths[k], a.threads), "openvino": openvino_ops(paths[k], a.threads)}
            print(f"{k}: ONNX Runtime vs torch {checks[k]:.2e}; {sum(ops[k]['onnxruntime'].values())} nodes after ORT "
                  f"optimisation, {sum(ops[k]['openvino'].values())} OpenVINO CPU layers",
                  file=sys.stderr)
        res = measure_onnx({"dense": paths["dense"], "pruned": paths["pruned"], "timm": paths["timm"]}, batches,
                           a.threads, shape, budget_s=a.seconds, extend_s=a.seconds,
                           progress=lambda b, done, planned: done % 10 or print(f"batch {b}: round {done}", file=sys.stderr))
        print(file=sys.stderr)
    rows = []
    for b in batches:
        r = res[b]
        e = latency_entry(r, ideal, a.threads)
        t = r.stats("timm")
        rows.append({"batch": b, "rounds": r.rounds, "timm_ms": t["p50"], "dense_ms": e["dense_ms"]["p50"],
                     "pruned_ms": e["pruned_ms"]["p50"], "speedup": e["speedup"], "speedup_paired": e["speedup_paired"],
                     "ideal": ideal, "realization": e["realization"], "ci95": e["stability"]["speedup_ci95"],
                     "stable": e["stability"]["verdict"], "dense_vs_timm": t["p50"] / e["dense_ms"]["p50"],
                     "dense_vs_timm_paired": r.paired_ratio("timm", "dense")})
    out = {"model": MODEL, "spec": "vitshrink masks --heads 0.5 --mlp 0.5 (L1)", "machine": machine(),
           "toolchain": toolchain(), "threads": a.threads, "bench_seconds": a.seconds, "macs": macs,
           "exactness_max_abs_diff": exact, "dense_codegen_vs_timm_max_abs_diff": fidelity,
           "onnx_vs_torch": checks, "optimized_ops": ops, "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print("| batch | timm ms | dense ms | pruned ms | speed-up (95% CI) | ideal | realization | dense vs timm | stable |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['timm_ms']:.2f} | {r['dense_ms']:.2f} | {r['pruned_ms']:.2f} | x{r['speedup']:.3f} "
              f"({r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}) | x{r['ideal']:.3f} | {r['realization']:.3f} | "
              f"x{r['dense_vs_timm']:.3f} | {r['stable']} |")
    plot(out, Path(a.out).with_suffix(".png"))
    return 0


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = out["rows"]
    fig, axes = plt.subplots(1, len(rows), figsize=(4.5 * len(rows), 3.8), squeeze=False)
    colors = {"timm": "#8c959f", "dense": "#1f6feb", "pruned": "#1a7f37"}
    for ax, r in zip(axes[0], rows):
        names = ["timm", "dense", "pruned"]
        vals = [r["timm_ms"], r["dense_ms"], r["pruned_ms"]]
        bars = ax.bar(["timm ONNX\n(dense)", "vitshrink\ndense", "vitshrink\nheads+MLP 50%"], vals,
                      color=[colors[n] for n in names])
        for bar, v in zip(bars, vals):
            ax.text(bar.get_x() + bar.get_width() / 2, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
        ax.set_ylim(0, max(vals) * 1.18)
        ax.set_title(f"batch {r['batch']}: speed-up x{r['speedup']:.2f} of ideal x{r['ideal']:.2f}\n"
                     f"realization {r['realization']:.2f}; dense x{r['dense_vs_timm']:.2f} vs timm", fontsize=9)
        ax.set_ylabel("p50 latency per batch (ms)")
        ax.grid(axis="y", alpha=0.3)
    m = out["machine"]
    fig.suptitle(f"{out['model']} on ONNX Runtime CPU, {out['threads']} threads ({m['cpu']}, {m['cores']} cores)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
