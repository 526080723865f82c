"""Wall time and peak memory of one `vitshrink compile` run (a child process).

    python benchmarks/compile_cost.py deit_base_patch16_224 --spec SPEC [compile options...]

Peak memory is the largest maximum resident set size of the compile's processes (getrusage of the
children: the compile and its latency workers), which includes torch, timm,
the ONNX exporter and the ONNX Runtime sessions. Prints wall time, peak and report.json's
``timings_s`` (seconds per stage), and writes them with the machine to
benchmarks/results/compile_cost.json.
"""
from __future__ import annotations

import json
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
        report = Path(d) / "out" / "report.json"
        report = json.loads(report.read_text()) if report.exists() else {}
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2  # Linux: KiB
    timings = report.get("timings_s", {})
    print(f"compile {argv[0]}: exit {rc}, wall {wall:.1f} s, peak RSS {peak_gb:.2f} GB, "
          f"stages {sum(timings.values()):.1f} s: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    out = Path(__file__).resolve().parent / "results" / "compile_cost.json"
    out.write_text(json.dumps({"command": ["vitshrink", "compile", *argv], "exit": rc, "wall_s": round(wall, 2),
                               "peak_rss_gb": round(peak_gb, 3), "timings_s": timings,
                               "machine": report.get("machine"), "toolchain": report.get("toolchain")}, indent=1))
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
