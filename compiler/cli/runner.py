"""``vitshrink build-runner``: build the native C++ runner (``vitshrink-run``) ahead of first use."""
from __future__ import annotations

import sys

import click

from .common import EXIT_CODES


@click.command("build-runner", epilog="""\b
Example:
  vitshrink build-runner                       # -> ~/.cache/vitshrink/runner/vitshrink-run
  vitshrink build-runner --build-dir build/native
""" + EXIT_CODES)
@click.option("--build-dir", default=None, help="CMake build directory (default $VITSHRINK_RUNNER_DIR or ~/.cache/vitshrink/runner-<hash of the sources>).")
def build_runner_cmd(build_dir):
    """Build vitshrink-run, the native C++ runner (OpenVINO C++ API from the openvino wheel), with cmake
    and the system C++ compiler. `--engines native` finds it there (or builds it on first use)."""
    from ..runtime.native_runner import build_runner  # lazy: the runtime loads only for commands that use it

    try:
        path = build_runner(build_dir)
    except RuntimeError as e:
        click.echo(f"error: {str(e).splitlines()[0]}", err=True)
        for line in str(e).splitlines()[1:]:
            click.echo(f"  {line}", err=True)
        sys.exit(1)
    click.echo(str(path))
