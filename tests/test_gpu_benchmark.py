"""benchmarks/gpu.py (issue 16) runs its small CPU version here from the repository with only torch and
timm of vitshrink's dependencies importable -- as on the device machine, which has no package index --
and writes the JSON and plot it promises: per case, timm's model, vitshrink's dense and the pruned one."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO

BLOCKED = ["onnx", "onnxruntime", "onnxscript", "onnx_graphsurgeon", "polygraphy", "scipy", "rich", "click", "openvino",
           "transformers", "torch_pruning"]


def test_gpu_benchmark_small_version_with_torch_and_timm_only(tmp_path):
    out = tmp_path / "gpu.json"
    code = (f"import sys\nfor m in {BLOCKED!r}: sys.modules[m] = None\n"
            "import runpy\n"
            f"sys.argv = ['gpu.py', '--device', 'cpu', '--cases', 'deit_tiny_irregular,swin_tiny_width', '--seconds', '0.2', "
            f"'--out', {str(out)!r}]\n"
            f"runpy.run_path({str(REPO / 'benchmarks' / 'gpu.py')!r}, run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert set(res["cases"]) == {"deit_tiny_irregular", "swin_tiny_width"} and out.with_suffix(".png").is_file()
    tiny = res["cases"]["deit_tiny_irregular"]
    (run,) = tiny["runs"]
    assert set(run["ms"]) == {"timm", "dense", "pruned-pad", "pruned-group", "pruned-fused"} and run["mode"] == "eager"
    assert run["speedup_vs_timm"] == pytest.approx(run["ms"]["timm"] / run["ms"][run["pruned"]], rel=1e-3)
    assert 2.2 < tiny["macs_ratio"] < 2.25  # the example spec: 1.254 -> 0.561 GMACs
    assert tiny["precision"]["dense_vs_timm_fp32"] <= 1e-4
