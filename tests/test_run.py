"""`vitshrink run FILE.toml`: three entries (one passes its gate, one fails it, one has a bad spec), run
locally and on a local Ray cluster -- the same summary, the worst exit code, one JUnit file. DeiT-Tiny at 64 px,
nothing timed (what is tested is the run, not the compile: gates on latency are test_gate's)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import REPO, need
from vitshrink.cli import main

EXAMPLE = REPO / "compiler" / "examples" / "deit_tiny_example.json"

RUNFILE = f"""
[defaults]
batch = [1]
bench_seconds = 0
img_size = 64
[defaults.gate]
max_abs_diff = 1e-4

[[entry]]
name = "passes"
model = "deit_tiny_patch16_224"
spec = "{EXAMPLE}"
[entry.gate]
max_macs = "60M"

[[entry]]
name = "fails-gate"
model = "deit_tiny_patch16_224"
spec = "{EXAMPLE}"
target = "test-cpu"
[entry.gate]
max_macs = "10M"

[[entry]]
name = "bad-spec"
model = "deit_tiny_patch16_224"
spec = "bad-spec.json"
"""
BAD_SPEC = '{"format": "vitshrink.spec/1", "masks": {"blocks.99.heads": [0]}}'  # read fine, refused at its compile


def _run(tmp_path: Path, name: str, *extra: str, text: str = RUNFILE):
    f = tmp_path / "vitshrink.toml"
    f.write_text(text)
    (tmp_path / "bad-spec.json").write_text(BAD_SPEC)
    out = tmp_path / name
    res = CliRunner().invoke(main, ["run", str(f), "--out", str(out), *extra])
    summary = json.loads((out / "summary.json").read_text())
    return res, out, summary


def _essence(summary: dict) -> list:
    return [(e["entry"], e["exit"], e["gate"], round(e["macs_x"], 3) if e["macs_x"] else None) for e in summary["entries"]]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("run"), "local")


def test_run_locally(local_run):
    res, out, summary = local_run
    assert res.exit_code == 2, res.output  # worst of 0, 3, 2
    assert summary["exit_code"] == 2
    assert _essence(summary) == [("passes", 0, "2/2", 2.303), ("fails-gate", 3, "1/2", 2.303), ("bad-spec", 2, "—", None)]
    assert (out / "passes" / "report.json").is_file() and (out / "passes" / "model.onnx").is_file()
    assert not (out / "bad-spec").exists()
    junit = (out / "junit.xml").read_text()
    assert junit.count("<testsuite ") == 3 and 'failures="1"' in junit and "blocks.99" in junit
    assert "[1/3] passes" in res.stderr and "[3/3 done] bad-spec: exit 2" in res.stderr
    assert "| passes |" in (out / "summary.md").read_text()


def test_run_on_a_local_ray_cluster(tmp_path, local_run):
    """The entries that pass and that are bad input, as Ray tasks (a failing gate is evaluated by the same
    run_entry inside the task: the local run shows it)."""
    need("ray", "ray")
    start, end = RUNFILE.index('[[entry]]\nname = "fails-gate"'), RUNFILE.index('[[entry]]\nname = "bad-spec"')
    res, out, summary = _run(tmp_path, "ray", "--ray", text=RUNFILE[:start] + RUNFILE[end:])
    assert res.exit_code == 2, res.output
    assert _essence(summary) == [e for e in _essence(local_run[2]) if e[0] != "fails-gate"]  # as the local run
    assert json.loads((out / "passes" / "report.json").read_text())["verified"] is True


@pytest.mark.parametrize("text,msg", [
    ("[[entry]]\nmodel = 'deit_tiny_patch16_224'\n", "give 'spec'"),
    ("[[entry]]\nspec = 'a.json'\n", "field 'model' is missing"),
    ("[[entry]]\nmodel = 'm'\nspec = 'a.json'\ntrust_pickle = true\n", "--trust-pickle"),
    ("[[entry]]\nmodel = 'm'\nspec = 'a.json'\nengines = ['tensorrt-llm']\n", "unknown engine 'tensorrt-llm'"),
    ("[[entry]]\nmodel = 'm'\nspec = 'a.json'\nimg_size = [64]\n", "--img-size [64]"),
    ("[[entry]]\nmodel = 'm'\nspec = 'a.json'\ncalib_images = 0\n", "--calib-images 0"),
    ("[[entry]]\nmodel = 'm'\nspec = 'a.json'\n[entry.gate]\nmin_sped = 2\n", "unknown gate key 'min_sped'"),
    ("[[entry]]\nname = 'a'\nmodel = 'm'\nspec = 'a.json'\n[[entry]]\nname = 'a'\nmodel = 'm'\nspec = 'b.json'\n", "unique"),
    ("[entries]\n", "unknown table 'entries'"),
    ("model = ", "not TOML"),
    ("[defaults]\nengins = ['ort']\n[[entry]]\nmodel = 'm'\nspec = 'a.json'\n",
     "[defaults]: unknown field 'engins'; did you mean 'engines'?"),
    ("[[entry]]\nmodel = 'm'\nspec = 'a.json'\n[[entry]]\nname = 'b'\nmodel = 'm'\nspec = 'gone.json'\n",
     "entry 'b': field 'spec': "),  # found before the first entry compiles
    # every compile option is a field (from CompileOptions), paths checked and values validated before any compile
    ("[[entry]]\nmodel = 'm'\nspec = 'a.json'\nlabels = 'labels.txt'\n", "field 'labels': "),
    ("[[entry]]\nmodel = 'm'\nspec = 'a.json'\nnum_classes = -1\n", "--num-classes -1"),
])
def test_bad_run_files_exit_2_before_running(tmp_path, text, msg):
    (tmp_path / "a.json").write_text("{}"), (tmp_path / "b.json").write_text("{}")
    f = tmp_path / "bad.toml"
    f.write_text(text)
    res = CliRunner().invoke(main, ["run", str(f), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and msg in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "o").exists()


def test_summary_rows_name_a_failed_entrys_model_and_the_drop_from_the_original():
    from vitshrink.runfile import summary_rows

    failed = {"name": "broken", "model": "deit_tiny_patch16_224", "exit_code": 2, "error": "error: no such file",
              "report": None, "checks": [], "host": "h", "seconds": 0.1}
    acc = {"dense_top1": 0.50, "pruned_top1": 0.49,  # re-fitted dense: 1 point; the original had 0.79: 30 points
           "engines": [{"engine": "ort", "precision": "fp32", "original_top1": 0.79, "pruned_top1": 0.49}]}
    ok = {**failed, "name": "ok", "exit_code": 0, "error": None,
          "report": {"model": "deit_tiny_patch16_224", "macs": {"dense": 2.0, "pruned": 1.0}, "accuracy": acc, "latency": []}}
    rows = {r["entry"]: r for r in summary_rows([failed, ok])}
    assert rows["broken"]["model"] == "deit_tiny_patch16_224" and rows["broken"]["top1_drop"] is None
    assert rows["ok"]["top1_drop"] == pytest.approx(30.0) and rows["ok"]["macs_x"] == 2.0
