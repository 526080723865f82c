"""The GitHub Actions workflow example and the composite action: valid against GitHub's schemas
(check-jsonschema's built-in copies, offline), consistent with each other, and the action's script
run locally as the runner would run it."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO, need

ACTION = REPO / ".github" / "actions" / "vitshrink" / "action.yml"
SCRIPT = ACTION.parent / "gate.sh"
WORKFLOW = REPO / "examples" / "github" / "vitshrink.yml"


def test_workflow_and_action_pass_the_schema_linter(tmp_path):
    need("check_jsonschema", "test")
    cli = Path(sys.executable).parent / "check-jsonschema"
    for schema, path in (("vendor.github-actions", ACTION), ("vendor.github-workflows", WORKFLOW)):
        proc = subprocess.run([str(cli), "--builtin-schema", schema, str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    bad = ACTION.read_text().replace("using: composite", "using: compost")
    (tmp_path / "action.yml").write_text(bad)
    proc = subprocess.run([str(cli), "--builtin-schema", "vendor.github-actions", str(tmp_path / "action.yml")],
                          capture_output=True, text=True)
    assert proc.returncode != 0  # the linter does catch a broken action


def test_action_script_and_inputs_agree():
    action = yaml.safe_load(ACTION.read_text())
    steps = action["runs"]["steps"]
    gate = next(s for s in steps if s.get("id") == "gate")
    env = set(gate["env"])
    used = set(re.findall(r"\$\{?(VITSHRINK_[A-Z_]+)", SCRIPT.read_text()))
    assert used == env, (used ^ env)
    for name, value in gate["env"].items():  # every variable is fed from a declared input
        m = re.fullmatch(r"\$\{\{ inputs\.([\w-]+) \}\}", value)
        assert m and m.group(1) in action["inputs"], name
    uses = yaml.safe_load(WORKFLOW.read_text())["jobs"]["gate"]["steps"][-1]
    assert set(uses["with"]) <= set(action["inputs"])  # the example passes only inputs the action has


def test_action_script_runs_locally(tmp_path):
    """The script as the runner runs it (no install step): compile + gate fails on purpose (exit 3
    recorded, script exits 0 so the upload step still runs), files and summary in place."""
    out = tmp_path / "vs-out"
    env = {**os.environ, "VITSHRINK_INSTALL": "", "VITSHRINK_MODEL": "deit_tiny_patch16_224",
           "VITSHRINK_SPEC": str(REPO / "compiler" / "examples" / "deit_tiny_example.json"),
           "VITSHRINK_BENCH_SECONDS": "0", "VITSHRINK_OUT": str(out),
           "VITSHRINK_ARGS": "--img-size 64 --max-macs 10M --max-abs-diff 1e-4",  # 64 px: the suite's time budget
           "GITHUB_OUTPUT": str(tmp_path / "output"), "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    outputs = dict(line.split("=", 1) for line in (tmp_path / "output").read_text().splitlines())
    assert outputs == {"exit-code": "3", "report": f"{out}/report.json"}
    for f in ("report.json", "report.md", "model.onnx", "widths.png", "gate.xml", "gate.md"):  # latency.png: when timed
        assert (out / f).is_file(), f
    summary = (tmp_path / "summary.md").read_text()
    assert "### vitshrink gate" in summary and "**FAIL**" in summary and "<details><summary>vitshrink report" in summary


def _venv_over_ours(path: Path) -> Path:
    """A fresh venv that sees this environment's packages (torch, timm, ...) on its path -- as a runner has
    them once pip installed them -- but not its vitshrink (an editable install needs its own .pth hook)."""
    import sysconfig
    import venv

    venv.EnvBuilder(with_pip=True).create(path)
    site = next(path.glob("lib/python*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return path / "bin"


def test_action_installs_vitshrink_from_its_own_checkout(tmp_path):
    """The install step as the runner runs it, from a clone of this repository (what `uses: ...@ref`
    checks out): `install: auto` pip-installs the clone itself (not a package index name), pinned torch
    in the same command; the installed vitshrink is the clone's, every one of its modules imports from the
    installed copy (a package missing from pyproject.toml would not), and its CLI runs (a model name it does
    not know: exit 2, recorded; the compile through the script is test_action_script_runs_locally's). A
    requirement that cannot install is its own failure: exit code 4 recorded, not 2 (bad input)."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    bin_dir = _venv_over_ours(tmp_path / "venv")
    base = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
            "VITSHRINK_MODEL": "deit_tiny_patch16_999", "VITSHRINK_TORCH_INDEX": "", "VITSHRINK_BENCH_SECONDS": "0",
            "VITSHRINK_SPEC": str(REPO / "compiler" / "examples" / "deit_tiny_example.json")}
    base.pop("VIRTUAL_ENV", None)
    env = {**base, "VITSHRINK_INSTALL": "auto", "VITSHRINK_OUT": str(tmp_path / "out"), "GITHUB_OUTPUT": str(tmp_path / "o1")}
    script = clone / ".github" / "actions" / "vitshrink" / "gate.sh"
    proc = subprocess.run(["bash", str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"pip install torch==2.13.0 torchvision==0.28.0 {clone}" in proc.stdout
    code = ("import importlib, pkgutil, vitshrink\nvitshrink.ensure_timm_importable()\nprint(vitshrink.__file__)\n"
            "mods = [m.name for m in pkgutil.walk_packages(vitshrink.__path__, 'vitshrink.')]\n"
            "for m in mods: importlib.import_module(m)\nprint(len(mods), 'modules')\n")
    where = subprocess.run([str(bin_dir / "python"), "-c", code], env=base, capture_output=True, text=True)
    assert where.returncode == 0 and str(tmp_path / "venv") in where.stdout, where.stdout + where.stderr
    assert int(where.stdout.split()[-2]) >= len(list((REPO / "compiler").rglob("*.py"))), where.stdout  # every module
    assert (tmp_path / "o1").read_text().splitlines()[0] == "exit-code=2" and "unknown model" in proc.stderr

    env = {**base, "VITSHRINK_INSTALL": str(tmp_path / "no-such-checkout"), "GITHUB_OUTPUT": str(tmp_path / "o2")}
    proc = subprocess.run(["bash", str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and (tmp_path / "o2").read_text().splitlines() == ["exit-code=4"]
    assert "could not be installed" in proc.stderr
