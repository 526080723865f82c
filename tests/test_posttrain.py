"""Post-training masks (``vitshrink masks --data``): the OBS scores against brute-force least squares, the
``--macs`` allocation (budget met, every block legal), the reconstruction (lowers the error it fits, never
worse on held-out images, written back to timm's layout exactly) and bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import DEIT_TINY_CKPT, IMAGENET_VAL, SMALL, images, randomise, require_shared, small_vit
from test_swin import SMALL_SWIN, swin_images
from vitshrink import families
from vitshrink.cli import main
from vitshrink.counting import count_macs
from vitshrink.frontends.timm import from_timm
from vitshrink.masks.posttrain import dense_state, posttrain
from vitshrink.masks.scores import obs_order, unit_scores
from vitshrink.spec.format import Spec

TOL = 1e-4


def _lsq_error(a: torch.Tensor, y: torch.Tensor, keep: list[int], ridge: float) -> float:
    """Squared error of the ridge least-squares fit of y on the kept columns of a, with an intercept."""
    ac, yc = a - a.mean(0), y - y.mean(0)
    h = ac.T @ ac
    h = h + ridge * torch.eye(h.shape[0], dtype=h.dtype)
    k = torch.tensor(keep)
    w = torch.linalg.solve(h[k][:, k], ac[:, k].T @ yc)
    return float(((ac[:, k] @ w - yc) ** 2).sum())


@pytest.mark.parametrize("groups", [None, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])])
def test_obs_removes_what_least_squares_misses_least(groups):
    """OBS's first removal is the unit whose loss, with the rest re-fitted, raises the error the least,
    by exactly that much; a unit the others reproduce (a copy) goes first."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 8, generator=g, dtype=torch.float64)
    a[:, 7] = a[:, 0] * 0.5 + 0.01 * torch.randn(400, generator=g, dtype=torch.float64)  # nearly a copy of input 0
    w = torch.randn(5, 8, generator=g, dtype=torch.float64)
    y = a @ w.T
    gram, total = a.T @ a, a.sum(0)
    alpha = 0.0
    scores = obs_order(w, gram, total, a.shape[0], groups=groups, alpha=alpha)
    ac = a - a.mean(0)
    ridge = alpha * float(torch.diagonal(ac.T @ ac).mean())
    units = list(range(8)) if groups is None else [torch.nonzero(groups == u).flatten().tolist() for u in range(4)]
    members = [[u] for u in units] if groups is None else units
    full = _lsq_error(a, y, list(range(8)), ridge)
    brute = [_lsq_error(a, y, [c for c in range(8) if c not in m], ridge) - full for m in members]
    first = int(torch.argmin(scores))
    assert first == min(range(len(brute)), key=brute.__getitem__)
    assert abs(float(scores[first]) - brute[first]) <= 1e-5 * brute[first]
    if groups is None:
        assert first in (0, 7)  # the near-duplicate pair: either stands in for the other
    assert scores.shape == (len(members),) and torch.all(torch.diff(torch.sort(scores).values) >= 0)


def test_obs_inputs_match_greedy_least_squares():
    """Per input, OBS's in-place updates on shrinking arrays give what re-solving the least squares on the
    remaining inputs gives at every step (each unit's score: the running maximum of the cheapest removal)."""
    g = torch.Generator().manual_seed(1)
    k = 100  # > 64: the arrays are compacted twice on the way
    a = torch.randn(600, k, generator=g, dtype=torch.float64) @ torch.randn(k, k, generator=g, dtype=torch.float64)
    w = torch.randn(7, k, generator=g, dtype=torch.float64)
    alpha = 1e-2
    scores = obs_order(w, a.T @ a, a.sum(0), a.shape[0], alpha=alpha)
    ac = a - a.mean(0)
    h = ac.T @ ac
    h = h + alpha * float(torch.diagonal(h).mean()) * torch.eye(k, dtype=h.dtype)
    alive, running, expect = list(range(k)), 0.0, torch.zeros(k, dtype=torch.float64)
    while len(alive) > 1:
        s = torch.tensor(alive)
        hinv = torch.linalg.inv(h[s][:, s])
        w_s = w @ h[:, s] @ hinv  # the original outputs re-fitted on the remaining inputs
        cost = (w_s ** 2).sum(0) / torch.diagonal(hinv)
        j = int(torch.argmin(cost))
        running = max(running, float(cost[j]))
        expect[alive.pop(j)] = running
    expect[alive[0]] = running * 2 + 1.0
    torch.testing.assert_close(scores, expect, rtol=1e-6, atol=0.0)


@pytest.fixture(scope="module")
def small():
    m = small_vit(depth=3)
    ir = from_timm(m, "small_vit")
    return m, ir, families.family_of(ir)


@pytest.mark.parametrize("criterion", ["obs", "activation", "fisher"])
def test_scores_cover_every_unit(small, criterion):
    _, ir, fam = small
    s = unit_scores(fam, ir, images(8), criterion)
    for b in ir.blocks:
        sc = s.blocks[b.source_index]
        assert sc["heads"].shape == (b.attn.num_heads,) and sc["mlp"].shape == (b.mlp.hidden,)
        assert torch.isfinite(sc["mlp"]).all() and (sc["mlp"] >= 0).all()
    assert (s.embed[""].shape == (SMALL["embed_dim"],)) if criterion == "fisher" else not s.embed


def _macs(fam, ir, spec: Spec, shape) -> int:
    pruned = fam.passes.apply_spec(ir, fam.spec.resolve(spec, ir, {}), {})
    return count_macs(fam.codegen.build_module(pruned, share=True), (1, *shape))


@pytest.mark.parametrize("kind", ["vit", "swin", "eva"])
def test_budget_is_met_and_every_block_legal(kind):
    """--macs R: the generated model's counted MACs at most R x dense, >= 1 head in every block, neuron
    counts multiples of --round-to, for a ViT, a Swin (its windows priced as they run) and an Eva with
    RoPE and SwiGLU (whole heads only, so every rotation pair is kept or removed with its head)."""
    if kind == "vit":
        m = small_vit(depth=3)
        ir, x = from_timm(m, "small_vit"), images(8)
    elif kind == "eva":
        from test_eva import eva
        m, ir = eva("rope_mixed")
        x = images(8)
    else:
        from timm.models.swin_transformer import SwinTransformer
        from vitshrink.frontends.timm_swin import from_timm as from_timm_swin
        m = randomise(SwinTransformer(**SMALL_SWIN), seed=4)
        ir, x = from_timm_swin(m, "small_swin"), swin_images(8)
    fam = families.family_of(ir)
    shape = tuple(x.shape[1:])
    dense = _macs(fam, ir, Spec(), shape)
    for ratio in (0.5, 0.8):
        r = posttrain(fam, ir, x, shape, macs=ratio, round_to=4, reconstruct=False, steps=2)
        got = _macs(fam, ir, r.spec, shape)
        assert got <= ratio * dense + 1 and got >= 0.8 * ratio * dense, (ratio, got / dense)
        assert r.budget["macs"] == got  # the allocation's own count is the generated model's
        for k, v in r.spec.masks.items():
            if k.endswith(".heads"):
                assert v.sum() >= 1, k
            if k.endswith(".mlp"):
                assert int(v.sum()) % 4 == 0, (k, int(v.sum()))
            assert not k.endswith((".qk", ".v")), k  # whole heads: q/k channel pairs are never split
        fam.spec.resolve(r.spec, ir, {})  # legal for the family (RoPE pairs, heads)


def test_macs_with_a_token_schedule_is_a_share_of_the_dense_model(small):
    """--macs R with a dynamic token rule (its keep ratio lives in the spec's settings): the generated model,
    rule included, at most R x the dense model's MACs, and the allocation's own count is that model's; a
    schedule that alone meets R leaves every width; one that leaves too little for a head per block is refused."""
    from vitshrink.errors import VitshrinkError
    from vitshrink.masks.budget import model_macs, unit_costs
    from vitshrink.masks.tokens import token_spec

    _, ir, fam = small
    x, shape = images(8), (3, 32, 32)
    base = Spec(*token_spec(ir, "evit:0.5@1,2"))
    dense = _macs(fam, ir, Spec(), shape)
    tokens_only = model_macs(fam, ir, shape, base)
    assert tokens_only < 0.9 * dense and unit_costs(fam, ir, shape, base).total == tokens_only  # the rule is priced
    r = posttrain(fam, ir, x, shape, macs=0.5, reconstruct=False, base=base)
    got = _macs(fam, ir, r.spec, shape)
    assert r.spec.settings["dynamic_tokens"] == base.settings["dynamic_tokens"]
    assert 0.4 * dense <= got <= 0.5 * dense + 1 and r.budget["macs"] == got, (got / dense, r.budget)
    assert r.budget["dense_macs"] == dense and r.budget["base_macs"] == tokens_only
    r = posttrain(fam, ir, x, shape, macs=0.95, reconstruct=False, base=base)
    assert all(bool(v.all()) for k, v in r.spec.masks.items() if k.endswith((".heads", ".mlp")))
    with pytest.raises(VitshrinkError, match="--macs 0.05: below .* token schedule"):
        posttrain(fam, ir, x, shape, macs=0.05, reconstruct=False, base=base)


def test_auto_token_schedule_takes_its_share_of_the_budget(small):
    """KIND:auto under --macs R: the largest keep ratio (0.01 grid) whose schedule alone keeps at most
    R / AUTO_WIDTH_SHARE of the dense MACs; none when R leaves tokens no room; AUTO_MIN_KEEP at the floor."""
    from vitshrink.errors import VitshrinkError
    from vitshrink.masks.budget import model_macs
    from vitshrink.masks.tokens import AUTO_MIN_KEEP, AUTO_WIDTH_SHARE, auto_blocks, auto_schedule, is_auto, token_spec

    _, ir, fam = small
    shape = (3, 32, 32)
    assert auto_blocks(12) == [4, 7, 10] and auto_blocks(3) == [1, 2] and auto_blocks(24) == [8, 14, 20]
    assert is_auto("evit:auto") and is_auto("slim:auto@1") and not is_auto("evit:0.7@1")
    dense = model_macs(fam, ir, shape)
    share = lambda text: model_macs(fam, ir, shape, Spec(*token_spec(ir, text))) / dense  # noqa: E731
    for kind in ("evit", "uniform"):
        text = auto_schedule(fam, ir, f"{kind}:auto@1", 0.85, shape)
        ratio = float(text.split(":")[1].split("@")[0])
        assert text == f"{kind}:{ratio:.2f}@1" and AUTO_MIN_KEEP < ratio < 1
        assert share(text) <= 0.85 / AUTO_WIDTH_SHARE < share(f"{kind}:{ratio + 0.01:.2f}@1")
    assert auto_schedule(fam, ir, "evit:auto", 0.98, shape) is None
    assert auto_schedule(fam, ir, "evit:auto", 0.2, shape) == f"evit:{AUTO_MIN_KEEP:.2f}@1,2"
    with pytest.raises(VitshrinkError, match="--tokens"):
        auto_schedule(fam, ir, "topk:auto", 0.5, shape)


def test_budget_below_the_floor_is_refused(small):
    _, ir, fam = small
    from vitshrink.errors import VitshrinkError
    with pytest.raises(VitshrinkError, match="--macs 0.01: below"):
        posttrain(fam, ir, images(4), (3, 32, 32), macs=0.01, reconstruct=False)


def test_reconstruction_lowers_the_error_and_writes_back_exactly(small, tmp_path):
    """Re-fitting lowers each layer's calibration error (or leaves the layer), brings the pruned model's
    logits closer to the dense model's on images it never saw, and the weights written in timm's layout
    compile to the re-fitted model: the masked dense model of those weights equals it (<= 1e-4)."""
    m, ir, fam = small
    calib, held = images(64, seed=1), images(32, seed=2)
    r = posttrain(fam, ir, calib, (3, 32, 32), heads=0.5, mlp=0.5, reconstruct=True)
    assert len(r.refit) == len(ir.blocks)
    for rec in r.refit:
        for part in ("attn", "mlp"):
            before, after = rec[part]
            assert after <= before * (1 + 1e-9), rec
    assert any(rec["mlp"][1] < 0.9 * rec["mlp"][0] for rec in r.refit)
    masked = fam.passes.apply_spec(ir, fam.spec.resolve(r.spec, ir, {}), {})
    dense_out = fam.codegen.build_module(ir, share=True)(held)
    with torch.no_grad():
        before = (fam.codegen.build_module(masked, share=True)(held) - dense_out).pow(2).mean()
        refitted = fam.codegen.build_module(r.pruned_ir, share=True)(held)
        after = (refitted - dense_out).pow(2).mean()
    assert after < before
    # the dense layout of the re-fitted weights, loaded as a checkpoint, then pruned by the spec
    state = dense_state(fam, small_vit(depth=3), ir, r.pruned_ir)
    fresh = small_vit(depth=3, seed=9)
    fresh.load_state_dict(state, strict=True)
    ir2 = from_timm(fresh, "small_vit")
    resolved = fam.spec.resolve(r.spec, ir2, {})
    with torch.no_grad():
        pruned2 = fam.codegen.build_module(fam.passes.apply_spec(ir2, resolved, {}), share=True)(held)
        reference = families.reference_forward(ir2, resolved, held)
    assert (pruned2 - refitted).abs().max() <= TOL
    assert (reference - refitted).abs().max() <= TOL


def test_eva_refit_writes_back_exactly():
    """RoPE + SwiGLU (timm's Eva): re-fitted proj / fc2 in timm's layout compile to the re-fitted model."""
    from test_eva import eva

    m, ir = eva("rope_mixed")
    fam = families.family_of(ir)
    r = posttrain(fam, ir, images(32, seed=1), (3, 32, 32), heads=0.5, mlp=0.5, reconstruct=True)
    assert all(rec["mlp"][1] <= rec["mlp"][0] * (1 + 1e-9) for rec in r.refit)
    import copy
    state = dense_state(fam, copy.deepcopy(m), ir, r.pruned_ir)
    fresh = copy.deepcopy(m)
    fresh.load_state_dict(state, strict=True)
    ir2 = families.from_timm(fresh, "rope_mixed")
    x = images(4, seed=3)
    with torch.no_grad():
        got = fam.codegen.build_module(fam.passes.apply_spec(ir2, fam.spec.resolve(r.spec, ir2, {}), {}), share=True)(x)
        want = fam.codegen.build_module(r.pruned_ir, share=True)(x)
    assert (got - want).abs().max() <= TOL


def test_layerscale_is_folded_into_the_refitted_layer(tmp_path):
    """A model with LayerScale: the written weights carry gamma inside proj / fc2 (gamma = 1) and still
    compile to the re-fitted model."""
    m = small_vit(depth=2, init_values=0.5)
    randomise(m, 3)
    ir = from_timm(m, "small_vit_ls")
    fam = families.family_of(ir)
    r = posttrain(fam, ir, images(32, seed=1), (3, 32, 32), mlp=0.5, heads=0.75, reconstruct=True)
    state = dense_state(fam, m, ir, r.pruned_ir)
    assert torch.all(state["blocks.0.ls1.gamma"] == 1) and torch.all(state["blocks.1.ls2.gamma"] == 1)
    fresh = small_vit(depth=2, init_values=0.5, seed=5)
    fresh.load_state_dict(state, strict=True)
    ir2 = from_timm(fresh, "small_vit_ls")
    x = images(4, seed=3)
    with torch.no_grad():
        got = fam.codegen.build_module(fam.passes.apply_spec(ir2, fam.spec.resolve(r.spec, ir2, {}), {}), share=True)(x)
        want = fam.codegen.build_module(r.pruned_ir, share=True)(x)
    assert (got - want).abs().max() <= TOL


def _image_dir(root: Path, n: int) -> Path:
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        arr = (torch.rand(40, 40, 3, generator=g) * 255).to(torch.uint8).numpy()
        d = root / ("n01440764", "n01443537")[i % 2]  # ImageNet wnids: classes 0 and 1
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(d / f"{i}.png")
    return root


@pytest.mark.parametrize("args, words", [
    (["--macs", "0.6"], "--macs needs calibration images"),
    (["--mlp", "0.5", "--data", "EMPTY"], "no images found"),
    (["--mlp", "0.5", "--data", "IMAGES", "--weights-out", "w.pt"], "--weights-out 'w.pt': use a .safetensors"),
    (["--macs", "0.6", "--data", "IMAGES", "--steps", "0"], "--steps 0"),
    (["--macs", "0.6", "--mlp", "0.5", "--data", "IMAGES"], "without --heads / --mlp"),
    (["--macs", "1.5", "--data", "IMAGES"], "--macs"),
    (["--macs", "0", "--data", "IMAGES"], "--macs"),
    (["--mlp", "0.5", "--data", "NOWHERE"], "no such directory"),
    (["--embed", "0.5", "--data", "IMAGES"], "no embedding-channel scores"),
    (["--mlp", "0.5", "--tokens", "evit:auto", "--data", "IMAGES"], "'auto' takes its keep ratio from the budget"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, words):
    (tmp_path / "empty").mkdir()
    imgs = _image_dir(tmp_path / "imgs", 4)
    where = {"EMPTY": str(tmp_path / "empty"), "IMAGES": str(imgs), "NOWHERE": str(tmp_path / "nowhere")}
    args = [where.get(a, a) for a in args]
    out = tmp_path / "o" / "spec.json"
    res = CliRunner().invoke(main, ["masks", "deit_tiny_patch16_224", *args, "--calib-images", "4", "--quiet",
                                    "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert words in res.output and "Traceback" not in res.output
    assert not out.exists() and not out.with_name("spec.weights.safetensors").exists()


def test_cli_writes_spec_and_weights_that_compile_exactly(tmp_path):
    """masks --data --macs with an auto EViT schedule on a folder of images: spec (the rule's keep ratio chosen,
    the widths the rest of the budget) + re-fitted weights; compile with them verifies exactly and leaves the
    calibration images out of its accuracy. Real weights and images: with random weights the class attention
    is nearly uniform, and the kept tokens of the pruned and the reference model part on scores within rounding."""
    require_shared()
    imgs = tmp_path / "imgs"
    for d in sorted(IMAGENET_VAL.iterdir())[:12]:  # links, one image of each of 12 classes
        (imgs / d.name).mkdir(parents=True)
        first = sorted(d.iterdir())[0]
        (imgs / d.name / first.name).symlink_to(first)
    spec = tmp_path / "specs" / "s.json"
    res = CliRunner().invoke(main, ["masks", "deit_tiny_patch16_224", "--checkpoint", str(DEIT_TINY_CKPT), "--img-size", "64",
                                    "--data", str(imgs), "--calib-images", "8",  # 64 px (16 patches): the suite's time budget
                                    "--macs", "0.7", "--tokens", "evit:auto", "--steps", "1", "--quiet", "--out", str(spec)])
    assert res.exit_code == 0, res.output
    s = json.loads(spec.read_text())
    meta, rules = s["meta"], s["settings"]["dynamic_tokens"]
    assert meta["tokens"]["requested"] == "evit:auto" and meta["tokens"]["schedule"].endswith("@4,7,10")
    assert sorted(rules, key=int) == ["4", "7", "10"] and 0.5 < rules["4"]["keep"] < 0.8
    full = {"heads": 3, "mlp": 768}  # the widths take their part too
    assert any(len(v) < full[k.rsplit(".", 1)[1]] for k, v in s["masks"].items() if k.endswith((".heads", ".mlp")))
    assert meta["budget"]["base_macs"] < meta["budget"]["dense_macs"] and meta["budget"]["width_share"] < 1
    assert meta["criterion"] == "obs" and meta["calibration"]["n"] == 8 and len(meta["calibration"]["files"]) == 8
    assert meta["weights"]["file"] == "s.weights.safetensors" and len(meta["refit"]) == 12
    assert 0.6 <= meta["budget"]["macs"] / meta["budget"]["dense_macs"] <= 0.7
    weights = spec.with_name("s.weights.safetensors")
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["compile", "deit_tiny_patch16_224", "--checkpoint", str(weights), "--spec", str(spec),
                                    "--img-size", "64", "--data", str(imgs), "--bench-seconds", "0", "--quiet", "--out", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads((out / "report.json").read_text())
    assert r["exactness"]["max_abs_diff"] <= TOL
    assert r["accuracy"]["n"] == 4  # the 8 calibration images are left out
    assert f"top-1 on the 4 images of {imgs} not used for calibration; 8 left out: they chose the spec's masks" in res.output
    # the original is the user's model, not the re-fitted weights: masks recorded the weights it started from
    from vitshrink.pipeline.output import sha256

    assert meta["source"] == {"checkpoint": str(DEIT_TINY_CKPT.resolve()), "sha256": sha256(DEIT_TINY_CKPT)}
    o = r["original"]
    assert o["weights"]["sha256"] == meta["source"]["sha256"] and o["weights"]["from"].startswith("the spec's meta.source")
    assert "the original weights deit_tiny" in o["model"]
    assert o["onnx"]["status"] == "ok"  # --data alone exports it: checked against the original weights' own logits
    row = r["accuracy"]["engines"][0]
    assert row["original"].startswith(o["model"]) and row["original_top1"] is not None


def test_the_original_weights_are_the_users(tmp_path):
    """original_weights(): --original-checkpoint, else the spec's meta.source when --checkpoint is another file,
    else --checkpoint; re-fitted weights whose source is unknown or gone are named "the given weights"; a missing
    --original-checkpoint is one error line, nothing written."""
    from vitshrink.errors import VitshrinkError
    from vitshrink.pipeline.original import original_label, original_weights
    from vitshrink.pipeline.output import sha256

    start, refit = tmp_path / "start.safetensors", tmp_path / "refit.safetensors"
    start.write_bytes(b"original"), refit.write_bytes(b"re-fitted")
    src = {"source": {"checkpoint": str(start), "sha256": sha256(start)}, "refit": [1]}
    w = original_weights(str(refit), None, src)
    assert w["separate"] and w["checkpoint"] == str(start) and "start.safetensors" in original_label(w)
    assert original_weights(str(start), None, src)["separate"] is False  # compiled on the weights masks started from
    assert original_weights(str(refit), str(refit), src)["separate"] is False  # the user says so
    assert original_weights(str(refit), str(start), {})["from"] == "--original-checkpoint"
    unknown = original_weights(str(refit), None, {"refit": [1]})
    assert unknown["known"] is False and original_label(unknown).startswith("the given weights")
    start.write_bytes(b"changed since")
    gone = original_weights(str(refit), None, src)
    assert gone["known"] is False and str(start) in gone["reason"]
    assert original_label(original_weights(str(refit), None, {}))== "the given weights"
    with pytest.raises(VitshrinkError, match="--original-checkpoint .*nope: no such file"):
        original_weights(str(refit), str(tmp_path / "nope"), {})
    spec = Path(__file__).resolve().parents[1] / "compiler" / "examples" / "deit_tiny_example.json"
    res = CliRunner().invoke(main, ["compile", "deit_tiny_patch16_224", "--spec", str(spec), "--out", str(tmp_path / "o"),
                                    "--original-checkpoint", str(tmp_path / "nope"), "--img-size", "32", "--quiet"])
    assert res.exit_code == 2 and res.output.strip().splitlines() == [f"error: --original-checkpoint {tmp_path / 'nope'}: no such file or directory"]
    assert not (tmp_path / "o").exists()
