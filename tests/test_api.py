"""The Python API as a new user meets it: importable names, compile_model from a plain script, from a
script on stdin and from a REPL (the latency worker must never re-import the caller's __main__), the
example under examples/, the API docs, the stability verdict of a latency figure, one-line warnings."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import REPO

# No `if __name__ == "__main__":` guard on purpose: a spawn-started child would run this twice.
# The child process a compile starts -- the latency worker -- from __main__ without the rest of the compile
# (the whole compile from a script: test_example_runs).
CHILDREN = textwrap.dedent("""\
    import json, torch, vitshrink
    from vitshrink.export import export_onnx
    from vitshrink.runtime.latency import measure_onnx
    onnx = export_onnx(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10)), "m.onnx", (3, 8, 8))
    res = measure_onnx({"dense": onnx, "pruned": onnx}, [1], 2, (3, 8, 8), budget_s=0.1)
    print("RESULT", json.dumps({"rounds": res[1].rounds}))
""")


def _python(args, cwd, stdin=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, *args], cwd=cwd, input=stdin, capture_output=True, text=True, env=env,
                          timeout=600)


def _result(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stdout.splitlines() if "RESULT " in ln]
    assert len(lines) == 1, f"the job ran {len(lines)} times: {proc.stdout[-2000:]}"
    return json.loads(lines[0].split("RESULT ", 1)[1])


@pytest.mark.parametrize("how", ["stdin", "repl"])
def test_compile_children_from_any_kind_of_main(tmp_path, how):
    """Each way a user runs Python: the compile's two child processes (its background export and its latency
    worker) start from a script piped to ``python -`` (it cannot be re-imported) and from a REPL, once, and time;
    the whole compile from a plain script is :func:`test_example_runs` (the README's example, run as written)."""
    if how == "stdin":
        proc = _python(["-"], tmp_path, stdin=CHILDREN)
    else:  # an interactive interpreter reading its lines from a pipe: __main__ is the REPL itself
        proc = _python(["-i", "-q"], tmp_path, stdin=CHILDREN + "\n")
    r = _result(proc)
    assert r["rounds"] >= 1 and (tmp_path / "m.onnx").is_file()


def test_example_runs(tmp_path):
    """examples/compile_and_load.py as a user runs it: compile, then load and run the pruned module."""
    proc = _python([str(REPO / "examples" / "compile_and_load.py"), str(tmp_path / "out")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "exactness" in proc.stdout and "logits (2, 1000)" in proc.stdout
    assert "heads per block [3, 3, 1, 1, 1, 1, 3" in proc.stdout  # the spec's heads are physically gone
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["exactness"]["passed"] and report["latency"][0]["stability"]["verdict"] in ("stable", "noisy")
    assert (tmp_path / "out" / "latency.png").is_file() and (tmp_path / "out" / "widths.png").is_file()


def test_public_api_is_explicit():
    import vitshrink
    from vitshrink import compile_model, CompileOptions, load, VerificationError, VitshrinkError  # noqa: F401

    assert set(vitshrink.__all__) <= set(dir(vitshrink))
    for name in ("compile_model", "CompileOptions", "load", "load_spec", "save_spec", "Spec", "VitshrinkError"):
        assert name in vitshrink.__all__ and getattr(vitshrink, name).__doc__, name
    assert issubclass(VerificationError, VitshrinkError)
    with pytest.raises(AttributeError):
        vitshrink.no_such_name  # noqa: B018


def test_keyword_options_mirror_the_cli(tmp_path):
    import vitshrink
    from vitshrink.pipeline.options import with_overrides as _options

    opt = _options(None, {"batch": 8, "threads": [1, 2], "limit": 10, "checkpoint": tmp_path / "w.pth"})
    assert opt.batch == (8,) and opt.threads == (1, 2) and opt.limit == 10 and opt.checkpoint == str(tmp_path / "w.pth")
    with pytest.raises(vitshrink.VitshrinkError, match="unknown option 'batches'"):
        vitshrink.compile_model("deit_tiny_patch16_224", "s.json", tmp_path / "o", batches=(1,))
    with pytest.raises(vitshrink.VitshrinkError, match="no spec"):
        vitshrink.compile_model("deit_tiny_patch16_224", out=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_api_docs_build_without_warnings(tmp_path):
    sys.path.insert(0, str(REPO / "docs"))
    try:
        from build_api import build
    finally:
        sys.path.pop(0)
    pages = build(tmp_path / "api")
    names = {p.relative_to(tmp_path / "api").as_posix() for p in pages}
    assert {"vitshrink.html", "vitshrink/pipeline.html", "vitshrink/spec.html", "vitshrink/runtime/latency.html"} <= names
    top = (tmp_path / "api" / "vitshrink.html").read_text()
    assert "compile_model" in top and "keyword arguments" in top  # the docstring, rendered where users import it


# ----------------------------------------------------------------------------- latency stability


def _result_of(dense, pruned):
    from vitshrink.runtime.latency import LatencyResult

    return LatencyResult(1, {"dense": list(dense), "pruned": list(pruned)})


def test_stability_stable_figure():
    from vitshrink.runtime.latency import stability

    rng = np.random.default_rng(0)
    d = 10 + rng.normal(0, 0.05, 100)
    st = stability(_result_of(d, d / 2 + rng.normal(0, 0.02, 100)))
    assert st["verdict"] == "stable" and st["reasons"] == [] and st["rounds"] == 100
    lo, hi = st["speedup_ci95"]
    assert lo < 2.0 < hi and hi - lo < 0.05


@pytest.mark.parametrize("case,needle", [
    ("few", "only 11 rounds"),
    ("wide", "95% interval"),
    ("tail", "p90 is"),
    ("disagree", "disagree"),
])
def test_stability_flags_each_kind_of_noise(case, needle):
    from vitshrink.runtime.latency import stability

    rng = np.random.default_rng(1)
    n = 11 if case == "few" else 60
    d = 10 + rng.normal(0, 0.05, n)
    p = d / 2
    if case == "wide":
        p = p * rng.uniform(0.7, 1.3, n)
    elif case == "tail":
        d = d.copy()
        d[rng.permutation(n)[:n // 4]] *= 2.0  # a quarter of the dense runs twice as slow
    elif case == "disagree":  # per-round ratios 1.25 / 2 / 3 (median 2), but the p50s give 10 / 8 = 1.25
        d = np.array([10.0] * 40 + [30.0] * 20)
        p = np.array([8.0] * 20 + [5.0] * 20 + [10.0] * 20)
    st = stability(_result_of(d, p))
    assert st["verdict"] == "noisy" and any(needle in r for r in st["reasons"]), st


# ----------------------------------------------------------------------------- warnings


def test_random_weight_warning_only_where_weights_matter(tmp_path):
    from vitshrink.cli import main

    res = CliRunner().invoke(main, ["masks", "deit_tiny_patch16_224", "--tokens", "evit:0.7@4,7,10", "--out",
                                    str(tmp_path / "e.json")])
    assert res.exit_code == 0 and "warning" not in res.stderr
    res = CliRunner().invoke(main, ["masks", "deit_tiny_patch16_224", "--heads", "0.67", "--out", str(tmp_path / "h.json")])
    assert res.exit_code == 0
    warn = [ln for ln in res.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warn) == 1 and "RANDOM" in warn[0]
