"""Mask format v1: both file forms, and validation that names the offending key."""
from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vitshrink.errors import SpecError, VitshrinkError
from vitshrink.spec import load_spec, save_spec, Spec
from vitshrink.families import mask_shapes, resolve_spec


def write_json(tmp_path, masks, settings_=None, name="spec.json", **top):
    doc = {"format": "vitshrink.spec/1", "masks": masks, "settings": settings_ or {}, **top}
    p = tmp_path / name
    p.write_text(json.dumps(doc))
    return p


def test_json_index_lists_resolve_to_bool_masks(tmp_path, small_model):
    _, ir = small_model
    p = write_json(tmp_path, {"blocks.1.mlp": [0, 5, 9], "blocks.2.qk": [[0, 1], [2], [3], [4, 5]],
                              "blocks.3.keep": False, "embed": list(range(40))})
    rs = resolve_spec(load_spec(p), ir)
    assert rs.mlp[1].nonzero().flatten().tolist() == [0, 5, 9]
    assert rs.mlp[1].shape == (ir.blocks[1].mlp.hidden,)
    assert rs.qk[2].shape == (4, 12) and rs.qk[2][3].nonzero().flatten().tolist() == [4, 5]
    assert rs.removed_blocks == {3}
    assert int(rs.embed.sum()) == 40


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1), suffix=st.sampled_from([".json", ".safetensors"]))
def test_roundtrip_both_forms(tmp_path_factory, small_model, seed, suffix):
    _, ir = small_model
    g = torch.Generator().manual_seed(seed)
    masks = {"embed": torch.rand(ir.embed_dim, generator=g) > 0.5, "blocks.0.keep": torch.tensor(False)}
    masks["embed"][0] = True
    for i in (1, 2):
        masks[f"blocks.{i}.heads"] = torch.tensor([True, True, False, True])
        masks[f"blocks.{i}.qk"] = torch.rand(4, 12, generator=g) > 0.5
        masks[f"blocks.{i}.qk"][:, 0] = True
        masks[f"blocks.{i}.v"] = torch.rand(4, 12, generator=g) > 0.5
        masks[f"blocks.{i}.mlp"] = torch.rand(ir.blocks[i].mlp.hidden, generator=g) > 0.5
    spec = Spec(masks, {"exit": {"block": 2}})
    path = tmp_path_factory.mktemp("rt") / f"spec{suffix}"
    save_spec(spec, path, resolved_shapes=mask_shapes(ir))
    a, b = resolve_spec(spec, ir), resolve_spec(load_spec(path), ir)
    assert torch.equal(a.embed, b.embed) and a.removed_blocks == b.removed_blocks and a.exit == b.exit
    for kind in ("heads", "qk", "v", "mlp"):
        ka, kb = getattr(a, kind), getattr(b, kind)
        assert ka.keys() == kb.keys() and all(torch.equal(ka[i], kb[i]) for i in ka)


def test_safetensors_settings_in_metadata(tmp_path, small_model):
    from safetensors import safe_open

    _, ir = small_model
    p = tmp_path / "s.safetensors"
    save_spec(Spec({"blocks.0.mlp": torch.ones(96, dtype=torch.bool)}, {"exit": {"block": 1}}), p)
    with safe_open(str(p), framework="pt") as f:
        assert json.loads(f.metadata()["settings"]) == {"exit": {"block": 1}}
        assert f.get_tensor("blocks.0.mlp").dtype == torch.bool


# ---------------------------------------------------------------------------------- bad specs

BAD = [
    # (masks, settings, key named in the error, words in the message)
    ({"blocks.0.attn": [0]}, {}, "blocks.0.attn", "unknown mask name"),
    ({"embedding": [0]}, {}, "embedding", "unknown mask name"),
    ({"blocks.9.mlp": [0]}, {}, "blocks.9.mlp", "does not exist"),
    ({"blocks.0.mlp": [0, 96]}, {}, "blocks.0.mlp", "out of range"),
    ({"blocks.0.mlp": [1, 1]}, {}, "blocks.0.mlp", "repeats"),
    ({"blocks.0.mlp": [0.5]}, {}, "blocks.0.mlp", "integers"),
    ({"blocks.0.heads": [[0]]}, {}, "blocks.0.heads", "integers"),
    ({"blocks.0.qk": [[0], [1]]}, {}, "blocks.0.qk", "4 lists"),
    ({"blocks.0.keep": 0}, {}, "blocks.0.keep", "true or false"),
    ({"blocks.1.heads": []}, {}, "blocks.1.heads", "every head"),
    ({"blocks.1.qk": [[0], [], [1], [2]]}, {}, "blocks.1.qk", "head 1 is kept but keeps no q/k"),
    ({"embed": []}, {}, "embed", "no channel"),
    ({"blocks.0.tokens": [1, 2, 3]}, {}, "blocks.0.tokens", "prunes token 0 (class token)"),
    ({"blocks.0.tokens": [0, 1, 2], "blocks.2.tokens": [0, 1, 3]}, {}, "blocks.2.tokens",
     "keeps token 3, which blocks.0.tokens removed (token masks must be nested)"),
    ({"blocks.0.tokens": [0, 1, 2, 30]}, {}, "blocks.0.tokens", "out of range"),
    ({}, {"token_mode": "keep"}, "token_mode", "must be"),
    ({}, {"dynamic_tokens": {"1": {"keep": 20}}}, "dynamic_tokens.1.keep", "only 16 patch tokens are present before block 1"),
    ({}, {"dynamic_tokens": {"0": {"keep": 4, "fuse": True}, "1": {"keep": 6}}}, "dynamic_tokens.1.keep", "only 5 patch tokens"),
    ({}, {"dynamic_tokens": {"1": {"keep": 1.5}}}, "dynamic_tokens.1.keep", "not in (0, 1]"),
    ({}, {"dynamic_tokens": {"1": {"keep": True}}}, "dynamic_tokens.1.keep", "token count"),
    ({}, {"dynamic_tokens": {"1": {"keep": 0.5, "score": "predictor", "predictor": {"type": "dynamicvit", "prefix": "nope"}}}},
     "dynamic_tokens.1.predictor", "predictor weight 'nope.in_conv.0.weight' is missing from the checkpoint"),
    ({}, {"dynamic_tokens": {"1": {"keep": 0.5, "score": "predictor"}}}, "dynamic_tokens.1.predictor", "needs"),
    ({}, {"dynamic_tokens": {"1": {"keep": 0.5, "where": "attn"}}}, "dynamic_tokens.1.where", "use where"),
    ({}, {"dynamic_tokens": {"1": {"keep": 0.5, "score": "topk"}}}, "dynamic_tokens.1.score", "must be one of"),
    ({}, {"dynamic_tokens": {"9": {"keep": 1}}}, "dynamic_tokens.9", "not a block index"),
    ({"blocks.1.keep": False}, {"dynamic_tokens": {"1": {"keep": 3}}}, "dynamic_tokens.1", "is removed"),
    ({"blocks.1.v": [[], [], [], []]}, {"dynamic_tokens": {"1": {"keep": 3}}}, "dynamic_tokens.1", "every head of block 1 is removed"),
    ({"blocks.1.tokens": [0, 1, 2, 3]}, {"dynamic_tokens": {"2": {"keep": 2}}}, "dynamic_tokens", "cannot be combined"),
    ({}, {"exit": {"block": 4}}, "exit.block", "out of range"),
    ({}, {"exit": {"block": -1}}, "exit.block", "out of range"),
    ({}, {"exit": 3}, "exit", "must be an object"),
    ({}, {"exit": {"block": 1, "head": "nope"}}, "exit.head", "'nope.weight' not found"),
    ({}, {"exit": {"block": 1, "classifier": "x"}}, "exit.classifier", "unknown exit field"),
    ({}, {"exitt": {"block": 1}}, "exitt", "unknown setting"),
]


@pytest.mark.parametrize("masks,settings_,key,words", BAD, ids=[b[2] + ":" + b[3] for b in BAD])
def test_bad_spec_names_the_key(tmp_path, small_model, masks, settings_, key, words):
    _, ir = small_model
    with pytest.raises(SpecError) as e:
        resolve_spec(load_spec(write_json(tmp_path, masks, settings_)), ir)
    assert e.value.key == key
    assert f"'{key}'" in str(e.value) and words in str(e.value)
    assert "\n" not in str(e.value)


def test_wrong_tensor_shape_and_dtype(small_model):
    _, ir = small_model
    with pytest.raises(SpecError, match=r"'blocks.0.mlp'.*shape \[95\].*\[96\]"):
        resolve_spec(Spec({"blocks.0.mlp": torch.ones(95, dtype=torch.bool)}), ir)
    with pytest.raises(SpecError, match=r"'blocks.0.mlp'.*bool"):
        resolve_spec(Spec({"blocks.0.mlp": torch.ones(96)}), ir)


def test_pruned_heads_need_no_qk_channels(small_model):
    """A q/k row may be empty for a head the heads mask removes."""
    _, ir = small_model
    rs = resolve_spec(Spec({"blocks.1.heads": torch.tensor([True, False, True, True]),
                            "blocks.1.qk": torch.tensor([[True] * 12, [False] * 12, [True] * 12, [True] * 12])}), ir)
    assert not rs.heads[1][1]


def test_file_errors(tmp_path):
    with pytest.raises(VitshrinkError, match="no such file"):
        load_spec(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(VitshrinkError, match="cannot be read as JSON"):
        load_spec(bad)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00\x01garbage")
    with pytest.raises(VitshrinkError, match="cannot be read as safetensors"):
        load_spec(bad_st)
    with pytest.raises(SpecError, match="'format'"):
        load_spec(write_json(tmp_path, {}, format="vitshrink.spec/2", name="v2.json"))


def test_distillation_token_must_be_kept(small_distilled):
    _, ir = small_distilled
    with pytest.raises(SpecError, match=r"'blocks.2.tokens'.*token 1 \(distillation token\)"):
        resolve_spec(Spec({"blocks.2.tokens": torch.tensor([True, False] + [True] * 16)}), ir)


def test_predictor_shape_is_checked(small_model):
    _, ir = small_model
    tensors = {"sel.fc0.weight": torch.zeros(8, 48), "sel.fc0.bias": torch.zeros(8),
               "sel.fc1.weight": torch.zeros(2, 8), "sel.fc1.bias": torch.zeros(2)}
    rule = {"keep": 4, "score": "predictor", "predictor": {"type": "mlp", "prefix": "sel", "hidden": [8], "norm": False}}
    with pytest.raises(SpecError, match=r"'dynamic_tokens.1.predictor'.*'sel.fc1.weight' has shape \[2, 8\], needs \[1, 8\]"):
        resolve_spec(Spec({}, {"dynamic_tokens": {"1": rule}}), ir, tensors)
    tensors["sel.fc1.weight"], tensors["sel.fc1.bias"] = torch.zeros(1, 8), torch.zeros(1)
    rs = resolve_spec(Spec({}, {"dynamic_tokens": {"1": rule}}), ir, tensors)
    assert rs.dynamic[1].keep == 4 and rs.dynamic[1].predictor.hidden == (8,)


def test_keep_ratio_rounds_up_like_evit(small_model):
    _, ir = small_model
    rs = resolve_spec(Spec({}, {"dynamic_tokens": {"0": {"keep": 0.7}, "2": {"keep": 0.7, "fuse": True}, "3": {"keep": 0.5}}}), ir)
    assert [rs.dynamic[i].keep for i in (0, 2, 3)] == [12, 9, 5]  # ceil(0.7*16), ceil(0.7*12), ceil(0.5*(9+1))
    assert rs.dynamic[2].fuse and not rs.dynamic[0].fuse
