"""Codegen and the pruned checkpoint: save, reload without timm, fine-tune."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import images
from vitshrink.families import build_module
from vitshrink.codegen import load, save
from vitshrink.errors import VitshrinkError
from vitshrink.families import apply_spec
from vitshrink.passes import pad_heads
from vitshrink.spec import Spec
from vitshrink.families import resolve_spec


@pytest.fixture(scope="module")
def pruned_module(small_distilled):
    _, ir = small_distilled
    qk = torch.ones(4, 12, dtype=torch.bool)
    qk[1, 4:] = False
    spec = Spec({"embed": torch.arange(48) % 5 != 0, "blocks.0.qk": qk, "blocks.1.heads": torch.tensor([True, False, False, False]),
                 "blocks.2.mlp": torch.zeros(96, dtype=torch.bool), "blocks.3.keep": torch.tensor(False)})
    return build_module(pad_heads(apply_spec(ir, resolve_spec(spec, ir))))


def test_save_and_load_roundtrip(tmp_path, pruned_module):
    save(pruned_module, tmp_path / "m")
    again = load(tmp_path / "m")
    x = images(3)
    with torch.no_grad():
        assert torch.equal(again(x), pruned_module(x))
    arch = json.loads((tmp_path / "m" / "arch.json").read_text())
    assert arch["format"] == "vitshrink.arch/1" and arch["embed_dim"] == 38 and len(arch["blocks"]) == 3
    assert arch["blocks"][1]["heads"] == [[12, 12]] and arch["blocks"][2]["mlp_hidden"] == 0


def test_load_needs_no_timm(tmp_path, pruned_module):
    """A fresh interpreter in which `import timm` fails rebuilds and runs the pruned model."""
    save(pruned_module, tmp_path / "m")
    x = images(2)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(pruned_module(x), tmp_path / "y.pt")
    code = (
        "import sys; sys.modules['timm'] = None; sys.modules['torchvision'] = None\n"
        "import torch, vitshrink\n"
        f"m = vitshrink.load({str(tmp_path / 'm')!r})\n"
        f"x, y = torch.load({str(tmp_path / 'x.pt')!r}), torch.load({str(tmp_path / 'y.pt')!r})\n"
        "assert type(m).__module__ == 'vitshrink.codegen.vit'\n"
        "with torch.no_grad(): assert torch.equal(m(x), y)\n"
        "assert 'timm' not in {k for k, v in sys.modules.items() if v is not None}\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_pruned_model_fine_tunes(pruned_module, tmp_path):
    save(pruned_module, tmp_path / "m")
    model = load(tmp_path / "m").train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = images(4), torch.tensor([0, 1, 2, 3])
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_load_errors(tmp_path, pruned_module):
    with pytest.raises(VitshrinkError, match="arch.json': no such file"):
        load(tmp_path)
    save(pruned_module, tmp_path / "m")
    arch = json.loads((tmp_path / "m" / "arch.json").read_text())
    arch["blocks"][0]["mlp_hidden"] += 1
    (tmp_path / "m" / "arch.json").write_text(json.dumps(arch))
    with pytest.raises(VitshrinkError, match="weights do not match arch.json"):
        load(tmp_path / "m")
