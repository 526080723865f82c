"""Codegen for Swin: :class:`~vitshrink.ir.swin.SwinIR` -> :class:`PrunedSwin`.

The blocks reuse the shared :class:`~vitshrink.codegen.layers.Attention` (per-head widths, one batched
attention per group of equal heads) with a constant logit bias, and the same
:class:`~vitshrink.codegen.layers.Mlp` and :class:`~vitshrink.codegen.layers.Constant`. What differs from timm's Swin is the token layout, chosen for
speed on CPU engines:

- Inside a stage the residual stream stays in the *window order* of the block that runs (windows
  one after another, tokens row-major inside a window, after the block's cyclic shift). LayerNorm and
  the MLP are per token, so only attention cares about the order; moving from one block's order to
  the next is ONE constant Gather -- timm's roll, window partition, window reverse and roll back
  (slices, concats and two transposes per block in ONNX) disappear. The stream goes back to raster
  order only before a patch merging; average pooling does not care about the order.
- The relative position bias and the shifted-window mask are added as one constant
  [nW, heads, A, A] per block (folded by the exporter into a single initializer).

Both are exact re-layouts: the same tokens meet the same keys with the same bias.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..ir.swin import SwinIR
from .attention import Attention
from .layers import Constant, PrunedModel, block_state_dict, mlp_config, mlp_module

ARCH_FORMAT = "vitshrink.swin-arch/1"


def window_order(resolution: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]) -> list[int]:
    """Raster indices of the tokens in window order after a cyclic shift by ``-shift`` (timm's
    ``torch.roll(x, (-sh, -sw))`` then window partition): slot k of the result holds token ``order[k]``."""
    H, W = resolution
    wh, ww = window
    sh, sw = shift
    order = []
    for wi in range(H // wh):
        for wj in range(W // ww):
            for r in range(wh):
                for c in range(ww):
                    rr, cc = (wi * wh + r + sh) % H, (wj * ww + c + sw) % W  # rolled position -> original
                    order.append(rr * W + cc)
    return order


def window_mask(resolution: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]) -> Tensor:
    """timm's shifted-window mask [nW, A, A]: -100 between tokens of one window that come from
    different regions of the rolled grid, 0 elsewhere (Swin, Liu et al. 2021, sec. 3.2)."""
    H, W = resolution
    wh, ww = window
    sh, sw = shift

    def region(p: int, size: int, w: int, s: int) -> int:
        return 0 if p < size - w else (1 if p < size - s else 2)

    masks = []
    for wi in range(H // wh):
        for wj in range(W // ww):
            reg = torch.tensor([region(wi * wh + r, H, wh, sh) * 3 + region(wj * ww + c, W, ww, sw)
                                for r in range(wh) for c in range(ww)], device="cpu")  # constants: never on meta
            masks.append((reg[None, :] != reg[:, None]).float() * -100.0)
    return torch.stack(masks)


def _reorder(src: Optional[list[int]], dst: Optional[list[int]]) -> Optional[list[int]]:
    """Gather index taking a stream in order ``src`` to order ``dst`` (None: raster); None if equal."""
    n = len(src if src is not None else dst or [])
    src = src if src is not None else list(range(n))
    dst = dst if dst is not None else list(range(n))
    if src == dst:
        return None
    where = {t: p for p, t in enumerate(src)}
    return [where[t] for t in dst]


class SwinBlock(nn.Module):
    """A Swin block on a [B, L, C] stream: optional reorder (one Gather), then pre-norm window
    attention with the constant bias and the MLP, over the windows [B*nW, A, C]."""

    def __init__(self, dim: int, cfg: dict, stage: dict):
        super().__init__()
        self.area = stage["window"][0] * stage["window"][1]
        if cfg.get("reorder") is not None:
            self.register_buffer("reorder", torch.tensor(cfg["reorder"], dtype=torch.long, device="cpu"), persistent=False)
        else:
            self.reorder = None
        self.norm1 = nn.LayerNorm(dim, eps=cfg["norm1_eps"])
        H = len(cfg["heads"])
        if H:
            self.attn = Attention(dim, cfg["heads"], cfg["scale"], cfg["qkv_bias"], cfg["proj_bias"],
                                  cosine=cfg.get("cosine", False))
            self.rel_bias = nn.Parameter(torch.zeros(H, self.area, self.area))
        else:
            self.attn = Constant(dim, cfg["proj_bias"])
            self.rel_bias = None
        if H and cfg["shifted"]:
            mask = window_mask(tuple(stage["resolution"]), tuple(stage["window"]), tuple(stage["shift"]))
            self.register_buffer("mask", mask, persistent=False)
        else:
            self.mask = None
        self.norm2 = nn.LayerNorm(dim, eps=cfg["norm2_eps"])
        self.mlp = mlp_module(dim, cfg)
        self.post_norm = cfg.get("post_norm", False)
        eps = cfg.get("norm_out_eps")
        self.norm_out = nn.LayerNorm(dim, eps=eps) if eps is not None else None

    def forward(self, x: Tensor) -> Tensor:
        """x [B, L, C] in the previous block's order -> [B, L, C] in this block's window order."""
        if self.reorder is not None:
            x = x.index_select(1, self.reorder)
        shape = x.shape
        f = x.reshape(-1, self.area, shape[-1])  # [B*nW, A, C]: the windows of every image
        bias = None
        if self.rel_bias is not None:
            if self.mask is None:
                bias = self.rel_bias
            else:  # [nW, H, A, A]; reshape, not unsqueeze: the exporter folds it without warnings
                H, A = self.rel_bias.shape[0], self.area
                bias = self.rel_bias.reshape(1, H, A, A) + self.mask.reshape(-1, 1, A, A)
        if self.post_norm:  # Swin V2: res-post-norm
            f = f + self.norm1(self.attn(f, self.area, bias=bias))
            f = f + self.norm2(self.mlp(f))
        else:
            f = f + self.attn(self.norm1(f), self.area, bias=bias)
            f = f + self.mlp(self.norm2(f))
        if self.norm_out is not None:
            f = self.norm_out(f)
        return f.reshape(shape)


class PatchMerging(nn.Module):
    """2x2 neighbours concatenated as (h0w0, h1w0, h0w1, h1w1) x C, LayerNorm(4C), Linear(4C -> C_out)
    (``norm_after``, Swin V2: the Linear, then LayerNorm(C_out)). [B, H*W, C] raster -> [B, H*W/4, C_out] raster."""

    def __init__(self, in_dim: int, out_dim: int, resolution: tuple[int, int], norm_eps: float, bias: bool,
                 norm_after: bool = False):
        super().__init__()
        self.resolution = tuple(resolution)  # of the input grid
        self.norm_after = norm_after
        self.norm = nn.LayerNorm(out_dim if norm_after else 4 * in_dim, eps=norm_eps)
        self.reduction = nn.Linear(4 * in_dim, out_dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        H, W = self.resolution
        C = x.shape[-1]
        x = x.reshape(-1, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).reshape(-1, (H // 2) * (W // 2), 4 * C)
        return self.norm(self.reduction(x)) if self.norm_after else self.reduction(self.norm(x))


class SwinStage(nn.Module):
    def __init__(self, cfg: dict, prev_dim: Optional[int], prev_resolution):
        super().__init__()
        m = cfg["merge"]
        self.merge = None if m is None else PatchMerging(prev_dim, cfg["dim"], prev_resolution, m["norm_eps"], m["bias"],
                                                    m.get("norm_after", False))
        self.blocks = nn.ModuleList(SwinBlock(cfg["dim"], b, cfg) for b in cfg["blocks"])
        if cfg.get("to_raster") is not None:
            self.register_buffer("to_raster", torch.tensor(cfg["to_raster"], dtype=torch.long, device="cpu"), persistent=False)
        else:
            self.to_raster = None

    def forward(self, x: Tensor) -> Tensor:
        if self.merge is not None:
            x = self.merge(x)
        for blk in self.blocks:
            x = blk(x)
        return x if self.to_raster is None else x.index_select(1, self.to_raster)


class PrunedSwin(PrunedModel):
    """A Swin classifier of arbitrary (pruned) widths, built from ``arch`` (:func:`architecture`).

    forward: images [B, in_chans, H, W] float32 -> logits [B, num_classes].
    """

    ARCH_FORMAT = ARCH_FORMAT

    def __init__(self, arch: dict):
        super().__init__(arch)
        st = arch["stages"]
        p = arch["patch_size"]
        self.patch_embed = nn.Conv2d(arch["in_chans"], st[0]["dim"], kernel_size=p, stride=p, bias=arch["patch_bias"])
        self.patch_norm = nn.LayerNorm(st[0]["dim"], eps=arch["patch_norm_eps"])
        self.stages = nn.ModuleList(
            SwinStage(s, st[i - 1]["dim"] if i else None, st[i - 1]["resolution"] if i else None) for i, s in enumerate(st))
        self.norm = nn.LayerNorm(st[-1]["dim"], eps=arch["norm_eps"]) if arch["norm_eps"] is not None else None
        self.head = nn.Linear(st[-1]["dim"], arch["num_classes"], bias=arch["head_bias"])

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_norm(self.patch_embed(x).flatten(2).transpose(1, 2))  # [B, L, C0] raster order
        for stage in self.stages:
            x = stage(x)
        x = x if self.norm is None else self.norm(x)
        return self.head(x.mean(1))  # average pooling: any token order


def architecture(ir: SwinIR) -> dict:
    """The JSON-serialisable architecture of a Swin IR (widths, window orders, provenance ids)."""
    stages = []
    for si, s in enumerate(ir.stages):
        blocks, order = [], None  # a stage starts in raster order
        for b in ir.stage_blocks(si):
            a, m = b.attn, b.mlp
            shift = ir.shift_of(b.source_index)
            target = window_order(s.resolution, s.window, shift)
            target = None if target == list(range(len(target))) else target
            blocks.append({
                "source_index": b.source_index, "name": ir.block_key(b.source_index), "shifted": any(shift),
                "reorder": _reorder(order, target),
                "heads": [[qk, v] for qk, v in zip(a.qk_dims, a.v_dims)], "scale": a.scale,
                "qkv_bias": a.q_bias is not None, "proj_bias": a.proj_bias is not None,
                "cosine": a.logit_scale is not None, "post_norm": b.post_norm,
                "norm_out_eps": None if b.norm_out is None else b.norm_out.eps,
                **mlp_config(m),
                "norm1_eps": b.norm1.eps, "norm2_eps": b.norm2.eps,
                "ids": {"heads": list(a.head_ids), "qk": [list(c) for c in a.qk_ids], "v": [list(c) for c in a.v_ids],
                        "mlp": list(m.hidden_ids)},
            })
            order = target
        last = si == len(ir.stages) - 1
        stages.append({
            "index": s.index, "dim": s.dim, "embed_ids": list(s.embed_ids), "resolution": list(s.resolution),
            "window": list(s.window), "shift": list(s.shift),
            "merge": None if s.merge is None else {"norm_eps": s.merge.norm.eps, "bias": s.merge.reduction_bias is not None,
                                                   "norm_after": s.merge.norm_after},
            "blocks": blocks, "to_raster": None if last else _reorder(order, None),
        })
    return {
        "format": ARCH_FORMAT, "family": ir.meta.get("family", "swin"), "name": ir.name, "img_size": list(ir.img_size),
        "patch_size": list(ir.patch_size), "in_chans": ir.in_chans, "patch_bias": ir.patch_bias is not None,
        "patch_norm_eps": ir.patch_norm.eps, "stages": stages, "norm_eps": None if ir.norm is None else ir.norm.eps,
        "num_classes": ir.num_classes, "head_bias": ir.head.bias is not None,
    }


def state_dict(ir: SwinIR) -> dict[str, Tensor]:
    """The :class:`PrunedSwin` state dict holding the weights of ``ir``."""
    sd: dict[str, Tensor] = {"patch_embed.weight": ir.patch_weight,
                             "patch_norm.weight": ir.patch_norm.weight, "patch_norm.bias": ir.patch_norm.bias}
    if ir.patch_bias is not None:
        sd["patch_embed.bias"] = ir.patch_bias
    for si, s in enumerate(ir.stages):
        p = f"stages.{si}."
        if s.merge is not None:
            sd[p + "merge.norm.weight"], sd[p + "merge.norm.bias"] = s.merge.norm.weight, s.merge.norm.bias
            sd[p + "merge.reduction.weight"] = s.merge.reduction_weight
            if s.merge.reduction_bias is not None:
                sd[p + "merge.reduction.bias"] = s.merge.reduction_bias
        for j, b in enumerate(ir.stage_blocks(si)):
            sd.update(block_state_dict(b, f"{p}blocks.{j}."))
            if b.norm_out is not None:
                sd[f"{p}blocks.{j}.norm_out.weight"], sd[f"{p}blocks.{j}.norm_out.bias"] = b.norm_out.weight, b.norm_out.bias
            if b.attn.num_heads:
                sd[f"{p}blocks.{j}.rel_bias"] = b.attn.rel_bias
            if b.attn.logit_scale is not None and b.attn.num_heads:
                sd[f"{p}blocks.{j}.attn.logit_scale"] = b.attn.logit_scale
    if ir.norm is not None:
        sd["norm.weight"], sd["norm.bias"] = ir.norm.weight, ir.norm.bias
    sd["head.weight"] = ir.head.weight
    if ir.head.bias is not None:
        sd["head.bias"] = ir.head.bias
    return {k: v.detach().contiguous().float() for k, v in sd.items()}


def build_module(ir: SwinIR, share: bool = False, trace: bool = False) -> PrunedSwin:
    """SwinIR -> :class:`PrunedSwin` in eval mode (``share``: parameters are the IR's tensors; ``trace``
    has nothing to trace: Swin keeps every token)."""
    with torch.device("meta"):
        model = PrunedSwin(architecture(ir))
    sd = state_dict(ir)
    if not share:
        sd = {k: v.clone() for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()
