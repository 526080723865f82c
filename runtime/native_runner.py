"""The native C++ runner ``vitshrink-run`` (runtime/native/: vitshrink_run.cpp and its CMakeLists.txt,
installed with the package): building it with cmake against the OpenVINO pip wheel, and running it from
Python for verification and timing."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .base import Runner

SOURCE_DIR = Path(__file__).resolve().parent / "native"
BINARY = "vitshrink-run"


def default_build_dir() -> Path:
    """``$VITSHRINK_RUNNER_DIR`` or ``~/.cache/vitshrink/runner-<hash>``, the hash of the runner's sources:
    a binary built from older sources is never picked up."""
    env = os.environ.get("VITSHRINK_RUNNER_DIR")
    if env:
        return Path(env)
    h = hashlib.sha256()
    for f in sorted(SOURCE_DIR.iterdir()):
        if f.is_file():
            h.update(f.name.encode() + f.read_bytes())
    return Path.home() / ".cache" / "vitshrink" / f"runner-{h.hexdigest()[:10]}"


def openvino_cmake_dir() -> Optional[Path]:
    """The wheel's folder holding OpenVINOConfig.cmake, or None without the ``openvino`` package."""
    try:
        import openvino  # lazy: optional ([engines] extra)
    except ImportError:
        return None
    d = Path(openvino.__file__).resolve().parent / "cmake"
    return d if (d / "OpenVINOConfig.cmake").is_file() else None


def build_runner(build_dir: Optional[str | Path] = None, jobs: int = 2, quiet: bool = True) -> Path:
    """Configure and build ``vitshrink-run`` with cmake + the system C++ compiler into ``build_dir``.

    Returns:
        the binary's path.
    Raises:
        RuntimeError: no cmake, no OpenVINO wheel, or the build failed (the compiler's last lines).
    """
    if shutil.which("cmake") is None:
        raise RuntimeError("cmake is not on PATH")
    ov_dir = openvino_cmake_dir()
    if ov_dir is None:
        raise RuntimeError("the openvino wheel (with its cmake/ folder) is not installed: pip install 'vitshrink[engines]'")
    build = Path(build_dir or default_build_dir()).resolve()
    build.mkdir(parents=True, exist_ok=True)
    for cmd in (["cmake", "-S", str(SOURCE_DIR), "-B", str(build), f"-DOpenVINO_DIR={ov_dir}", "-DCMAKE_BUILD_TYPE=Release"],
                ["cmake", "--build", str(build), "-j", str(jobs)]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
            raise RuntimeError(f"{' '.join(cmd[:2])} failed:\n{tail}")
        if not quiet:
            print(proc.stdout)
    return build / BINARY


def find_runner(build_dir: Optional[str | Path] = None) -> Optional[Path]:
    """The built binary (``$VITSHRINK_RUNNER``, or in ``build_dir`` / the default build dir), or None."""
    env = os.environ.get("VITSHRINK_RUNNER")
    for p in ([Path(env)] if env else []) + [Path(build_dir or default_build_dir()) / BINARY]:
        if p.is_file() and os.access(p, os.X_OK):
            return p
    return None


def native_status() -> Optional[str]:
    """None when ``vitshrink-run`` is built (or can be: cmake and the OpenVINO wheel are here), else why not."""
    if find_runner() is not None:
        return None
    if openvino_cmake_dir() is None:
        return "the openvino wheel is not installed (pip install 'vitshrink[engines]')"
    if shutil.which("cmake") is None or shutil.which("c++") is None and shutil.which("g++") is None:
        return "cmake or a C++ compiler is missing"
    return None


def ensure_runner() -> Path:
    """The binary, built on first use (``vitshrink build-runner`` does it ahead of time)."""
    return find_runner() or build_runner()


def run_native(binary: str | Path, models: Sequence[str | Path], batch: int, threads: int, runs: int, warmup: int = 3,
               images: Optional[np.ndarray] = None, precision: str = "f32", block_ms: int = 0) -> tuple[dict, Optional[np.ndarray]]:
    """Call ``vitshrink-run`` once: its JSON (per-model per-round ms, interleaved; ``block_ms`` > 0: each
    round a block of calls per model, the first dropped, as many as :func:`vitshrink.runtime.latency.block_calls`
    gives for the model's ``warmup_fastest_ms`` -- the binary applies the same rule, and says both)
    and the first model's logits [batch, classes] when ``images`` [batch, C, H, W] float32 is given.

    Raises:
        RuntimeError: the binary exited non-zero (its one error line is included).
    """
    with tempfile.TemporaryDirectory(prefix="vitshrink-native-") as d:
        cmd = [str(binary)] + [a for m in models for a in ("--model", str(m))] + [
            "--batch", str(batch), "--threads", str(threads), "--runs", str(runs), "--warmup", str(warmup),
            "--precision", precision] + (["--block-ms", str(int(block_ms))] if block_ms > 0 else [])
        if images is not None:
            np.ascontiguousarray(images, dtype=np.float32).tofile(Path(d) / "x.f32")
            cmd += ["--input", str(Path(d) / "x.f32"), "--output", str(Path(d) / "y.f32")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"vitshrink-run exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
        out = json.loads(proc.stdout)
        logits = None
        if images is not None:
            logits = np.fromfile(Path(d) / "y.f32", dtype=np.float32).reshape(out["models"][0]["output_shape"])
    return out, logits


class NativeRunner(Runner):
    """``vitshrink-run`` as a :class:`Runner` for verification (one process per call: not for timing --
    :func:`run_native` times inside the binary)."""

    runtime = "vitshrink-run"

    def __init__(self, path: str | Path, threads: int = 2, binary: Optional[str | Path] = None, hint: str = "f32"):
        self.path, self.threads, self.hint = Path(path), threads, hint
        self.binary = Path(binary) if binary else ensure_runner()

    def run(self, images: np.ndarray) -> np.ndarray:
        info, logits = run_native(self.binary, [self.path], images.shape[0], self.threads, runs=1, warmup=0, images=images,
                                  precision=self.hint)
        self.precision, self.version = info["precision"], info["openvino"]
        return logits
