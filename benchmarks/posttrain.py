"""Post-training masks on real weights: what L1 masks, data-aware masks and data-aware masks + least-squares
reconstruction keep of DeiT-Tiny's accuracy, against MACs and measured latency -- the Pareto front a
deployer picks from.

DeiT-Tiny with the ImageNet weights of ../shared/data; ``vitshrink masks --data`` chooses 256 calibration
images (seeded) of the 1000 in ``imagenet-sample/val`` and ``vitshrink compile --data`` measures top-1 on
the 744 others (the L1 specs are given the same calibration record, so every row is measured on the same
744 images). Budgets ``--macs`` 0.9, 0.86, 0.8, 0.7, 0.58, 0.5 and the README main job's structure (``--heads 0.67 --mlp
0.5``); latency is ONNX Runtime fp32, 2 threads, batch 1, against timm's own model in the same rounds
(the compile's interleaved timing; medians). Every row compiled exactly (the report's max abs diff).

Token merging (ToMe, ``--tokens tome:auto``: the smallest r whose merging alone meets the budget; no scores, no
re-fit) at ``--macs`` 0.86, 0.7, 0.58, 0.5, compiled with ONNX Runtime fp32 and OpenVINO INT8 at batch 1 and 8 --
the INT8 model against timm's INT8 original (same NNCF recipe and calibration), its top-1 on the same held-out images.

Writes benchmarks/results/posttrain.json and posttrain.png (top-1 against latency; the time each method
took), prints the table (``--table FILE``; the merging rows: ``--merge-table FILE``).

    python benchmarks/posttrain.py [--seconds 3] [--only macs0.58,...] [--methods "ToMe merging,..."]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from main_job import CKPT, DATA, MODEL, REPO, VAL, run  # the same model, data and subprocess helper

from vitshrink.runtime.quantize import isa_flags

BUDGETS = (0.9, 0.86, 0.8, 0.7, 0.58, 0.5)  # 0.86: the MACs of --heads 0.67 alone, or --mlp 0.75 alone
#: method -> extra `vitshrink masks` arguments
TOKENS = "data-aware + reconstruction + EViT tokens"
METHODS = {"L1 (no data)": None, "data-aware": ["--no-reconstruct"], "data-aware + reconstruction": [],
           TOKENS: ["--tokens", "evit:auto"]}  # the keep ratio chosen by the budget: --macs only
L1_SPECS = {"heads0.67+mlp0.5": ["--heads", "0.67", "--mlp", "0.5"], "mlp0.75": ["--mlp", "0.75"],
            "heads0.67": ["--heads", "0.67"]}
MERGE = "ToMe merging"
MERGE_METHODS = {MERGE: ["--tokens", "tome:auto"]}
MERGE_BUDGETS = (0.86, 0.7, 0.58, 0.5)
MERGE_ENGINES = ("ort", "openvino-int8")  # fp32 and INT8 against the original at the same precision, batch 1 and 8


def configs() -> list[tuple[str, str, list[str]]]:
    rows = []
    for method, extra in METHODS.items():
        if extra is None:
            rows += [(method, name, args) for name, args in L1_SPECS.items()]
            continue
        if method != TOKENS:
            rows.append((method, "heads0.67+mlp0.5", ["--heads", "0.67", "--mlp", "0.5", *extra]))
        rows += [(method, f"macs{b}", ["--macs", str(b), *extra]) for b in BUDGETS]
    for method, extra in MERGE_METHODS.items():
        rows += [(method, f"macs{b}", ["--macs", str(b), *extra]) for b in MERGE_BUDGETS]
    return rows


def main() -> int:
    if sys.argv[1:2] == ["--plot-only"]:
        plot(json.loads(Path(sys.argv[2]).read_text()), Path(sys.argv[2]).with_suffix(".png"))
        return 0
    if sys.argv[1:2] == ["--table"]:  # the README's markdown table
        print(table(json.loads(Path(sys.argv[2]).read_text())))
        return 0
    if sys.argv[1:2] == ["--merge-table"]:
        print(merge_table(json.loads(Path(sys.argv[2]).read_text())))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--only", default=None, help="comma-separated structure names (macs0.58, heads0.67+mlp0.5, ...)")
    ap.add_argument("--methods", default=None, help="comma-separated method names (as in METHODS) to run")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "posttrain.json"))
    ap.add_argument("--merge", default=None, help="a results JSON whose other rows to keep (rows run now replace theirs; "
                                                  "each row keeps the CPU it was timed on)")
    a = ap.parse_args()
    if not CKPT.is_file():
        raise SystemExit(f"needs the real weights and images in {DATA}")
    exe = str(Path(sys.executable).with_name("vitshrink"))
    rows, machine, calibration, flags = [], None, None, isa_flags()
    todo = [c for c in configs() if (not a.only or c[1] in a.only.split(",")) and (not a.methods or c[0] in a.methods.split(","))]
    todo.sort(key=lambda c: c[0].startswith("L1"))  # the data-aware specs first: their calibration record is reused
    with tempfile.TemporaryDirectory() as d:
        for i, (method, name, args) in enumerate(todo):
            tag = f"{i:02d}"
            spec, out = Path(d) / f"{tag}.json", Path(d) / tag
            data = [] if method.startswith("L1") else ["--data", VAL, "--calib-images", "256"]
            t0 = time.perf_counter()
            run([exe, "masks", MODEL, "--checkpoint", CKPT, *data, *args, "--out", spec, "--quiet"])
            took = time.perf_counter() - t0
            s = json.loads(spec.read_text())
            if calibration is None and "calibration" in s["meta"]:
                calibration = s["meta"]["calibration"]
            if method.startswith("L1") and calibration is not None:  # measured on the same held-out images
                s["meta"]["calibration"] = calibration
                spec.write_text(json.dumps(s))
            weights = spec.with_name(f"{tag}.weights.safetensors")
            ck = weights if weights.is_file() else CKPT
            merging = method in MERGE_METHODS
            run([exe, "compile", MODEL, "--checkpoint", ck, "--spec", spec, "--data", VAL, "--batch", "1,8" if merging else "1",
                 *(["--engines", ",".join(MERGE_ENGINES)] if merging else []),
                 "--bench-seconds", str(a.seconds), "--out", out, "--quiet"])
            r = json.loads((out / "report.json").read_text())
            machine = r["machine"]
            acc, m, lat = r["accuracy"], r["macs"], r["latency"][0]
            row = {"method": method, "structure": name, "masks_args": args, "masks_seconds": round(took, 1),
                   "macs": [m["dense"], m["pruned"]], "macs_ratio": m["pruned"] / m["dense"],
                   "pruned_top1": acc["pruned_top1"], "pruned_top5": acc["pruned_top5"], "n": acc["n"],
                   "dense_top1": acc["dense_top1"] if method.startswith("L1") else None,
                   "exactness": r["exactness"]["max_abs_diff"],
                   "original_ms": lat["baseline_ms"]["p50"], "pruned_ms": lat["pruned_ms"]["p50"],
                   "speedup_vs_original": lat["speedup_vs_original"], "realization_vs_original": lat["realization_vs_original"],
                   "cpu_flags": flags}
            if method == TOKENS:
                row["tokens"] = s["meta"]["tokens"]["schedule"]
            if merging:
                row["tokens"] = s["meta"].get("tokens", {}).get("schedule") or next(x for x in args if str(x).startswith("tome:"))
                row["merge"] = {f"{e['engine']}@{e['batch']}": {k: e[k] for k in ("speedup_vs_original", "realization_vs_original")}
                                | {"original_ms": e["baseline_ms"]["p50"], "pruned_ms": e["pruned_ms"]["p50"]} for e in r["latency"]}
                row["top1_by_engine"] = {e["engine"]: {"original": e.get("original_top1"), "pruned": e["pruned_top1"]}
                                         for e in acc.get("engines", [])}
            rows.append(row)
            print(f"{method:28s} {name:18s} MACs x{row['macs_ratio']:.3f}  top-1 {row['pruned_top1']:.3f} (n={acc['n']})  "
                  f"{row['original_ms']:.2f} -> {row['pruned_ms']:.2f} ms x{row['speedup_vs_original']:.2f} "
                  f"(realization {row['realization_vs_original']:.2f})  masks {took:.0f} s", flush=True)
    if a.merge:
        old = json.loads(Path(a.merge).read_text())
        done = {(r["method"], r["structure"]) for r in rows}
        rows = [r for r in old["rows"] if (r["method"], r["structure"]) not in done] + rows
        calibration = calibration or old["calibration"]
        if calibration.get("sha256") != old["calibration"]["sha256"]:
            raise SystemExit(f"--merge {a.merge}: its calibration images differ from this run's")
    dense = [r["dense_top1"] for r in rows if r["dense_top1"] is not None]
    out = {"model": MODEL, "checkpoint": CKPT.name, "images": str(VAL.relative_to(DATA.parent)),
           "calibration": {k: calibration[k] for k in ("n", "sha256", "seed")} if calibration else None,
           "accuracy_images": "the images of imagenet-sample/val not used for calibration",
           "dense_top1": dense[0] if dense else None, "engine": "ort fp32 (2 threads), batch 1",
           "bench_seconds": a.seconds, "machine": machine, "rows": rows}
    Path(a.out).write_text(json.dumps(out, indent=1))
    plot(out, Path(a.out).with_suffix(".png"))
    return 0


def table(res: dict) -> str:
    """One row per structure: MACs, top-1 per method (the EViT row with its keep ratio, speed-up and realization),
    latency of the reconstructed (else the only) model."""
    by: dict = {}
    for r in res["rows"]:
        if r["method"] not in MERGE_METHODS:  # those: merge_table
            by.setdefault(r["structure"], {})[r["method"]] = r
    lines = ["| `vitshrink masks` | MACs | top-1: L1 (no data) | data-aware | + reconstruction | + `--tokens evit:auto` | "
             "ORT b1: original -> pruned ms, speed-up (realization) | masks s |", "|---|---|---|---|---|---|---|---|"]
    order = sorted(by, key=lambda k: (not k.startswith("heads0.67+"), -by[k][next(iter(by[k]))]["macs_ratio"]))
    for name in order:
        m = by[name]
        r = m.get("data-aware + reconstruction") or next(iter(m.values()))
        top = [f"{m[k]['pruned_top1']:.3f}" if k in m else "--" for k in METHODS]
        if TOKENS in m:  # its own latency: keep ratio, speed-up and realization on the same engine
            t = m[TOKENS]
            top[-1] += (f" (keep {t['tokens'].split(':')[1].split('@')[0]}, x{t['speedup_vs_original']:.2f}, "
                        f"{t['realization_vs_original']:.2f})")
        args = " ".join(a for a in r["masks_args"] if a != "--no-reconstruct")
        lines.append(f"| `{args}` | x{r['macs_ratio']:.2f} | {' | '.join(top)} | {r['original_ms']:.1f} -> {r['pruned_ms']:.1f}, "
                     f"x{r['speedup_vs_original']:.2f} ({r['realization_vs_original']:.2f}) | {r['masks_seconds']:.0f} |")
    return "\n".join(lines)


def merge_table(res: dict) -> str:
    """The merging rows: top-1 (fp32, OpenVINO INT8), speed-up (realization) against the original at the same precision
    on ONNX Runtime fp32 and OpenVINO INT8, batch 1 and 8."""
    lines = ["| `--macs` | method (r) | MACs | top-1 fp32 / OV INT8 | ORT b1 | ORT b8 | OV INT8 b1 | OV INT8 b8 | masks s |",
             "|---|---|---|---|---|---|---|---|---|"]
    rows = sorted((r for r in res["rows"] if r["method"] in MERGE_METHODS), key=lambda r: (-r["macs_ratio"], r["method"]))
    for r in rows:
        m, t8 = r["merge"], r["top1_by_engine"].get("openvino-int8", {}).get("pruned")
        cell = lambda k: f"x{m[k]['speedup_vs_original']:.2f} ({m[k]['realization_vs_original']:.2f})" if k in m else "--"  # noqa: E731
        lines.append(f"| {r['structure'].removeprefix('macs')} | {r['method']} ({r['tokens']}) | x{r['macs_ratio']:.2f} | "
                     f"{r['pruned_top1']:.3f} / {t8 if t8 is None else format(t8, '.3f')} | {cell('ort@1')} | {cell('ort@8')} | "
                     f"{cell('openvino-int8@1')} | {cell('openvino-int8@8')} | {r['masks_seconds']:.0f} |")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [2.2, 1]})
    colors = {"L1 (no data)": "tab:gray", "data-aware": "tab:orange", "data-aware + reconstruction": "tab:blue",
              TOKENS: "tab:green", MERGE: "tab:purple"}
    rows = res["rows"]
    for method, c in colors.items():
        pts = sorted((r["macs_ratio"], r["pruned_top1"], r["structure"]) for r in rows if r["method"] == method)
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if not method.startswith("L1") else "s", color=c,
                label=method)
        for i, (x, y, s) in enumerate(pts):  # data-aware labels below the line; neighbours at one MACs alternate
            right = not (i and abs(pts[i - 1][0] - x) < 0.02)
            dy = -10 if method == "data-aware" else 4
            ax.annotate(s.replace("heads0.67+mlp0.5", "h.67+m.5").replace("macs", ""), (x, y), textcoords="offset points",
                        xytext=(4, dy) if right else (-4, -10), ha="left" if right else "right", fontsize=7, color=c)
    if res.get("dense_top1") is not None:
        ax.plot([1.0], [res["dense_top1"]], "*", color="black", markersize=12, label="timm's original (dense)")
    real = [r["realization_vs_original"] for r in rows]
    ax.set_xlabel("MACs of the pruned model / dense (labels: --macs budget; ORT b1 speed-ups in the JSON track it: realization "
                  f"{min(real, default=0):.2f}-{max(real, default=0):.2f})")
    ax.set_ylabel(f"top-1 on {rows[0]['n'] if rows else '?'} held-out images")
    ax.set_title("DeiT-Tiny pruned without retraining: accuracy vs MACs", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_ylim(bottom=0)
    per = {}
    for r in rows:
        per.setdefault(r["method"], []).append(r["masks_seconds"])
    names = [m for m in colors if m in per]
    heights = [sum(per[m]) / len(per[m]) for m in names]
    bx.bar(range(len(names)), heights, color=[colors[m] for m in names])
    short = {"L1 (no data)": "L1\n(no data)", "data-aware": "data-\naware", "data-aware + reconstruction": "data-\naware\n+ recon.",
             TOKENS: "data-\naware\n+ recon.\n+ EViT", MERGE: "ToMe\nmerging\n(no data)"}
    bx.set_xticks(range(len(names)), [short.get(m, m) for m in names], fontsize=8)
    for i, m in enumerate(names):  # rows merged from runs on different CPUs: say which each bar was timed on
        flags = [r.get("cpu_flags") for r in rows if r["method"] == m]
        cpu = ("AVX-512" if "avx512f" in flags[0] else "AVX2 only") if flags[0] is not None else "earlier run"
        bx.annotate(cpu, (i, heights[i]), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=7)
    bx.set_ylabel("seconds per `vitshrink masks` run (mean)")
    bx.set_title("time each method took\n(2 threads; the CPU each row ran on is in the JSON)", fontsize=10)
    cpu = (res.get("machine") or {}).get("cpu", "")
    fig.suptitle(f"benchmarks/posttrain.py -- {cpu}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
