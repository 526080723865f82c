"""``vitshrink run FILE.toml``: many compiles and gates, one summary (see :mod:`vitshrink.runfile`)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import VitshrinkError
from ..gate.evaluate import Check
from ..gate.render import append_github_summary, junit_suites
from .common import fail

RUN_EXIT = """\b
Exit codes (the worst entry: 1 > 2 > 3 > 0):
  0  every entry compiled, verified and passed its gate
  1  an entry failed verification (exactness, import fidelity, export) or hit an internal error
  2  bad input: the run file (one line 'error: ...', nothing run) or an entry's spec/checkpoint
  3  an entry's gate failed
"""


def _markdown(rows: list[dict]) -> str:
    cols = ["entry", "model", "exit", "MACs", "top-1 drop", "speed-up (vs original)", "gate", "host", "s", "error"]
    out = ["### vitshrink run", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(_cells(r)).replace("\n", " ") + " |")
    return "\n".join(out) + "\n"


def _cells(r: dict) -> list[str]:
    return [r["entry"], r["model"], str(r["exit"]), f"x{r['macs_x']:.2f}" if r["macs_x"] else "—",
            f"{r['top1_drop']:.2f}" if r["top1_drop"] is not None else "—",
            ", ".join(f"{k}: x{v:.2f}" for k, v in r["speedup"].items()) or "—", r["gate"], r["host"],
            f"{r['seconds']:.0f}", r["error"].replace("|", "\\|")]


@click.command("run", epilog="""\b
Examples:
  vitshrink run vitshrink.toml --out runs/nightly
  vitshrink run vitshrink.toml --out runs/nightly --ray                 # a local Ray cluster
  vitshrink run vitshrink.toml --out runs/nightly --ray ray://head:10001  # an existing cluster
""" + RUN_EXIT)
@click.argument("runfile")
@click.option("--out", required=True, help="Output directory: one subdirectory per entry, summary.{md,json}, junit.xml.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None,
              help="Fan the entries out over Ray: no value starts a local cluster, or give the cluster ADDRESS.")
@click.option("--trust-pickle", is_flag=True, help="Let pickled checkpoints of every entry run their own code.")
@click.option("--quiet", is_flag=True, help="No progress lines (per entry, and per stage of a local entry's compile).")
def run_cmd(runfile, out, ray_address, trust_pickle, quiet):
    """Compile and gate every [[entry]] of RUNFILE (model, checkpoint, spec or importer, batch sizes,
    thresholds), one report each, one summary table; locally in order or over a Ray cluster."""
    from ..runfile import read_runfile, run_all, summary_rows, worst_exit  # lazy: the compile stack loads only here

    console = Console(stderr=True, soft_wrap=True)
    try:
        entries = read_runfile(runfile)
    except VitshrinkError as e:
        fail(e)

    def started(e, i, n):
        if not quiet:
            console.print(f"[{i}/{n}] {e['name']}: {e['model']} started" + (f" (target {e['target']})" if e.get("target") else ""))

    def done(r, i, n):
        if not quiet:
            verdict = "ok" if r["exit_code"] == 0 else f"exit {r['exit_code']}: {r['error']}"
            console.print(f"[{i}/{n} done] {r['name']}: {verdict} ({r['seconds']:.0f} s on {r['host']})", markup=False)

    try:
        results = run_all(entries, out, trust_pickle, ray_address, on_done=done, on_start=started, progress=not quiet)
    except VitshrinkError as e:
        fail(e)
    rows = summary_rows(results)
    table = Table(title=f"vitshrink run: {runfile}")
    for c in ["entry", "model", "exit", "MACs", "top-1 drop", "speed-up (vs original)", "gate", "host", "s", "error"]:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*map(escape, _cells(r)))
    Console(width=max(120, Console().width)).print(table)
    md = _markdown(rows)
    Path(out, "summary.md").write_text(md)
    Path(out, "summary.json").write_text(json.dumps({"runfile": runfile, "exit_code": worst_exit(results), "entries": rows}, indent=1))
    junit_suites({r["name"]: ([Check(**c) for c in r["checks"]], r["error"] if r["exit_code"] in (1, 2) else None,
                              r.get("seconds")) for r in results}, Path(out, "junit.xml"))
    append_github_summary(md)
    sys.exit(worst_exit(results))
