"""The README stays what a newcomer needs (issue 18 item 9): under 300 lines; every shell block in it is
one that `.ci/run` runs as written (marked install, test or runnable) -- a command shown is a command
that works; every page it links exists; no numbers without their results file."""
from __future__ import annotations

import re
import subprocess

from conftest import REPO

README = (REPO / "README.md").read_text()


def test_readme_is_short():
    assert len(README.splitlines()) < 300


def test_every_shell_block_is_run_by_ci():
    lines = README.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.strip() == "```bash"]
    assert starts
    for i in starts:
        assert re.fullmatch(r"<!-- ci:(install|test|run) -->", lines[i - 1].strip()), f"README line {i + 1}: unmarked bash block"
    marked = sum(ln.strip() == "<!-- ci:run -->" for ln in lines)
    out = subprocess.run(["bash", "-c", "source <(sed -n '/^runnable()/,/^}/p' .ci/run); runnable | tr '\\0' '\\n' | "
                          "grep -c '^. .venv/bin/activate$'"], cwd=REPO, capture_output=True, text=True)
    assert int(out.stdout.strip() or 0) == marked, out.stderr  # .ci/run extracts every marked block


def test_linked_pages_exist():
    links = re.findall(r"\]\(((?:docs|examples|benchmarks|compiler)/[^)#]+)\)", README)
    assert links and all((REPO / link).exists() for link in links), [link for link in links if not (REPO / link).exists()]


def test_measured_numbers_name_their_results_file():
    for line in README.splitlines():
        if re.search(r"\btop-1\b.*\b0\.\d{3}\b|\bx\d\.\d\d\b.*\bms\b", line):
            assert "benchmarks/results/" in README  # the table's source is named next to it
