"""The plots of report.md: kept width per block (widths.png) and latency per engine against the original
model and vitshrink's dense one (latency.png)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

_STATUS_COLOR = {"removed": "#cf222e", "after exit": "#9a6700"}


def plot_widths(report: dict, path: Path) -> None:
    """One panel per width (heads, q/k, v, MLP hidden) and one for tokens, per block: grey = dense
    width, blue = kept width; removed blocks and blocks after an early exit are shaded and labelled."""
    rows = report["structure"]["blocks"]
    idx = [r["block"] for r in rows]
    panels = (("heads", "attention heads"), ("qk", "q/k channels (all heads)"), ("v", "v channels (all heads)"),
              ("mlp", "MLP hidden neurons"))
    fig, grid = plt.subplots(2, 3, figsize=(13, 6.6))  # readable where report.md shows it (1300 x 660 px)
    axes = [grid[0][0], grid[0][1], grid[0][2], grid[1][0], grid[1][1]]
    grid[1][2].axis("off")  # the legend's place
    for ax, (key, title) in zip(axes, panels):
        ax.bar(idx, [r[key][0] for r in rows], color="#d0d7de")
        ax.bar(idx, [r[key][1] for r in rows], color="#1f6feb")
        ax.set_title(title)
    ax = axes[4]
    ax.bar(idx, [r["tokens"]["keys"][0] for r in rows], color="#d0d7de")
    ax.bar(idx, [r["tokens"]["keys"][1] for r in rows], color="#1f6feb")
    ax.step(idx, [r["tokens"]["queries"][1] for r in rows], where="mid", color="#cf222e", lw=2)
    ax.step(idx, [r["tokens"]["mlp"][1] for r in rows], where="mid", color="#1a7f37", linestyle="--", lw=2)
    ax.set_title("tokens per block")
    for ax in axes:
        top = ax.get_ylim()[1]
        for r in rows:
            if r["status"] in _STATUS_COLOR:
                ax.axvspan(r["block"] - 0.5, r["block"] + 0.5, color=_STATUS_COLOR[r["status"]], alpha=0.12, lw=0)
                ax.text(r["block"], top * 0.5, r["status"], rotation=90, ha="center", va="center", fontsize=7,
                        color=_STATUS_COLOR[r["status"]])
        if "stages" in report["structure"]:  # Swin: blocks named stage.block, stage boundaries dotted
            ax.set_xlabel("block (stage.block)")
            ax.set_xticks(idx, [r["name"].replace("layers.", "").replace("blocks.", "") for r in rows], fontsize=7)
            for a, b in zip(rows, rows[1:]):
                if a["name"].split(".")[1] != b["name"].split(".")[1]:
                    ax.axvline((a["block"] + b["block"]) / 2, color="#8c959f", lw=0.8, ls=":")
        else:
            ax.set_xlabel("block")
            ax.set_xticks(idx)
    handles = [Patch(color="#d0d7de", label="dense width"), Patch(color="#1f6feb", label="kept width"),
               plt.Line2D([], [], color="#cf222e", lw=2, label="tokens updated (queries)"),
               plt.Line2D([], [], color="#1a7f37", lw=2, linestyle="--", label="tokens through the MLP")]
    handles += [Patch(color=c, alpha=0.25, label=f"block {s}") for s, c in _STATUS_COLOR.items()
                if any(r["status"] == s for r in rows)]
    grid[1][2].legend(handles=handles, loc="center", fontsize=9, frameon=False,
                      title="tokens per image" if "stages" in report["structure"] else None)
    st = report["structure"]
    if "stages" in st:
        dims = " -> ".join("/".join(str(x["embed_dim"][k]) for x in st["stages"]) for k in (0, 1))
        fig.suptitle(f"{report['model']}: kept width per block (stage channels {dims})")
    else:
        fig.suptitle(f"{report['model']}: kept width per block (embed_dim {st['embed_dim'][0]} -> {st['embed_dim'][1]})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_latency(report: dict, path: Path) -> None:
    """One panel per engine; per batch size three bars -- the user's original model (timm's own, where
    timed), vitshrink's dense codegen and the pruned model -- in milliseconds per image (the p50 of a
    batch divided by its size; the table in report.md gives ms per batch), a black tick at the ideal
    pruned latency (the baseline divided by the MACs ratio), and the speed-up and realization against
    the baseline above the pruned bar. A log scale when the panel spans more than 20x."""
    entries = report["latency"]
    engines = list(dict.fromkeys(e.get("engine", e["runtime"]) for e in entries))
    cols = min(3, len(engines))
    rows_n = -(-len(engines) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.6 * cols + 0.6, 3.8 * rows_n + 0.6), squeeze=False)
    has_original = any("baseline_ms" in e for e in entries)
    colors = {"original": "#8c959f", "dense": "#9ecae1", "pruned": "#1f6feb"}
    for k, eng in enumerate(engines):
        ax = axes[k // cols][k % cols]
        mine = sorted((e for e in entries if e.get("engine", e["runtime"]) == eng), key=lambda e: (e["batch"], e["threads"]))
        values = []
        for i, e in enumerate(mine):
            per = {"original": e["baseline_ms"]["p50"] / e["batch"] if "baseline_ms" in e else None,
                   "dense": e["dense_ms"]["p50"] / e["batch"], "pruned": e["pruned_ms"]["p50"] / e["batch"]}
            for j, (name, v) in enumerate(per.items()):
                if v is not None:
                    ax.bar(i + (j - 1) * 0.27, v, 0.25, color=colors[name])
                    values.append(v)
            base = per["original"] if per["original"] is not None else per["dense"]
            ideal = base / e["ideal_speedup"]
            ax.plot([i + 0.27 - 0.13, i + 0.27 + 0.13], [ideal, ideal], color="k", lw=2)
            sp, real = ((e["speedup_vs_original"], e["realization_vs_original"]) if "speedup_vs_original" in e
                        else (e["speedup"], e["realization"]))
            flag = "" if (e.get("stability") or {}).get("verdict", "stable") == "stable" else "?"
            ax.annotate(f"x{sp:.2f}{flag}\n({real:.2f})", (i + 0.27, per["pruned"]), textcoords="offset points",
                        xytext=(0, 3), ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(mine)), [f"batch {e['batch']}" + (f"\n{e['threads']} thr" if len(mine) > len({e['batch'] for e in mine}) else "")
                                         for e in mine], fontsize=8)
        if values and max(values) / max(min(values), 1e-9) > 20:
            ax.set_yscale("log")
        else:
            ax.set_ylim(0, 1.25 * max(values or [1]))
        ax.set_title(f"{eng} ({mine[0]['device']})", fontsize=10)
        ax.set_ylabel("ms per image (p50 / batch)", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    for k in range(len(engines), rows_n * cols):
        axes[k // cols][k % cols].axis("off")
    handles = ([Patch(color=colors["original"], label="timm's original model")] if has_original else []) + [
        Patch(color=colors["dense"], label="vitshrink dense"), Patch(color=colors["pruned"], label="pruned"),
        plt.Line2D([], [], color="k", lw=2, label="ideal (baseline / MACs ratio)")]
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.93), ncol=len(handles) if cols > 1 else 2,
               fontsize=8, frameon=False)
    against = "timm's original" if has_original else "vitshrink's dense model"
    fig.suptitle(f"{report['model']}: latency per engine\nlabel: speed-up vs {against} (realization; ? = not stable)",
                 fontsize=9, y=0.995)
    fig.tight_layout(rect=(0, 0, 1, 0.83 if cols == 1 else 0.86))
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.1)  # nothing cut at the edges
    plt.close(fig)


_METHOD_COLOR = {"widths": "#1f6feb", "evit": "#1a7f37", "tome": "#8250df"}


def plot_sweep(result: dict, path: Path) -> None:
    """sweep.png: one panel per engine@batch, top-1 (held-out images) against the speed-up over timm's original at
    the same precision; every point coloured by method and labelled with the MACs it kept, the Pareto front as a
    line, the original at x1, the allowed drop as a dashed line and the best point ringed."""
    keys = list(result.get("fronts") or {})
    if not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(max(7.5, 5.6 * len(keys)), 5.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        rows = {n: p["rows"][key] for n, p in result["points"].items() if (p.get("rows") or {}).get(key)}
        for name, r in rows.items():
            method = result["points"][name]["method"]
            ax.scatter(r["speedup"], r["top1"], color=_METHOD_COLOR.get(method, "k"), s=28, zorder=3)
            ax.annotate(f"{r['macs_ratio']:.2f}", (r["speedup"], r["top1"]), textcoords="offset points",
                        xytext=(4, 3), fontsize=7)
        on = [rows[n] for n in sorted(result["fronts"][key], key=lambda n: rows[n]["speedup"])]
        if on:
            ax.plot([r["speedup"] for r in on], [r["top1"] for r in on], color="k", lw=1, alpha=0.6, zorder=2)
        if rows:
            orig = sorted(r["original_top1"] for r in rows.values())[len(rows) // 2]
            ax.scatter([1.0], [orig], marker="*", s=140, color="#cf222e", zorder=4)
            ax.axhline(orig - result["max_top1_drop"] / 100, color="#cf222e", ls="--", lw=1)
        b = result["best"].get(key)
        if b in rows:
            ax.scatter(rows[b]["speedup"], rows[b]["top1"], s=170, facecolors="none", edgecolors="#cf222e", lw=1.6, zorder=5)
        ax.set_title(f"{key.replace('@', ', batch ')}: best {b or 'none'}", fontsize=9)
        ax.set_xlabel("speed-up over timm's original (same engine and precision)", fontsize=8)
        ax.set_ylabel("top-1 (held-out images)", fontsize=8)
        ax.grid(alpha=0.3)
    present = {p["method"] for p in result["points"].values()}
    handles = [Patch(color=c, label=m) for m, c in _METHOD_COLOR.items() if m in present] + [
        plt.Line2D([], [], color="k", lw=1, label="Pareto front"),
        plt.Line2D([], [], marker="*", color="#cf222e", ls="", markersize=10, label="timm's original"),
        plt.Line2D([], [], color="#cf222e", ls="--", lw=1, label=f"the original's top-1 less {result['max_top1_drop']:g} points"),
        plt.Line2D([], [], marker="o", mfc="none", mec="#cf222e", ls="", markersize=10, label="best (fastest within the drop)")]
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.91), ncol=3, fontsize=7, frameon=False)
    split = result["split"]
    fig.suptitle(f"vitshrink sweep: {result['model']} -- point labels: MACs kept (of the dense model's)\n{split['calibration']} calibration images, "
                 f"top-1 on {split['held_out']} others (+-{split['half_width']:.1f} points, 95%)",
                 fontsize=9, y=0.995)
    fig.tight_layout(rect=(0, 0, 1, 0.84))
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)
