"""Coverage of timm's vision transformers (issue 19): benchmarks/coverage.py's check on the smallest
member of each family and of each backbone variant -- imported exactly (codegen vs timm <= 1e-4 on random
weights), or refused with a ModelError naming what is missing; never a mismatch or a crash. The whole
list (205 models) runs in ``python benchmarks/coverage.py --small``."""
from __future__ import annotations

import runpy

import pytest

from conftest import REPO

COVERAGE = runpy.run_path(str(REPO / "benchmarks" / "coverage.py"))

EXACT = [
    "deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2",
    "vit_base_patch16_clip_224", "vit_base_patch16_clip_quickgelu_224", "vit_base_patch16_siglip_224",
    "vit_base_patch32_siglip_256", "vit_base_patch16_siglip_gap_224", "swin_tiny_patch4_window7_224",
    "eva02_tiny_patch14_224", "vit_small_patch16_rope_mixed_224", "vit_small_patch16_dinov3", "vit_pe_core_tiny_patch16_384",
    "beit_base_patch16_224", "vit_relpos_small_patch16_224", "vit_relpos_medium_patch16_rpn_224",
    "swinv2_tiny_window8_256", "swinv2_cr_tiny_ns_224", "vit_tiny_r_s16_p8_224",
    "cait_xxs24_224",
]
REFUSED = {
    "eva02_base_patch16_clip_224": "scale_attn_inner", "xcit_nano_12_p16_224": "model class Xcit",
    "vit_base_mci_224": "embed_layer='HybridEmbed'",
}


@pytest.mark.parametrize("name", EXACT)
def test_imports_exactly(name):
    r = COVERAGE["check"](name, small=True)
    assert r["status"] == "exact", r
    assert r["max_abs_diff"] <= 1e-4


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_by_name_with_what_it_needs(name):
    r = COVERAGE["check"](name, small=True)
    assert r["status"] == "refused" and REFUSED[name] in r["reason"], r
    assert COVERAGE["NEEDS"].get(COVERAGE["reason_key"](r)), f"no 'what it needs' for {COVERAGE['reason_key'](r)}"
