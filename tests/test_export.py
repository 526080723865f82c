"""ONNX export: one self-contained file, dynamic batch, opset >= 17, onnx.checker, ONNX Runtime == torch."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from conftest import images
from vitshrink.families import build_module
from vitshrink.export import export_onnx, INPUT_NAME, OUTPUT_NAME
from vitshrink.families import apply_spec
from vitshrink.passes import group_heads, pad_heads
from vitshrink.runtime.ort import OrtRunner
from vitshrink.spec import Spec
from vitshrink.families import resolve_spec


def _irregular(seed):
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(4, 12, generator=g) > 0.5
    m[:, 0] = True
    return m


CASES = {
    "dense": {},
    "width": {"blocks.0.heads": torch.tensor([True, False, True, True]), "blocks.1.mlp": torch.arange(96) < 10,
              "blocks.2.mlp": torch.arange(96) == 3},
    "irregular": {"blocks.0.qk": _irregular(1), "blocks.0.v": _irregular(2), "blocks.3.qk": _irregular(3)},
    "constant_sublayers": {"blocks.1.v": torch.zeros(4, 12, dtype=torch.bool), "blocks.2.mlp": torch.zeros(96, dtype=torch.bool)},
    "embed_and_depth": {"embed": torch.arange(48) % 4 != 1, "blocks.0.keep": torch.tensor(False)},
}


@pytest.mark.parametrize("layout", ["pad", "group"])
@pytest.mark.parametrize("case", list(CASES))
def test_export_matches_torch(tmp_path, small_distilled, case, layout):
    _, ir = small_distilled
    settings_ = {"exit": {"block": 2}} if case == "embed_and_depth" else {}
    pruned = apply_spec(ir, resolve_spec(Spec(dict(CASES[case]), settings_), ir))
    module = build_module(pad_heads(pruned) if layout == "pad" else group_heads(pruned))
    path = export_onnx(module, tmp_path / "m.onnx", (3, 32, 32))

    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert list(tmp_path.iterdir()) == [path]  # one self-contained file
    assert [i.name for i in model.graph.input] == [INPUT_NAME] and [o.name for o in model.graph.output] == [OUTPUT_NAME]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    assert not {n.op_type for n in model.graph.node} & {"ScatterND", "ScatterElements", "Loop", "If"}

    runner = OrtRunner(path, threads=2)
    for batch in (1, 3):
        x = images(batch, seed=batch)
        with torch.no_grad():
            want = module(x).numpy()
        assert float(np.abs(runner.run(x.numpy()) - want).max()) <= 1e-4


def test_structure_is_gone_in_the_module_and_the_onnx_initializers(tmp_path, small_distilled):
    """Physically gone in the artifacts, not only in the IR: the generated module's weight shapes and
    the ONNX file's initializer shapes are the kept widths, and no dense-width tensor survives."""
    _, ir = small_distilled
    D2, H2, qk, v, hidden = 40, 3, 8, 10, 37  # regular per-head widths: no padding to account for
    masks = {"embed": torch.arange(48) < D2}
    for i in range(4):
        masks[f"blocks.{i}.heads"] = torch.arange(4) != i
        masks[f"blocks.{i}.qk"] = (torch.arange(12) < qk).expand(4, 12).clone()
        masks[f"blocks.{i}.v"] = (torch.arange(12) < v).expand(4, 12).clone()
        masks[f"blocks.{i}.mlp"] = torch.arange(96) < hidden
    module = build_module(pad_heads(apply_spec(ir, resolve_spec(Spec(masks), ir))))
    want = {"qkv": (H2 * (2 * qk + v), D2), "proj": (D2, H2 * v), "fc1": (hidden, D2), "fc2": (D2, hidden)}
    for b in module.blocks:
        got = {"qkv": b.attn.qkv.weight.shape, "proj": b.attn.proj.weight.shape, "fc1": b.mlp.fc1.weight.shape,
               "fc2": b.mlp.fc2.weight.shape}
        assert {k: tuple(s) for k, s in got.items()} == want
    path = export_onnx(module, tmp_path / "m.onnx", (3, 32, 32))
    shapes = [tuple(t.dims) for t in onnx.load(str(path)).graph.initializer]
    for s in want.values():  # each block's weights, as stored or transposed for Gemm
        assert sum(x in (s, s[::-1]) for x in shapes) >= 4, s
    dense_widths = {48, 144, 96}  # embed_dim, 3 x embed_dim, MLP hidden of the dense model
    assert not [s for s in shapes if len(s) == 2 and set(s) & dense_widths], "a dense-width weight survived"


def test_the_torchscript_exporter_first_the_dynamo_one_when_it_fails(tmp_path, small_distilled, monkeypatch):
    """The file records the exporter that made it; a TorchScript failure falls back to torch.export (the same
    logits); both failing is one VerificationError naming each exporter's error."""
    import vitshrink.export as export
    from vitshrink.errors import VerificationError

    _, ir = small_distilled
    module, x = build_module(ir).eval(), images(3)
    with torch.no_grad():
        want = module(x).numpy()
    first = export_onnx(module, tmp_path / "a.onnx", (3, 32, 32))
    assert export.exporter_of(first) == "torchscript"

    def broken(*a, **k):
        raise RuntimeError("no TorchScript today")

    monkeypatch.setattr(export, "_torchscript", broken)
    second = export_onnx(module, tmp_path / "b.onnx", (3, 32, 32))
    assert export.exporter_of(second) == "dynamo"
    for path in (first, second):
        assert np.abs(OrtRunner(path).run(x.numpy()) - want).max() <= 1e-4
    monkeypatch.setattr(export, "_dynamo", broken)
    with pytest.raises(VerificationError, match="torchscript: RuntimeError: no TorchScript today; dynamo: RuntimeError"):
        export_onnx(module, tmp_path / "c.onnx", (3, 32, 32))
    assert not (tmp_path / "c.onnx").exists()
