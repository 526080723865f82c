"""The CLI: the built-in default end to end, and every bad input -> one line, exit 2, nothing written."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import REPO
from vitshrink.cli import main

EXAMPLE = REPO / "compiler" / "examples" / "deit_tiny_example.json"
MODEL = "deit_tiny_patch16_224"
FAST = ["--bench-seconds", "0", "--quiet"]


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """The README's main job on the built-in default (the README's install block runs it at 224 px and gates it),
    through the installed console script, at 64 px (17 tokens: the suite's time budget), every pass verified."""
    out = tmp_path_factory.mktemp("cli") / "demo"
    proc = subprocess.run([Path(sys.executable).with_name("vitshrink"), "compile", MODEL, "--spec", EXAMPLE, "--out", out,
                           "--img-size", "64", "--bench-seconds", "0", "--verify-each"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_main_job_on_builtin_default(compiled):
    out, proc = compiled
    assert "RANDOM weights" in proc.stderr  # visible warning
    r = json.loads((out / "report.json").read_text())
    assert r["exactness"]["passed"] and r["exactness"]["max_abs_diff"] <= 1e-4
    # --verify-each: every pass the spec asks for checked on its own, in the order they ran
    assert [p["pass"] for p in r["exactness"]["per_pass"]] == [
        "prune_head_channels", "prune_heads", "prune_mlp", "early_exit", "remove_blocks", "prune_embed", "lay_out_heads",
        "prefix_token_order"], r["exactness"]["per_pass"]
    assert all(p["passed"] and p["max_abs_diff"] <= 1e-4 for p in r["exactness"]["per_pass"])
    assert r["export"]["passed"] and r["export"]["onnx_max_abs_diff"] <= 1e-4
    assert r["macs"]["pruned"] < r["macs"]["dense"] and r["params"]["pruned"] < r["params"]["dense"]
    assert r["latency"] == []  # --bench-seconds 0 (latency entries: test_engines.test_compile_engines_all)
    assert r["structure"]["exit_after"] == 10 and r["structure"]["blocks"][5]["status"] == "removed"
    for f in ("model.onnx", "report.md", "widths.png", "spec.json", "model/arch.json", "model/model.safetensors"):
        assert (out / f).is_file(), f
    assert "Not timed" in (out / "report.md").read_text()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary left


def test_output_reloads(compiled):
    import vitshrink

    out, _ = compiled
    m = vitshrink.load(out)
    assert m.arch["exit_after"] == 10 and m.arch["embed_dim"] == 176
    assert m(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)


def _spec(tmp_path, masks, settings_=None):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps({"format": "vitshrink.spec/1", "masks": masks, "settings": settings_ or {}}))
    return p


BAD_SPECS = [
    ({"blocks.0.value": [0]}, {}, "blocks.0.value"),
    ({"blocks.0.mlp": [[0]]}, {}, "blocks.0.mlp"),
    ({"blocks.0.qk": [[0], [1]]}, {}, "blocks.0.qk"),
    ({"blocks.4.heads": []}, {}, "blocks.4.heads"),
    ({"blocks.2.qk": [[0], [], [5]]}, {}, "blocks.2.qk"),
    ({}, {"exit": {"block": 12}}, "exit.block"),
    ({"blocks.0.tokens": list(range(1, 197))}, {}, "blocks.0.tokens"),  # class token pruned
    ({"blocks.1.tokens": [0, 1, 2], "blocks.3.tokens": [0, 1, 5]}, {}, "blocks.3.tokens"),  # not nested
    ({}, {"dynamic_tokens": {"4": {"keep": 197}}}, "dynamic_tokens.4.keep"),  # more than present
    ({}, {"dynamic_tokens": {"4": {"keep": 0.7, "score": "predictor",
                                   "predictor": {"type": "dynamicvit", "prefix": "score_predictor.0"}}}},
     "dynamic_tokens.4.predictor"),  # weights missing from the checkpoint
]


@pytest.mark.parametrize("masks,settings_,key", BAD_SPECS, ids=[b[2] for b in BAD_SPECS])
def test_bad_spec(tmp_path, masks, settings_, key):
    out = tmp_path / "never" / "out"
    code, stdout, stderr = run("compile", MODEL, "--spec", _spec(tmp_path, masks, settings_), "--out", out, *FAST)
    assert code == 2
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert lines[-1].startswith("error: ") and f"'{key}'" in lines[-1]
    assert len([l for l in lines if l.startswith("error")]) == 1
    assert not (tmp_path / "never").exists()


def test_checkpoint_that_does_not_match(tmp_path):
    from safetensors.torch import save_file

    from vitshrink.frontends.timm import create_model

    ckpt = tmp_path / "small.safetensors"
    save_file({k: v.contiguous() for k, v in create_model("deit_small_patch16_224").state_dict().items()}, str(ckpt))
    code, _, stderr = run("compile", MODEL, "--spec", EXAMPLE, "--checkpoint", ckpt, "--out", tmp_path / "o", *FAST)
    assert code == 2 and "does not match the model" in stderr and "[1, 1, 384]" in stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("what", ["checkpoint", "spec", "data"])
def test_unreadable_files(tmp_path, what):
    junk = tmp_path / ("junk.safetensors" if what != "data" else "nodir")
    if what != "data":
        junk.write_bytes(b"\x00garbage")
    args = {"checkpoint": ["--spec", EXAMPLE, "--checkpoint", junk], "spec": ["--spec", junk],
            "data": ["--spec", EXAMPLE, "--data", junk]}[what]
    code, _, stderr = run("compile", MODEL, *args, "--out", tmp_path / "o", *FAST)
    assert code == 2 and str(junk) in stderr and stderr.count("error:") == 1
    assert not (tmp_path / "o").exists()


def test_unknown_model(tmp_path):
    code, _, stderr = run("compile", "deit_tiny_patch16_244", "--spec", EXAMPLE, "--out", tmp_path / "o", *FAST)
    assert code == 2 and "unknown model 'deit_tiny_patch16_244'" in stderr
    assert not (tmp_path / "o").exists()


def test_failed_verification_exits_1_and_writes_nothing(tmp_path):
    code, _, stderr = run("compile", MODEL, "--spec", EXAMPLE, "--out", tmp_path / "o", "--tolerance", "0", *FAST)
    lines = stderr.splitlines()
    # the codegen of the unpruned model runs attention through SDPA as timm does: it matches timm to the
    # bit, so with tolerance 0 the first promise broken is exactness (the pruned model sums in another order)
    assert code == 1 and "exactness failed" in lines[-1] and stderr.count("error:") == 1
    assert lines[:-1] == [l for l in lines[:-1] if l.startswith("warning: ") and "RANDOM" in l]  # one line each
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_replace_a_foreign_directory(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "thesis.tex").write_text("precious")
    code, _, stderr = run("compile", MODEL, "--spec", EXAMPLE, "--out", tmp_path / "o", *FAST)
    assert code == 2 and "not a vitshrink output" in stderr
    assert (tmp_path / "o" / "thesis.tex").read_text() == "precious"


def test_masks_command(tmp_path):
    code, stdout, _ = run("masks", MODEL, "--heads", "0.67", "--mlp", "0.5", "--out", tmp_path / "specs" / "s.json")
    assert code == 0  # its folder is created, as compile and run create theirs
    doc = json.loads((tmp_path / "specs" / "s.json").read_text())
    assert doc["format"] == "vitshrink.spec/1" and len(doc["masks"]["blocks.0.heads"]) == 2
    assert len(doc["masks"]["blocks.11.mlp"]) == 384
    code, _, stderr = run("masks", MODEL, "--out", tmp_path / "t.json")
    assert code == 2 and "at least one of" in stderr
    code, _, stderr = run("masks", MODEL, "--mlp", "2", "--out", tmp_path / "t.json")
    assert code == 2 and "keep ratio" in stderr and not (tmp_path / "t.json").exists()


def test_compile_with_a_predictor_from_the_checkpoint(tmp_path):
    """DynamicViT-style predictor weights travel from the checkpoint into the compiled model."""
    from safetensors.torch import save_file

    from conftest import randomise
    from test_tokens import predictor_tensors
    from vitshrink.frontends.timm import create_model

    model = randomise(create_model(MODEL), seed=4)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.2)
    ckpt = {k: v.contiguous() for k, v in model.state_dict().items()}
    ckpt.update({k.replace("pred.", "score_predictor.0."): v for k, v in predictor_tensors(192).items() if k.startswith("pred.")})
    save_file(ckpt, str(tmp_path / "ckpt.safetensors"))
    spec = _spec(tmp_path, {}, {"dynamic_tokens": {
        "3": {"keep": 0.7, "score": "predictor", "where": "attn", "predictor": {"type": "dynamicvit", "prefix": "score_predictor.0"}},
        "8": {"keep": 0.5, "fuse": True}}})
    code, stdout, stderr = run("compile", MODEL, "--spec", spec, "--checkpoint", tmp_path / "ckpt.safetensors",
                               "--img-size", "64", "--out", tmp_path / "o", *FAST)  # 16 patches: the suite's time
    assert code == 0, stderr
    r = json.loads((tmp_path / "o" / "report.json").read_text())
    assert r["latency"] == [] and " ms -> " not in stdout  # --bench-seconds 0: nothing timed, nothing claimed
    assert "Not timed" in (tmp_path / "o" / "report.md").read_text()
    assert r["exactness"]["token_ids_identical"] is True and r["export"]["passed"]
    assert [b["tokens"]["keys"][1] for b in r["structure"]["blocks"]][2:5] == [17, 13, 13]  # 1 + ceil(0.7 * 16)
    import vitshrink

    m = vitshrink.load(tmp_path / "o")
    assert m.blocks[3].predictor is not None and m(torch.zeros(2, 3, 64, 64)).shape == (2, 1000)
