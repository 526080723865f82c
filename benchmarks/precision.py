"""Pruning on top of low precision: original and pruned models in fp32 / bf16 / INT8 on ONNX Runtime and
OpenVINO, batch 1 and 8 -- the speed-up pruning adds to what a CPU user who quantizes already deploys.

Rows (each compiled by ``vitshrink compile`` as a user would, with ``--engines ort,ort-int8,openvino,
openvino-int8,openvino-bf16``; engines the CPU cannot run are recorded as skipped, with the reason):

- deit_tiny with the real ImageNet weights of ../shared/data, masks from ``vitshrink masks`` (L1,
  ``--heads 0.67 --mlp 0.75``); calibration: 128 images of ../shared/data/imagenet-sample/val, top-1
  on the other 872 (the compile holds the calibration images out of ``--data``);
- deit_tiny_posttrain: the same weights, post-training masks ``vitshrink masks --data --macs 0.7 --round-to 64`` (256
  calibration images, least-squares re-fitted weights, compiled with ``--checkpoint`` on them); the compile
  holds those 256 and its own 128 INT8 calibration images out of the top-1. Its "original" is timm's
  architecture with the re-fitted weights (the same latency as timm's original; its top-1 is the pruned
  model's): the real original's top-1 per precision is the deit_tiny_real row's;
- deit_small, heads + MLP 50% (random weights: calibrated on the verification inputs; latency only);
- swin_tiny, heads + MLP 50% (random weights; latency only).

Every INT8 entry is timed against timm's original quantized by the same tool with the same calibration
images, in the same rounds (and the fp32 original beside it). Writes benchmarks/results/precision.json
(with the CPU's ISA flags, ``cpu_flags``: int8 and bf16 speed depend on them) and precision.png (latency per
engine and precision, original vs pruned, with the ideal), prints the table.

    python benchmarks/precision.py [--seconds 10] [--only deit_tiny_real,...] [--plot-only results/precision.json]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from vitshrink.runtime.quantize import isa_flags

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CKPT = DATA / "deit_tiny_patch16_224.in1k.safetensors"
VAL = DATA / "imagenet-sample" / "val"
ENGINES = "ort,ort-int8,openvino,openvino-int8,openvino-bf16"
#: name -> (model, `vitshrink masks` arguments, real weights?); masks with --data re-fit the weights
ROWS = {
    "deit_tiny_real": ("deit_tiny_patch16_224", ["--heads", "0.67", "--mlp", "0.75"], True),
    # MLP widths in multiples of 64: an AMX int8 tile row holds 64 values (realization 0.85 / 0.87 with any
    # width, 0.87 / 0.90 with 32, 0.89 / 0.92 with 64 at b1 / b8 on a 2-vCPU Xeon with AMX, the same MACs)
    "deit_tiny_posttrain": ("deit_tiny_patch16_224", ["--data", VAL, "--macs", "0.7", "--round-to", "64"], True),
    "deit_small": ("deit_small_patch16_224", ["--heads", "0.5", "--mlp", "0.5"], False),
    "swin_tiny": ("swin_tiny_patch4_window7_224", ["--heads", "0.5", "--mlp", "0.5"], False),
}


def run(cmd: list) -> None:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{proc.stderr[-3000:]}")


def entry_row(e: dict) -> dict:
    out = {"engine": e["engine"], "precision": e["precision"], "batch": e["batch"], "original_ms": e.get("baseline_ms", {}).get("p50"),
           "dense_ms": e["dense_ms"]["p50"], "pruned_ms": e["pruned_ms"]["p50"], "speedup_vs_original": e.get("speedup_vs_original"),
           "realization_vs_original": e.get("realization_vs_original"), "ideal": e["ideal_speedup"],
           "ci95": e.get("stability_vs_original", {}).get("speedup_ci95"), "verdict": e.get("stability_vs_original", e["stability"])["verdict"]}
    if "original_fp32_ms" in e:
        out.update(original_fp32_ms=e["original_fp32_ms"]["p50"], speedup_vs_original_fp32=e["speedup_vs_original_fp32"])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--only", default=None)
    ap.add_argument("--plot-only", default=None, help="redraw the plot from this results file")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "precision.json"))
    a = ap.parse_args()
    if a.plot_only:
        plot(json.loads(Path(a.plot_only).read_text()), Path(a.plot_only).with_suffix(".png"))
        return 0
    exe = str(Path(sys.executable).with_name("vitshrink"))
    results, machine = [], None
    with tempfile.TemporaryDirectory() as d:
        for name, (model, masks, real) in ROWS.items():
            if a.only and name not in a.only.split(","):
                continue
            if real and not CKPT.is_file():
                raise SystemExit(f"{name} needs the real weights and images in {DATA}")
            spec, out = Path(d) / f"{name}.json", Path(d) / name
            weights = ["--checkpoint", CKPT] if real else []
            run([exe, "masks", model, *weights, *masks, "--out", spec, "--quiet"])
            if "--data" in masks:  # the re-fitted weights are what the spec compiles with
                weights = ["--checkpoint", spec.with_name(spec.stem + ".weights.safetensors")]
            run([exe, "compile", model, *weights, "--spec", spec, *(["--data", VAL] if real else []), "--engines", ENGINES,
                 "--batch", "1,8", "--bench-seconds", a.seconds, "--out", out, "--quiet"])
            r = json.loads((out / "report.json").read_text())
            machine = r["machine"]
            row = {"name": name, "model": model, "masks_args": [str(m) for m in masks], "real_weights": real, "macs": [r["macs"]["dense"], r["macs"]["pruned"]],
                   "calibration": {k: r["calibration"].get(k) for k in ("source", "n", "sha256")},
                   "engines": {n: {k: e.get(k) for k in ("status", "reason", "precision", "precision_reported", "rel_l2", "max_abs_diff")}
                               for n, e in r["engines"].items()},
                   "latency": [entry_row(e) for e in r["latency"]], "precision_note": r.get("precision", {}).get("cpu_note")}
            if real:
                row["accuracy"] = {"n": r["accuracy"]["n"], "images": r["accuracy"]["images"], "engines": r["accuracy"]["engines"]}
            results.append(row)
            for e in row["latency"]:
                fp = f", vs fp32 original x{e['speedup_vs_original_fp32']:.2f}" if "speedup_vs_original_fp32" in e else ""
                print(f"{name:15s} {e['engine']:14s} b{e['batch']}: original {e['original_ms']:.1f} -> pruned {e['pruned_ms']:.1f} ms, "
                      f"x{e['speedup_vs_original']:.3f} (ideal x{e['ideal']:.2f}, realization {e['realization_vs_original']:.2f}){fp}", flush=True)
            for acc in row.get("accuracy", {}).get("engines", []):
                print(f"{name:15s} top-1 {acc['engine']:14s} {acc['precision']}: original {acc['original_top1']:.3f} pruned {acc['pruned_top1']:.3f}")
    out = {"engines": ENGINES, "threads": 2, "bench_seconds": a.seconds, "machine": machine,
           "cpu_flags": isa_flags(), "rows": results}
    Path(a.out).write_text(json.dumps(out, indent=1))
    plot(out, Path(a.out).with_suffix(".png"))
    return 0


COLORS = {"fp32": "#4C72B0", "bf16": "#55A868", "fp16": "#8172B2", "int8": "#DD8452"}


def plot(out: dict, path: Path) -> None:
    """One panel per row and batch size: per engine, the original's and the pruned model's latency (bars,
    coloured by precision; the original hatched) and the ideal pruned latency (original / MACs ratio: a
    black tick)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = out["rows"]
    batches = sorted({e["batch"] for r in rows for e in r["latency"]})
    fig, axes = plt.subplots(len(rows), len(batches), figsize=(5.2 * len(batches), 3.0 * len(rows) + 0.9), squeeze=False)
    for i, r in enumerate(rows):
        for j, b in enumerate(batches):
            ax = axes[i][j]
            ents = [e for e in r["latency"] if e["batch"] == b]
            for k, e in enumerate(ents):
                c = COLORS.get(e["precision"], "grey")
                ax.bar(k - 0.2, e["original_ms"], 0.38, color=c, alpha=0.45, hatch="//", edgecolor=c)
                ax.bar(k + 0.2, e["pruned_ms"], 0.38, color=c)
                ideal = e["original_ms"] / e["ideal"]
                ax.plot([k + 0.01, k + 0.39], [ideal, ideal], color="k", lw=2)
                ax.annotate(f"x{e['speedup_vs_original']:.2f}\n({e['realization_vs_original']:.2f})", (k + 0.2, e["pruned_ms"]),
                            textcoords="offset points", xytext=(0, 3), ha="center", fontsize=7)
            ax.set_xticks(range(len(ents)))
            ax.set_xticklabels([e["engine"] for e in ents], fontsize=8)
            ax.set_ylabel("ms per batch (p50)", fontsize=8)
            ax.set_ylim(0, max(e["original_ms"] for e in ents) * 1.3)
            ideal = r["macs"][0] / r["macs"][1]
            ax.set_title(f"{r['name']} (MACs x{ideal:.2f}), batch {b}", fontsize=9)
            ax.grid(axis="y", alpha=0.3)
    handles = [Patch(facecolor="grey", alpha=0.45, hatch="//", label="timm's original, same engine and precision"),
               Patch(facecolor="grey", label="vitshrink pruned"),
               plt.Line2D([], [], color="k", lw=2, label="ideal pruned (original / MACs ratio)")]
    handles += [Patch(facecolor=c, label=p) for p, c in COLORS.items() if any(e["precision"] == p for r in rows for e in r["latency"])]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    cpu = (out.get("machine") or {}).get("cpu", "")
    isa = f" ({', '.join(out['cpu_flags'])})" if out.get("cpu_flags") else ""
    fig.suptitle(f"Pruned vs original at the same precision (labels: speed-up, realization); {cpu}{isa}, 2 threads", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
