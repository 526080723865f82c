"""What a compile writes and records around its results: the output directory (checked, built in a
temporary sibling, moved into place atomically), input hashes and toolchain versions."""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy
import onnx
import onnxruntime
import torch

from ..errors import VitshrinkError
from ..frontends.timm_common import timm
from ..version import __version__


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file; of a directory (a transformers model), of its files' names and contents in order."""
    h = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            h.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def toolchain() -> dict:
    """Versions of everything that can change a result."""
    return {
        "vitshrink": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "timm": timm().__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
    }


def check_output(out: Path) -> None:
    """Raise :class:`VitshrinkError` if ``out`` is a file, or a non-empty directory that is not a
    vitshrink output (which would be replaced)."""
    if out.exists():
        if not out.is_dir():
            raise VitshrinkError(f"output '{out}' exists and is not a directory")
        if any(out.iterdir()) and not (out / "report.json").is_file():
            raise VitshrinkError(f"output directory '{out}' is not empty and not a vitshrink output; choose another --out")


def prepare_output(out: Path) -> tuple[Path, Optional[Path]]:
    """Check ``out`` can be (re)placed and make a temporary sibling directory to build it in.

    Returns:
        (temporary directory, the parent directory if this call created it, else None).
    Raises:
        VitshrinkError: see :func:`check_output`.
    """
    check_output(out)
    created = None
    parent = out.resolve().parent
    if not parent.exists():
        top = parent
        while not top.parent.exists():
            top = top.parent
        parent.mkdir(parents=True)
        created = top
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700; the result should look like any other directory
    return tmp, created


def commit_output(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` into place at ``out`` (replacing an earlier vitshrink output)."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def scratch_dir() -> Optional[str]:
    """Where the scratch files go (the dense and original ONNX files, saved modules): ``/dev/shm`` -- memory,
    faster to write and read than a disk -- when it has room for them (4 GB), else the temporary directory."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return "/dev/shm" if st.f_bavail * st.f_frsize > 4 * 1024**3 else None
