"""The family travels with the IR (issue 25 item 1): each frontend stamps its family on the IR
(``meta["family"]``), passes carry it, ``arch.json`` records it, and ``family_of`` reads it -- an Eva, BEiT,
CaiT or Swin V2 model is its own family everywhere after the frontend, not the first family whose IR class
matches. ``vitshrink masks --tokens`` refuses the families without token pruning, with the family's reason."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from conftest import small_vit
from vitshrink import families
from vitshrink.cli import main
from vitshrink.spec import Spec


def _models():
    from test_cait import small_cait
    from test_eva import eva
    from test_relpos import _beit
    from test_swin import SMALL_SWIN
    from test_swinv2 import small_swinv2
    from timm.models.swin_transformer import SwinTransformer

    return {
        "vit": lambda: small_vit(depth=2),
        "swin": lambda: SwinTransformer(**SMALL_SWIN),
        "eva": lambda: eva("eva02")[0],
        "relpos": lambda: _beit(),
        "swinv2": lambda: small_swinv2()[0],
        "cait": lambda: small_cait()[0],
    }


def test_every_family_is_tested_here():
    assert sorted(_models()) == sorted(f.name for f in families.FAMILIES)


@pytest.mark.parametrize("name", sorted(f.name for f in families.FAMILIES))
def test_the_family_is_stamped_and_carried(name):
    model = _models()[name]().eval()
    ir = families.from_timm(model, f"small_{name}")
    fam = families.family_of(ir)
    assert fam.name == name and ir.meta["family"] == name
    pruned = fam.passes.apply_spec(ir, fam.spec.resolve(Spec(), ir, {}), {})
    assert families.family_of(pruned).name == name  # passes keep it
    arch = fam.codegen.architecture(pruned)
    assert arch["family"] == name and families.family_of(arch).name == name  # arch.json keeps it
    assert families.family_of(fam.codegen.build_module(pruned, share=True).arch).name == name


@pytest.mark.parametrize("model, words", [
    ("eva02_tiny_patch14_224", "rotary position embedding"),
    ("beit_base_patch16_224", "relative position bias"),
    ("cait_xxs24_224", "class-attention"),
    ("swin_tiny_patch4_window7_224", "windows need every token"),
])
def test_masks_tokens_refused_with_the_familys_reason(tmp_path, model, words):
    out = tmp_path / "t.json"
    res = CliRunner().invoke(main, ["masks", model, "--tokens", "evit:0.7@4,7", "--out", str(out), "--quiet"])
    assert res.exit_code == 2, res.output
    (line,) = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert words in line and "--tokens" in line and not out.exists()


@pytest.mark.parametrize("family", families.FAMILIES, ids=lambda f: f.name)
def test_every_family_satisfies_the_layer_protocols(family):
    """Each layer's module has the Protocol's members, and its functions take the Protocol's parameters in order."""
    import inspect

    for layer, proto in families.LAYERS.items():
        module = getattr(family, layer)
        assert isinstance(module, proto), (family.name, layer)
        for name, member in vars(proto).items():
            if name.startswith("_") or not inspect.isfunction(member):
                continue
            want = list(inspect.signature(member).parameters)[1:]  # without self
            got = list(inspect.signature(getattr(module, name)).parameters)
            assert got[:len(want)] == want, (family.name, layer, name, got, want)
