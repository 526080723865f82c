"""Detection (issue 18 item 10): every importer's probe runs over one file of every format, and each file
is claimed by exactly one format -- its own (``zeroed``, the fallback, only by dense-shaped state dicts
nothing specific claims). The most common pruned checkpoint, ``torch.save(model.state_dict())`` of a
model pruned with ``torch.nn.utils.prune`` (``weight_orig`` + ``weight_mask``), is ``torch-prune``."""
from __future__ import annotations

import collections

import pytest
import torch

from conftest import need, small_vit
from vitshrink.families import family_of
from vitshrink.importers import FORMATS, import_checkpoint
from vitshrink.importers.base import ImportContext
from vitshrink.importers.load import load_source

D, H, HD = 48, 4, 12


def _torch_prune():
    from torch.nn.utils import prune

    model = small_vit(seed=3)
    for b in model.blocks:
        prune.ln_structured(b.mlp.fc1, "weight", amount=0.5, n=1, dim=0)
    return model.state_dict()


def _zeroed():
    sd = {k: v.clone() for k, v in small_vit(seed=4).state_dict().items()}
    sd["blocks.0.mlp.fc1.weight"][:10] = 0
    return sd


def _savit_deployed():
    sd = {k: v.clone() for k, v in small_vit(seed=5).state_dict().items()}
    for i in range(4):  # 3 of 4 heads kept, head_dim unchanged
        p, rows = f"blocks.{i}.", torch.cat([torch.arange(j * H * HD, j * H * HD + 3 * HD) for j in range(3)])
        sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"] = sd[p + "attn.qkv.weight"][rows], sd[p + "attn.qkv.bias"][rows]
        sd[p + "attn.proj.weight"] = sd[p + "attn.proj.weight"][:, :3 * HD]
    return sd


def _files(tmp_path) -> dict[str, object]:
    """One file (or directory) per format, made the way its tool saves it (shapes right, values random)."""
    from test_hf_import import _hf, _save
    from test_seed_formats import _vtc_checkpoint
    from tools import torch_pruning_vit

    need("torch_pruning")
    need("transformers")
    sd = small_vit(seed=6).state_dict()
    out = {
        "torch-prune": _torch_prune(),
        "nni": collections.defaultdict(dict, {"blocks.0.mlp.fc1": {"weight": torch.ones(96, D)}}),
        "zeroed": _zeroed(),
        "s2vite": {"model": sd, "atten_mask": {"blocks.0.attn.qkv.weight_mask": torch.ones(3 * D, D)}},
        "savit": {**sd, "res_gate.weight": torch.ones(D)},
        "savit-deployed": _savit_deployed(),
        "wdpruning": {"model": {**sd, "blocks.0.attn.qkv.head_saliency_scores": torch.ones(H, 1),
                                "blocks.0.attn.qkv.threshold_head": torch.zeros(1)}},
        "vtc-lfc": _vtc_checkpoint(7, 40, None)[0],
        "torch-pruning": torch_pruning_vit(small_vit(seed=8), ratio=0.25, input_size=32)[0],
    }
    paths = {}
    for name, obj in out.items():
        paths[name] = tmp_path / f"{name}.pth"
        torch.save(obj, paths[name])
    paths["hf"] = tmp_path / "hf"
    _save(_hf("vit"), paths["hf"], "v5")
    return paths


def test_every_file_is_claimed_by_its_own_format_only(tmp_path):
    paths = _files(tmp_path)
    model = small_vit(seed=0)
    assert {f.name for f in FORMATS} == set(paths)  # every format has a file here
    for name, path in paths.items():
        obj, loader = load_source(path)
        ctx = ImportContext("small", model, path, family_of(model), loader=loader)
        claims = [f.name for f in FORMATS if f.probe(obj, ctx) and not f.fallback]
        if name == "zeroed":
            assert claims == [] and next(f for f in FORMATS if f.fallback).probe(obj, ctx), name
        else:
            assert claims == [name], f"{name} file claimed by {claims}"
        if name not in ("nni", "vtc-lfc", "wdpruning", "hf"):  # their own tests convert them (dense weights, head_dim 64 ...)
            assert import_checkpoint(path, model).format == name


@pytest.mark.parametrize("save", ["state_dict", "training checkpoint"])
def test_torch_nn_utils_prune_state_dict_is_not_ambiguous(tmp_path, save):
    sd = _torch_prune()
    torch.save(sd if save == "state_dict" else {"model": sd, "epoch": 3}, tmp_path / "p.pth")
    assert import_checkpoint(tmp_path / "p.pth", small_vit(seed=0)).format == "torch-prune"


def test_every_wrong_from_is_one_line_naming_what_the_file_is(tmp_path):
    """Issue 26 item 1: every format's file with every other --from: exit 2 in one line that says what the
    file is instead (its own format's name) -- never a traceback from a converter fed the wrong thing."""
    from vitshrink.errors import VitshrinkError

    paths = _files(tmp_path)
    model = small_vit(seed=0)
    tried = 0
    for name, path in paths.items():
        obj, loader = load_source(path)
        ctx = ImportContext("small", model, path, family_of(model), loader=loader)
        for f in FORMATS:
            fmt = f.name
            if fmt == name or f.probe(obj, ctx):  # its own, or a reading the other format also claims (zeroed:
                continue                         # any dense-shaped state dict, as asked)
            tried += 1
            try:
                import_checkpoint(path, model, fmt=fmt)
            except VitshrinkError as e:
                msg = str(e)
                assert "\n" not in msg and f"not a {fmt} file" in msg, (name, fmt, msg)
                assert f"--from {name}" in msg, (name, fmt, msg)  # what it is, and how to read it
            else:
                raise AssertionError(f"the {name} file read with --from {fmt} did not fail")
    assert tried >= len(paths) * (len(FORMATS) - 2)
