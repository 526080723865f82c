"""Deployment gates over ``report.json``: thresholds, a baseline, and statistics a noisy runner can trust.

- :mod:`.thresholds`: what a gate checks and where the thresholds come from (pyproject, file, flags);
- :mod:`.evaluate`: a report (and a baseline) -> pass / fail / skip per check, latency checks by their
  95% bootstrap interval;
- :mod:`.retime`: a baseline regression measured by timing both models again, interleaved;
- :mod:`.render`: the terminal table, Markdown and JUnit XML; :mod:`.flow`: a gate from start to end.
"""
from __future__ import annotations

from .evaluate import Check, evaluate, machine_fingerprint, passed, slowdown
from .thresholds import THRESHOLDS, Gate, gate_from_mapping, load_gate, parse_number, read_gate_file

__all__ = ["THRESHOLDS", "Check", "Gate", "evaluate", "gate_from_mapping", "load_gate", "machine_fingerprint",
           "parse_number", "passed", "read_gate_file", "slowdown"]
