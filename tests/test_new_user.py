"""What a new user tripped over (issue 18): a spec written for another model, the safetensors spec form,
one-line errors for bad options."""
from __future__ import annotations

import json
import struct

import pytest
from click.testing import CliRunner

from vitshrink.cli import main

FAST = ["--bench-seconds", "0", "--quiet", "--img-size", "64"]  # 17 tokens: the suite's time budget


def _masks(tmp_path, name, model="deit_tiny_patch16_224", *args):
    res = CliRunner().invoke(main, ["masks", model, "--heads", "0.67", "--mlp", "0.5", *args, "--out", str(tmp_path / name)])
    assert res.exit_code == 0, res.output
    return tmp_path / name


def test_a_spec_for_another_model_is_refused(tmp_path):
    """vit_tiny has deit_tiny's shapes, so the index lists fit: only the name the spec records tells."""
    spec = _masks(tmp_path, "tiny.json")
    assert json.loads(spec.read_text())["meta"]["model"] == "deit_tiny_patch16_224"
    res = CliRunner().invoke(main, ["compile", "vit_tiny_patch16_224", "--spec", str(spec), "--out", str(tmp_path / "o"), *FAST])
    assert res.exit_code == 2 and not (tmp_path / "o").exists()
    (line,) = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert "deit_tiny_patch16_224" in line and "vit_tiny_patch16_224" in line and "--allow-model-mismatch" in line
    res = CliRunner().invoke(main, ["compile", "vit_tiny_patch16_224", "--spec", str(spec), "--out", str(tmp_path / "o"),
                                    "--allow-model-mismatch", *FAST])
    assert res.exit_code == 0, res.output


def test_a_mistyped_model_with_a_spec_gets_did_you_mean_first(tmp_path):
    """Issue 26 item 6: the spec-mismatch hint (--allow-model-mismatch) must not be the answer to a typo."""
    spec = _masks(tmp_path, "tiny.json")
    res = CliRunner().invoke(main, ["compile", "deit_tiny_patch16_22", "--spec", str(spec), "--out", str(tmp_path / "o"), *FAST])
    assert res.exit_code == 2 and not (tmp_path / "o").exists()
    (line,) = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert "unknown model 'deit_tiny_patch16_22'" in line and "deit_tiny_patch16_224" in line
    assert "--allow-model-mismatch" not in line


def test_both_spec_forms_round_trip_through_masks_and_compile(tmp_path):
    """Each form is the one its name asks for (not JSON in a .safetensors), both read back to the same masks, and
    compile takes the safetensors one (the JSON form: every other compile test)."""
    from vitshrink.spec import load_spec

    files = {form: _masks(tmp_path, f"spec.{form}") for form in ("json", "safetensors")}
    for form, spec in files.items():
        head = spec.read_bytes()[:8]
        is_safetensors = struct.unpack("<Q", head)[0] < 10**6 and spec.read_bytes()[8:9] == b"{"
        assert is_safetensors == (form == "safetensors")
    a, b = (load_spec(files[f]) for f in ("json", "safetensors"))
    assert a.masks.keys() == b.masks.keys()
    res = CliRunner().invoke(main, ["compile", "deit_tiny_patch16_224", "--spec", str(files["safetensors"]),
                                    "--out", str(tmp_path / "o"), *FAST])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "o" / "report.json").read_text())["structure"]["blocks"]
    assert all(r["heads"] == [3, 2] and r["mlp"] == [768, 384] for r in rows)


@pytest.mark.parametrize("args", [["--batch", "0"], ["--batch", "x"], ["--layout", "diagonal"], ["--engines", "gpu"]])
def test_bad_options_are_one_error_line(tmp_path, args):
    res = CliRunner().invoke(main, ["compile", "deit_tiny_patch16_224", "--spec", "s.json", "--out", str(tmp_path / "o"), *args])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and res.stderr.startswith("error: "), res.stderr
