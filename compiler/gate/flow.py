"""A gate from start to end, as ``vitshrink check``, ``compile --gate`` and run files use it: validate the
thresholds and the baseline before any work (:func:`prepare_gate`), then evaluate a report, print the
table and write JUnit / Markdown / the GitHub step summary (:func:`run_gate`)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from ..errors import GateError, VitshrinkError
from ..runtime.machine import machine
from ..report.io import read_report
from ..report.io import report_dir as report_dir_of
from .evaluate import Check, evaluate, machine_fingerprint, passed
from .render import append_github_summary, junit, markdown, print_table
from .retime import retimer
from .thresholds import Gate, load_gate


def prepare_gate(thresholds: dict, outputs: dict, pyproject: Optional[str] = "pyproject.toml") -> tuple[Gate, Optional[dict]]:
    """Validate the gate before any work: (Gate, baseline report or None). The baseline must come
    from this machine unless ``--allow-machine-change``.

    Raises:
        VitshrinkError: bad threshold, unreadable gate file or baseline, another machine (exit 2).
    """
    gate = load_gate(thresholds, outputs.get("gate_file"), pyproject)
    baseline = read_report(outputs["baseline"]) if outputs.get("baseline") else None
    if gate.values.get("max_slowdown") and baseline is None:
        raise VitshrinkError("gate threshold 'max_slowdown' needs --baseline OLD_REPORT.json")
    if baseline is not None and not gate.allow_machine_change:
        here, there = machine_fingerprint({"machine": machine()}), machine_fingerprint(baseline)
        if here != there:
            diff = ", ".join(f"{k} {there[k]!r} -> {here[k]!r}" for k in here if here[k] != there[k])
            raise VitshrinkError(f"baseline {outputs['baseline']} was measured on another machine ({diff}): latencies "
                                 "are not comparable; pass --allow-machine-change to compare anyway")
    return gate, baseline


def run_gate(report: dict, gate: Gate, baseline: Optional[dict], outputs: dict, title: str, quiet: bool = False,
             report_dir=None, say: Callable[[str], None] = print) -> list[Check]:
    """Evaluate ``report``, print the table, write JUnit / Markdown / the GitHub step summary. With a
    baseline directory holding its model.onnx (and ``report_dir`` holding the new one), the slowdown is
    measured by re-timing both interleaved (:mod:`.retime`). ``say`` prints progress lines (unless ``quiet``).

    Raises:
        VitshrinkError: no threshold at all, or a baseline from another machine (exit 2);
            GateError when a check failed (exit 3).
    """
    if not gate:
        raise VitshrinkError("no gate thresholds: give flags (--min-speedup ...), --gate FILE or [tool.vitshrink.gate] in pyproject.toml")

    def progress(msg):
        if not quiet:
            say(msg)

    retime = retimer(report_dir_of(report_dir), report_dir_of(outputs.get("baseline")), outputs.get("retime_seconds") or 0, progress) \
        if gate.values.get("max_slowdown") else None
    checks = evaluate(report, gate, baseline, retime=retime)
    if not quiet:
        print_table(checks, title)
    md = markdown(checks, title)
    if outputs.get("markdown"):
        Path(outputs["markdown"]).write_text(md)
    if outputs.get("junit"):
        timings = report.get("timings_s") if isinstance(report, dict) else None
        junit(checks, outputs["junit"], seconds=sum(timings.values()) if isinstance(timings, dict) else None)
    append_github_summary(md)
    if not passed(checks):
        failed = [c.name for c in checks if c.status == "fail"]
        raise GateError(f"gate failed: {len(failed)} of {len(checks)} checks ({', '.join(failed[:3])}{', ...' if len(failed) > 3 else ''})")
    return checks
