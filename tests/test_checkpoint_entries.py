"""Nothing in a checkpoint is silently ignored (issue 25 item 3): NNI masks saved beside the weights are
NNI's (a mask that fits no layer is named with both shapes), a file two formats match is refused naming
both until --from picks, and an entry no importer reads is an error unless it is a harmless one."""
from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from vitshrink.cli import main
from vitshrink.frontends.timm import create_model

MODEL = "deit_tiny_patch16_224"


@pytest.fixture(scope="module")
def dense():
    torch.manual_seed(0)
    return {k: v.clone() for k, v in create_model(MODEL).state_dict().items()}


def _inspect(path, *args):
    res = CliRunner().invoke(main, ["inspect", str(path), "--model", MODEL, *args])
    return res.exit_code, res.output


def test_nni_masks_of_another_model_are_named(tmp_path, dense):
    f = tmp_path / "nni.pth"
    torch.save({"state_dict": dense, "masks": {"blocks.0.mlp.fc1": {"weight": torch.ones(17, 5)}}}, f)
    code, out = _inspect(f)
    assert code == 2, out
    assert "blocks.0.mlp.fc1" in out and "[17, 5]" in out and "[768, 192]" in out and "Traceback" not in out


def test_nni_masks_beside_the_weights_import(tmp_path, dense):
    mask = torch.ones(768, 192)
    mask[:100] = 0
    f = tmp_path / "nni.pth"
    torch.save({"state_dict": dense, "masks": {"blocks.0.mlp.fc1": {"weight": mask}}, "epoch": 3}, f)
    code, out = _inspect(f)
    assert code == 0, out
    assert "nni" in out and "668" in out  # 768 - 100 neurons kept in block 0


def test_two_formats_are_ambiguous_until_from_picks(tmp_path, dense):
    sd = dict(dense)
    w = sd.pop("blocks.1.mlp.fc1.weight")
    m = torch.ones_like(w)
    m[:50] = 0
    sd["blocks.1.mlp.fc1.weight_orig"], sd["blocks.1.mlp.fc1.weight_mask"] = w, m
    mask = torch.ones(768, 192)
    mask[:100] = 0
    f = tmp_path / "both.pth"
    torch.save({"state_dict": sd, "masks": {"blocks.0.mlp.fc1": {"weight": mask}}}, f)
    code, out = _inspect(f)
    assert code == 2 and "ambiguous" in out and "torch-prune" in out and "nni" in out, out
    code, out = _inspect(f, "--from", "torch-prune")
    assert code == 0 and "718" in out, out  # torch.nn.utils.prune's mask: 50 neurons of block 1 gone
    code, out = _inspect(f, "--from", "nni")
    assert code == 0 and "668" in out, out  # NNI's: 100 neurons of block 0 gone


def test_an_entry_no_importer_reads_is_an_error(tmp_path, dense):
    f = tmp_path / "extra.pth"
    torch.save({"state_dict": dense, "predictor_cfg": torch.ones(3), "optimizer": {"lr": 0.1}, "epoch": 9}, f)
    code, out = _inspect(f)
    assert code == 2 and "entry 'predictor_cfg'" in out and "optimizer" in out, out
    torch.save({"state_dict": dense, "optimizer": {"lr": 0.1}, "epoch": 9, "args": {"lr": 0.1}}, f)
    code, out = _inspect(f)
    assert code == 0, out
