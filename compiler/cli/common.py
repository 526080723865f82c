"""What every ``vitshrink`` command shares: the exit codes, one-line errors and warnings, option parsers."""
from __future__ import annotations

import sys

import click

from ..errors import VitshrinkError
from ..runtime.engines import parse_engines

EXIT_CODES = """\b
Exit codes:
  0  success
  1  verification failed (import fidelity, exactness, export): nothing written
  2  bad input (spec, checkpoint, model name, file, option): one line 'error: ...', nothing written
  3  a gate check failed (check, compile with thresholds, run): the table says which
"""


def fail(e: VitshrinkError) -> None:
    """Print ``error: <first line>`` on stderr and exit with the error's code (2 bad input, 1 verification, 3 gate)."""
    click.echo(f"error: {str(e).splitlines()[0]}", err=True)
    sys.exit(e.exit_code)


def int_list(ctx, param, value: str) -> list[int]:
    """click callback: ``"1,8"`` -> ``[1, 8]`` (positive integers)."""
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not out or any(v < 1 for v in out):
        raise click.BadParameter(f"expected positive integers, got {value!r}")
    return out


def img_size_option(ctx, param, value):
    """``--img-size H[,W]`` -> (H, W) or None; a bad value is a usage error naming it."""
    if value is None:
        return None
    try:
        parts = [int(v) for v in str(value).split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r}: give H or H,W in pixels (e.g. 224)") from None
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise click.BadParameter(f"{value!r}: give H or H,W in pixels (e.g. 224)")
    return (parts[0], parts[-1])


def engines_option(ctx, param, value: str) -> tuple[str, ...]:
    """click callback: ``--engines ort,openvino`` / ``all`` -> engine names."""
    try:
        return parse_engines(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings (e.g. random weights under ``--quiet``) as one ``warning: ...`` line on stderr."""
    click.echo(f"warning: {str(message).splitlines()[0]}", err=True)
