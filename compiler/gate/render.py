"""What a gate says, in the three forms CI systems read: a terminal table, Markdown (pull-request
comment / ``$GITHUB_STEP_SUMMARY``) and JUnit XML (one test case per check; GitHub, GitLab and Jenkins
show it as test results)."""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .evaluate import Check, passed
from .thresholds import THRESHOLDS


def fmt(key: str, x: Optional[float]) -> str:
    """A value of threshold ``key`` as a person reads it."""
    if x is None:
        return "—"
    if key == "max_slowdown":
        return f"{100 * x:+.1f}%"
    if key in ("max_params", "max_macs"):
        return f"{x / 1e6:.3f} M" if x < 1e9 else f"{x / 1e9:.3f} G"
    if key == "max_abs_diff":
        return f"{x:.2g}"
    if key == "min_speedup":
        return f"x{x:.3f}"
    return f"{x:.3f}"


def _interval(c: Check) -> str:
    return f"[{fmt(c.threshold_name, c.interval[0])}, {fmt(c.threshold_name, c.interval[1])}]" if c.interval else ""


def rows(checks: list[Check]) -> list[list[str]]:
    """[check, value, 95% interval, threshold, result, note] per check."""
    return [[c.name, fmt(c.threshold_name, c.value), _interval(c), f"{c.op} {fmt(c.threshold_name, c.threshold)}",
             c.status.upper(), c.note] for c in checks]


HEADER = ["check", "value", "95% interval", "threshold", "result", "note"]


def print_table(checks: list[Check], title: str = "gate") -> None:
    """The checks as a rich table on stdout, then one verdict line."""
    t = Table(title=escape(title), show_lines=False)
    for h in HEADER:
        t.add_column(h, overflow="fold")
    style = {"PASS": "green", "FAIL": "bold red", "SKIP": "yellow"}
    for r in rows(checks):
        t.add_row(*map(escape, r[:4]), f"[{style[r[4]]}]{r[4]}[/]", escape(r[5]))
    console = Console(width=max(120, Console().width))
    console.print(t)
    n_fail = sum(c.status == "fail" for c in checks)
    console.print(f"gate {'PASSED' if passed(checks) else 'FAILED'}: {len(checks) - n_fail} of {len(checks)} checks pass"
                  + (f", {n_fail} failed" if n_fail else ""))


def markdown(checks: list[Check], title: str = "vitshrink gate") -> str:
    """A Markdown section: verdict, then the table of checks."""
    verdict = "✅ passed" if passed(checks) else "❌ failed"
    out = [f"### {title}: {verdict}", "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in rows(checks):
        r[4] = {"PASS": "pass", "FAIL": "**FAIL**", "SKIP": "skip"}[r[4]]
        out.append("| " + " | ".join(x.replace("|", "\\|") for x in r) + " |")
    return "\n".join(out) + "\n"


def append_github_summary(text: str) -> Optional[Path]:
    """Append ``text`` to ``$GITHUB_STEP_SUMMARY`` when it is set (GitHub Actions); returns the file."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if not path:
        return None
    with open(path, "a", encoding="utf-8") as f:
        f.write(text + "\n")
    return Path(path)


def junit(checks: list[Check], path: str | Path, suite: str = "vitshrink.gate", seconds: Optional[float] = None) -> None:
    """JUnit XML (``testsuites`` > ``testsuite`` > ``testcase``, ``failure`` / ``skipped``), one test
    case per check, as pytest writes it and Jenkins' junit-10.xsd describes it; ``seconds``: what the
    compile took (the suite's ``time``; the checks themselves take none)."""
    junit_suites({suite: (checks, None, seconds)}, path)


def junit_suites(suites: dict[str, tuple], path: str | Path) -> None:
    """Several suites in one JUnit file (``vitshrink run``: one per entry), each ``(checks, error[, seconds])``.
    A suite whose ``error`` is set (the entry did not compile) gets one test case with an ``error`` element;
    ``seconds`` (what the entry took) is the suite's ``time`` and that case's, their sum the file's."""
    root = ET.Element("testsuites", {"name": "vitshrink", "tests": "0", "failures": "0", "errors": "0", "time": "0"})
    totals = {"tests": 0, "failures": 0, "errors": 0}
    total_time = 0.0
    for suite, (checks, error, *rest) in suites.items():
        seconds = float(rest[0]) if rest and rest[0] is not None else 0.0
        total_time += seconds
        n_fail = sum(c.status == "fail" for c in checks)
        attrs = {"name": suite, "tests": str(len(checks) + bool(error)), "failures": str(n_fail),
                 "errors": str(int(bool(error))), "skipped": str(sum(c.status == "skip" for c in checks)),
                 "time": f"{seconds:.3f}"}
        ts = ET.SubElement(root, "testsuite", attrs)
        for k in totals:
            totals[k] += int(attrs[k])
        if error:
            case = ET.SubElement(ts, "testcase", {"classname": suite, "name": "compile", "time": f"{seconds:.3f}"})
            ET.SubElement(case, "error", {"message": error, "type": "compile"}).text = error
        for c in checks:
            case = ET.SubElement(ts, "testcase", {"classname": f"{suite}.{c.threshold_name}", "name": c.name, "time": "0"})
            text = (f"{c.name}: {fmt(c.threshold_name, c.value)} (threshold {c.op} {fmt(c.threshold_name, c.threshold)})"
                    + (f", 95% interval {_interval(c)}" if c.interval else "") + (f"; {c.note}" if c.note else ""))
            if c.status == "fail":
                ET.SubElement(case, "failure", {"message": text, "type": THRESHOLDS[c.threshold_name][0]}).text = text
            elif c.status == "skip":
                ET.SubElement(case, "skipped", {"message": c.note})
            else:
                ET.SubElement(case, "system-out").text = text
    root.attrib.update({k: str(v) for k, v in totals.items()}, time=f"{total_time:.3f}")
    ET.indent(root)
    Path(path).write_bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))
