"""Data-aware unit scores from the model's own activations and gradients on calibration images
(``vitshrink masks --data``), for every family the reference producer serves.

Three criteria, each from one pass over the images (:func:`unit_scores`):

- ``obs`` (the default): what a unit costs *after* the reconstruction (:mod:`.refit`) has re-fitted the
  layer that reads it -- Optimal Brain Surgeon's saliency (Hassibi & Stork 1993) for a group of inputs of
  a linear layer, applied greedily with the weight and inverse-Hessian updates of OBC (Frantar &
  Alistarh, NeurIPS 2022): :func:`obs_order`, per block over fc2's inputs (neurons) and proj's inputs
  grouped by head. Forward only, in the activation criterion's units, so scores rank across blocks;
  it ranks redundant units (ones the others can stand in for) low, which activation energy cannot.

- ``fisher`` (Kwon et al., "A Fast Post-Training Pruning Framework for Transformers", NeurIPS 2022,
  eq. 5-6): a mask variable ``m`` = 1 per unit multiplies the unit's output; per image ``i`` the
  first-order loss change of removing it is ``g_i = dL_i/dm`` (= the sum over tokens of the unit's
  output times its output gradient), and the unit's score is the empirical Fisher ``sum_i g_i^2``
  -- half the expected loss increase, in the same unit for heads, neurons and channels, so one
  ranking across blocks and kinds is meaningful. The loss is the cross-entropy against the dense
  model's own top-1 prediction (labels are not needed); a feature extractor uses half the squared
  norm of its output feature.
- ``activation``: the energy a unit writes into the residual stream, ``sum ||a_u||^2 * ||W_u||^2``
  over tokens and images (a head's attention output times its proj columns; a neuron's activation
  times its fc2 column) -- forward only, no labels, no gradients.

Units: per block (by source index) ``heads`` [H], ``v`` [H, head_dim] (v channels, through proj),
``qk`` [H, head_dim] (q and k channels together, through the qkv output), ``mlp`` [hidden] and
``block`` (a mask on the block's residual update); ``embed``: per residual channel, summed over the
block inputs (ViT: one [D]; Swin: one per stage). A criterion without a score for a kind leaves it
absent. The model must be the *dense* one (every unit present). ``fisher`` also gives ``tokens``: per
block, the mean squared gradient of the loss at each token position of the block's output -- how much
each position matters downstream (after the last ViT block only the class token does), the weights of
the reconstruction's least squares (:mod:`.refit`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
from scipy.linalg.blas import dger
from torch import Tensor, nn


#: the criteria of :func:`unit_scores` (the module docstring)
CRITERIA = ("activation", "obs", "fisher")


@dataclass
class Scores:
    """Per-unit scores: ``blocks[source_index]`` is ``{"heads", "v", "qk", "mlp", "block"}`` tensors (float64),
    ``embed`` per residual stream (ViT: ``{"": [D]}``; Swin: ``{stage: [C_s]}``), ``criterion``, ``images``."""

    criterion: str
    images: int
    blocks: dict[int, dict[str, Tensor]] = field(default_factory=dict)
    embed: dict = field(default_factory=dict)


def block_modules(module: nn.Module) -> list[tuple[int, nn.Module, Optional[int]]]:
    """``(source index, block module, stage)`` of a generated model in IR order (stage None for a ViT)."""
    arch = module.arch
    if "stages" in arch:
        return [(b["source_index"], blk, si) for si, st in enumerate(arch["stages"])
                for b, blk in zip(st["blocks"], module.stages[si].blocks)]
    return [(b["source_index"], blk, None) for b, blk in zip(arch["blocks"], module.blocks)]


def head_channels(widths: tuple[int, ...]) -> Tensor:
    """The head of each channel of a concatenation of heads of ``widths``: [sum(widths)] long."""
    return torch.repeat_interleave(torch.arange(len(widths)), torch.tensor(widths, dtype=torch.long))


def _per_image(t: Tensor, images: int) -> Tensor:
    """A [rows, tokens, C] activation (rows: images, or the windows of the images in order) -> [images, tokens', C]."""
    return t.reshape(images, -1, t.shape[-1])


class _Recorder:
    """Hooks on one block of the dense generated model: per image, each unit's Taylor term ``g`` (Fisher)
    and its output energy (activation)."""

    def __init__(self, blk: nn.Module, attn_ir, gradients: bool, moments: bool = False):
        self.blk, self.gradients, self.moments = blk, gradients, moments
        self.gram: dict[str, list] = {}  # obs: per layer [sum a^T a, sum a, rows] of its input (float64)
        self.heads = head_channels(attn_ir.v_dims) if attn_ir.num_heads else None
        self.sum_qk = sum(attn_ir.qk_dims)
        self.acc: dict[str, list[Tensor]] = {}
        self.handles = []
        self.n = 0
        attn, mlp = getattr(blk, "attn", None), getattr(blk, "mlp", None)
        if hasattr(attn, "proj"):
            self.handles.append(attn.proj.register_forward_pre_hook(self._proj))
            qkv = getattr(attn, "qkv", None)
            if qkv is not None and gradients:
                self.handles.append(qkv.register_forward_hook(self._qkv))
        if hasattr(mlp, "fc2"):
            self.handles.append(mlp.fc2.register_forward_pre_hook(self._fc2))
        self.handles.append(blk.register_forward_pre_hook(self._block_in, with_kwargs=True))
        self.handles.append(blk.register_forward_hook(self._block_out, with_kwargs=True))

    def _gram(self, key: str, a: Tensor) -> None:
        a = a.detach().reshape(-1, a.shape[-1]).float()
        g = self.gram.setdefault(key, [0.0, 0.0, 0])
        g[0] = g[0] + (a.T @ a).double()
        g[1] = g[1] + a.double().sum(0)
        g[2] += a.shape[0]

    def _store(self, key: str, value: Tensor) -> None:
        self.acc.setdefault(key, []).append(value.detach().double())

    def _taylor(self, key: str, t: Tensor, columns=None) -> None:
        """Per image and channel ``sum_tokens t * dL/dt`` once the gradient arrives."""
        def hook(grad, t=t.detach()):
            prod = _per_image(t * grad, self.n).sum(1)
            self._store(key, prod if columns is None else columns(prod))
        t.register_hook(hook)

    def _reader(self, kind: str, layer: str, mod, x: Tensor) -> None:
        """The input ``x`` of the layer that reads ``kind``'s units (proj: v channels, fc2: neurons): its Taylor
        terms, its second moments (obs) and its energy through the layer's columns (activation)."""
        if self.gradients and x.requires_grad:
            self._taylor(kind, x)
        if self.moments:
            self._gram(layer, x)
            setattr(self, f"{layer}_weight", mod.weight.detach().double())
            if kind == "mlp":  # obs scores the neurons from the moments alone: no energy to keep
                return
        w2 = mod.weight.detach().double().pow(2).sum(0)  # ||column||^2 per input channel
        self._store(f"{kind}_energy", _per_image(x.detach().double().pow(2), self.n).sum(1) * w2)

    def _proj(self, mod, args):
        self._reader("v", "proj", mod, args[0])

    def _qkv(self, mod, args, out):
        if out.requires_grad:
            q = self.sum_qk
            self._taylor("qk", out, lambda p: p[:, :q] + p[:, q:2 * q])

    def _fc2(self, mod, args):
        self._reader("mlp", "fc2", mod, args[0])

    def _block_in(self, mod, args, kwargs):
        x = args[0]
        self.x_in = x
        if self.gradients and x.requires_grad:
            self._taylor("embed", x)

    def _block_out(self, mod, args, kwargs, out):
        y = out[0] if isinstance(out, tuple) else out
        if self.gradients and y.requires_grad:
            if y.shape == self.x_in.shape:  # token-dropping blocks: no block score
                self._taylor("block", y - self.x_in.detach(), lambda p: p.sum(1, keepdim=True))
            # how much the loss depends on each token position of the block's output: the reconstruction's weights
            y.register_hook(lambda grad: self._store("token_grad", _per_image(grad, self.n).pow(2).sum(-1)))

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def unit_scores(family, dense_ir, images: Tensor, criterion: str = "fisher", batch: int = 16,
                progress: Optional[Callable[[int, int], None]] = None) -> Scores:
    """Score every unit of ``dense_ir`` on calibration ``images`` [N, C, H, W] (the model's eval transform
    applied) with ``criterion`` (one of :data:`CRITERIA`; see the module docstring).

    Returns:
        :class:`Scores` (float64 tensors; larger = more important).
    Raises:
        ValueError: an unknown criterion.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}")
    grads = criterion == "fisher"
    model = family.codegen.build_module(dense_ir, share=True)
    for p in model.parameters():
        p.requires_grad_(False)
    attn_of = {b.source_index: b.attn for b in dense_ir.blocks}
    recs = {s: (_Recorder(blk, attn_of[s], grads, criterion == "obs"), stage) for s, blk, stage in block_modules(model)}
    try:
        for start in range(0, len(images), batch):
            x = images[start:start + batch].clone()
            for r, _ in recs.values():
                r.n = x.shape[0]
            with torch.set_grad_enabled(grads):
                if grads:
                    x.requires_grad_(True)
                out = model(x)
                if grads:
                    if dense_ir.num_classes:
                        loss = nn.functional.cross_entropy(out, out.detach().argmax(1), reduction="sum")
                    else:
                        loss = 0.5 * out.pow(2).sum()
                    loss.backward()
            if progress:
                progress(min(start + batch, len(images)), len(images))
    finally:
        for r, _ in recs.values():
            r.close()
    scores = Scores(criterion, len(images))
    for s, (r, stage) in recs.items():
        cat = {k: torch.cat(v) for k, v in r.acc.items()}  # [images, units]
        out: dict[str, Tensor] = {}
        a = attn_of[s]
        if grads:
            if "v" in cat:
                g = cat["v"]
                heads = torch.zeros(g.shape[0], a.num_heads, dtype=g.dtype).index_add_(1, r.heads, g)
                out["heads"], out["v"] = heads.pow(2).sum(0), _by_head(g.pow(2).sum(0), a.v_dims)
            if "qk" in cat:
                out["qk"] = _by_head(cat["qk"].pow(2).sum(0), a.qk_dims)
            if "mlp" in cat:
                out["mlp"] = cat["mlp"].pow(2).sum(0)
            if "block" in cat:
                out["block"] = cat["block"].pow(2).sum()
            if "token_grad" in cat:
                out["tokens"] = cat["token_grad"].mean(0)  # [positions]: mean over images of ||dL/dy_t||^2
        else:
            if "v_energy" in cat:
                e = cat["v_energy"].sum(0)
                out["v"] = _by_head(e, a.v_dims)
                out["heads"] = torch.zeros(a.num_heads, dtype=e.dtype).index_add_(0, r.heads, e)
            if "mlp_energy" in cat:
                out["mlp"] = cat["mlp_energy"].sum(0)
            if criterion == "obs":
                if "fc2" in r.gram:
                    out["mlp"] = obs_order(r.fc2_weight, *r.gram["fc2"])
                if "proj" in r.gram and a.num_heads > 1:
                    out["heads"] = obs_order(r.proj_weight, *r.gram["proj"], groups=r.heads)
        scores.blocks[s] = out
    if grads:  # embed: per image, the channel's Taylor terms summed over the blocks of its stream, then squared
        scores.embed = _embed_fisher(recs)
    return scores


def obs_order(weight: Tensor, gram: Tensor, total: Tensor, rows: int, groups: Optional[Tensor] = None,
              alpha: float = 1e-2) -> Tensor:
    """Scores from Optimal Brain Surgeon's greedy removal (Hassibi & Stork 1993; the group form of OBC,
    Frantar & Alistarh, NeurIPS 2022): for a layer ``y = W a + b`` ([D, k] ``weight``) whose inputs have the
    uncentred second moment ``gram`` = sum a a^T [k, k] and sum ``total`` [k] over ``rows`` rows, remove the
    unit (a group of inputs, ``groups`` [k] their unit ids; None: each input its own unit) whose removal,
    with the remaining inputs and the bias re-solved by least squares, raises the output's squared error the
    least -- ``dE = tr(W_G (H^-1)_GG^-1 W_G^T)`` -- update ``W`` and ``H^-1``, and repeat. A unit's score is
    the running maximum of dE up to its removal: the error that reconstruction cannot undo, in the
    activation criterion's units (squared residual-stream output, summed over rows), so scores rank across
    blocks. ``H`` is the centred moment (the bias absorbs the mean) plus a ridge of ``alpha`` x its mean
    diagonal.

    Returns:
        [units] float64, larger = keep.
    """
    mean = total / rows
    h = gram - rows * torch.outer(mean, mean)
    h = h + alpha * float(torch.diagonal(h).mean()) * torch.eye(h.shape[0], dtype=h.dtype)
    hinv = torch.linalg.inv(h).numpy().copy()
    w = weight.double().numpy().copy()
    if groups is None:
        return torch.from_numpy(_obs_inputs(w, hinv))
    n_units = int(groups.max()) + 1
    members = [np.nonzero(groups.numpy() == u)[0] for u in range(n_units)]
    alive = list(range(n_units))
    scores = torch.zeros(n_units, dtype=torch.float64)
    running = 0.0
    while len(alive) > 1:
        cost = [float(np.trace(w[:, members[u]] @ np.linalg.solve(hinv[np.ix_(members[u], members[u])], w[:, members[u]].T)))
                for u in alive]
        j = int(np.argmin(cost))
        u = alive.pop(j)
        running = max(running, cost[j])
        scores[u] = running
        g = members[u]
        s_inv = np.linalg.inv(hinv[np.ix_(g, g)])
        w = w - w[:, g] @ s_inv @ hinv[g, :]
        hinv = hinv - hinv[:, g] @ s_inv @ hinv[g, :]
        w[:, g] = 0.0
    scores[alive[0]] = running * 2 + 1.0
    return scores


def _obs_inputs(w: np.ndarray, hinv: np.ndarray) -> np.ndarray:
    """:func:`obs_order` with one input per unit: ``w`` [D, k], ``hinv`` [k, k] (both overwritten). Each
    step removes the input ``j`` of least ``||W_j||^2 / (H^-1)_jj`` and applies OBS's rank-1 updates in
    place (BLAS ``dger``); the arrays shrink to the remaining inputs whenever a third of their columns is
    gone (the removed rows and columns are exact zeros for the remaining inputs' updates), so the k - 1
    steps cost about half the k^3 multiply-adds of updating the full arrays, with no temporaries. Returns [k] scores (the running maximum)."""
    k = hinv.shape[0]
    w, hinv = np.asfortranarray(w), np.asfortranarray(hinv)
    ids = np.arange(k)  # the original input of each current column
    alive = np.ones(k, dtype=bool)
    scores, running = np.zeros(k), 0.0
    for _ in range(k - 1):
        if alive.sum() <= 2 * alive.size // 3 and alive.size > 64:
            keep = np.nonzero(alive)[0]
            w, hinv = np.asfortranarray(w[:, keep]), np.asfortranarray(hinv[np.ix_(keep, keep)])
            ids, alive = ids[keep], alive[keep]
        d = np.diagonal(hinv)
        cost = np.where(alive, np.einsum("ij,ij->j", w, w) / np.where(alive, d, 1.0), np.inf)
        j = int(np.argmin(cost))
        running = max(running, float(cost[j]))
        scores[ids[j]], alive[j] = running, False
        col, row = hinv[:, j].copy(), hinv[j, :].copy()
        w = dger(-1.0, w[:, j] / row[j], row, a=w, overwrite_a=1)
        hinv = dger(-1.0, col / row[j], row, a=hinv, overwrite_a=1)
        w[:, j] = 0.0
    scores[ids[alive]] = running * 2 + 1.0  # the last unit: removed last
    return scores


def _embed_fisher(recs) -> dict:
    """Per residual stream (ViT: ``""``; Swin: each stage), ``sum_i (sum_blocks g_ic)^2``."""
    per: dict = {}
    for r, stage in recs.values():
        if "embed" not in r.acc:
            continue
        g = torch.cat(r.acc["embed"])  # [images, C]
        key = "" if stage is None else stage
        per[key] = per[key] + g if key in per else g
    return {k: v.pow(2).sum(0) for k, v in per.items()}


def _by_head(per_channel: Tensor, widths: tuple[int, ...]) -> Tensor:
    """[sum(widths)] -> [H, max width] (shorter heads padded with 0)."""
    out = torch.zeros(len(widths), max(widths) if widths else 0, dtype=per_channel.dtype)
    o = 0
    for h, w in enumerate(widths):
        out[h, :w] = per_channel[o:o + w]
        o += w
    return out
