"""The backbones people deploy, compiled as the README shows: one ``vitshrink masks`` (L1 heads 0.5 + MLP 0.5,
and embedding 0.75 where the family prunes it) and one ``vitshrink compile`` per model, random weights,
ONNX Runtime on this machine's CPU (2 threads, batch 1). Each compile checks exactness (pruned vs the
masked dense reference), the ONNX export, and times timm's own model, vitshrink's dense model and the
pruned one in rotating rounds (``--seconds`` per compile).

Writes benchmarks/results/backbones.json and .png (per model: family, image size, MACs, exactness, export
difference, latencies, speed-up and realization against timm's model and against vitshrink's dense one,
the machine from lscpu) and prints the README table.

    python benchmarks/backbones.py [--seconds 5] [--only name,...]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: model -> `vitshrink masks` arguments (issue 19's list: DINOv2 with and without registers, CLIP, EVA-02, SigLIP,
#: BEiT, CaiT, Swin V2)
MODELS = {
    "vit_small_patch14_dinov2": ["--heads", "0.5", "--mlp", "0.5", "--embed", "0.75"],
    "vit_small_patch14_reg4_dinov2": ["--heads", "0.5", "--mlp", "0.5", "--embed", "0.75"],
    "vit_base_patch16_clip_224": ["--heads", "0.5", "--mlp", "0.5", "--embed", "0.75"],
    "eva02_small_patch14_224": ["--heads", "0.5", "--mlp", "0.5", "--embed", "0.75"],
    "vit_base_patch16_siglip_224": ["--heads", "0.5", "--mlp", "0.5", "--embed", "0.75"],
    "beit_base_patch16_224": ["--heads", "0.5", "--mlp", "0.5", "--embed", "0.75"],
    "cait_xxs24_224": ["--heads", "0.5", "--mlp", "0.5", "--embed", "0.75"],
    "swinv2_tiny_window8_256": ["--heads", "0.5", "--mlp", "0.5"],
}


def run(cmd: list) -> None:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{proc.stderr[-2000:]}")


def row(name: str, args: list, report: dict) -> dict:
    """The table row of one compile's report.json."""
    e = report["latency"][0]
    return {
        "model": name, "masks_args": args, "family": report["family"], "input": report["input"],
        "macs": [report["macs"]["dense"], report["macs"]["pruned"]],
        "exactness": report["exactness"]["max_abs_diff"], "onnx": report["export"]["onnx_max_abs_diff"],
        "original_ms": e["baseline_ms"]["p50"], "dense_ms": e["dense_ms"]["p50"], "pruned_ms": e["pruned_ms"]["p50"],
        "speedup_vs_original": e["speedup_vs_original"], "realization_vs_original": e["realization_vs_original"],
        "speedup_vs_dense": e["speedup"], "realization_vs_dense": e["realization"], "ideal": e["ideal_speedup"],
        "verdict": e["stability"]["verdict"], "suspect": e["suspect"],
    }


def table(rows: list) -> str:
    """Markdown: one line per model."""
    out = ["| model | MACs dense -> pruned (ideal) | exact | timm -> pruned ms | speed-up vs timm (realization) "
           "| vs vitshrink dense (realization) |", "|---|---|---|---|---|---|"]
    for r in rows:
        d, p = r["macs"]
        out.append(f"| {r['model']} | {d / 1e9:.2f} -> {p / 1e9:.2f} G (x{r['ideal']:.2f}) | {r['exactness']:.0e} | "
                   f"{r['original_ms']:.1f} -> {r['pruned_ms']:.1f} | x{r['speedup_vs_original']:.2f} "
                   f"({r['realization_vs_original']:.2f}) | x{r['speedup_vs_dense']:.2f} ({r['realization_vs_dense']:.2f}) |")
    return "\n".join(out)


def plot(doc: dict, path: Path) -> None:
    """Speed-up of each pruned backbone over timm's model and over vitshrink's dense model, the MACs
    ratio (the ideal) as a black tick: one group of bars per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    fig, ax = plt.subplots(figsize=(9.5, 4.8))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["speedup_vs_original"] for r in rows], 0.4, label="over timm's own model")
    ax.bar([x + 0.2 for x in xs], [r["speedup_vs_dense"] for r in rows], 0.4, label="over vitshrink's dense model")
    ax.scatter(list(xs), [r["ideal"] for r in rows], marker="_", s=900, color="k", zorder=3, label="MACs ratio (ideal)")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([r["model"] for r in rows], fontsize=7, rotation=20, ha="right")
    ax.set_ylabel("speed-up (median of per-round ratios)")
    ax.set_title(f"Pruned backbones on ONNX Runtime CPU ({doc['engine']}; {doc['machine'].get('cpu', '')})", fontsize=9)
    ax.legend(fontsize=8, loc="upper left", framealpha=0.95, markerscale=0.3)
    ax.set_ylim(0, max(max(r["speedup_vs_original"], r["ideal"]) for r in rows) * 1.25)  # room for the legend
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    if sys.argv[1:2] == ["--plot-only"]:  # redraw the plot from the results file
        plot(json.loads(Path(sys.argv[2]).read_text()), Path(sys.argv[2]).with_suffix(".png"))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--only", default=None)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "backbones.json"))
    a = ap.parse_args()
    exe = str(Path(sys.executable).with_name("vitshrink"))
    rows, machine = [], None
    with tempfile.TemporaryDirectory() as d:
        for name, args in MODELS.items():
            if a.only and name not in a.only.split(","):
                continue
            spec, out = Path(d) / f"{name}.json", Path(d) / name
            run([exe, "masks", name, *args, "--out", spec])
            run([exe, "compile", name, "--spec", spec, "--bench-seconds", a.seconds, "--out", out, "--quiet"])
            report = json.loads((out / "report.json").read_text())
            machine = report["machine"]
            rows.append(row(name, args, report))
            r = rows[-1]
            print(f"{name:32s} x{r['speedup_vs_original']:.2f} vs timm (realization {r['realization_vs_original']:.2f}), "
                  f"x{r['speedup_vs_dense']:.2f} vs dense ({r['realization_vs_dense']:.2f})", flush=True)
    doc = {"engine": "ort (2 threads), batch 1", "weights": "random (seed 0)", "bench_seconds": a.seconds,
           "machine": machine, "rows": rows}
    Path(a.out).write_text(json.dumps(doc, indent=1) + "\n")
    plot(doc, Path(a.out).with_suffix(".png"))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
