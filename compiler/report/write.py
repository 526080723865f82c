"""Writing a compile's report: report.json, report.md and the plots, into its output directory."""
from __future__ import annotations

import json
from pathlib import Path

from .markdown import markdown
from .plots import plot_latency, plot_widths


def write_report(report: dict, directory: Path) -> None:
    """Write report.json, report.md, widths.png and latency.png into ``directory``."""
    (directory / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    plot_widths(report, directory / "widths.png")
    if report.get("latency"):
        plot_latency(report, directory / "latency.png")
    (directory / "report.md").write_text(markdown(report))
