"""Progress of a compile: stage lines, progress bars and warnings on stderr (rich), stage timings and
peak memory."""
from __future__ import annotations

import resource
import time
import warnings
from contextlib import contextmanager
from typing import Optional

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class Log:
    """Stage lines and progress bars on stderr (rich), or nothing; ``timings`` (s) and ``peak_rss_gb``
    per stage."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.console = None
        if enabled:
            self.console = Console(stderr=True, highlight=False, soft_wrap=True)  # one line per message, even in a file
        self.timings: dict[str, float] = {}
        self.peak_rss_gb: dict[str, float] = {}

    def info(self, msg: str) -> None:
        if self.console:
            self.console.print(msg)

    def warn(self, msg: str) -> None:
        """One line on stderr (``progress`` on), else a Python warning the caller can filter."""
        if self.console:
            self.console.print(f"[bold yellow]warning:[/] {escape(msg)}")
        else:
            warnings.warn(msg, stacklevel=3)

    @contextmanager
    def stage(self, name: str, label: str):
        t0 = time.perf_counter()
        if self.console:
            with self.console.status(f"{label} ..."):
                yield
        else:
            yield
        dt = time.perf_counter() - t0
        self.timings[name] = round(dt, 2)
        self.peak_rss_gb[name] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3)
        self.info(f"[green]✓[/] {label} [dim]({dt:.1f} s)[/]")

    @contextmanager
    def bar(self, label: str, total: int):
        if not self.console:
            yield lambda done, planned=None: None
            return
        with Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=self.console, transient=True) as p:
            task = p.add_task(label, total=total)

            def update(done: int, planned: Optional[int] = None):
                p.update(task, completed=done, total=max(planned or total, done))

            yield update
