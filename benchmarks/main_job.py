"""The main job on real weights, and milder specs beside it: what pruning without fine-tuning costs in
accuracy and gives in speed (DeiT-Tiny, the ImageNet weights and the 1000 labelled images of
../shared/data), each spec written by ``vitshrink masks`` and compiled by ``vitshrink compile`` exactly
as the README shows -- the trade-off, not only the cliff.

Writes benchmarks/results/main_job.json (top-1/top-5, MACs, latency against timm's model and vitshrink's
dense, per spec; the machine from lscpu) and main_job.png (top-1 against speed-up), prints the table.

    python benchmarks/main_job.py [--seconds 10] [--only mlp0.75,...]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CKPT = DATA / "deit_tiny_patch16_224.in1k.safetensors"
VAL = DATA / "imagenet-sample" / "val"
MODEL = "deit_tiny_patch16_224"
#: name -> `vitshrink masks` arguments (the README's main job first)
SPECS = {
    "heads0.67+mlp0.5": ["--heads", "0.67", "--mlp", "0.5"],
    "mlp0.75": ["--mlp", "0.75"],
    "heads0.67": ["--heads", "0.67"],
    "evit0.7@4,7,10": ["--tokens", "evit:0.7@4,7,10"],
    "evit0.7@4,7,10+mlp0.9": ["--tokens", "evit:0.7@4,7,10", "--mlp", "0.9"],
}


def run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{proc.stderr[-2000:]}")


def main() -> int:
    if sys.argv[1:2] == ["--plot-only"]:  # redraw the plot from the results file
        plot(json.loads(Path(sys.argv[2]).read_text()), Path(sys.argv[2]).with_suffix(".png"))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--only", default=None)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "main_job.json"))
    a = ap.parse_args()
    if not CKPT.is_file():
        raise SystemExit(f"needs the real weights and images in {DATA}")
    exe = str(Path(sys.executable).with_name("vitshrink"))
    rows, machine = [], None
    with tempfile.TemporaryDirectory() as d:
        for name, args in SPECS.items():
            if a.only and name not in a.only.split(","):
                continue
            spec, out = Path(d) / f"{name}.json", Path(d) / name
            run([exe, "masks", MODEL, "--checkpoint", CKPT, *args, "--out", spec])
            run([exe, "compile", MODEL, "--checkpoint", CKPT, "--spec", spec, "--data", VAL, "--batch", "1,8",
                 "--bench-seconds", str(a.seconds), "--out", out, "--quiet"])
            r = json.loads((out / "report.json").read_text())
            machine = r["machine"]
            acc, m = r["accuracy"], r["macs"]
            lat = {e["batch"]: {k: e.get(k) for k in ("speedup_vs_original", "realization_vs_original", "speedup", "realization")}
                   | {"original_ms": e["baseline_ms"]["p50"], "dense_ms": e["dense_ms"]["p50"], "pruned_ms": e["pruned_ms"]["p50"],
                      "verdict": e["stability"]["verdict"], "suspect": e["suspect"]} for e in r["latency"]}
            row = {"spec": name, "masks_args": args, "macs": [m["dense"], m["pruned"]], "dense_top1": acc["dense_top1"],
                   "pruned_top1": acc["pruned_top1"], "pruned_top5": acc["pruned_top5"], "agreement": acc["top1_agreement"],
                   "n": acc["n"], "latency": lat}
            rows.append(row)
            print(f"{name:24s} MACs {m['pruned'] / 1e9:.3f} G  top-1 {acc['pruned_top1']:.3f} (dense {acc['dense_top1']:.3f})  "
                  + "  ".join(f"b{b}: x{v['speedup_vs_original']:.2f} vs timm (x{v['speedup']:.2f} vs dense)" for b, v in lat.items()),
                  flush=True)
    out = {"model": MODEL, "checkpoint": CKPT.name, "images": str(VAL.relative_to(DATA.parent)), "engine": "ort (2 threads)",
           "bench_seconds": a.seconds, "machine": machine, "rows": rows}
    Path(a.out).write_text(json.dumps(out, indent=1))
    plot(out, Path(a.out).with_suffix(".png"))
    return 0


def plot(out: dict, path: Path) -> None:
    """Top-1 against speed-up over timm's model (batch 8), one point per spec, the dense model at x1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = out["rows"]
    ax.scatter([1.0], [rows[0]["dense_top1"]], color="k", zorder=3)
    ax.annotate("timm's DeiT-Tiny (dense)", (1.0, rows[0]["dense_top1"]), textcoords="offset points", xytext=(6, -12), fontsize=8)
    for k, r in enumerate(rows):
        b = max(r["latency"], key=int)
        x = r["latency"][b]["speedup_vs_original"]
        ax.scatter([x], [r["pruned_top1"]], zorder=3)
        ax.annotate(f"{r['spec']} ({r['macs'][1] / 1e9:.2f} GMACs)", (x, r["pruned_top1"]), textcoords="offset points",
                    xytext=(6, 4 if k % 2 == 0 else -12), fontsize=8)  # alternate: neighbours' labels do not overlap
    ax.set_xlabel(f"speed-up over timm's model (ONNX Runtime, batch {max(rows[0]['latency'], key=int)}, median of per-round ratios)")
    ax.set_ylabel(f"top-1 on {rows[0]['n']} ImageNet val images")
    ax.set_title("DeiT-Tiny pruned without fine-tuning: accuracy against speed", fontsize=10)
    ax.set_ylim(0, 0.85)
    ax.set_xlim(0.9, max(r["latency"][max(r["latency"], key=int)]["speedup_vs_original"] for r in rows) * 1.35)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
