"""Speed per engine: dense vs pruned on every engine that runs here, for three pruned models, each one
`compile_model(..., engines="all")` run -- every engine verified against torch, then timed (engines one
after another, each in its own process; dense and pruned interleaved inside each):

- deit_small, heads and MLP 50% (L1, `vitshrink masks --heads 0.5 --mlp 0.5`)
- deit_base, the all-kinds spec (benchmarks/specs/deit_base_all_kinds.json: embed, heads, q/k, v, MLP,
  removed blocks)
- deit_small, EViT tokens keep 0.7 at blocks 4, 7, 10 (dynamic, constant-K TopK + Gather)

Each engine times three models interleaved: the user's original (timm's own module, or its own ONNX
export for the ONNX engines), vitshrink's dense codegen and the pruned model. Random weights (latency
does not depend on them). Writes benchmarks/results/engines.json and engines.png (realization per
engine and case at each batch size: bars against the original, dots against vitshrink's dense), and
prints the table.

    python benchmarks/engines.py [--seconds 10] [--batch 1,8] [--threads 2] [--only small_heads_mlp]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cases(tmp: Path) -> dict[str, tuple[str, Path]]:
    from vitshrink.frontends.timm import create_model, from_timm
    from vitshrink.masks.vit import l1_spec
    from vitshrink.masks.tokens import token_spec
    from vitshrink.spec import save_spec, Spec

    ir = from_timm(create_model("deit_small_patch16_224"))
    save_spec(l1_spec(ir, heads=0.5, mlp=0.5), tmp / "small_heads_mlp.json")
    masks, settings = token_spec(ir, "evit:0.7@4,7,10")
    save_spec(Spec(masks, settings), tmp / "small_evit.json")
    return {"small_heads_mlp": ("deit_small_patch16_224", tmp / "small_heads_mlp.json"),
            "base_all_kinds": ("deit_base_patch16_224", REPO / "benchmarks" / "specs" / "deit_base_all_kinds.json"),
            "small_evit": ("deit_small_patch16_224", tmp / "small_evit.json")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default=None, help="comma-separated case names")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "engines.json"))
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    from vitshrink.pipeline import compile_model, CompileOptions

    rows, engines = [], {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        todo = cases(tmp)
        for name, (model, spec) in todo.items():
            if a.only and name not in a.only.split(","):
                continue
            print(f"== {name}: {model}, {spec.name}", file=sys.stderr)
            r = compile_model(model, spec, tmp / name, CompileOptions(
                engines="all", bench_seconds=a.seconds, batch=[int(b) for b in a.batch.split(",")], threads=(a.threads,)))
            engines[name] = r["engines"]
            for e in r["latency"]:
                rows.append({"case": name, "model": model, "engine": e["engine"], "batch": e["batch"], "threads": e["threads"],
                             "dense_ms": e["dense_ms"]["p50"], "pruned_ms": e["pruned_ms"]["p50"], "speedup": e["speedup"],
                             "ideal": e["ideal_speedup"], "realization": e["realization"],
                             "ci95": e["stability"]["speedup_ci95"], "stable": e["stability"]["verdict"], "rounds": e["rounds"],
                             "original_ms": e.get("baseline_ms", {}).get("p50"), "speedup_vs_original": e.get("speedup_vs_original"),
                             "realization_vs_original": e.get("realization_vs_original"),
                             "ci95_vs_original": e.get("stability_vs_original", {}).get("speedup_ci95")})
            machine, toolchain = r["machine"], r["toolchain"]
    out = {"machine": machine, "toolchain": toolchain, "bench_seconds": a.seconds, "threads": a.threads,
           "engines": engines, "rows": rows}
    Path(a.out).write_text(json.dumps(out, indent=1))
    print("| case | engine | batch | original ms | dense ms | pruned ms | ideal | speed-up (realization) vs original "
          "| vs dense | stable |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        orig = (f"{r['original_ms']:.2f}", f"x{r['speedup_vs_original']:.3f} ({r['realization_vs_original']:.3f})") \
            if r["original_ms"] else ("-", "-")
        print(f"| {r['case']} | {r['engine']} | {r['batch']} | {orig[0]} | {r['dense_ms']:.2f} | {r['pruned_ms']:.2f} | "
              f"x{r['ideal']:.3f} | {orig[1]} | x{r['speedup']:.3f} ({r['realization']:.3f}) | {r['stable']} |")
    plot(out, Path(a.out).with_suffix(".png"))
    return 0


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = out["rows"]
    batches = sorted({r["batch"] for r in rows})
    case_names = list(dict.fromkeys(r["case"] for r in rows))
    engine_names = list(dict.fromkeys(r["engine"] for r in rows))
    fig, axes = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 4), squeeze=False, sharey=True)
    w = 0.8 / max(1, len(engine_names))
    for ax, b in zip(axes[0], batches):
        for k, eng in enumerate(engine_names):
            xs, ys, errs, dense = [], [], [], []
            for i, c in enumerate(case_names):
                r = next((r for r in rows if r["case"] == c and r["engine"] == eng and r["batch"] == b), None)
                if r is None:
                    continue
                xs.append(i + (k - (len(engine_names) - 1) / 2) * w)
                key, ci = ("realization_vs_original", "ci95_vs_original") if r.get("realization_vs_original") \
                    else ("realization", "ci95")
                ys.append(r[key])
                lo, hi = (v / r["ideal"] for v in r[ci])
                errs.append((max(0.0, r[key] - lo), max(0.0, hi - r[key])))
                dense.append(r["realization"])
            bars = ax.bar(xs, ys, w, label=eng, yerr=list(zip(*errs)) if errs else None, capsize=2)
            ax.plot(xs, dense, "o", ms=4, color="k", mfc=bars.patches[0].get_facecolor() if bars.patches else "w",
                    label="vs vitshrink dense" if k == 0 else None)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xticks(range(len(case_names)), case_names, fontsize=8)
        ax.set_title(f"batch {b}, {out['threads']} threads")
        ax.set_ylabel("realization = speed-up / MACs ratio")
        ax.set_ylim(0, 1.25)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"pruned vs timm's original model per engine (bars, 95% CI), vs vitshrink's dense (dots); "
                 f"{out['machine']['cpu']}, {out['machine']['cores']} cores", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
