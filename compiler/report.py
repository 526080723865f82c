"""report.json, report.md and plots of a compile run.

report.json fields (``vitshrink.report/1``; all MACs per image, all times in ms):

- ``model``, ``created``, ``inputs`` (spec/checkpoint paths and sha256, data dir), ``toolchain``
  (versions), ``machine``, ``timings_s`` (seconds per stage)
- ``params.dense``, ``params.pruned``; ``macs.dense``, ``macs.pruned`` (structure after pruning),
  ``macs.executed`` (what the exported graph computes, including layout padding), ``macs.ratio``
- ``structure``: ``embed_dim`` [dense, pruned], ``exit_after``, ``token_mode`` (static masks),
  ``token_layout``, ``blocks``: per source block ``kept``, ``status`` (kept / removed / after exit),
  ``heads``, ``qk``/``v`` (channels summed over heads), ``mlp`` -- each [dense, pruned] -- ``tokens``
  (``keys``, ``queries``, ``mlp``: tokens through attention as keys and as queries, and through the
  MLP, [dense, pruned]) and ``token_rule`` (a dynamic rule)
- ``import.max_abs_diff`` (codegen of the unpruned IR vs timm), ``exactness.max_abs_diff``,
  ``exactness.passed``, ``exactness.reload_max_abs_diff``, ``exactness.token_ids_identical`` (dynamic
  rules: the kept tokens of compiled model and reference agree on every verification image); ``export.onnx_max_abs_diff`` (ONNX
  Runtime vs torch, pruned), ``export.dense_onnx_max_abs_diff``, ``export.passed``; ``verified``
- ``latency``: entries with ``runtime``, ``device``, ``batch``, ``threads``, ``rounds``,
  ``dense_ms.{p50,p90,p99,mean}``, ``pruned_ms.{...}``, ``dense_throughput``/``pruned_throughput``
  (images/s at p50), ``speedup`` (dense p50 / pruned p50), ``speedup_paired`` (median of per-round
  ratios), ``ideal_speedup`` (MACs ratio), ``realization`` (speedup / ideal_speedup), ``stability``
  (``verdict`` stable/noisy, ``reasons``, ``rounds``, ``speedup_ci95``: bootstrap interval of the
  paired speed-up; see :func:`vitshrink.runtime.latency.stability`), ``rounds_ms.{dense,pruned}``
  (per-round latencies, what ``vitshrink check --baseline`` bootstraps)
- ``accuracy`` (with ``--data``): ``n``, ``dense_top1``, ``pruned_top1``, ``dense_top5``,
  ``pruned_top5``, ``top1_agreement`` (fractions)
- ``engines``: per engine of ``--engines`` (:mod:`vitshrink.runtime.engines`): ``status`` (ok / skipped
  with ``reason``), ``runtime``, ``version``, ``device``, ``precision`` (and ``precision_reported``: what the
  engine says it ran at), ``threads``, ``max_abs_diff`` / ``dense_max_abs_diff`` / ``top1_agreement`` vs
  torch on the verification images, ``tolerance``, ``passed``; ``tensorrt`` (``--trt``): file or
  ``skipped`` with the reason. Latency entries carry ``engine`` and ``precision``.
"""
from __future__ import annotations

import json
from pathlib import Path

from .ir import ViTIR


def block_table(dense: ViTIR, pruned: ViTIR) -> dict:
    """Per-block widths and token counts, dense vs pruned, keyed by source block."""
    from .codegen import token_counts

    swin = getattr(dense, "family", "vit") == "swin"
    if swin:  # every token of the stage's grid is updated; each attends to the A tokens of its window
        def grid(i):
            st = dense.stage_of(i)
            return {"keys": st.window_area, "queries": st.resolution[0] * st.resolution[1],
                    "mlp": st.resolution[0] * st.resolution[1]}
        tokens = {b.source_index: grid(b.source_index) for b in pruned.blocks}
    else:
        tokens = {b.source_index: t for b, t in zip(pruned.blocks, token_counts(pruned))}
    rows = []
    for b in dense.blocks:
        p = pruned.block(b.source_index)
        t = tokens.get(b.source_index)
        after_exit = pruned.exit_after is not None and b.source_index > pruned.exit_after
        rows.append({
            "block": b.source_index,
            "kept": p is not None,
            "status": "kept" if p is not None else ("after exit" if after_exit else "removed"),
            "heads": [b.attn.num_heads, p.attn.num_heads if p else 0],
            "qk": [sum(b.attn.qk_dims), sum(p.attn.qk_dims) if p else 0],
            "v": [sum(b.attn.v_dims), sum(p.attn.v_dims) if p else 0],
            "mlp": [b.mlp.hidden, p.mlp.hidden if p else 0],
            "tokens": {k: [grid(b.source_index)[k] if swin else dense.num_tokens, t[k] if t else 0]
                       for k in ("keys", "queries", "mlp")},
            **({"name": dense.block_key(b.source_index)} if swin else {}),
            "token_rule": None if p is None or p.select is None else {
                "keep": p.select.keep, "score": p.select.score, "where": p.select.where, "fuse": p.select.fuse},
        })
    extra = {}
    if swin:
        extra["stages"] = [{"stage": d.index, "embed_dim": [d.dim, p.dim], "resolution": list(d.resolution),
                            "window": list(d.window)} for d, p in zip(dense.stages, pruned.stages)]
    return {**extra, "embed_dim": [dense.embed_dim, pruned.embed_dim], "exit_after": pruned.exit_after,
            "token_mode": pruned.token_mode if any(b.tokens is not None for b in pruned.blocks) else None,
            "token_layout": "prefix" if pruned.token_order is not None else "gather", "blocks": rows}


def _fmt_macs(m: float) -> str:
    return f"{m / 1e9:.3f} G"


_STATUS_COLOR = {"removed": "#cf222e", "after exit": "#9a6700"}


def _plot_widths(report: dict, path: Path) -> None:
    """One panel per width (heads, q/k, v, MLP hidden) and one for tokens, per block: grey = dense
    width, blue = kept width; removed blocks and blocks after an early exit are shaded and labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

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


def _plot_latency(report: dict, path: Path) -> None:
    """Per-image p50 latency against MACs per image: one line dense -> pruned per (engine, batch,
    threads) -- one colour per engine, one line style per batch size when there are several engines --
    its ideal (latency proportional to MACs) dotted. Point labels only when there are few lines (the
    report's table has every number)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def _import_lines(imp: dict) -> list[str]:
    """Verification lines of an imported checkpoint (empty for a spec file)."""
    if "format" not in imp:
        return []
    d = imp.get("source_max_abs_diff")
    lines = [f"- imported `{imp['format']}` ({imp['detected_because']}; {imp.get('loader')})",
             "- compiled model vs what the source computes: " + (f"max |diff| = {d:.2e}" if d is not None else "not run")
             + f" -- {imp.get('source_reference')}",
             f"- indices: {imp.get('index_history')}"]
    lines += [f"- not removed: {m}" for m in imp.get("not_removed") or []]
    un = imp.get("unstructured") or []
    if un:
        lines.append(f"- unstructured zeros stay in {len(un)} kept tensors ({sum(u['semi_structured_2_4'] for u in un)} "
                     f"of them 2:4 semi-structured); no speed-up is claimed for them (import.json lists each)")
    return lines


def _engine_lines(engines: dict) -> list[str]:
    """The per-engine verification table (``--engines``)."""
    rows = {k: v for k, v in engines.items() if "status" in v}
    if not rows:
        return []
    out = ["## Engines", "", "Each engine ran the exported model on the verification images; logits compared with torch "
           "(max abs diff, top-1 agreement), tolerance by precision.", "",
           "| engine | runtime | version | device | precision | threads | max abs diff (pruned / dense) | top-1 agreement | result |",
           "|---|---|---|---|---|---|---|---|---|"]
    for name, e in rows.items():
        if e["status"] == "skipped":
            out.append(f"| {name} | {e['runtime']} | | {e['device']} | | | | | skipped: {e['reason']} |")
            continue
        if e["status"] == "built":
            out.append(f"| {name} | {e['runtime']} | | {e['device']} | fp16 | | | | built: {e['file']} (not compared) |")
            continue
        prec = e["precision"] + (f" (reports {e['precision_reported']})" if e.get("precision_reported") else "")
        out.append(f"| {name} | {e['runtime']} | {e['version']} | {e['device']} | {prec} | {e['threads']} | "
                   f"{e['max_abs_diff']:.2e} / {e['dense_max_abs_diff']:.2e} (<= {e['tolerance']:g}) | "
                   f"{e['top1_agreement']:.3f} | {'pass' if e['passed'] else 'FAIL'} |")
    return out + [""]


def markdown(report: dict) -> str:
    """The human-readable report."""
    ok = lambda b: "pass" if b else "FAIL"  # noqa: E731
    m, p = report["macs"], report["params"]
    src = report["inputs"]["checkpoint"]
    lines = [
        f"# vitshrink report: {report['model']}",
        "",
        f"- checkpoint: {src['path'] or '**random weights** (no checkpoint given)'}",
        (f"- spec: {report['inputs']['spec']['path']} (sha256 {report['inputs']['spec']['sha256'][:12]})"
         if report["inputs"]["spec"].get("path") else
         f"- spec: imported from the pruned checkpoint (`{report['import'].get('format')}` format; spec.json, import.json)"),
        f"- machine: {report['machine']['cpu']}, {report['machine']['cores']} cores",
        "- toolchain: " + ", ".join(f"{k} {v}" for k, v in report["toolchain"].items()),
        "",
        "## Size",
        "",
        "| | dense | pruned | ratio |",
        "|---|---|---|---|",
        f"| MACs per image | {_fmt_macs(m['dense'])} | {_fmt_macs(m['pruned'])} | {m['pruned'] / m['dense']:.3f} |",
        f"| parameters | {p['dense'] / 1e6:.3f} M | {p['pruned'] / 1e6:.3f} M | {p['pruned'] / p['dense']:.3f} |",
        *([f"| embed_dim | {report['structure']['embed_dim'][0]} | {report['structure']['embed_dim'][1]} | |"]
          if "stages" not in report["structure"] else
          [f"| stage {st['stage']} channels ({st['resolution'][0]}x{st['resolution'][1]} tokens) | {st['embed_dim'][0]} | "
           f"{st['embed_dim'][1]} | |" for st in report["structure"]["stages"]]),
        "",
    ]
    lay = report["layout"]
    if m["executed"] != m["pruned"]:
        lines += [f"The exported graph computes {_fmt_macs(m['executed'])} MACs: irregular head widths were padded "
                  f"with zeros to one width per block (layout `{lay.get('chosen', lay['policy'])}`, exact).", ""]
    if "measured" in lay:
        t = lay["measured"]
        per = ", ".join(f"batch {b}: pad {v['pad_ms']:.2f} ms, group {v['group_ms']:.2f} ms" for b, v in t["batches"].items())
        lines += [f"Head layout `{lay['chosen']}`, chosen by timing both on {t['engine']} ({t['threads']} threads; {per}).", ""]
    elif lay.get("policy") == "auto" and "not timed" in lay.get("reason", ""):
        lines += [f"Head layout `{lay['chosen']}`: {lay['reason']}.", ""]
    if report["structure"]["exit_after"] is not None:
        lines += [f"Early exit after block {report['structure']['exit_after']}.", ""]
    lines += [
        "## Verification",
        "",
        f"- import fidelity (codegen of the unpruned model vs timm): max |diff| = {report['import']['max_abs_diff']:.2e} ({ok(report['import']['passed'])})",
        *_import_lines(report["import"]),
        f"- exactness (pruned vs masked dense reference, {report['exactness']['inputs']}): max |diff| = "
        f"{report['exactness']['max_abs_diff']:.2e} <= {report['exactness']['tolerance']:g} ({ok(report['exactness']['passed'])})",
        f"- reloaded checkpoint vs compiled model: max |diff| = {report['exactness']['reload_max_abs_diff']:.2e}",
        *([f"- dynamic token rules: kept tokens identical to the reference on every verification image: "
           f"{report['exactness']['token_ids_identical']}"] if "token_ids_identical" in report["exactness"] else []),
        f"- ONNX (opset {report['export']['opset']}, dynamic batch) in ONNX Runtime vs torch: pruned "
        f"{report['export']['onnx_max_abs_diff']:.2e}, dense {report['export']['dense_onnx_max_abs_diff']:.2e} ({ok(report['export']['passed'])})",
        "",
        "## Latency",
        "",
        "Dense and pruned (same codegen, same runtime) timed interleaved in one run; milliseconds per batch.",
        "",
        "| engine | runtime | device | batch | threads | rounds | dense p50 | pruned p50 | dense p90 | pruned p90 | speed-up (95% CI) | ideal (MACs) | realization | stable? |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    noisy = []
    for e in report["latency"]:
        st = e.get("stability", {})
        lo, hi = st.get("speedup_ci95", (float("nan"), float("nan")))
        mark = "yes" if st.get("verdict") == "stable" else "**NO** ⚠"
        if st.get("verdict") == "noisy":
            noisy.append(f"- {e.get('engine', e['runtime'])} batch {e['batch']}, {e['threads']} threads: " + "; ".join(st["reasons"]))
        lines.append(
            f"| {e.get('engine', e['runtime'])} | {e['runtime']} | {e['device']} | {e['batch']} | {e['threads']} | {e['rounds']} | {e['dense_ms']['p50']:.2f} | "
            f"{e['pruned_ms']['p50']:.2f} | {e['dense_ms']['p90']:.2f} | {e['pruned_ms']['p90']:.2f} | "
            f"{e['speedup']:.3f} ({lo:.3f}-{hi:.3f}) | {e['ideal_speedup']:.3f} | **{e['realization']:.3f}** | {mark} |")
    if noisy:
        lines += ["", "**Not trustworthy** (time longer with `--bench-seconds`, on an idle machine):", "", *noisy]
    lines += ["", "![latency vs MACs](latency.png)", "", *_engine_lines(report.get("engines", {}))]
    if "accuracy" in report:
        a = report["accuracy"]
        lines += [
            "## Accuracy",
            "",
            f"{a['n']} images from {report['inputs']['data']}, the model's timm eval transform, ONNX Runtime.",
            "",
            "| | top-1 | top-5 |",
            "|---|---|---|",
            f"| dense | {a['dense_top1']:.4f} | {a['dense_top5']:.4f} |",
            f"| pruned | {a['pruned_top1']:.4f} | {a['pruned_top5']:.4f} |",
            "",
            f"Top-1 agreement between dense and pruned: {a['top1_agreement']:.4f}.",
            "",
        ]
    lines += [
        "## Structure",
        "",
        "| block | kept | heads | q/k channels | v channels | MLP hidden | tokens (keys / queries / MLP) | token rule |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["structure"]["blocks"]:
        t, rule = r["tokens"], r.get("token_rule")
        rule_s = "" if not rule else f"{rule['score']} keep {rule['keep']} at {rule['where']}" + (" + fuse" if rule["fuse"] else "")
        lines.append(f"| {r.get('name', r['block'])} | {r['status']} | {r['heads'][0]} -> {r['heads'][1]} | "
                     f"{r['qk'][0]} -> {r['qk'][1]} | {r['v'][0]} -> {r['v'][1]} | {r['mlp'][0]} -> {r['mlp'][1]} | "
                     f"{t['keys'][1]} / {t['queries'][1]} / {t['mlp'][1]} (dense {t['keys'][0]}) | {rule_s} |")
    if report["structure"].get("token_mode"):
        lines += ["", f"Static token masks in `{report['structure']['token_mode']}` mode, "
                      f"`{report['structure']['token_layout']}` layout."]
    lines += ["", "![widths per block](widths.png)", ""]
    eng = report.get("engines", {})
    if "tensorrt" in eng:
        t = eng["tensorrt"]
        lines += ["## TensorRT", "", f"skipped: {t['skipped']}" if "skipped" in t else f"engine: {t['file']}", ""]
    return "\n".join(lines)


def write_report(report: dict, directory: Path) -> None:
    """Write report.json, report.md, widths.png and latency.png into ``directory``."""
    (directory / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    _plot_widths(report, directory / "widths.png")
    if report.get("latency"):
        _plot_latency(report, directory / "latency.png")
    (directory / "report.md").write_text(markdown(report))
