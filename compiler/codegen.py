"""Codegen: IR -> ``nn.Module`` (:class:`PrunedViT`), and the pruned checkpoint on disk.

:class:`PrunedViT` is built from a JSON-serialisable *architecture* (``arch``: per-block heads with
their q/k and v widths, MLP hidden size, ...) and a state dict. It is vitshrink's own class, so a
pruned model reloads with :func:`load` without timm, the original model class or any patching, and it
is an ordinary module: it can be fine-tuned, scripted or exported.

Checkpoint directory layout (written by :func:`save`):

- ``model.safetensors``: the state dict of :class:`PrunedViT`
- ``arch.json``: ``{"format": "vitshrink.arch/1", ...}`` (:func:`architecture`)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import VitshrinkError
from .ir import ViTIR

ARCH_FORMAT = "vitshrink.arch/1"


# --------------------------------------------------------------------------------------- modules


def head_groups(heads: list[list[int]]) -> list[tuple[int, int, int]]:
    """Runs of consecutive heads with equal widths: ``[(num_heads, qk_dim, v_dim), ...]``."""
    groups: list[list[int]] = []
    for qk, v in heads:
        if groups and groups[-1][1] == qk and groups[-1][2] == v:
            groups[-1][0] += 1
        else:
            groups.append([1, qk, v])
    return [tuple(g) for g in groups]


class Attention(nn.Module):
    """Multi-head self-attention with per-head q/k and v widths, on a flat token stream.

    Input and output are [B*N, D] (``tokens`` = N given): linear layers then run as one Gemm with
    the bias fused, the fastest form for ONNX Runtime at batch 1. ``qkv`` projects to
    [B*N, 2*sum(qk) + sum(v)] laid out as [q of all heads | k | v]; heads of equal width (a *group*,
    see :func:`head_groups`) run as one batched attention [B, h, N, d].
    """

    def __init__(self, dim: int, heads: list[list[int]], scale: float, qkv_bias: bool, proj_bias: bool):
        super().__init__()
        self.groups = head_groups(heads)
        self.scale = scale
        self.sum_qk = sum(qk for qk, _ in heads)
        self.sum_v = sum(v for _, v in heads)
        self.qkv = nn.Linear(dim, 2 * self.sum_qk + self.sum_v, bias=qkv_bias)
        self.proj = nn.Linear(self.sum_v, dim, bias=proj_bias)
        self.uniform = len(self.groups) == 1 and self.groups[0][1] == self.groups[0][2]

    @staticmethod
    def _attend(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        # [B, h, N, dq] x [B, h, N, dq] x [B, h, N, dv] -> [B, h, N, dv]
        attn = (q * scale) @ k.transpose(-2, -1)
        return attn.softmax(dim=-1) @ v

    def forward(self, x: Tensor, tokens: int) -> Tensor:
        y = self.qkv(x)
        if self.uniform:
            h, d, _ = self.groups[0]
            q, k, v = y.reshape(-1, tokens, 3 * h, d).transpose(1, 2).split(h, dim=1)
            o = self._attend(q, k, v, self.scale).transpose(1, 2).reshape(-1, h * d)
            return self.proj(o)
        outs = []
        qo, ko, vo = 0, self.sum_qk, 2 * self.sum_qk
        for h, dq, dv in self.groups:
            q = y[:, qo:qo + h * dq].reshape(-1, tokens, h, dq).transpose(1, 2)
            k = y[:, ko:ko + h * dq].reshape(-1, tokens, h, dq).transpose(1, 2)
            v = y[:, vo:vo + h * dv].reshape(-1, tokens, h, dv).transpose(1, 2)
            outs.append(self._attend(q, k, v, self.scale).transpose(1, 2).reshape(-1, h * dv))
            qo, ko, vo = qo + h * dq, ko + h * dq, vo + h * dv
        return self.proj(torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0])


class Constant(nn.Module):
    """A sub-layer with nothing left but its output bias (every head or every MLP neuron removed):
    returns ``bias`` [D] (or 0), broadcast by the residual add."""

    def __init__(self, dim: int, bias: bool):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: Tensor, tokens: int = 0) -> Tensor:
        return self.bias if self.bias is not None else x.new_zeros(())


class Mlp(nn.Module):
    """fc1 [hidden, D] -> exact GELU -> fc2 [D, hidden]."""

    def __init__(self, dim: int, hidden: int, bias1: bool, bias2: bool):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias1)
        self.fc2 = nn.Linear(hidden, dim, bias=bias2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, cfg: dict):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=cfg["norm1_eps"])
        if cfg["heads"]:
            self.attn = Attention(dim, cfg["heads"], cfg["scale"], cfg["qkv_bias"], cfg["proj_bias"])
        else:
            self.attn = Constant(dim, cfg["proj_bias"])
        self.norm2 = nn.LayerNorm(dim, eps=cfg["norm2_eps"])
        if cfg["mlp_hidden"]:
            self.mlp = Mlp(dim, cfg["mlp_hidden"], cfg["fc1_bias"], cfg["fc2_bias"])
        else:
            self.mlp = Constant(dim, cfg["fc2_bias"])

    def forward(self, x: Tensor, tokens: int) -> Tensor:
        """x: [B*N, D] (N = ``tokens``) -> [B*N, D]."""
        x = x + self.attn(self.norm1(x), tokens)
        return x + self.mlp(self.norm2(x))


class PrunedViT(nn.Module):
    """A ViT/DeiT classifier of arbitrary (pruned) widths, built from an ``arch`` dict.

    forward: images [B, in_chans, H, W] float32 -> logits [B, num_classes]. The final norm is applied
    only to the prefix tokens the classifiers read (LayerNorm is per token: same logits, less work).
    """

    def __init__(self, arch: dict):
        super().__init__()
        if arch.get("format") != ARCH_FORMAT:
            raise VitshrinkError(f"architecture format {arch.get('format')!r} is not {ARCH_FORMAT}")
        self.arch = arch
        D = arch["embed_dim"]
        p = arch["patch_size"]
        self.patch_embed = nn.Conv2d(arch["in_chans"], D, kernel_size=p, stride=p, bias=arch["patch_bias"])
        self.prefix_tokens = nn.Parameter(torch.zeros(1, len(arch["prefix"]), D))
        self.pos_embed = nn.Parameter(torch.zeros(1, arch["num_tokens"], D))
        self.blocks = nn.ModuleList(Block(D, b) for b in arch["blocks"])
        self.norm = nn.LayerNorm(D, eps=arch["norm_eps"])
        C = arch["num_classes"]
        self.heads = nn.ModuleList(nn.Linear(D, C, bias=h["bias"]) for h in arch["heads"])
        self.head_tokens = [h["token"] for h in arch["heads"]]
        self.num_read = max(self.head_tokens) + 1

    def forward_features(self, x: Tensor) -> Tensor:
        """images [B, C, H, W] -> normalised prefix tokens [B, num_read, D]."""
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.prefix_tokens.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        N, D = x.shape[1], x.shape[2]
        x = x.reshape(-1, D)  # the blocks run on a flat [B*N, D] token stream
        for blk in self.blocks:
            x = blk(x, N)
        return self.norm(x.reshape(-1, N, D)[:, :self.num_read])

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_features(x)
        logits = self.heads[0](x[:, self.head_tokens[0]])
        if len(self.heads) == 1:
            return logits
        for head, t in zip(self.heads[1:], self.head_tokens[1:]):
            logits = logits + head(x[:, t])
        return logits / len(self.heads)


# --------------------------------------------------------------------------------------- IR -> module


def architecture(ir: ViTIR) -> dict:
    """The JSON-serialisable architecture of ``ir`` (widths, biases, provenance ids)."""
    blocks = []
    for b in ir.blocks:
        a, m = b.attn, b.mlp
        blocks.append({
            "source_index": b.source_index,
            "heads": [[qk, v] for qk, v in zip(a.qk_dims, a.v_dims)],
            "scale": a.scale,
            "qkv_bias": a.q_bias is not None,
            "proj_bias": a.proj_bias is not None,
            "mlp_hidden": m.hidden,
            "fc1_bias": m.fc1_bias is not None,
            "fc2_bias": m.fc2_bias is not None,
            "norm1_eps": b.norm1.eps,
            "norm2_eps": b.norm2.eps,
            "ids": {
                "heads": list(a.head_ids),
                "qk": [list(c) for c in a.qk_ids],
                "v": [list(c) for c in a.v_ids],
                "mlp": list(m.hidden_ids),
            },
        })
    return {
        "format": ARCH_FORMAT,
        "name": ir.name,
        "img_size": list(ir.img_size),
        "patch_size": list(ir.patch_size),
        "in_chans": ir.in_chans,
        "embed_dim": ir.embed_dim,
        "embed_ids": list(ir.embed_ids),
        "patch_bias": ir.patch_bias is not None,
        "prefix": [t.name for t in ir.prefix],
        "num_tokens": ir.num_tokens,
        "num_classes": ir.num_classes,
        "blocks": blocks,
        "norm_eps": ir.norm.eps,
        "heads": [{"name": h.name, "token": h.token, "bias": h.bias is not None} for h in ir.heads],
        "exit_after": ir.exit_after,
    }


def state_dict(ir: ViTIR) -> dict[str, Tensor]:
    """The :class:`PrunedViT` state dict holding the weights of ``ir``."""
    D = ir.embed_dim
    sd: dict[str, Tensor] = {"patch_embed.weight": ir.patch_weight}
    if ir.patch_bias is not None:
        sd["patch_embed.bias"] = ir.patch_bias
    sd["prefix_tokens"] = torch.stack([t.value for t in ir.prefix]).reshape(1, -1, D)
    sd["pos_embed"] = ir.pos_embed.reshape(1, -1, D)
    for j, b in enumerate(ir.blocks):
        p, a, m = f"blocks.{j}.", b.attn, b.mlp
        sd[p + "norm1.weight"], sd[p + "norm1.bias"] = b.norm1.weight, b.norm1.bias
        sd[p + "norm2.weight"], sd[p + "norm2.bias"] = b.norm2.weight, b.norm2.bias
        if a.num_heads:
            sd[p + "attn.qkv.weight"] = torch.cat([a.q_weight, a.k_weight, a.v_weight])
            if a.q_bias is not None:
                sd[p + "attn.qkv.bias"] = torch.cat([a.q_bias, a.k_bias, a.v_bias])
            sd[p + "attn.proj.weight"] = a.proj_weight
            if a.proj_bias is not None:
                sd[p + "attn.proj.bias"] = a.proj_bias
        elif a.proj_bias is not None:
            sd[p + "attn.bias"] = a.proj_bias
        if m.hidden:
            sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc2.weight"] = m.fc1_weight, m.fc2_weight
            if m.fc1_bias is not None:
                sd[p + "mlp.fc1.bias"] = m.fc1_bias
            if m.fc2_bias is not None:
                sd[p + "mlp.fc2.bias"] = m.fc2_bias
        elif m.fc2_bias is not None:
            sd[p + "mlp.bias"] = m.fc2_bias
    sd["norm.weight"], sd["norm.bias"] = ir.norm.weight, ir.norm.bias
    for k, h in enumerate(ir.heads):
        sd[f"heads.{k}.weight"] = h.weight
        if h.bias is not None:
            sd[f"heads.{k}.bias"] = h.bias
    return {k: v.detach().contiguous().float() for k, v in sd.items()}


def build_module(ir: ViTIR, share: bool = False) -> PrunedViT:
    """IR -> :class:`PrunedViT` in eval mode.

    Args:
        share: the module's parameters *are* the IR's tensors where their layout allows (no copy;
            training the module then changes the IR). Default: independent copies.
    """
    with torch.device("meta"):  # no throw-away random init: the weights come from the IR
        model = PrunedViT(architecture(ir))
    sd = state_dict(ir)
    if not share:
        sd = {k: v.clone() for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()


# --------------------------------------------------------------------------------------- disk


def save(model: PrunedViT, directory: str | Path) -> Path:
    """Write ``model`` as ``arch.json`` + ``model.safetensors`` into ``directory`` (created)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "arch.json").write_text(json.dumps(model.arch, indent=1) + "\n")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"),
              metadata={"format": ARCH_FORMAT})
    return directory


def load(directory: str | Path, arch: Optional[dict] = None) -> PrunedViT:
    """Rebuild a pruned model saved by :func:`save` (or by ``vitshrink compile``: its ``DIR/model``).

    Needs only vitshrink and torch: no timm, no original model class.

    Raises:
        VitshrinkError: the directory lacks ``arch.json`` / ``model.safetensors`` or they disagree.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    if (directory / "model" / "arch.json").is_file():  # a `vitshrink compile` output directory
        directory = directory / "model"
    for f in ("arch.json", "model.safetensors"):
        if not (directory / f).is_file():
            raise VitshrinkError(f"'{directory / f}': no such file (not a vitshrink pruned checkpoint)")
    arch = arch or json.loads((directory / "arch.json").read_text())
    model = PrunedViT(arch)
    try:
        model.load_state_dict(load_file(str(directory / "model.safetensors")), strict=True)
    except RuntimeError as e:
        raise VitshrinkError(f"'{directory}': weights do not match arch.json ({str(e).splitlines()[0]})") from e
    return model.eval()
