"""Wall time and peak memory of one `vitshrink compile` run (a child process).

    python benchmarks/compile_cost.py deit_base_patch16_224 --spec SPEC [compile options...]

Peak memory is the child's maximum resident set size (getrusage), which includes torch, timm,
the ONNX exporter and both ONNX Runtime sessions.
"""
from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) < 1 or argv[0].startswith("-"):
        print(__doc__)
        return 2
    exe = Path(sys.executable).with_name("vitshrink")
    with tempfile.TemporaryDirectory() as d:
        cmd = [str(exe), "compile", *argv, "--out", str(Path(d) / "out"), "--quiet"]
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        wall = time.perf_counter() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2  # Linux: KiB
    print(f"compile {argv[0]}: exit {rc}, wall {wall:.1f} s, peak RSS {peak_gb:.2f} GB")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
