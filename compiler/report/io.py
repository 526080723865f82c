"""Reading report.json back (``check``, ``diff``, ``run`` read reports, never rebuild them)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ..errors import VitshrinkError
from .schema import FORMAT


def read_report(path: str | Path) -> dict:
    """A parsed report.json (``path`` is the file or the compile's output directory).

    Raises:
        VitshrinkError: missing, not JSON, or not a ``vitshrink.report/1``, naming the file; a ``vitshrink run``
            output folder (its entries named).
    """
    p = Path(path)
    if p.is_dir():
        if not (p / "report.json").exists() and (p / "summary.json").is_file():  # a `vitshrink run` folder
            entries = sorted(d.name for d in p.iterdir() if (d / "report.json").is_file())
            raise VitshrinkError(f"report {p}: a `vitshrink run` folder, not one compile's: name an entry ({p}/ENTRY; "
                                 f"entries: {', '.join(entries) or 'none compiled'}); its summary is {p / 'summary.md'}")
        p = p / "report.json"
    try:
        doc = json.loads(p.read_text())
    except OSError as e:
        raise VitshrinkError(f"report {p}: cannot read ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise VitshrinkError(f"report {p}: not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise VitshrinkError(f"report {p}: not a vitshrink report (format {doc.get('format') if isinstance(doc, dict) else None!r})")
    return doc


def report_dir(path: Optional[str | Path]) -> Optional[Path]:
    """The output directory of a report given as a directory or as its report.json (None stays None)."""
    if path is None:
        return None
    p = Path(path)
    return p if p.is_dir() else p.parent
