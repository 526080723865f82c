"""``vitshrink diff``: what changed between two report.json files, field by field."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from .schema import entry_label


def _flatten(report: dict) -> dict[tuple[str, str], Any]:
    """(section, field) -> value for the fields a reviewer compares."""
    out: dict[tuple[str, str], Any] = {("model", "name"): report.get("model")}
    inputs = report.get("inputs", {})
    for k in ("spec", "checkpoint"):
        v = inputs.get(k) or {}
        out[("inputs", f"{k} sha256")] = v.get("sha256") or ("random weights" if v.get("random_init") else None)
        out[("inputs", f"{k} path")] = v.get("path")
    out[("inputs", "data")] = inputs.get("data")
    for k, v in (report.get("toolchain") or {}).items():
        out[("toolchain", k)] = v
    for k, v in (report.get("machine") or {}).items():
        out[("machine", k)] = v
    for sec in ("params", "macs"):
        for k in ("dense", "pruned"):
            out[(sec, k)] = (report.get(sec) or {}).get(k)
    st = report.get("structure") or {}
    out[("structure", "embed_dim")] = (st.get("embed_dim") or [None, None])[1]
    out[("structure", "exit_after")] = st.get("exit_after")
    for b in st.get("blocks", []):
        for k in ("heads", "qk", "v", "mlp"):
            if k in b:
                out[("structure", f"block {b['block']} {k}")] = b[k][1]
        if b.get("tokens"):
            out[("structure", f"block {b['block']} tokens (mlp)")] = b["tokens"]["mlp"][1]
        out[("structure", f"block {b['block']} status")] = b.get("status")
    out[("exactness", "max_abs_diff")] = (report.get("exactness") or {}).get("max_abs_diff")
    out[("exactness", "onnx_max_abs_diff")] = (report.get("export") or {}).get("onnx_max_abs_diff")
    for k, v in (report.get("accuracy") or {}).items():
        if isinstance(v, (int, float)):
            out[("accuracy", k)] = v
    for r in (report.get("accuracy") or {}).get("engines") or []:  # the rows max_top1_drop gates
        for k in ("original_top1", "pruned_top1"):
            out[("accuracy", f"{r['engine']} ({r['precision']}) {k.replace('_top1', ' top-1')}")] = r.get(k)
    for e in report.get("latency", []):  # the paired ratios first: they cancel the machine's drift between runs
        tag = entry_label(e)
        out[("latency", f"{tag} speed-up")] = e.get("speedup_paired", e.get("speedup"))  # older reports: p50 ratio in "speedup"
        out[("latency", f"{tag} realization")] = out[("latency", f"{tag} speed-up")] / e["ideal_speedup"]
        if "speedup_vs_original" in e:
            out[("latency", f"{tag} speed-up vs original")] = e["speedup_vs_original"]
            out[("latency", f"{tag} realization vs original")] = e["realization_vs_original"]
            out[("latency", f"{tag} original p50 ms")] = e["baseline_ms"]["p50"]
        out[("latency", f"{tag} dense p50 ms")] = e["dense_ms"]["p50"]
        out[("latency", f"{tag} pruned p50 ms")] = e["pruned_ms"]["p50"]
    return out


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def diff_reports(old: dict, new: dict) -> list[dict]:
    """Rows ``{section, field, old, new, change, changed, note}``: every compared field of either report
    (per latency entry the paired speed-up first, then the absolute milliseconds); ``change`` is the
    difference in percentage points for accuracies (top-1 0.7167 -> 0.47: ``-24.7 points``), the relative
    change for other numbers (``+3.1%``), ``added`` / ``removed`` / ``changed`` otherwise, ``""``
    when equal; ``note`` flags absolute times that moved with the machine, not the model (:data:`DRIFT_FACTOR`)."""
    a, b = _flatten(old), _flatten(new)
    rows = []
    for key in list(dict.fromkeys([*a, *b])):
        va, vb = a.get(key), b.get(key)
        if va == vb:
            change = ""
        elif va is None:
            change = "added"
        elif vb is None:
            change = "removed"
        elif key[0] == "accuracy" and key[1] != "n" and _number(va) and _number(vb):  # fractions: people read points
            change = f"{100 * (vb - va):+.1f} points"
        elif _number(va) and _number(vb) and va:
            change = f"{100 * (vb / va - 1):+.1f}%"
        else:
            change = "changed"
        rows.append({"section": key[0], "field": key[1], "old": va, "new": vb, "change": change, "changed": va != vb,
                     "note": ""})
    _mark_drift(rows)
    return rows


#: a change of absolute milliseconds this much larger than its entry's paired speed-up change is the machine
#: drifting between the two runs (identical runs on a shared 2-core VM: absolute -13..+15%, ratio +-1-8%;
#: benchmarks/gate_false_alarms.py), not the model
DRIFT_FACTOR = 3.0


def _mark_drift(rows: list[dict]) -> None:
    """Note on each changed absolute-latency row whose change the entry's paired ratio does not share:
    ``within run-to-run drift`` (dense and pruned moved together; the ratio, which cancels it, moved less)."""
    def rel(r):
        return (r["new"] / r["old"] - 1) if isinstance(r["old"], (int, float)) and r["old"] and isinstance(r["new"], (int, float)) else None
    ratio = {r["field"][: -len(" speed-up")]: rel(r) for r in rows if r["section"] == "latency" and r["field"].endswith(" speed-up")}
    for r in rows:
        if r["section"] != "latency" or not r["field"].endswith(" p50 ms") or not r["changed"]:
            continue
        tag = r["field"].rsplit(" ", 3)[0]
        moved, paired = rel(r), ratio.get(tag)
        if moved is not None and paired is not None and abs(moved) > DRIFT_FACTOR * abs(paired):
            r["note"] = f"within run-to-run drift: the paired speed-up moved {100 * paired:+.1f}%"


def _show(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v):
        return v[:12]  # a sha256
    return "—" if v is None else str(v)


def print_diff(rows: list[dict], show_all: bool = False) -> None:
    """A rich table of the changed rows (all rows with ``show_all``), then a count."""
    t = Table(title="vitshrink diff")
    for h in ("section", "field", "old", "new", "change", "note"):
        t.add_column(h, overflow="fold")
    shown = [r for r in rows if r["changed"] or show_all]
    for r in shown:
        t.add_row(r["section"], r["field"], _show(r["old"]), _show(r["new"]), r["change"], r.get("note", ""))
    console = Console(width=max(120, Console().width))
    console.print(t)
    console.print(f"{sum(r['changed'] for r in rows)} of {len(rows)} fields changed")
