"""Prune a timm DeiT with Torch-Pruning, as its ViT example does, and save it for `vitshrink compile`.

    python examples/torch_pruning_deit.py --model deit_tiny_patch16_224 --out runs/tp.pth
    vitshrink compile deit_tiny_patch16_224 --checkpoint runs/tp.pth --out runs/tp

The settings of Torch-Pruning's examples/transformers/prune_timm_vit.py (L1 group importance, one
uniform ratio, head_dim pruning or whole heads, the classifier left alone), with two things that example
gets wrong today: its attention forward lacks the ``attn_mask`` argument timm >= 1.0.20 blocks pass, and
its ``--save_as tp.pth`` calls ``os.makedirs('')``, and the file it saves keeps the patched forward
(a bound method of the script), so a plain ``torch.load`` elsewhere fails ("'Attention' object has no
attribute 'attention_forward'"). Here timm's own ``Attention.forward`` is put back before saving, with
``num_heads`` / ``head_dim`` / ``attn_dim`` / ``scale`` of the pruned widths (checked to compute what the
patched model computed): ``torch.load(path, weights_only=False)`` works in any script that imports timm.
No fine-tuning here: the point is the file.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import vitshrink

vitshrink.ensure_timm_importable()  # before timm: torchvision's ops on a CPU-only torch (see the README)

import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torch_pruning as tp  # noqa: E402
from timm.models.vision_transformer import Attention  # noqa: E402


def attention_forward(self, x, attn_mask=None, is_causal=False):
    """timm's Attention by the pruned ``num_heads`` / ``head_dim`` (what the example patches in), taking the
    arguments timm's blocks pass. SDPA without ``scale=``: the pruned head_dim sets the softmax scale (as in
    the example; vitshrink's importer folds it)."""
    B, N, _ = x.shape
    qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)
    x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return self.proj(x.transpose(1, 2).reshape(B, N, -1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deit_tiny_patch16_224")
    ap.add_argument("--checkpoint", default=None, help="dense weights (.safetensors); random weights when omitted")
    ap.add_argument("--ratio", type=float, default=0.5, help="Torch-Pruning's pruning_ratio")
    ap.add_argument("--prune-heads", action="store_true", help="remove whole heads instead of head_dim channels")
    ap.add_argument("--out", default="tp.pth")
    a = ap.parse_args()

    model = timm.create_model(a.model, pretrained=False).eval()
    if a.checkpoint:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(a.checkpoint))
    num_heads = {}
    for m in model.modules():
        if isinstance(m, Attention):
            m.forward = attention_forward.__get__(m, Attention)
            num_heads[m.qkv] = m.num_heads
    pruner = tp.pruner.BasePruner(
        model, torch.randn(1, 3, 224, 224), importance=tp.importance.GroupMagnitudeImportance(p=1),
        pruning_ratio=a.ratio, ignored_layers=[model.head], num_heads=num_heads,
        prune_num_heads=a.prune_heads, prune_head_dims=not a.prune_heads, head_pruning_ratio=0.5, round_to=1)
    pruner.step()
    for m in model.modules():  # the bookkeeping the example does after the step
        if isinstance(m, Attention):
            m.num_heads = pruner.num_heads[m.qkv]
            m.head_dim = m.qkv.out_features // (3 * m.num_heads)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        patched = model(x)
    for m in model.modules():  # timm's own forward, by the pruned widths: the file reloads without this script
        if isinstance(m, Attention):
            del m.forward
            m.attn_dim, m.scale = m.num_heads * m.head_dim, m.head_dim ** -0.5
    with torch.no_grad():
        diff = float((model(x) - patched).abs().max())
    assert diff <= 1e-5, f"timm's Attention by the pruned widths differs from the patched one by {diff:.3g}"
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)  # the example's os.makedirs('') fails on a bare file name
    torch.save(model, out)
    print(f"wrote {out}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
