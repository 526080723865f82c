"""Support for the compile job: progress and warnings on stderr (:class:`_Log`), and the verification
images (seeded noise, flat-block images with exact score ties, real images)."""
from __future__ import annotations

import resource
import time
import warnings
from contextlib import contextmanager
from typing import Optional

import torch


class _Log:
    """Stage lines and progress bars on stderr (rich), or nothing."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.console = None
        if enabled:
            from rich.console import Console

            self.console = Console(stderr=True, highlight=False, soft_wrap=True)  # one line per message, even in a file
        self.timings: dict[str, float] = {}
        self.peak_rss_gb: dict[str, float] = {}

    def info(self, msg: str) -> None:
        if self.console:
            self.console.print(msg)

    def warn(self, msg: str) -> None:
        """One line on stderr (``progress`` on), else a Python warning the caller can filter."""
        if self.console:
            from rich.markup import escape

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
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=self.console, transient=True) as p:
            task = p.add_task(label, total=total)

            def update(done: int, planned: Optional[int] = None):
                p.update(task, completed=done, total=max(planned or total, done))

            yield update


def tie_images(n: int, shape: tuple[int, int, int], patch: tuple[int, int], seed: int = 1) -> torch.Tensor:
    """``n`` images of flat patch-sized blocks from a 3-colour palette: many identical patches, so
    token scores tie exactly -- the case where a careless top-k differs between runtimes."""
    g = torch.Generator().manual_seed(seed)
    C, H, W = shape
    gh, gw = H // patch[0], W // patch[1]
    palette = torch.randn(3, C, generator=g)
    pick = torch.randint(0, 3, (n, gh, gw), generator=g)
    img = palette[pick].permute(0, 3, 1, 2)  # [n, C, gh, gw]
    return img.repeat_interleave(patch[0], 2).repeat_interleave(patch[1], 3)


def verification_images(n: int, shape: tuple[int, int, int], data: Optional[str], transform, num_classes: int,
                        patch: tuple[int, int] = (16, 16)) -> torch.Tensor:
    """``n`` seeded standard-normal images, 2 flat-block images (exact score ties), plus up to ``n``
    real images from ``data`` when given."""
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn((n, *shape), generator=g), tie_images(2, shape, patch)]
    if data:
        from PIL import Image

        from vitshrink.runtime.accuracy import list_images

        real = []
        for path, _ in list_images(data, num_classes)[:n]:
            with Image.open(path) as im:
                real.append(transform(im.convert("RGB")))
        xs.append(torch.stack(real))
    return torch.cat(xs)
