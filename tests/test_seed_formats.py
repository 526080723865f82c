"""The seed methods' own checkpoint formats, built from the key layouts their repositories' sources
define (no released checkpoint can be downloaded here), each compiled and compared with an anchor
written independently in the test: the method's masks applied the way its source applies them,
its gates as forward hooks, its deployed (shrunk) model as the dense model with the removed units
zeroed and LayerNorms over the kept channels, its early exit as timm's model cut by hand."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from conftest import images, randomise, small_vit
from test_importers import TOL, compile_import, diff
from vitshrink.importers import import_checkpoint


def _save(tmp_path, obj, name="ckpt.pth"):
    torch.save(obj, tmp_path / name)
    return tmp_path / name


class MaskedLayerNorm(nn.Module):
    """LayerNorm over the channels where ``keep`` is true; 0 elsewhere (SAViT's deployed LayerNorm)."""

    def __init__(self, ln: nn.LayerNorm, keep: torch.Tensor):
        super().__init__()
        self.ln, self.keep = ln, keep

    def forward(self, x):
        y = torch.zeros_like(x)
        y[..., self.keep] = nn.functional.layer_norm(x[..., self.keep], (int(self.keep.sum()),),
                                                     self.ln.weight[self.keep], self.ln.bias[self.keep], self.ln.eps)
        return y


def deployed_anchor(model, embed_keep):
    """The dense timm model computing like a model shrunk to ``embed_keep`` residual channels: those
    channels zeroed where they are written, every LayerNorm over the kept ones only."""
    m = copy.deepcopy(model)
    drop = ~embed_keep
    with torch.no_grad():
        m.patch_embed.proj.weight[drop] = 0
        m.patch_embed.proj.bias[drop] = 0
        m.cls_token[..., drop] = 0
        m.pos_embed[..., drop] = 0
        for b in m.blocks:
            if not hasattr(b, "attn"):  # a removed block (identity)
                continue
            for lin in (b.attn.proj, b.mlp.fc2):
                lin.weight[drop] = 0
                lin.bias[drop] = 0
    for name, mod in list(m.named_modules()):
        if isinstance(mod, nn.LayerNorm):
            parent, _, attr = name.rpartition(".")
            setattr(m.get_submodule(parent) if parent else m, attr, MaskedLayerNorm(mod, embed_keep))
    return m


# ------------------------------------------------------------------------------------------- S2ViTE


@pytest.mark.parametrize("ddp", [False, True], ids=["plain", "module. prefix (DDP)"])
def test_s2vite(tmp_path, ddp):
    model = small_vit(seed=21)
    g = torch.Generator().manual_seed(0)
    pre = "module." if ddp else ""
    atten, other, unstructured = {}, {}, {}
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for i, b in enumerate(model.blocks):
            H, hd, D = b.attn.num_heads, b.attn.head_dim, 48
            heads = torch.rand(H, generator=g) > 0.5
            heads[i % H] = True
            rows = heads.repeat_interleave(hd).repeat(3).float()
            atten[f"{pre}blocks.{i}.attn.qkv.weight_mask"] = rows[:, None].expand(3 * D, D).clone()
            neurons = (torch.rand(b.mlp.fc1.out_features, generator=g) > 0.4).float()
            other[f"{pre}blocks.{i}.mlp.fc1.weight_mask"] = neurons[:, None].expand_as(b.mlp.fc1.weight).clone()
            other[f"{pre}blocks.{i}.mlp.fc2.weight_mask"] = torch.ones_like(b.mlp.fc2.weight)
            # what SViTE's apply_mask does: weight *= mask (biases stay live)
            rb = ref.blocks[i]
            rb.attn.qkv.weight.mul_(atten[f"{pre}blocks.{i}.attn.qkv.weight_mask"])
            rb.mlp.fc1.weight.mul_(other[f"{pre}blocks.{i}.mlp.fc1.weight_mask"])
        fc2 = (torch.rand(model.blocks[0].mlp.fc2.weight.shape, generator=g) > 0.5).float()
        unstructured[f"{pre}blocks.0.mlp.fc2.weight_17"] = fc2
        ref.blocks[0].mlp.fc2.weight.mul_(fc2)
    sd = {pre + k: v for k, v in model.state_dict().items()}
    path = _save(tmp_path, {"model": sd, "atten_mask": atten, "other_mask": other, "mask": unstructured, "epoch": 300})
    result = import_checkpoint(path, small_vit(seed=1))
    assert result.format == "s2vite"
    assert result.notes["removed"]["heads"] > 0 and result.notes["removed"]["folded_biases"] > 0
    assert any(u["tensor"] == "blocks.0.mlp.fc2.weight" for u in result.notes["unstructured"])
    x = images(3, seed=3)
    assert diff(compile_import(result, small_vit(seed=1))[0](x), ref(x)) <= TOL


# -------------------------------------------------------------------------------------------- SAViT


def _savit_gates(model, seed, embed):
    g = torch.Generator().manual_seed(seed)
    D = model.embed_dim
    gates = {}
    for i, b in enumerate(model.blocks):
        head = (torch.rand(b.attn.num_heads, generator=g) > 0.4).float()
        head[0] = 1.0
        gates[f"blocks.{i}.attn.attn_gate.weight"] = head
        gates[f"blocks.{i}.mlp.hidden_gate1.weight"] = (torch.rand(b.mlp.fc1.out_features, generator=g) > 0.5).float()
    res = torch.ones(D)
    if embed:
        res[torch.randperm(D, generator=g)[: D // 3]] = 0
    gates["res_gate.weight"] = res
    for i in range(len(model.blocks)):  # every Block holds the shared residual gate as well
        gates[f"blocks.{i}.res_gate.weight"] = res
    return gates


def _gated(model, gates):
    """SAViT's GateLayer semantics as forward hooks on timm's modules: head gate on the attention output
    before proj, hidden gate on fc1's output before GELU."""
    m = copy.deepcopy(model)
    for i, b in enumerate(m.blocks):
        hd = b.attn.head_dim
        hg, ng = gates[f"blocks.{i}.attn.attn_gate.weight"], gates[f"blocks.{i}.mlp.hidden_gate1.weight"]
        b.attn.proj.register_forward_pre_hook(lambda mod, a, hg=hg, hd=hd: (a[0] * hg.repeat_interleave(hd),))
        b.mlp.act.register_forward_pre_hook(lambda mod, a, ng=ng: (a[0] * ng,))
    return m


@pytest.mark.parametrize("embed", [False, True], ids=["heads+mlp", "heads+mlp+embed"])
def test_savit_gated(tmp_path, embed):
    model = small_vit(seed=22)
    gates = _savit_gates(model, 3, embed)
    path = _save(tmp_path, {"model": {**model.state_dict(), **gates}})
    result = import_checkpoint(path, small_vit(seed=1))
    assert result.format == "savit"
    x = images(3, seed=4)
    pruned, ir, resolved = compile_import(result, small_vit(seed=1))
    gated = _gated(model, gates)
    want = deployed_anchor(gated, gates["res_gate.weight"] != 0)(x) if embed else gated(x)
    assert diff(pruned(x), want) <= TOL
    assert pruned.arch["embed_dim"] == int(gates["res_gate.weight"].sum())
    kept_heads = [int(gates[f"blocks.{i}.attn.attn_gate.weight"].sum()) for i in range(4)]
    assert [b.attn.num_heads for b in pruned.blocks] == kept_heads


def test_savit_deployed(tmp_path):
    """main_deploy.py's shrunk checkpoint: whole heads (head_dim unchanged), neurons, embed channels."""
    model = small_vit(seed=23)
    g = torch.Generator().manual_seed(5)
    D, H, hd = 48, 4, 12
    embed = torch.zeros(D, dtype=torch.bool)
    embed[torch.randperm(D, generator=g)[:32]] = True
    anchor = copy.deepcopy(model)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    e = embed.nonzero().flatten()
    for k in ("cls_token", "pos_embed"):
        sd[k] = sd[k][..., e]
    sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"] = sd["patch_embed.proj.weight"][e], sd["patch_embed.proj.bias"][e]
    for k in ("norm.weight", "norm.bias"):
        sd[k] = sd[k][e]
    sd["head.weight"] = sd["head.weight"][:, e]
    with torch.no_grad():
        for i, b in enumerate(anchor.blocks):
            p = f"blocks.{i}."
            heads = torch.tensor([h != (i % H) for h in range(H)])
            rows = heads.repeat_interleave(hd).nonzero().flatten()
            neurons = (torch.rand(b.mlp.fc1.out_features, generator=g) > 0.5).nonzero().flatten()
            qkv = sd[p + "attn.qkv.weight"].view(3, H * hd, D)[:, rows][:, :, e]
            sd[p + "attn.qkv.weight"] = qkv.reshape(-1, len(e))
            sd[p + "attn.qkv.bias"] = sd[p + "attn.qkv.bias"].view(3, H * hd)[:, rows].reshape(-1)
            sd[p + "attn.proj.weight"] = sd[p + "attn.proj.weight"][e][:, rows]
            sd[p + "attn.proj.bias"] = sd[p + "attn.proj.bias"][e]
            sd[p + "mlp.fc1.weight"] = sd[p + "mlp.fc1.weight"][neurons][:, e]
            sd[p + "mlp.fc1.bias"] = sd[p + "mlp.fc1.bias"][neurons]
            sd[p + "mlp.fc2.weight"] = sd[p + "mlp.fc2.weight"][e][:, neurons]
            sd[p + "mlp.fc2.bias"] = sd[p + "mlp.fc2.bias"][e]
            for n in ("norm1", "norm2"):
                sd[f"{p}{n}.weight"], sd[f"{p}{n}.bias"] = sd[f"{p}{n}.weight"][e], sd[f"{p}{n}.bias"][e]
            # the anchor: the same units zeroed in the dense model
            drop_rows = (~heads).repeat_interleave(hd)
            b.attn.proj.weight[:, drop_rows] = 0
            drop_n = torch.ones(b.mlp.fc1.out_features, dtype=torch.bool)
            drop_n[neurons] = False
            b.mlp.fc2.weight[:, drop_n] = 0
    path = _save(tmp_path, {"model": sd})
    result = import_checkpoint(path, small_vit(seed=1))
    assert result.format == "savit-deployed"
    x = images(3, seed=6)
    assert diff(compile_import(result, small_vit(seed=1))[0](x), deployed_anchor(anchor, embed)(x)) <= TOL


# ---------------------------------------------------------------------------------------- WDPruning


@pytest.mark.parametrize("n,sig,expected", [
    (256, 0.5, 128),     # ceil(128) is a multiple of 16
    (256, 0.41, 112),    # ceil(104.96) = 105 -> nearest multiple of 16 is 112
    (256, 0.375, 96),    # 96 exactly
    (256, 0.39, 96),     # ceil(99.84) = 100 -> 96 (4 below) rather than 112
    (256, 0.02, 16),     # ceil(5.12) = 6 -> at least 16
    (12, 0.5, 6),        # 12 is no multiple of 16: no rounding
    (3, 0.6, 2),         # heads: ceil(1.8) = 2
])
def test_topk_binarizer_counts(n, sig, expected):
    from vitshrink.importers.wdpruning import topk_binarize

    scores = torch.randn(n, 1, generator=torch.Generator().manual_seed(n))
    keep = topk_binarize(scores, torch.tensor([math.log(sig / (1 - sig))]))
    assert int(keep.sum()) == expected
    assert scores.flatten()[keep].min() >= scores.flatten()[~keep].max() if expected < n else True


def _wd_model(seed=24):
    from timm.models.vision_transformer import VisionTransformer

    return randomise(VisionTransformer(img_size=32, patch_size=8, embed_dim=128, depth=3, num_heads=2, mlp_ratio=2.0,
                                       num_classes=10), seed)


@pytest.mark.parametrize("exit_k", [None, 2])
def test_wdpruning(tmp_path, exit_k):
    from vitshrink.importers.wdpruning import topk_binarize

    model = _wd_model()
    g = torch.Generator().manual_seed(7)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for i, b in enumerate(ref.blocks):
            p = f"blocks.{i}."
            sd[p + "attn.qkv.head_saliency_scores"] = torch.randn(2, 1, generator=g)
            sd[p + "attn.qkv.threshold_head"] = torch.tensor([0.0])  # sigmoid 0.5: 1 of 2 heads
            hm = topk_binarize(sd[p + "attn.qkv.head_saliency_scores"], 0.0).repeat_interleave(64).repeat(3)
            b.attn.qkv.weight.mul_(hm[:, None])
            b.attn.qkv.bias.mul_(hm)
            for layer, lin, t in (("attn.proj", b.attn.proj, 3.0), ("mlp.fc1", b.mlp.fc1, -0.5), ("mlp.fc2", b.mlp.fc2, 2.0)):
                sd[f"{p}{layer}.saliency_scores"] = torch.randn(lin.weight.shape[0], 1, generator=g)
                sd[f"{p}{layer}.threshold_fc"] = torch.tensor([t])
                m = topk_binarize(sd[f"{p}{layer}.saliency_scores"], t)
                lin.weight.mul_(m[:, None])
                lin.bias.mul_(m)  # bias_mask: qkv_bias for proj (True here), always for fc1/fc2
    for j in range(2):  # early-exit classifiers after blocks 2 and 3 (classifiers=[2, 3])
        sd[f"norm_classifier.{j}.weight"] = 1 + 0.3 * torch.randn(128, generator=g)
        sd[f"norm_classifier.{j}.bias"] = 0.2 * torch.randn(128, generator=g)
        sd[f"head_classifier.{j}.weight"] = 0.2 * torch.randn(10, 128, generator=g)
        sd[f"head_classifier.{j}.bias"] = 0.2 * torch.randn(10, generator=g)
    if exit_k is not None:  # the source's inference model: blocks[:K], then that classifier's norm and head
        ref.blocks = ref.blocks[:exit_k]
        j = [2, 3].index(exit_k)
        with torch.no_grad():
            ref.norm.weight.copy_(sd[f"norm_classifier.{j}.weight"])
            ref.norm.bias.copy_(sd[f"norm_classifier.{j}.bias"])
            ref.head.weight.copy_(sd[f"head_classifier.{j}.weight"])
            ref.head.bias.copy_(sd[f"head_classifier.{j}.bias"])
    path = _save(tmp_path, {"model": {"module." + k: v for k, v in sd.items()}})
    opts = {"exit": str(exit_k), "classifiers": "2,3"} if exit_k else {}
    result = import_checkpoint(path, _wd_model(seed=1), options=opts)
    assert result.format == "wdpruning"
    assert result.notes["removed"]["heads"] == 3 and result.notes["removed"]["mlp_neurons"] > 0
    assert any("partial residual writes" in m for m in result.notes["not_removed"])
    x = images(3, seed=8)
    pruned, _, _ = compile_import(result, _wd_model(seed=1))
    assert diff(pruned(x), ref(x)) <= TOL
    assert len(pruned.blocks) == (exit_k or 3)
    from vitshrink.importers.verify import source_model

    assert diff(source_model(result, _wd_model(seed=1))(x), ref(x)) <= TOL  # the compile's own source check


def test_wdpruning_exit_needs_a_classifier(tmp_path):
    from vitshrink.errors import SpecError

    model = _wd_model()
    sd = dict(model.state_dict())
    sd["blocks.0.attn.qkv.head_saliency_scores"] = torch.randn(2, 1)
    sd["blocks.0.attn.qkv.threshold_head"] = torch.tensor([0.0])
    path = _save(tmp_path, {"model": sd})
    with pytest.raises(SpecError, match="exit"):
        import_checkpoint(path, _wd_model(seed=1), options={"exit": "2", "classifiers": "1"})


# ------------------------------------------------------------------------------------------ VTC-LFC


def _selector(x, attn, n_tokens, cutoff):
    """VTC-LFC's selector (models/deit/deit.py) restated: per-head weighted class attention times the
    low-frequency energy (FFT magnitude x Gaussian high-cut kernel, phase kept); kept tokens sorted back
    into their original order (the authors' topk(sorted=False) order is the backend's choice)."""
    B, N, C = x.shape
    if n_tokens == N - 1:
        return x
    cls_w = attn[:, :, 1:, 0].mean(-1).reshape(B, -1, 1)
    token_attn = attn[:, :, 0, 1:].mul(cls_w).mean(1) + attn[:, :, 1:, 1:].mean(2).mul(attn[:, :, 0, 0].reshape(B, -1, 1)).mean(1)
    img = x[:, 1:].permute(0, 2, 1)
    f = torch.fft.fft(img, dim=-1)
    mag, pha = f.abs(), torch.atan2(f.imag, f.real)
    L = mag.shape[-1]
    d0, m0 = (L * cutoff / 2) ** 2, (L - 1) / 2.0
    kernel = 1 - torch.exp(-((torch.arange(L) - m0) ** 2.0) / (2 * d0))
    mag = mag * kernel
    low = torch.fft.ifft(torch.complex(torch.cos(pha) * mag, torch.sin(pha) * mag), dim=-1)
    lfe = low.abs().sum(1) / img.abs().sum(1).mean(-1).unsqueeze(-1)
    idx = torch.topk(lfe * token_attn, n_tokens, dim=1).indices.sort(dim=1).values
    kept = torch.gather(x[:, 1:], 1, idx.unsqueeze(-1).expand(-1, -1, C))
    return torch.cat((x[:, :1], kept), dim=1)


def _cfged_forward(sd, cfg, token_cfg, x, cutoff, keep_scale):
    """The authors' ViT with dim_cfg (Attention_cfged, gamma_1/2, selector), restated for the anchor."""
    F = torch.nn.functional
    ln = lambda t, k: F.layer_norm(t, t.shape[-1:], sd[k + ".weight"], sd[k + ".bias"], 1e-6)  # noqa: E731
    lin = lambda t, k: F.linear(t, sd[k + ".weight"], sd.get(k + ".bias"))  # noqa: E731
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=8).flatten(2).transpose(1, 2)
    t = torch.cat((sd["cls_token"].expand(t.shape[0], -1, -1), t), 1) + sd["pos_embed"]
    for i in range(len(token_cfg)):
        p, H = f"blocks.{i}.", cfg[f"h.{i}"][0]
        cq, cv = cfg[f"q.{i}"][1], cfg[f"v.{i}"][1]
        B, N, _ = t.shape
        qkv = lin(ln(t, p + "norm1"), p + "attn.qkv")
        qk = qkv[:, :, : 2 * cq].reshape(B, N, 2, H, cq // H).permute(2, 0, 3, 1, 4)
        v = qkv[:, :, 2 * cq:].reshape(B, N, H, cv // H).permute(0, 2, 1, 3)
        scale = 64 ** -0.5 if keep_scale else (cq // H) ** -0.5
        attn = ((qk[0] * scale) @ qk[1].transpose(-2, -1)).softmax(-1)
        out = lin((attn @ v).transpose(1, 2).reshape(B, N, cv), p + "attn.proj")
        t = sd[p + "gamma_1"] * out + t
        t = _selector(t, attn, token_cfg[i], cutoff)
        h = lin(F.gelu(lin(ln(t, p + "norm2"), p + "mlp.fc1")), p + "mlp.fc2")
        t = sd[p + "gamma_2"] * h + t
    return lin(ln(t, "norm")[:, 0], "head")


def _vtc_checkpoint(seed, embed_keep, token_cfg, keep_scale=True):
    """A VTC-LFC checkpoint cut from a random small DeiT: per block a head subset, q/k channels (same for
    q and k) and v channels per head of unequal widths, MLP neurons, optionally fewer embed channels."""
    model = small_vit(seed=seed)
    g = torch.Generator().manual_seed(seed)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    D, H, hd = 48, 4, 12
    e = torch.randperm(D, generator=g)[:embed_keep].sort().values
    cfg = {"embed": (3, embed_keep), "head": (embed_keep, 10)}
    out = {"cls_token": sd["cls_token"][..., e], "pos_embed": sd["pos_embed"][..., e],
           "patch_embed.proj.weight": sd["patch_embed.proj.weight"][e], "patch_embed.proj.bias": sd["patch_embed.proj.bias"][e],
           "norm.weight": sd["norm.weight"][e], "norm.bias": sd["norm.bias"][e], "head.weight": sd["head.weight"][:, e],
           "head.bias": sd["head.bias"]}
    for i in range(4):
        p = f"blocks.{i}."
        H2, qkw, vw = (3, 5, 7) if i % 2 else (4, 12, 9)
        heads = torch.randperm(H, generator=g)[:H2].sort().values
        qk_rows = torch.cat([h * hd + torch.randperm(hd, generator=g)[:qkw].sort().values for h in heads])
        v_rows = torch.cat([h * hd + torch.randperm(hd, generator=g)[:vw].sort().values for h in heads])
        W, b = sd[p + "attn.qkv.weight"].view(3, H * hd, D), sd[p + "attn.qkv.bias"].view(3, H * hd)
        out[p + "attn.qkv.weight"] = torch.cat([W[0][qk_rows], W[1][qk_rows], W[2][v_rows]])[:, e]
        out[p + "attn.qkv.bias"] = torch.cat([b[0][qk_rows], b[1][qk_rows], b[2][v_rows]])
        out[p + "attn.proj.weight"] = sd[p + "attn.proj.weight"][e][:, v_rows]
        out[p + "attn.proj.bias"] = sd[p + "attn.proj.bias"][e]
        n = torch.randperm(96, generator=g)[:40 + 10 * i].sort().values
        out[p + "mlp.fc1.weight"], out[p + "mlp.fc1.bias"] = sd[p + "mlp.fc1.weight"][n][:, e], sd[p + "mlp.fc1.bias"][n]
        out[p + "mlp.fc2.weight"], out[p + "mlp.fc2.bias"] = sd[p + "mlp.fc2.weight"][e][:, n], sd[p + "mlp.fc2.bias"][e]
        for k in ("norm1", "norm2"):
            out[f"{p}{k}.weight"], out[f"{p}{k}.bias"] = sd[f"{p}{k}.weight"][e], sd[f"{p}{k}.bias"][e]
        out[p + "gamma_1"] = 1 + 0.2 * torch.randn(embed_keep, generator=g)
        out[p + "gamma_2"] = 1 + 0.2 * torch.randn(embed_keep, generator=g)
        cfg.update({f"h.{i}": (H2,), f"q.{i}": (embed_keep, H2 * qkw), f"k.{i}": (embed_keep, H2 * qkw),
                    f"v.{i}": (embed_keep, H2 * vw), f"proj.{i}": (H2 * vw, embed_keep), f"fc1.{i}": (embed_keep, len(n)),
                    f"fc2.{i}": (len(n), embed_keep)})
    return {"model": out, "dim_cfg": cfg, "token_cfg": token_cfg, "i_mask": None, "o_mask": None}, out, cfg


@pytest.mark.parametrize("case", ["channels", "channels+embed+tokens", "pruned scale"])
def test_vtc_lfc(tmp_path, case):
    from argparse import Namespace

    embed, tokens, keep = {"channels": (48, [16] * 4, True), "channels+embed+tokens": (40, [16, 12, 12, 7], True),
                           "pruned scale": (48, [16] * 4, False)}[case]
    ckpt, sd, cfg = _vtc_checkpoint(31, embed, tokens)
    ckpt["args"] = Namespace(keep_qk_scale=keep, cutoff_token=0.85)  # recorded, never instantiated
    path = _save(tmp_path, ckpt)
    result = import_checkpoint(path, small_vit(seed=1))
    assert result.format == "vtc-lfc"
    x = images(3, seed=9)
    pruned, _, _ = compile_import(result, small_vit(seed=1))
    assert diff(pruned(x), _cfged_forward(sd, cfg, tokens, x, 0.15, keep)) <= TOL
    assert [b.attn.num_heads for b in pruned.blocks] == [4, 3, 4, 3]
    if case == "channels":
        from vitshrink.importers.verify import source_model

        assert diff(source_model(result, small_vit(seed=1))(x), _cfged_forward(sd, cfg, tokens, x, 0.15, keep)) <= TOL
    if case == "channels+embed+tokens":
        assert sorted(result.spec.settings["dynamic_tokens"]) == ["1", "3"]
