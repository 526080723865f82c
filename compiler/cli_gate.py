"""``vitshrink check`` (gate a report) and ``vitshrink diff`` (compare two reports); the gate options
``compile --gate`` shares. Exit codes: 0 pass, 3 gate failed, 2 bad input (1 keeps its meaning)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, Optional

import click

from .errors import GateError, VitshrinkError

GATE_EXIT = """\b
Exit codes:
  0  every check passed (skips do not fail)
  1  verification failed (compile --gate): nothing written
  2  bad input (report, baseline from another machine, unknown threshold): one line 'error: ...'
  3  a gate check failed: the table says which
"""


def read_report(path: str | Path) -> dict:
    """A parsed report.json (``path`` is the file or the compile's output directory).

    Raises:
        VitshrinkError: missing, not JSON, or not a ``vitshrink.report/1``, naming the file.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    try:
        doc = json.loads(p.read_text())
    except OSError as e:
        raise VitshrinkError(f"report {p}: cannot read ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise VitshrinkError(f"report {p}: not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(doc, dict) or doc.get("format") != "vitshrink.report/1":
        raise VitshrinkError(f"report {p}: not a vitshrink report (format {doc.get('format') if isinstance(doc, dict) else None!r})")
    return doc


def gate_options(f: Callable) -> Callable:
    """The threshold flags, shared by ``check`` and ``compile``."""
    opts = [
        click.option("--gate", "gate_file", default=None, help="TOML thresholds ([tool.vitshrink.gate], [gate] or top level)."),
        click.option("--baseline", default=None, help="Earlier report.json (or output dir) for --max-slowdown."),
        click.option("--max-abs-diff", default=None, help="Max abs diff on logits (exactness and ONNX), e.g. 1e-4."),
        click.option("--min-top1-agreement", default=None, help="Min fraction of images where pruned and dense agree."),
        click.option("--max-top1-drop", default=None, help="Max top-1 drop in points, pruned vs dense (0.5 = half a point)."),
        click.option("--min-speedup", multiple=True, help="Min speed-up: 1.5, or per entry ort@8=1.8 (repeatable)."),
        click.option("--min-realization", multiple=True, help="Min speed-up / MACs ratio: 0.8, or ENGINE@BATCH=VALUE."),
        click.option("--max-slowdown", multiple=True, help="Max slowdown vs --baseline: 5%, or ENGINE@BATCH=VALUE."),
        click.option("--max-params", default=None, help="Max parameters of the pruned model, e.g. 3M."),
        click.option("--max-macs", default=None, help="Max MACs per image of the pruned model, e.g. 0.6G."),
        click.option("--allow-machine-change", is_flag=True, help="Compare with a baseline from another machine."),
        click.option("--absolute", is_flag=True, help="--max-slowdown from the two runs' pruned ms, not relative to dense."),
        click.option("--retime-seconds", type=float, default=10.0, show_default=True,
                     help="--max-slowdown: time the baseline's and the new model.onnx again, interleaved, this long "
                          "(0: compare the two reports' own rounds instead)."),
        click.option("--junit", default=None, help="Write the checks as JUnit XML to this file."),
        click.option("--markdown", default=None, help="Write the checks as Markdown to this file."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


THRESHOLD_FLAGS = ("max_abs_diff", "min_top1_agreement", "max_top1_drop", "min_speedup", "min_realization",
                   "max_slowdown", "max_params", "max_macs", "allow_machine_change", "absolute")
OUTPUT_FLAGS = ("gate_file", "baseline", "junit", "markdown", "retime_seconds")


def split_gate_kwargs(kwargs: dict) -> tuple[dict, dict]:
    """Pop the gate flags out of a command's kwargs: (thresholds, outputs)."""
    return ({k: kwargs.pop(k) for k in THRESHOLD_FLAGS}, {k: kwargs.pop(k) for k in OUTPUT_FLAGS})


def prepare_gate(thresholds: dict, outputs: dict, pyproject: Optional[str] = "pyproject.toml"):
    """Validate the gate before any work: (Gate, baseline report or None). The baseline must come
    from this machine unless ``--allow-machine-change``.

    Raises:
        VitshrinkError: bad threshold, unreadable gate file or baseline, another machine (exit 2).
    """
    from .artifacts import machine
    from .gate import load_gate, machine_fingerprint

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


def _dir(path) -> Optional[Path]:
    """The output directory of a report given as a directory or as its report.json."""
    if path is None:
        return None
    p = Path(path)
    return p if p.is_dir() else p.parent


def run_gate(report: dict, gate, baseline: Optional[dict], outputs: dict, title: str, quiet: bool = False,
             report_dir=None) -> list:
    """Evaluate ``report``, print the table, write JUnit / Markdown / the GitHub step summary. With a
    baseline directory holding its model.onnx (and ``report_dir`` holding the new one), the slowdown is
    measured by re-timing both interleaved (:mod:`vitshrink.gate_retime`).

    Raises:
        VitshrinkError: no threshold at all, or a baseline from another machine (exit 2);
            GateError when a check failed (exit 3).
    """
    from .gate import evaluate, passed
    from .gate_output import append_github_summary, junit, markdown, print_table

    if not gate:
        raise VitshrinkError("no gate thresholds: give flags (--min-speedup ...), --gate FILE or [tool.vitshrink.gate] in pyproject.toml")
    from .gate_retime import retimer

    def say(msg):
        if not quiet:
            click.echo(msg, err=True)

    retime = retimer(_dir(report_dir), _dir(outputs.get("baseline")), outputs.get("retime_seconds") or 0, say) \
        if gate.values.get("max_slowdown") else None
    checks = evaluate(report, gate, baseline, retime=retime)
    if not quiet:
        print_table(checks, title)
    md = markdown(checks, title)
    if outputs.get("markdown"):
        Path(outputs["markdown"]).write_text(md)
    if outputs.get("junit"):
        junit(checks, outputs["junit"])
    append_github_summary(md)
    if not passed(checks):
        failed = [c.name for c in checks if c.status == "fail"]
        raise GateError(f"gate failed: {len(failed)} of {len(checks)} checks ({', '.join(failed[:3])}{', ...' if len(failed) > 3 else ''})")
    return checks


def register(main: click.Group, fail: Callable[[VitshrinkError], None]) -> None:
    """Add ``check`` and ``diff`` to the ``vitshrink`` group."""

    @main.command("check", epilog="""\b
Examples:
  vitshrink check runs/tiny/report.json --max-top1-drop 0.5 --min-speedup 1.5 --junit gate.xml
  vitshrink check runs/new --baseline runs/last-week --max-slowdown 5% --min-speedup ort@8=1.8
  vitshrink check runs/new --gate gate.toml      # thresholds from a file
""" + GATE_EXIT)
    @click.argument("report")
    @gate_options
    @click.option("--quiet", is_flag=True, help="No table on stdout (the exit code, files and summary only).")
    def check_cmd(report, quiet, **kwargs):
        """Gate REPORT (report.json or a compile's output directory) on thresholds: exactness, accuracy,
        speed-up and realization (per engine and batch), slowdown vs a baseline, size. Latency checks fail
        only when their whole 95% bootstrap interval is on the wrong side of the threshold."""
        thresholds, outputs = split_gate_kwargs(kwargs)
        try:
            doc = read_report(report)
            gate, baseline = prepare_gate(thresholds, outputs)
            run_gate(doc, gate, baseline, outputs, f"vitshrink gate: {report}", quiet, report_dir=report)
        except VitshrinkError as e:
            fail(e)

    @main.command("diff", epilog="""\b
Example:
  vitshrink diff runs/last-week runs/today --json diff.json
""" + GATE_EXIT.replace("  3  a gate check failed: the table says which\n", ""))
    @click.argument("old")
    @click.argument("new")
    @click.option("--json", "json_out", default=None, help="Also write the differences as JSON.")
    @click.option("--all", "show_all", is_flag=True, help="List unchanged fields too.")
    def diff_cmd(old, new, json_out, show_all):
        """What changed from OLD to NEW (reports or output directories): structure, MACs, parameters,
        accuracy, latency per engine/batch/threads, toolchain versions, input hashes, machine."""
        from .report_diff import diff_reports, print_diff

        try:
            rows = diff_reports(read_report(old), read_report(new))
        except VitshrinkError as e:
            fail(e)
        print_diff(rows, show_all)
        if json_out:
            Path(json_out).write_text(json.dumps({"old": old, "new": new, "changes": rows}, indent=1))
        sys.exit(0)
