"""report.md: the human-readable report of a compile run (size, verification, latency, engines,
accuracy, structure), from the report dict."""
from __future__ import annotations


def fmt_macs(m: float) -> str:
    return f"{m / 1e9:.3f} G"


def _import_lines(imp: dict) -> list[str]:
    """Verification lines of an imported checkpoint (empty for a spec file)."""
    if "format" not in imp:
        return []
    d = imp.get("source_max_abs_diff")
    lines = [f"- imported `{imp['format']}` ({imp['detected_because']}; {imp.get('loader')})",
             "- compiled model vs what the source computes: " + (
                 f"max |diff| = {d:.2e} -- {imp.get('source_reference')}" if d is not None else
                 f"not run: {imp.get('source_reference')}; the exactness check below (masked dense reference) covers it"),
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
        dense = e.get("dense_max_abs_diff") is not None  # not run where nothing times or measures the dense model
        d_abs = f" / {e['dense_max_abs_diff']:.2e}" if dense else " / not run"
        if e.get("metric") == "rel_l2":
            diff = (f"{e['max_abs_diff']:.2e}{d_abs}; relative L2 {e['rel_l2']:.3f}"
                    + (f" / {e['dense_rel_l2']:.3f}" if dense else "") + f" (<= {e['tolerance']:g}, {e['images']} images)")
        else:
            diff = f"{e['max_abs_diff']:.2e}{d_abs} (<= {e['tolerance']:g})"
        out.append(f"| {name} | {e['runtime']} | {e['version']} | {e['device']} | {prec} | {e['threads']} | "
                   f"{diff} | {e['top1_agreement']:.3f} | {'pass' if e['passed'] else 'FAIL'} |")
    notes = [f"- {name}: the original's {e['precision']} model differs from timm beyond its tolerance (relative L2 "
             f"{e['original_rel_l2']:.3f}): not used as the baseline" for name, e in rows.items() if e.get("original_passed") is False]
    if any(e.get("metric") == "rel_l2" for e in rows.values()):
        notes.append("- int8 engines: relative L2 error ||engine - torch|| / ||torch|| of the logits, on images like "
                     "the calibration images (a quantizer's ranges do not cover noise)")
    return out + [""] + (notes + [""] if notes else [])


def _trust(st: dict) -> str:
    return "yes" if st.get("verdict") == "stable" else ("**contended** ⚠" if st.get("contended") else "**NO** ⚠")


def _latency_lines(report: dict) -> list[str]:
    """The latency table: per entry a row against the user's original model (timm's own, when timed)
    first, then against vitshrink's dense model; the reasons of untrusted figures below it."""
    entries = report["latency"]
    if not entries:
        return ["Not timed (`--bench-seconds 0`, or no engine runs here).", ""]
    has_original = any("speedup_vs_original" in e for e in entries)
    low = any(e.get("precision", "fp32") != "fp32" for e in entries)
    lines = [("Each round runs " + ("timm's own model (what you run today), " if has_original else "")
              + "vitshrink's dense codegen and the pruned model, in rotating order, in one process. "
              "Milliseconds per batch (p50). Speed-up: the median of the per-round ratios, with its bootstrap "
              "95% interval; realization: speed-up / MACs ratio (the ideal)."
              + (" A low-precision engine's baselines run at its own precision (quantized by the same tool with the "
                 "same calibration images); its last row is timm's original in fp32 in the same rounds: how far "
                 "the deployment is from the fp32 model run today." if low else "")), "",
             "| engine | precision | device | batch | threads | rounds | against | baseline p50 | pruned p50 | speed-up (95% CI) | ideal | realization | trustworthy? |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for e in entries:
        eng = e.get("engine", e["runtime"])
        rows, prec = [], e.get("precision", "fp32")
        same = "" if prec == "fp32" else f", {prec}"
        if "speedup_vs_original" in e:
            rows.append((f"timm's original{same}", e["baseline_ms"]["p50"], e["speedup_vs_original"], e["realization_vs_original"],
                         e["stability_vs_original"]))
        st = e.get("stability", {})
        rows.append((f"vitshrink dense{same}", e["dense_ms"]["p50"], e["speedup"], e["realization"], st))
        if "speedup_vs_original_fp32" in e:
            sp = e["speedup_vs_original_fp32"]
            rows.append(("timm's original, fp32", e["original_fp32_ms"]["p50"], sp, None, e["stability_vs_original_fp32"]))
        for k, (against, base, sp, real, s_) in enumerate(rows):
            lo, hi = s_.get("speedup_ci95", (float("nan"), float("nan")))
            head = f"| {eng} | {prec} | {e['device']} | {e['batch']} | {e['threads']} | {e['rounds']}" if k == 0 else "| | | | | |"
            lines.append(f"{head} | {against} | {base:.2f} | {e['pruned_ms']['p50']:.2f} | x{sp:.3f} ({lo:.3f}-{hi:.3f}) | "
                         f"x{e['ideal_speedup']:.3f} | {'**%.3f**' % real if real is not None else '--'} | {_trust(s_)} |")
        where = f"- {eng} batch {e['batch']}, {e['threads']} threads: "
        reasons = list(dict.fromkeys(r for _, _, _, _, s_ in rows for r in s_.get("reasons", [])))
        if reasons:
            notes.append(where + "; ".join(reasons))
        if e.get("suspect"):
            notes.append(where + "suspect: " + e["suspect"])
    if notes:
        lines += ["", "**Not trustworthy as they stand** (time longer with `--bench-seconds`, on an idle machine):", "", *notes]
    orig = report.get("original") or {}
    if has_original:
        lines += ["", f"timm's original: {orig.get('model', 'timm')}; ONNX engines run timm's own `torch.onnx.export`, "
                      "torch engines timm's module."]
    return lines


def _accuracy_lines(report: dict) -> list[str]:
    """The accuracy section: which images (and which calibrated), dense vs pruned in fp32, then the original
    and the pruned model per engine and precision."""
    a, cal = report["accuracy"], report.get("calibration") or {}
    imgs = a.get("images") or {}
    what = imgs.get("what") or f"{a['n']} images from {report['inputs']['data']}"
    pre = report.get("preprocessing") or {}
    how = (f"resize ({pre['interpolation']}, {pre['crop_mode']}, crop {pre['crop_pct']:g}), mean {pre['mean']}, std "
           f"{pre['std']} from {pre['from']}" if pre else "the model's timm eval transform")
    lines = ["## Accuracy", "", f"Measured on {what}; images preprocessed by {how}."
             + (f" Left out: {imgs['excluded']} images that {imgs['excluded_because']}." if imgs.get("excluded") else "")
             + (f" Class folders to outputs: {imgs['labels']}." if imgs.get("labels") else "")]
    if cal.get("n"):
        lines += ["", f"Calibration: {cal['n']} images ({cal['source']}; {cal.get('dir', '')}, sha256 {cal.get('sha256', '')[:12]})."]
    elif cal.get("source", "none") != "none":
        lines += ["", f"Calibration: {cal['source']} -- INT8 accuracy below is not meaningful."]
    lines += ["", "| | top-1 | top-5 |", "|---|---|---|",
              f"| dense (ONNX Runtime fp32) | {a['dense_top1']:.4f} | {a['dense_top5']:.4f} |",
              f"| pruned (ONNX Runtime fp32) | {a['pruned_top1']:.4f} | {a['pruned_top5']:.4f} |", "",
              f"Top-1 agreement between dense and pruned: {a['top1_agreement']:.4f}.", ""]
    rows = a.get("engines") or []
    if rows:
        who = (report.get("original") or {}).get("model", "timm's own model")
        lines += [f"Per engine and precision (original: {who}, at that precision):", "",
                  "| engine | precision | original top-1 | pruned top-1 | drop (points) | original top-5 | pruned top-5 | top-1 agreement |",
                  "|---|---|---|---|---|---|---|---|"]
        f = lambda v: "--" if v is None else f"{v:.4f}"  # noqa: E731
        for r in rows:
            drop = "--" if r["original_top1"] is None else f"{100 * (r['original_top1'] - r['pruned_top1']):.1f}"
            lines.append(f"| {r['engine']} | {r['precision']} | {f(r['original_top1'])} | {f(r['pruned_top1'])} | {drop} | "
                         f"{f(r['original_top5'])} | {f(r['pruned_top5'])} | {f(r['top1_agreement'])} |")
        lines.append("")
    return lines


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
        f"| MACs per image | {fmt_macs(m['dense'])} | {fmt_macs(m['pruned'])} | {m['pruned'] / m['dense']:.3f} |",
        f"| parameters | {p['dense'] / 1e6:.3f} M | {p['pruned'] / 1e6:.3f} M | {p['pruned'] / p['dense']:.3f} |",
        *([f"| embed_dim | {report['structure']['embed_dim'][0]} | {report['structure']['embed_dim'][1]} | |"]
          if "stages" not in report["structure"] else
          [f"| stage {st['stage']} channels ({st['resolution'][0]}x{st['resolution'][1]} tokens) | {st['embed_dim'][0]} | "
           f"{st['embed_dim'][1]} | |" for st in report["structure"]["stages"]]),
        "",
        *([("Window attention: each token attends to the tokens of its window -- " + ", ".join(
            f"stage {st['stage']}: {st['window'][0]}x{st['window'][1]}" for st in report["structure"]["stages"])
            + ". Token counts below are per image."), ""] if "stages" in report["structure"] else []),
    ]
    lay = report["layout"]
    if m["executed"] != m["pruned"]:
        lines += [f"The exported graph computes {fmt_macs(m['executed'])} MACs: irregular head widths were padded "
                  f"with zeros to one width per block (layout `{lay.get('chosen', lay['policy'])}`, exact).", ""]
    if "measured" in lay:
        t = lay["measured"]
        per = "; ".join(f"batch {b}: " + ", ".join(f"{k.removesuffix('_ms')} {ms:.2f} ms" for k, ms in v.items())
                        for b, v in t["batches"].items())
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
        *([f"- token rules: kept (merged) tokens identical to the reference on every verification image: "
           f"{report['exactness']['token_ids_identical']}"] if "token_ids_identical" in report["exactness"] else []),
        f"- ONNX (opset {report['export']['opset']}, dynamic batch) in ONNX Runtime vs torch: pruned "
        f"{report['export']['onnx_max_abs_diff']:.2e}" + (f", dense {report['export']['dense_onnx_max_abs_diff']:.2e}"
                                                         if report["export"].get("dense_onnx_max_abs_diff") is not None else "")
        + f" ({ok(report['export']['passed'])})",
        "",
        "## Latency",
        "",
        *_latency_lines(report),
    ]
    lines += ["", "![latency vs MACs](latency.png)", "", *_engine_lines(report.get("engines", {}))]
    if "accuracy" in report:
        lines += _accuracy_lines(report)
    lines += [
        "## Structure",
        "",
        "| block | kept | heads | q/k channels | v channels | MLP hidden | tokens (keys / queries / MLP) | token rule |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["structure"]["blocks"]:
        t, rule = r["tokens"], r.get("token_rule")
        rule_s = ("" if not rule else f"ToMe: merge {rule['merge']}" + ("" if rule["prop_attn"] else " (no proportional attention)")
                  if "merge" in rule else f"{rule['score']} keep {rule['keep']} at {rule['where']}" + (" + fuse" if rule["fuse"] else ""))
        lines.append(f"| {r.get('name', r['block'])} | {r['status']} | {r['heads'][0]} -> {r['heads'][1]} | "
                     f"{r['qk'][0]} -> {r['qk'][1]} | {r['v'][0]} -> {r['v'][1]} | {r['mlp'][0]} -> {r['mlp'][1]} | "
                     f"{t['keys'][1]} / {t['queries'][1]} / {t['mlp'][1]} (dense {t['keys'][0]}) | {rule_s} |")
    if report["structure"].get("token_mode"):
        lines += ["", f"Static token masks in `{report['structure']['token_mode']}` mode, "
                      f"`{report['structure']['token_layout']}` layout."]
    lines += ["", "![widths per block](widths.png)", ""]
    eng = report.get("engines", {})
    trt = [n for n in ("tensorrt", "tensorrt-int8") if n in eng]
    if trt:
        lines += ["## TensorRT", ""] + [f"- {n}: " + (f"skipped: {eng[n]['skipped']}" if "skipped" in eng[n] else
                                                      f"engine: {eng[n]['file']}") for n in trt] + [""]
    return "\n".join(lines)
