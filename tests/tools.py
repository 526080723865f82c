"""Artifacts made by the real pruning tools, as their users make them (used by the importer tests and
benchmarks/importers.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def tp_attention_forward(self, x, attn_mask=None, is_causal=False):
    """Torch-Pruning's examples/transformers/prune_timm_vit.py forward for timm's Attention: reshape by
    the pruned ``num_heads``/``head_dim``, SDPA without ``scale=`` when ``fused_attn`` (so the pruned
    head_dim sets the scale), ``q * self.scale`` otherwise. ``attn_mask``/``is_causal`` accepted because
    timm >= 1.0.20 blocks pass them (the example predates that)."""
    B, N, C = x.shape
    qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)
    if self.fused_attn:
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p)
    else:
        q = q * self.scale
        x = (q @ k.transpose(-2, -1)).softmax(dim=-1) @ v
    x = x.transpose(1, 2).reshape(B, N, -1)
    return self.proj_drop(self.proj(x))


def torch_pruning_vit(model: torch.nn.Module, ratio: float = 0.5, prune_num_heads: bool = False,
                      bottleneck: bool = False, fused_attn: bool = True, input_size: int = 224):
    """Prune a timm ViT in place with Torch-Pruning exactly as its ViT example does (L1 group importance,
    uniform ratio, head_dim pruning by default or whole heads, classifier ignored; ``bottleneck`` keeps
    the embedding, pruning only the inside of attention and MLP). Returns (model, pruner)."""
    import torch_pruning as tp
    from timm.models.vision_transformer import Attention, Mlp

    example = torch.randn(1, 3, input_size, input_size)
    num_heads, ignored = {}, [model.head]
    for m in model.modules():
        if isinstance(m, Attention):
            m.forward = tp_attention_forward.__get__(m, Attention)
            m.fused_attn = fused_attn
            num_heads[m.qkv] = m.num_heads
        if bottleneck and isinstance(m, Mlp):
            ignored.append(m.fc2)
    if bottleneck:
        ignored += [m.proj for m in model.modules() if isinstance(m, Attention)]
    pruner = tp.pruner.BasePruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=1),
                                  pruning_ratio=ratio, ignored_layers=ignored, num_heads=num_heads,
                                  prune_num_heads=prune_num_heads, prune_head_dims=not prune_num_heads,
                                  head_pruning_ratio=0.5, round_to=1)
    for g in pruner.step(interactive=True):
        g.prune()
    for m in model.modules():
        if isinstance(m, Attention):
            m.num_heads = pruner.num_heads[m.qkv]
            m.head_dim = m.qkv.out_features // (3 * m.num_heads)
    return model.eval(), pruner


def torch_pruning_swin(model: torch.nn.Module, ratio: float = 0.5, input_size: int = 64):
    """Prune a timm Swin in place with Torch-Pruning as its Swin example does for transformers' Swin
    (examples/transformers/prune_swin.py), on timm's modules: magnitude importance, uniform ratio, a
    custom PatchMerging pruner removing the four copies of each channel together, classifier ignored,
    num_heads given per qkv. Returns (model, pruner)."""
    import torch_pruning as tp
    from timm.models.swin_transformer import PatchMerging, WindowAttention

    class MergePruner(tp.BasePruningFunc):
        def prune_out_channels(self, layer, idxs):
            tp.prune_linear_out_channels(layer.reduction, idxs)
            return layer

        def prune_in_channels(self, layer, idxs):
            dim = layer.norm.normalized_shape[0] // 4
            four = list(idxs) + [i + dim for i in idxs] + [i + 2 * dim for i in idxs] + [i + 3 * dim for i in idxs]
            tp.prune_linear_in_channels(layer.reduction, four)
            tp.prune_layernorm_out_channels(layer.norm, four)
            return layer

        def get_out_channels(self, layer):
            return layer.reduction.out_features

        def get_in_channels(self, layer):
            return layer.norm.normalized_shape[0] // 4

    example = torch.randn(1, 3, input_size, input_size)
    heads = {m.qkv: m.num_heads for m in model.modules() if isinstance(m, WindowAttention)}
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=1),
                                  pruning_ratio=ratio, ignored_layers=[model.head], num_heads=heads,
                                  customized_pruners={PatchMerging: MergePruner()},
                                  root_module_types=(torch.nn.Linear, torch.nn.LayerNorm, PatchMerging), round_to=1)
    for g in pruner.step(interactive=True):
        g.prune()
    for m in model.modules():
        if isinstance(m, WindowAttention):
            m.num_heads = pruner.num_heads[m.qkv]
    return model.eval(), pruner


def assert_imports_exactly(model: torch.nn.Module, ir, x: torch.Tensor, tol: float = 1e-5) -> torch.Tensor:
    """A family's import is exact: the unpruned IR compiled back, and its masked dense reference without
    masks, both equal timm's own forward on ``x`` (within ``tol``). Returns timm's output."""
    from vitshrink.families import build_module, reference_forward, resolve_spec
    from vitshrink.spec import Spec

    with torch.no_grad():
        want = model(x)
        assert float((build_module(ir)(x) - want).abs().max()) <= tol
        assert float((reference_forward(ir, resolve_spec(Spec({}), ir), x) - want).abs().max()) <= tol
    return want
