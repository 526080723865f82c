"""The masked dense reference for ViT/DeiT: what a pruned model must compute, written as plainly as possible.

It runs the *dense* model (its IR straight from the frontend) with the spec's masks applied the way
the papers define them, never by slicing:

- heads, q/k channels, v channels, MLP neurons: the masked activations are multiplied by 0;
- embedding channels (SAViT): the residual stream is multiplied by the mask and every LayerNorm
  normalises over the kept channels only (mean and variance over kept channels; docs/architecture.md);
- removed blocks: identity;
- early exit (WDPruning): stop after the exit block and use its classifier;
- token merging (ToMe): the merged tokens' slots die and their partners' slots hold the size-weighted
  averages; every slot carries its size, ``log(size)`` goes on the attention logits of the keys after the
  first merge, and the order of the live slots in the compiled sequence is tracked, as the bipartite
  split reads it (written with ``scatter_reduce`` and sorting in Python, not the one-hot MatMul of codegen);
- tokens: the sequence keeps all N token slots (plus one slot per fusing rule) with an *alive* mask
  per image. Dead tokens are masked out of attention as keys (logit -inf) and never updated; in
  Patch Slimming's query mode (eq. 2) tokens outside the block's mask stay alive as keys/values but
  are not updated. Dynamic rules score the alive patch tokens, keep the top ``k`` (ties to the lower
  position, by sorting in Python), and optionally write the EViT fused token into a fresh slot. The
  VTC-LFC low-frequency energy uses ``torch.fft`` (float64), not the MatMul form of the compiled model.

It shares no code with codegen (attention is a loop over heads), so agreement between the two is
evidence, not tautology. Slow; meant for verification on a few images.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ir.nodes import LayerNormIR
from ..ir.vit import ViTIR
from ..spec.resolved import DynamicRule, ResolvedSpec
from .common import linear, ln, masked_heads, masked_layer_norm


def _low_frequency_energy(xs: Tensor, cutoff: float) -> Tensor:
    """VTC-LFC eq. 6 for one image: xs [L, D] patch tokens in order -> [L] (FFT along the tokens)."""
    L = xs.shape[0]
    spec = torch.fft.fft(xs.double(), dim=0)
    k = torch.arange(L, dtype=torch.float64)
    m0, d0 = (L - 1) / 2.0, (L * cutoff / 2.0) ** 2
    w = 1.0 - torch.exp(-((k - m0) ** 2) / (2.0 * d0))
    low = torch.fft.ifft(spec * w[:, None], dim=0).abs().sum(1)
    return (low / xs.double().abs().sum(1).mean()).to(xs.dtype)


def _predictor_scores(rule: DynamicRule, xs: Tensor, tensors: Mapping[str, Tensor], e: Tensor) -> Tensor:
    """A learned scorer on one image's alive patch tokens xs [L, D] -> [L]."""
    p, t, eps = rule.predictor.prefix, tensors, rule.predictor.eps
    if rule.predictor.type == "dynamicvit":
        h = masked_layer_norm(xs, t[f"{p}.in_conv.0.weight"], t[f"{p}.in_conv.0.bias"], eps, e)
        h = F.gelu(linear(h, t[f"{p}.in_conv.1.weight"], t.get(f"{p}.in_conv.1.bias")))
        C = h.shape[-1]
        h = torch.cat([h[:, : C // 2], h[:, C // 2:].mean(0, keepdim=True).expand(h.shape[0], -1)], dim=-1)
        h = F.gelu(linear(h, t[f"{p}.out_conv.0.weight"], t.get(f"{p}.out_conv.0.bias")))
        h = F.gelu(linear(h, t[f"{p}.out_conv.2.weight"], t.get(f"{p}.out_conv.2.bias")))
        logits = linear(h, t[f"{p}.out_conv.4.weight"], t.get(f"{p}.out_conv.4.bias"))
        return logits[:, 0] - torch.logsumexp(logits, dim=-1)
    h = masked_layer_norm(xs, t[f"{p}.norm.weight"], t[f"{p}.norm.bias"], eps, e) if rule.predictor.norm else xs
    n = len(rule.predictor.hidden) + 1
    for j in range(n):
        h = linear(h, t[f"{p}.fc{j}.weight"], t.get(f"{p}.fc{j}.bias"))
        if j + 1 < n:
            h = F.gelu(h)
    return h[:, 0]


def _attention_scores(rule: DynamicRule, probs: list[Tensor], alive: Tensor, P: int) -> Tensor:
    """Token scores [B, T] from the attention probabilities of the live heads (each [B, T, T])."""
    B, T = alive.shape
    patch = alive.clone()
    patch[:, :P] = False
    total = torch.zeros(B, T)
    for pr in probs:
        cls_row = pr[:, 0, :]
        if not rule.head_weighting:
            total += cls_row
            continue
        npatch = patch.sum(1, keepdim=True).float()
        w = (pr[:, :, 0] * patch).sum(1, keepdim=True) / npatch  # mean over patch queries of attn to cls
        col = (pr * patch[:, :, None]).sum(1) / npatch  # mean over patch queries of attn to each token
        total += w * cls_row + pr[:, 0, 0:1] * col
    return total / len(probs)


def _merge(rule, x, alive, size, metric, order, P, traced):
    """ToMe's bipartite soft matching with ``rule.r`` merges in every image, on the slots in sequence order
    (``order[b]``): A the even positions after the prefix, B the odd ones; each A token's most similar B token
    (cosine of the metric rows, ties to the lower B position); the ``r`` A tokens of highest similarity (ties to
    the lower A position) written into their partners as size-weighted averages (``scatter_reduce``), their
    slots dead. ``order`` becomes [prefix, the other A tokens, B tokens]."""
    merges = []
    for b in range(x.shape[0]):
        seq = order[b]
        a_slots = [seq[p] for p in range(P, len(seq)) if p % 2 == 0]
        b_slots = [seq[p] for p in range(P, len(seq)) if p % 2 == 1]
        ma = metric[b, a_slots] / metric[b, a_slots].norm(dim=-1, keepdim=True)
        mb = metric[b, b_slots] / metric[b, b_slots].norm(dim=-1, keepdim=True)
        sim = ma @ mb.t()
        best = sim.max(dim=1).values
        partner = [min(j for j in range(len(b_slots)) if sim[i, j] == best[i]) for i in range(len(a_slots))]
        ranked = sorted(range(len(a_slots)), key=lambda i: (-float(best[i]), i))
        src = sorted(ranked[:rule.r])
        dst_slots = torch.tensor([b_slots[partner[i]] for i in src])
        src_slots = torch.tensor([a_slots[i] for i in src])
        weight = size[b, src_slots]
        num = (x[b] * size[b, :, None]).scatter_reduce(0, dst_slots[:, None].expand(-1, x.shape[-1]),
                                                       x[b, src_slots] * weight[:, None], reduce="sum")
        size[b] = size[b].scatter_reduce(0, dst_slots, weight, reduce="sum")
        x[b, dst_slots] = num[dst_slots] / size[b, dst_slots, None]
        alive[b, src_slots] = False
        merges.append([[int(s_), int(d)] for s_, d in zip(src_slots, dst_slots)])
        order[b] = seq[:P] + [a_slots[i] for i in range(len(a_slots)) if i not in set(src)] + b_slots
    traced.append(torch.tensor(merges))


def _select(rule, x, alive, scores_of, P, next_slot, traced):
    """Keep the top ``rule.keep`` alive patch tokens of every image; fuse the rest (EViT).
    A rule that keeps every token present does nothing."""
    B, T, _ = x.shape
    if rule.keep >= int(alive[0, P:].sum()):
        return alive, next_slot
    new_alive = torch.zeros_like(alive)
    new_alive[:, :P] = True
    kept_ids = []
    for b in range(B):
        cand = [t for t in range(P, T) if alive[b, t]]  # slots in sequence order
        s = scores_of(b, cand)
        order = sorted(range(len(cand)), key=lambda c: (-float(s[c]), c))
        kept = sorted(cand[c] for c in order[:rule.keep])
        new_alive[b, kept] = True
        ids = list(range(P)) + kept
        if rule.fuse:
            x[b, next_slot] = sum((s[c] * x[b, cand[c]] for c in order[rule.keep:]), torch.zeros(x.shape[-1]))
            new_alive[b, next_slot] = True
            ids.append(next_slot)
        kept_ids.append(ids)
    traced.append(torch.tensor(kept_ids))
    return new_alive, next_slot + int(rule.fuse)


@torch.no_grad()
def reference_forward(
    dense: ViTIR,
    spec: ResolvedSpec,
    images: Tensor,
    tensors: Optional[Mapping[str, Tensor]] = None,
    trace: bool = False,
    residuals: Optional[list] = None,
):
    """Logits [B, num_classes] of the dense ViT ``dense`` under the masks of ``spec`` (a feature
    extractor: its pooled features [B, feature_dim], removed embedding channels 0).

    Args:
        dense: the unpruned IR (as imported; original coordinates).
        spec: validated masks (:func:`vitshrink.resolve_spec`).
        images: [B, in_chans, H, W] float32.
        tensors: checkpoint tensors for an exit classifier or a token predictor named in the spec.
        trace: also return, per dynamic rule, the token slots kept [B, P + keep (+1 fused)] (original
            token ids; fused tokens take slots N, N+1, ... in rule order).
        residuals: if a list, gets per kept block ``(source block index, residual stream [B, T, D] in
            original token slots and channels (removed channels zero), live tokens [B, T] bool)``;
            a token is live while it is still in the sequence (kept by every static and dynamic
            selection so far).
    """
    tensors = tensors or {}
    D, P, N = dense.embed_dim, dense.num_prefix, dense.num_tokens
    e = spec.embed.float() if spec.embed is not None else torch.ones(D)
    stop = spec.last_block(len(dense.blocks))
    fusing = [i for i, r in spec.dynamic.items() if r.fuse and i <= stop]
    T = N + len(fusing)
    B = images.shape[0]

    if dense.stem is not None:  # a hybrid ViT's CNN trunk: opaque and never pruned
        images = dense.stem.module(images)
        images = images[-1] if isinstance(images, (list, tuple)) else images
    x0 = F.conv2d(images, dense.patch_weight, dense.patch_bias, stride=dense.patch_size).flatten(2).transpose(1, 2)
    prefix = torch.stack([t.value for t in dense.prefix]).expand(B, -1, -1) if P else x0[:, :0]
    x = torch.zeros(B, T, D)
    late = dense.prefix_at is not None  # CaiT: the prefix tokens join later, without a position embedding
    if late:
        x[:, P:N] = (x0 + dense.pos_embed) * e
    else:
        x[:, :N] = (torch.cat([prefix, x0], 1) + dense.pos_embed) * e
    if dense.norm_pre is not None:  # CLIP's pre-norm, over the kept channels like every LayerNorm
        x[:, :N] = ln(x[:, :N], dense.norm_pre, e)
    alive = torch.zeros(B, T, dtype=torch.bool)
    alive[:, P if late else 0:N] = True
    joined = not late
    static = torch.ones(T, dtype=torch.bool)  # tokens the static masks keep so far
    static[N:] = False
    next_slot, traced = N, []
    size = torch.ones(B, T)  # ToMe: the tokens each slot stands for
    order = [list(range(N)) for _ in range(B)]  # the sequence order of the live slots (merging reorders it)
    sized = False  # a block before has merged: proportional attention from here on

    for blk in dense.blocks:
        i = blk.source_index
        if i > stop:
            break
        if not joined and i >= dense.prefix_at:
            x[:, :P], alive[:, :P], joined = prefix * e, True, True
        if i in spec.tokens:
            static[:N] &= spec.tokens[i]
            if spec.token_mode == "drop":
                alive &= static  # removed before block i, for good (also before a removed block)
        if i in spec.removed_blocks:
            continue
        update = alive & static if spec.token_mode == "query" else alive.clone()
        if blk.class_attention:  # CaiT: only the prefix tokens are queries and are updated
            update = torch.zeros_like(alive)
            update[:, :P] = True
        rule = spec.dynamic.get(i)
        if rule is not None and rule.where == "attn":
            alive, next_slot = _select(
                rule, x, alive, lambda b, cand: _predictor_scores(rule, x[b, cand], tensors, e),
                P, next_slot, traced)
            update = alive.clone()

        a = blk.attn
        h = x if blk.post_norm else ln(x, blk.norm1, e)
        out = torch.zeros_like(x)
        heads = spec.heads.get(i, torch.ones(a.num_heads, dtype=torch.bool))
        probs_live, metric = [], 0.0
        merge = spec.merge.get(i)
        if a.talking is not None:
            out = _talking_heads(a, masked_heads(h, a, i, heads, spec), heads, alive, out)
        for hh, q, k, v, mv, sv in (() if a.talking is not None else masked_heads(h, a, i, heads, spec)):
            if a.rope is not None:
                q, k = _rotary(q, a.rope, hh), _rotary(k, a.rope, hh)
            logits = (q @ k.transpose(-2, -1)) * a.scale
            if a.rel_bias is not None:  # every token is present: token pruning is refused with a bias
                logits = logits + a.rel_bias[hh]
            if sized:  # ToMe eq. 1: log(size) of every key
                logits = logits + size.log()[:, None, :]
            if merge is not None and mv.any():  # keys summed over the heads the block keeps (removed channels are 0;
                metric = metric + k               # a head without v channels is removed whole)
            probs = torch.softmax(logits.masked_fill(~alive[:, None, :], -math.inf), dim=-1)
            out = out + (probs @ v) @ a.proj_weight[:, sv].t()
            if mv.any():
                probs_live.append(probs)
        if a.proj_bias is not None:
            out = out + a.proj_bias
        x = x + (ln(out, blk.norm1, e) if blk.post_norm else out * e) * update[..., None]
        if merge is not None:
            _merge(merge, x, alive, size, metric, order, P, traced)
            update, sized = alive.clone(), sized or merge.prop_attn

        if rule is not None and rule.where == "mlp":
            if rule.score == "predictor":
                scores_of = lambda b, cand: _predictor_scores(rule, x[b, cand], tensors, e)  # noqa: E731
            else:
                att = _attention_scores(rule, probs_live, alive, P)
                if rule.score == "cls_attention_lfe":
                    scores_of = lambda b, cand: att[b, cand] * _low_frequency_energy(x[b, cand], rule.cutoff)  # noqa: E731
                else:
                    scores_of = lambda b, cand: att[b, cand]  # noqa: E731
            alive, next_slot = _select(rule, x, alive, scores_of, P, next_slot, traced)
            update = alive.clone()

        m = blk.mlp
        h = x if blk.post_norm else ln(x, blk.norm2, e)
        if m.gate_weight is None:
            z = _act(m.act, linear(h, m.fc1_weight, m.fc1_bias))
        else:  # GLU: act(gate) * value
            z = _act(m.act, linear(h, m.gate_weight, m.gate_bias)) * linear(h, m.fc1_weight, m.fc1_bias)
        keep = spec.mlp[i].float() if i in spec.mlp else torch.ones(m.hidden)
        z = z * keep
        if m.norm is not None:  # over the kept neurons (none kept: nothing reaches fc2)
            z = ln(z, m.norm, keep) if keep.any() else z
        y = linear(z, m.fc2_weight, m.fc2_bias)
        x = x + (ln(y, blk.norm2, e) if blk.post_norm else y * e) * update[..., None]
        if residuals is not None:
            residuals.append((i, x.clone(), alive.clone()))

    if not joined:  # every block from prefix_at on was removed (or after the exit)
        x[:, :P], alive[:, :P] = prefix * e, True
    norm, heads_w = dense.norm, {c.name: (c.weight, c.bias) for c in dense.heads}
    if spec.exit is not None:
        if spec.exit.norm is not None:
            norm = LayerNormIR(tensors[f"{spec.exit.norm}.weight"], tensors[f"{spec.exit.norm}.bias"],
                               dense.norm.eps if dense.norm is not None else 1e-6)
        for name, prefix in (("head", spec.exit.head), ("head_dist", spec.exit.head_dist)):
            if prefix is not None:
                heads_w[name] = (tensors[f"{prefix}.weight"], tensors.get(f"{prefix}.bias"))
    if norm is not None:
        x = ln(x, norm, e)
    if dense.pool == "map":  # every patch token is alive: specs with token pruning are refused here
        pooled = _attention_pool(dense.attn_pool, x[:, :N] if dense.attn_pool.include_prefix else x[:, P:N])
    elif dense.pool == "avg":  # likewise; with merging, the live patch tokens weighted by their sizes
        w = (size * alive)[:, P:N, None]
        pooled = (x[:, P:N] * w).sum(1) / w.sum(1)
        if dense.fc_norm is not None:
            pooled = ln(pooled, dense.fc_norm, e)
    else:
        if dense.fc_norm is not None:  # per token; timm applies it to the token it pooled
            x = ln(x, dense.fc_norm, e)
        pooled = x[:, 0]
    if not dense.heads:  # a feature extractor: the pooled feature (removed channels are 0 here)
        return (pooled, traced) if trace else pooled
    if dense.pool in ("map", "avg"):
        logits = linear(pooled, *heads_w["head"])
    else:
        logits = sum(linear(x[:, c.token], *heads_w[c.name]) for c in dense.heads) / len(dense.heads)
    return (logits, traced) if trace else logits


def _talking_heads(a, per_head, heads: Tensor, alive: Tensor, out: Tensor) -> Tensor:
    """CaiT eq. 3 with the removed heads' logits 0 (their q, k are 0), their mixed maps dropped (a zero
    column of ``w_weight``) and their outputs absent; dead keys get no probability after either mixing."""
    B, T, _ = out.shape
    H = a.num_heads
    logits, values = torch.zeros(B, H, T, T), {}
    for hh, q, k, v, _, sv in per_head:
        logits[:, hh] = (q @ k.transpose(-2, -1)) * a.scale
        values[hh] = (v, sv)
    t = a.talking
    mixed = torch.einsum("gh,bhqk->bgqk", t.l_weight, logits)
    if t.l_bias is not None:
        mixed = mixed + t.l_bias[None, :, None, None]
    probs = torch.softmax(mixed.masked_fill(~alive[:, None, None, :], -math.inf), dim=-1)
    maps = torch.einsum("gh,bhqk->bgqk", t.w_weight * heads.float()[None, :], probs)
    if t.w_bias is not None:
        maps = maps + t.w_bias[None, :, None, None]
    maps = maps * alive[:, None, None, :]
    for hh, (v, sv) in values.items():
        out = out + (maps[:, hh] @ v) @ a.proj_weight[:, sv].t()
    return out


def _rotary(t: Tensor, rope, head: int) -> Tensor:
    """RoFormer eq. 34 on one head's q or k [B, T, hd] (original channels; removed ones are 0): token
    ``rope.skip + n`` gets ``t[c] cos[n, c] + sign(c) t[partner(c)] sin[n, c]``, channel by channel."""
    sin, cos = rope.table(head)
    s, n = rope.skip, sin.shape[0]
    out = t.clone()
    for c in range(t.shape[-1]):
        p, sign = rope.partner(c)
        out[:, s:s + n, c] = t[:, s:s + n, c] * cos[:, c] + sign * t[:, s:s + n, p] * sin[:, c]
    return out


def _act(name: str, z: Tensor) -> Tensor:
    """The MLP activation by its IR name: exact GELU, its tanh approximation (written out), CLIP's
    QuickGELU ``z * sigmoid(1.702 z)``, or SiLU ``z * sigmoid(z)``."""
    if name == "quick_gelu":
        return z / (1.0 + torch.exp(-1.702 * z))
    if name == "silu":
        return z * torch.sigmoid(z)
    if name == "gelu_tanh":
        return 0.5 * z * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z ** 3)))
    return F.gelu(z)


def _attention_pool(p, x: Tensor) -> Tensor:
    """timm's ``AttentionPoolLatent`` on tokens x [B, T, D] (removed channels 0) -> [B, O], a loop over
    heads with the full-width weights (its inputs' removed channels contribute nothing)."""
    q = linear(p.latent, p.q_weight, p.q_bias)  # [L, E]
    k, v = linear(x, p.k_weight, p.k_bias), linear(x, p.v_weight, p.v_bias)  # [B, T, E]
    d = q.shape[-1] // p.num_heads
    outs = []
    for hh in range(p.num_heads):
        s = slice(hh * d, (hh + 1) * d)
        probs = torch.softmax((q[:, s] @ k[..., s].transpose(-2, -1)) * p.scale, dim=-1)  # [B, L, T]
        outs.append(probs @ v[..., s])
    o = linear(torch.cat(outs, -1), p.proj_weight, p.proj_bias)  # [B, L, O]
    if p.mlp is not None:
        m = p.mlp
        h = o if p.norm is None else F.layer_norm(o, (o.shape[-1],), p.norm.weight, p.norm.bias, p.norm.eps)
        o = o + linear(_act(m.act, linear(h, m.fc1_weight, m.fc1_bias)), m.fc2_weight, m.fc2_bias)
    return o[:, 0] if p.pool == "token" else o.mean(1)
