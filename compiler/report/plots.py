"""The plots of report.md: kept width per block (widths.png) and latency against MACs (latency.png)."""
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
    fig, axes = plt.subplots(1, 5, figsize=(21, 3.9))
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
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    st = report["structure"]
    if "stages" in st:
        dims = " -> ".join("/".join(str(x["embed_dim"][k]) for x in st["stages"]) for k in (0, 1))
        fig.suptitle(f"{report['model']}: kept width per block (stage channels {dims})")
    else:
        fig.suptitle(f"{report['model']}: kept width per block (embed_dim {st['embed_dim'][0]} -> {st['embed_dim'][1]})")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_latency(report: dict, path: Path) -> None:
    """Per-image p50 latency against MACs per image: one line dense -> pruned per (engine, batch,
    threads) -- one colour per engine, one line style per batch size when there are several engines --
    its ideal (latency proportional to MACs) dotted. Point labels only when there are few lines (the
    report's table has every number)."""
    entries = report["latency"]
    engines = list(dict.fromkeys(e.get("engine", e["runtime"]) for e in entries))
    batches = sorted({e["batch"] for e in entries})
    multi = len(engines) > 1
    styles = ["-", "--", "-.", (0, (1, 1))]
    fig, ax = plt.subplots(figsize=(8, 4.5 + (0.12 * len(entries) + 0.4 if len(entries) > 3 else 0)))
    md, mp = report["macs"]["dense"] / 1e9, report["macs"]["pruned"] / 1e9
    for i, e in enumerate(entries):
        d, p = e["dense_ms"]["p50"] / e["batch"], e["pruned_ms"]["p50"] / e["batch"]
        noisy = "" if e.get("stability", {}).get("verdict", "stable") == "stable" else ", NOISY"
        eng = e.get("engine", e["runtime"])
        color = f"C{engines.index(eng) % 10}" if multi else f"C{i % 10}"
        ls = styles[batches.index(e["batch"]) % len(styles)] if multi else "-"
        label = (f"{eng + ', ' if multi else ''}batch {e['batch']}, {e['threads']} threads: x{e['speedup']:.2f}, "
                 f"realization {e['realization']:.2f}{noisy}")
        ax.plot([md, mp], [d, p], marker="o", ls=ls, color=color, label=label)
        ax.plot([md, mp], [d, d * mp / md], ":", color=color, alpha=0.6)
        if len(entries) <= 3:
            ax.annotate(f"dense {d:.2f} ms", (md, d), textcoords="offset points", xytext=(8, 0), ha="left", va="center",
                        fontsize=8, color=color)
            ax.annotate(f"pruned {p:.2f} ms", (mp, p), textcoords="offset points", xytext=(-8, 0), ha="right", va="center",
                        fontsize=8, color=color)
    ax.plot([], [], ":", color="grey", label="ideal: latency proportional to MACs")
    ax.set_xlabel("GMACs per image")
    ax.set_ylabel("ms per image (p50 latency / batch)")
    ax.set_title(f"{report['model']}: latency vs MACs" + (f" on {len(engines)} engines" if multi else ""))
    ax.set_xlim(mp - 0.35 * (md - mp), md + 0.35 * (md - mp))
    ax.set_ylim(0, 1.3 * max(e["dense_ms"]["p50"] / e["batch"] for e in entries))
    if len(entries) <= 3:
        ax.legend(fontsize=8, loc="upper left")
    else:  # many lines: the legend goes under the axes, not over the lines
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
