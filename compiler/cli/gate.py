"""``vitshrink check`` (gate a report) and ``vitshrink diff`` (compare two reports); the gate options
``compile --gate`` shares. Both read reports only, never rebuild. Exit codes: 0 pass, 3 gate failed,
2 bad input (1 keeps its meaning)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

import click

from ..errors import VitshrinkError
from ..gate.flow import prepare_gate, run_gate
from ..report.diff import diff_reports, print_diff
from ..report.io import read_report
from .common import fail

GATE_EXIT = """\b
Exit codes:
  0  every check passed (skips do not fail)
  1  verification failed (compile --gate): nothing written
  2  bad input (report, baseline from another machine, unknown threshold): one line 'error: ...'
  3  a gate check failed: the table says which
"""


def gate_options(f: Callable) -> Callable:
    """The threshold flags, shared by ``check`` and ``compile``."""
    opts = [
        click.option("--gate", "gate_file", default=None, help="TOML thresholds ([tool.vitshrink.gate], [gate] or top level)."),
        click.option("--baseline", default=None, help="Earlier report.json (or output dir) for --max-slowdown."),
        click.option("--max-abs-diff", default=None, help="Max abs diff on logits (exactness and ONNX), e.g. 1e-4."),
        click.option("--min-top1-agreement", default=None, help="Min fraction of images where pruned and dense agree."),
        click.option("--max-top1-drop", multiple=True, help="Max top-1 drop in points, pruned vs dense (0.5 = half a point); "
                                                            "per engine openvino-int8=1.0: its int8 original vs its int8 pruned."),
        click.option("--min-top1", multiple=True, help="Min top-1 of the pruned model on the held-out images (0.75), "
                                                       "or per engine openvino-int8=0.74 (its pruned model at its precision)."),
        click.option("--min-speedup", multiple=True, help="Min speed-up: 1.5, or per entry ort@8=1.8 (repeatable)."),
        click.option("--min-realization", multiple=True, help="Min speed-up / MACs ratio: 0.8, or ENGINE@BATCH=VALUE."),
        click.option("--max-slowdown", multiple=True, help="Max slowdown vs --baseline: 5%, or ENGINE@BATCH=VALUE."),
        click.option("--max-params", default=None, help="Max parameters of the pruned model, e.g. 3M."),
        click.option("--max-macs", default=None, help="Max MACs per image of the pruned model, e.g. 0.6G."),
        click.option("--allow-machine-change", is_flag=True, help="Compare with a baseline from another machine."),
        click.option("--absolute", is_flag=True, help="--max-slowdown from the two runs' pruned ms, not relative to dense."),
        click.option("--against", type=click.Choice(["original", "dense"]), default=None,
                     help="--min-speedup/--min-realization against the original model (timm's own; default) or vitshrink's dense."),
        click.option("--retime-seconds", type=float, default=10.0, show_default=True,
                     help="--max-slowdown: time the baseline's and the new model.onnx again, interleaved, this long "
                          "(0: compare the two reports' own rounds instead)."),
        click.option("--junit", default=None, help="Write the checks as JUnit XML to this file."),
        click.option("--markdown", default=None, help="Write the checks as Markdown to this file."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


THRESHOLD_FLAGS = ("max_abs_diff", "min_top1_agreement", "max_top1_drop", "min_top1", "min_speedup", "min_realization",
                   "max_slowdown", "max_params", "max_macs", "allow_machine_change", "absolute", "against")
OUTPUT_FLAGS = ("gate_file", "baseline", "junit", "markdown", "retime_seconds")


def split_gate_kwargs(kwargs: dict) -> tuple[dict, dict]:
    """Pop the gate flags out of a command's kwargs: (thresholds, outputs)."""
    return ({k: kwargs.pop(k) for k in THRESHOLD_FLAGS}, {k: kwargs.pop(k) for k in OUTPUT_FLAGS})


@click.command("check", epilog="""\b
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
        run_gate(doc, gate, baseline, outputs, f"vitshrink gate: {report}", quiet, report_dir=report,
                 say=lambda m: click.echo(m, err=True))
    except VitshrinkError as e:
        fail(e)


@click.command("diff", epilog="""\b
Example:
  vitshrink diff runs/last-week runs/today --json diff.json

\b
Exit codes:
  0  the differences were listed (a difference is not a failure: gate with `vitshrink check --baseline`)
  2  bad input (a report or directory that cannot be read): one line 'error: ...'
""")
@click.argument("old")
@click.argument("new")
@click.option("--json", "json_out", default=None, help="Also write the differences as JSON.")
@click.option("--all", "show_all", is_flag=True, help="List unchanged fields too.")
def diff_cmd(old, new, json_out, show_all):
    """What changed from OLD to NEW (reports or output directories): structure, MACs, parameters,
    accuracy, latency per engine/batch/threads, toolchain versions, input hashes, machine."""
    try:
        rows = diff_reports(read_report(old), read_report(new))
    except VitshrinkError as e:
        fail(e)
    print_diff(rows, show_all)
    if json_out:
        Path(json_out).write_text(json.dumps({"old": old, "new": new, "changes": rows}, indent=1))
    sys.exit(0)
