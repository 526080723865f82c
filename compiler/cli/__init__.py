"""``vitshrink`` command line: one module per command group, registered on :func:`main` here.

- :mod:`.compile`: ``compile``, ``bench``; :mod:`.masks`: ``masks``; :mod:`.imports`: ``import``, ``inspect``;
  :mod:`.gate`: ``check``, ``diff``; :mod:`.run`: ``run``; :mod:`.sweep`: ``sweep``; :mod:`.runner`: ``build-runner``;
  :mod:`.common`: exit codes, one-line errors, option parsers.

Commands import the compile stack (torch, timm, onnx: seconds to load) inside their body, so
``vitshrink --help``, ``check`` and ``diff`` start fast.

Exit codes: 0 success; 1 verification failed (exactness, import fidelity or export) or an
internal error; 2 bad input (spec, checkpoint, model name, unreadable file, bad option) -- always
one line ``error: ...`` on stderr, and no output directory left behind; 3 a gate check failed
(``check``, ``compile`` with thresholds, ``run``; the output directory is kept).
"""
from __future__ import annotations

import os
import sys
import warnings

import click

from . import compile as compile_commands
from . import gate, imports, masks, run, runner, sweep
from .common import EXIT_CODES, one_line_warning


class _OneLineErrors(click.Group):
    """click's group, but a bad option or argument is one ``error: ...`` line on stderr (exit 2), as every
    other bad input is -- not click's usage block."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as e:
            click.echo(f"error: {e.format_message().splitlines()[0]}", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            click.echo(f"error: {e.format_message().splitlines()[0]}", err=True)
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog=EXIT_CODES)
@click.version_option(package_name="vitshrink")
def main() -> None:
    """vitshrink: make pruned vision transformers (ViT/DeiT, Swin) physically smaller, verified exact, and faster."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", category=UserWarning, module="timm")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.showwarning = one_line_warning


for _command in (compile_commands.compile_cmd, masks.masks_cmd, compile_commands.bench_cmd, runner.build_runner_cmd,
                 imports.import_cmd, imports.inspect_cmd, gate.check_cmd, gate.diff_cmd, run.run_cmd, sweep.sweep_cmd):
    main.add_command(_command)

if __name__ == "__main__":  # pragma: no cover
    main()
