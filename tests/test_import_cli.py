"""`vitshrink compile --checkpoint PRUNED` (no spec), `import`, `inspect`: one command from a pruned
checkpoint to a verified engine, and every bad file -> exit 2, one line naming the key/class/file."""
from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import need, small_vit

from test_cli import FAST, MODEL, run


@pytest.fixture(scope="module")
def tp_pickle(tmp_path_factory):
    """deit_tiny (real weights from ../shared/data) pruned by Torch-Pruning as its ViT example does
    (head_dim + MLP 50%, bottleneck), saved with torch.save(model)."""
    need("torch_pruning")
    from conftest import DEIT_TINY_CKPT, require_shared
    from tools import torch_pruning_vit
    from vitshrink.frontends.timm import create_model, load_checkpoint

    require_shared()  # real weights: attention far from uniform, live biases
    model = create_model(MODEL)
    load_checkpoint(model, DEIT_TINY_CKPT)
    model, _ = torch_pruning_vit(model, 0.5, bottleneck=True)
    path = tmp_path_factory.mktemp("tp") / "tp_deit_tiny.pth"
    torch.save(model, path)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    return path, model, x


def test_compile_a_torch_pruning_pickle_in_one_command(tmp_path, tp_pickle):
    path, model, x = tp_pickle
    code, stdout, stderr = run("compile", MODEL, "--checkpoint", path, "--out", tmp_path / "o", *FAST)
    assert code == 0, stderr
    r = json.loads((tmp_path / "o" / "report.json").read_text())
    imp = r["import"]
    assert imp["format"] == "torch-pruning" and imp["source_max_abs_diff"] <= 1e-4
    assert imp["softmax_scale"] == ["blocks 0-11: 0.176777 (head_dim 32, fused SDPA default)"]
    assert r["exactness"]["passed"] and r["export"]["passed"] and r["inputs"]["spec"]["path"] is None
    assert r["macs"]["pruned"] < 0.6 * r["macs"]["dense"]
    assert json.loads((tmp_path / "o" / "import.json").read_text())["format"] == "torch-pruning"
    assert "imported `torch-pruning`" in (tmp_path / "o" / "report.md").read_text()
    import vitshrink

    with torch.no_grad():
        assert float((vitshrink.load(tmp_path / "o")(x) - model(x)).abs().max()) <= 1e-4  # the tool's own module


def test_inspect_and_import(tmp_path, tp_pickle):
    path, model, _ = tp_pickle
    code, stdout, stderr = run("inspect", path, "--model", MODEL)
    assert code == 0, stderr
    rows = [ln for ln in stdout.splitlines() if ln.strip().split(" ")[0].isdigit()]
    assert len(rows) == 12 and all("96/192" in r and "384/768" in r for r in rows)
    assert "restricted unpickler" in stdout
    code, stdout, stderr = run("import", path, "--model", MODEL, "--out", tmp_path / "imp")
    assert code == 0, stderr
    doc = json.loads((tmp_path / "imp" / "import.json").read_text())
    assert doc["format"] == "torch-pruning" and len(doc["widths"]) == 12
    from vitshrink.families import import_model
    from vitshrink.spec import load_spec
    from vitshrink.families import resolve_spec

    _, ir, _ = import_model(MODEL, tmp_path / "imp" / "dense.safetensors")
    resolved = resolve_spec(load_spec(tmp_path / "imp" / "spec.json"), ir)
    assert resolved.qk[0].sum() == 3 * 32 and resolved.mlp[0].sum() == 384


class Payload:
    """Pickles as a call to os.system: a checkpoint that would run code when loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bad_files(tmp_path):
    from safetensors.torch import save_file

    small = tmp_path / "small_tp.pth"
    torch.save(small_vit(), small)  # 4 blocks, embed 48: not a deit_tiny
    trunc = tmp_path / "truncated.pth"
    torch.save({"model": small_vit().state_dict()}, trunc)
    trunc.write_bytes(trunc.read_bytes()[:500])
    evil = tmp_path / "evil.pth"
    torch.save({"model": Payload(tmp_path / "pwned")}, evil)
    nni = tmp_path / "nni.pth"
    torch.save({"blocks.0.mlp.fc1": {"weight": torch.ones(5, 5)}}, nni)
    dense = tmp_path / "dense.safetensors"
    from vitshrink.frontends.timm import create_model

    save_file({k: v.contiguous() for k, v in create_model(MODEL).state_dict().items()}, str(dense))
    other = tmp_path / "other.pth"
    torch.save({"epoch": 3, "note": "no tensors"}, other)
    return {
        "truncated": ([trunc], "truncated.pth"),
        "wrong model": ([small], "does not fit deit_tiny_patch16_224: key 'blocks.4."),
        "unknown class": ([evil], "class 'posix.system'"),
        "mask fits no layer": ([nni, "--dense-checkpoint", dense], "'blocks.0.mlp.fc1'/'weight' has shape [5, 5]"),
        "unknown format": ([other], "--from FORMAT"),
    }


@pytest.mark.parametrize("case", ["truncated", "wrong model", "unknown class", "mask fits no layer", "unknown format"])
@pytest.mark.parametrize("command", ["compile", "inspect"])
def test_bad_files_exit_2_with_one_line(tmp_path, case, command):
    args, needle = _bad_files(tmp_path)[case]
    if command == "compile":
        code, _, stderr = run("compile", MODEL, "--checkpoint", *args, "--out", tmp_path / "o", *FAST)
    else:
        code, _, stderr = run("inspect", *args, "--model", MODEL)
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "pwned").exists()
    if case == "unknown format":
        assert all(f in lines[0] for f in ("torch-pruning", "torch-prune", "nni", "zeroed"))


def test_compile_a_hugging_face_directory(tmp_path):
    """An HF DeiT (with teacher) directory with config.pruned_heads: model name read from config.json,
    LayerNorm eps 1e-12 kept, exact against transformers' own logits."""
    need("transformers")
    from test_hf_import import _save, _zero_heads
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    import test_hf_import

    torch.manual_seed(0)
    hf = DeiTForImageClassificationWithTeacher(DeiTConfig(hidden_size=192, num_attention_heads=3, intermediate_size=768,
                                                          num_hidden_layers=12, num_labels=1000)).eval()
    dims = {**test_hf_import.DIMS, "hidden_size": 192, "num_attention_heads": 3}
    pruned = {0: [1], 5: [0, 2], 11: [2]}
    old, test_hf_import.DIMS = test_hf_import.DIMS, dims
    try:
        _save(hf, tmp_path / "hf", "v4", pruned)
        x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            want = _zero_heads(hf, pruned)(pixel_values=x).logits  # what transformers v4 computed
    finally:
        test_hf_import.DIMS = old
    code, stdout, stderr = run("inspect", tmp_path / "hf")
    assert code == 0 and "model: deit_tiny_distilled_patch16_224" in stdout and "    5     1/3" in stdout, stdout + stderr
    code, _, stderr = run("compile", "deit_tiny_distilled_patch16_224", "--checkpoint", tmp_path / "hf", "--out",
                          tmp_path / "o", *FAST)
    assert code == 0, stderr
    r = json.loads((tmp_path / "o" / "report.json").read_text())
    assert r["import"]["format"] == "hf" and r["import"]["source_max_abs_diff"] <= 1e-4
    assert [b["heads"][1] for b in r["structure"]["blocks"]] == [2, 3, 3, 3, 3, 1, 3, 3, 3, 3, 3, 2]
    import vitshrink

    with torch.no_grad():
        assert float((vitshrink.load(tmp_path / "o")(x) - want).abs().max()) <= 1e-4
