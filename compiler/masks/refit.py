"""Reconstruction after pruning (``vitshrink masks --data``): re-fit the weights that read the removed units,
block by block, by ridge least squares on calibration activations -- the layer-wise reconstruction of
post-training pruning (Kwon et al., NeurIPS 2022, sec. 4.4 "mask tuning", there with one scale per unit;
here, as in FLAP's bias compensation, An et al. AAAI 2024, the whole output projection and its bias).

For each kept block in order, on the *pruned* model's own inputs (so each block also corrects what the
blocks before it changed):

- attention: the output projection (``attn.proj``: [D, kept v channels] and its bias) is solved so that
  it reproduces its target on the same input, ``min_W ||A W^T + b - Y||^2 + lambda ||W - W_0||^2`` (A: the
  kept heads' outputs, W_0: the kept columns as they were);
- MLP: ``fc2`` the same way, on the kept neurons' activations (an MLP with no neuron left keeps only its
  bias: the mean of Y).

The target Y blends two: what the unpruned sub-layer computes on the pruned block's input (the local
target: each layer as close to its old self as it can be), and what the sub-layer would have to add to
the pruned residual stream to land on the dense model's stream at that point (the teacher target of
Kwon et al.'s mask tuning: it also corrects what earlier blocks got wrong, but asks a few units for a
lot). ``Y = (1 - t) Y_local + t Y_teacher``, ``t = teacher`` (0.6 measured best on DeiT-Tiny: the
teacher alone over-fits the calibration images, the local target alone leaves the drift; blocks with
token operations or a post-norm use the local target).

The ridge ``lambda`` is ``alpha`` times the mean diagonal of ``A^T A`` (a relative strength). Per layer
the strength is chosen on held-out calibration images (every 4th batch) from :data:`ALPHAS` -- and the
layer is left as it was when no strength beats its original weights there: a re-fit never makes a layer
worse on images it was not fitted on. The normal equations are accumulated over the calibration batches
in float64 and solved through one :func:`scipy.linalg.eigh` per layer. Rows are weighted per token position
by how much the loss depends on that position (``token_weights``). "Unpruned" means every head and
neuron, with the spec's embedding and token masks applied (those change the input itself).
"""
from __future__ import annotations

import copy
from typing import Callable, Optional

import torch
from scipy.linalg import eigh
from torch import Tensor, nn

from ..codegen.block import Block
from ..spec.format import Spec
from .scores import block_modules

WIDTH_KINDS = ("heads", "qk", "v", "mlp")


class _Stop(Exception):
    """Ends a forward pass once the block being re-fitted has been seen."""


class _Normal:
    """The normal equations of ``min ||A W^T + 1 b^T - Y||^2`` accumulated over batches (float64)."""

    def __init__(self):
        self.n, self.ata = 0, None

    def add(self, a: Tensor, y: Tensor, images: int, weights: Optional[Tensor] = None) -> None:
        """One batch of ``images``: ``a`` [..., k] features, ``y`` [..., D] targets, rows weighted per token
        position by ``weights`` [positions] when it fits (products in float32 per batch, summed in float64).
        Every moment carries the row weight, so ``n`` is the total weight and the intercept is the weighted one."""
        a, y = a.reshape(images, -1, a.shape[-1]).float(), y.reshape(images, -1, y.shape[-1]).float()
        w = torch.ones(a.shape[0], a.shape[1])
        if weights is not None and weights.shape[0] == a.shape[1]:
            w = weights.float()[None, :].expand(a.shape[0], -1)
        a, y, w = a.reshape(-1, a.shape[-1]), y.reshape(-1, y.shape[-1]), w.reshape(-1, 1)
        if self.ata is None:
            k, d = a.shape[1], y.shape[1]
            self.ata, self.aty = torch.zeros(k, k, dtype=torch.float64), torch.zeros(k, d, dtype=torch.float64)
            self.sa, self.sy, self.yy = torch.zeros(k, dtype=torch.float64), torch.zeros(d, dtype=torch.float64), 0.0
        wa = a * w
        self.ata += (wa.T @ a).double()
        self.aty += (wa.T @ y).double()
        self.sa += wa.double().sum(0)
        self.sy += (y * w).double().sum(0)
        self.yy += float((y.double() ** 2 * w.double()).sum())
        self.n += float(w.double().sum())

    def merge(self, other: "_Normal") -> None:
        """Add another accumulator's moments to this one."""
        if other.n == 0:
            return
        self.ata, self.aty = self.ata + other.ata, self.aty + other.aty
        self.sa, self.sy, self.yy, self.n = self.sa + other.sa, self.sy + other.sy, self.yy + other.yy, self.n + other.n

    def error(self, w: Tensor, b: Optional[Tensor]) -> float:
        """Mean squared error per output of ``A W^T + b`` against Y, from the accumulated moments."""
        w = w.double()
        bb = torch.zeros(w.shape[0], dtype=torch.float64) if b is None else b.double()
        sse = (self.yy - 2 * float((w * self.aty.T).sum()) - 2 * float(bb @ self.sy) + float((w @ self.ata * w).sum())
               + 2 * float(bb @ (w @ self.sa)) + self.n * float(bb @ bb))
        return max(sse, 0.0) / (self.n * w.shape[0])

    def path(self, w0: Tensor, bias: bool, alphas) -> list[tuple[Tensor, Optional[Tensor]]]:
        """The ridge solutions for several strengths from one eigendecomposition of the (centred) ``A^T A``:
        ``W^T = Q (L + lambda I)^-1 Q^T (A^T Y + lambda W_0^T)``, ``lambda = alpha * mean(diag A^T A)``."""
        n = self.n
        ata, aty = self.ata, self.aty
        ma = my = None
        if bias:
            ma, my = self.sa / n, self.sy / n
            ata = ata - n * torch.outer(ma, ma)
            aty = aty - n * torch.outer(ma, my)
        evals, q = (torch.from_numpy(t) for t in eigh(ata.numpy()))
        scale = float(torch.diagonal(ata).mean()) + 1e-12
        out = []
        for alpha in alphas:
            lam = alpha * scale
            rhs = q.T @ (aty + lam * w0.double().T)
            w = (q @ (rhs / (evals.clamp(min=0) + lam)[:, None])).T.contiguous()
            out.append((w, (my - w @ ma) if bias else None))
        return out


#: ridge strengths tried per layer (relative to the mean diagonal of A^T A); the one with the least error on
#: held-out calibration images is used -- or no change at all when the original weights do better there
ALPHAS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def refit(family, dense_ir, resolved_masks: dict[str, Tensor], settings: dict, images: Tensor, alpha: Optional[float] = None,
          batch: int = 32, progress: Optional[Callable[[int, int], None]] = None,
          token_weights: Optional[dict[int, Tensor]] = None, teacher: float = 0.6):
    """Re-fit attention projections and fc2 of the model ``dense_ir`` pruned by ``resolved_masks`` (canonical
    names -> bool masks) + ``settings``, on calibration ``images`` [N, C, H, W].

    ``teacher``: the target's share of the dense model's residual stream (the module docstring).
    ``token_weights``: per block (source index), a weight per token position of its output (the Fisher
    pass's :attr:`~.scores.Scores` ``tokens``: how much the loss depends on each position), normalised to
    mean 1 with a 5% uniform floor; the least squares weigh each row by it (a sample of positions the
    output never reads -- a ViT's patch tokens after its last block -- counts for little). None: uniform.

    Returns:
        (the pruned IR with re-fitted weights, per block a record ``{"block", "attn": [mse before, after],
        "mlp": [before, after]}`` -- the calibration error of each re-fitted layer against its unpruned
        output, mean squared error per output channel).
    """
    def resolve(masks):
        spec = Spec(masks=masks, settings=settings)
        return family.passes.apply_spec(dense_ir, family.spec.resolve(spec, dense_ir, {}), {})

    structural = {k: v for k, v in resolved_masks.items() if k.rsplit(".", 1)[-1] not in WIDTH_KINDS + ("keep",)}
    pruned_ir = copy.deepcopy(resolve(resolved_masks))  # its own tensors: a pass may hand on the dense model's
    model = family.codegen.build_module(pruned_ir, share=True)  # its parameters are pruned_ir's tensors
    target = family.codegen.build_module(resolve(structural), share=True)  # every head and neuron
    tblocks = {s: blk for s, blk, _ in block_modules(target)}
    pblocks = [blk for _, blk, _ in block_modules(model)]
    tlist = [blk for _, blk, _ in block_modules(target)]
    tprevious = None
    batches = [images[i:i + batch] for i in range(0, len(images), batch)]
    records, previous = [], None  # previous: per batch, the output of the block before (as it returns it)
    stems = [m for m in (getattr(model, "stem", None), getattr(model, "patch_embed", None)) if m is not None]
    with torch.no_grad(), _memo(stems, len(batches)):
        for done, (s, blk, _) in enumerate(block_modules(model)):
            rec = {"block": family.spec.block_name(dense_ir, s)}
            stream = None  # the unpruned model's residual stream at this block, per batch
            if teacher:
                with _skip_to(tlist, done, tprevious):
                    stream = [_stream(target, tblocks[s], x) for x in batches]
                    tprevious = [t[2] for t in stream]
            with _skip_to(pblocks, done, previous):
                w = _normalised((token_weights or {}).get(s))
                for part in ("attn", "mlp"):
                    rec[part] = _refit_part(model, blk, tblocks[s], part, batches, alpha, w,
                                            stream if _plain(blk) else None, teacher)
                previous = [_stream(model, blk, x)[2] for x in batches]
            records.append(rec)
            if progress:
                progress(done + 1, len(pblocks))
    return pruned_ir, records


class _memo:
    """While active, ``modules`` (the patch embedding, a CNN stem) compute each batch's output once: every
    pass feeds them the same batches in the same order."""

    def __init__(self, modules: list, n: int):
        self.modules, self.n = modules, n

    def __enter__(self):
        for m in self.modules:
            cache, real, count = {}, m.forward, [0]

            def forward(*args, cache=cache, real=real, count=count, **kwargs):
                i = count[0] % self.n
                count[0] += 1
                if i not in cache:
                    cache[i] = real(*args, **kwargs)
                return cache[i]
            m.forward = forward
        return self

    def __exit__(self, *exc):
        for m in self.modules:
            del m.forward
        return False


class _skip_to:
    """While active, the blocks before block ``k`` do no work: the one just before replays its recorded
    outputs (``previous``, one per batch, in order), the earlier ones return their input. What runs between
    blocks (a Swin patch merging, CaiT's class token joining) still runs, on the replayed outputs -- so a
    forward pass costs one block, not k."""

    def __init__(self, blocks: list, k: int, previous):
        self.blocks, self.k, self.previous, self.i = blocks, k, previous, 0

    def __enter__(self):
        for j in range(self.k):
            self.blocks[j].forward = self._replay if j == self.k - 1 else self._identity
        return self

    def _identity(self, x, *args, **kwargs):
        if not isinstance(self.previous[0], tuple):  # a Swin block: the stream only
            return x
        ids = args[0] if args else kwargs.get("ids")  # a ViT block: (x, ids, size, merges) -- see codegen.block
        return x, ids, args[2] if len(args) > 2 else kwargs.get("size"), None

    def _replay(self, *args, **kwargs):
        out = self.previous[self.i % len(self.previous)]
        self.i += 1
        return out

    def __exit__(self, *exc):
        for j in range(self.k):
            del self.blocks[j].forward  # back to the class's forward
        return False


def _plain(blk) -> bool:
    return (isinstance(blk, Block) and not blk.post_norm and blk.select is None and blk.merge is None and not blk.query
            and not blk.drop and hasattr(blk.attn, "proj") and hasattr(blk.mlp, "fc2"))


def _stream(model, blk, x):
    """The residual stream of ``model`` at ``blk`` on ``x``: (after attention, block output tensor, output as returned)."""
    got = {}
    norm2 = getattr(blk, "norm2", None) if _plain(blk) else None
    h1 = norm2.register_forward_pre_hook(lambda m, a: got.__setitem__("mid", a[0])) if norm2 is not None else None
    h2 = blk.register_forward_hook(lambda m, a, out: (got.__setitem__("out", out), _raise()))
    try:
        model(x)
    except _Stop:
        pass
    finally:
        if h1 is not None:
            h1.remove()
        h2.remove()
    out = got["out"]
    return got.get("mid"), out[0] if isinstance(out, tuple) else out, out


def _normalised(w: Optional[Tensor]) -> Optional[Tensor]:
    if w is None or not float(w.sum()) > 0:
        return None
    w = w.double() / w.double().mean()
    return 0.95 * w + 0.05


def _refit_part(model: nn.Module, blk: nn.Module, tblk: nn.Module, part: str, batches: list, alpha: float,
                weights: Optional[Tensor] = None, teacher=None, share: float = 0.0) -> Optional[list[float]]:
    """Accumulate (kept features, unpruned output) for ``part`` of block ``blk`` over the batches by running
    the pruned model up to it, solve, and write the solution into the block's layer."""
    sub, tsub = getattr(blk, part), getattr(tblk, part)
    layer = getattr(sub, "proj" if part == "attn" else "fc2", None)
    fit, held, feats = _Normal(), _Normal(), {}  # every 4th batch is held out to choose the ridge strength
    hooks = []
    if layer is not None:
        hooks.append(layer.register_forward_pre_hook(lambda m, a: feats.__setitem__("a", a[0])))
    if part == "attn":  # the unpruned attention on the pruned block's input: the target block's own attention
        def on_block(m, args, kwargs):
            feats["block_args"] = (args, kwargs)
        hooks.append(blk.register_forward_pre_hook(on_block, with_kwargs=True))
        hooks.append(sub.register_forward_hook(lambda m, a, out: _raise()))
    else:
        hooks.append(sub.register_forward_pre_hook(lambda m, a: feats.__setitem__("x", a[0])))
        if teacher is not None:
            hooks.append(blk.norm2.register_forward_pre_hook(lambda m, a: feats.__setitem__("mid", a[0])))
        hooks.append(sub.register_forward_hook(lambda m, a, out: _raise()))
    try:
        for i, x in enumerate(batches):
            feats.clear()
            try:
                model(x)
            except _Stop:
                pass
            y = _attn_target(tblk, *feats["block_args"]) if part == "attn" else tsub(feats["x"])
            if teacher is not None:
                mid_t, out_t, _ = teacher[i]
                yt = mid_t - feats["block_args"][0][0] if part == "attn" else out_t - feats["mid"]
                y = y + share * (yt - y)
            a = torch.ones(*y.shape[:-1], 1) if layer is None else feats["a"]  # nothing left: the bias alone
            (held if len(batches) > 1 and i % 4 == 3 else fit).add(a, y, x.shape[0], weights)
    finally:
        for h in hooks:
            h.remove()
    if layer is None:
        if getattr(sub, "bias", None) is None:
            return None
        zero = torch.zeros(y.shape[-1], 1)
        before = fit.error(zero, sub.bias)
        sub.bias.copy_(((fit.sy + held.sy) / (fit.n + held.n)).to(sub.bias.dtype))
        return [before, fit.error(zero, sub.bias)]
    w0, b0 = layer.weight.detach().clone(), None if layer.bias is None else layer.bias.detach().clone()
    before = fit.error(w0, b0)
    alphas = (alpha,) if alpha is not None else ALPHAS
    candidates = fit.path(w0, b0 is not None, alphas)
    if held.n:  # the strength that generalises to images it was not fitted on; no change if none beats the original
        errs = [held.error(w, b) for w, b in candidates]
        k = min(range(len(errs)), key=errs.__getitem__)
        if errs[k] >= held.error(w0, b0):
            return [before, before]
        alphas = (alphas[k],)
    fit.merge(held)  # fit again on every image with the chosen strength
    w, b = fit.path(w0, b0 is not None, alphas)[0]
    layer.weight.copy_(w.to(layer.weight.dtype))
    if b is not None:
        layer.bias.copy_(b.to(layer.bias.dtype))
    return [before, fit.error(layer.weight, layer.bias)]


def _raise():
    raise _Stop


def _attn_target(tblk: nn.Module, args, kwargs) -> Tensor:
    """The unpruned block's attention output on the pruned block's input (its forward, stopped there)."""
    out = {}
    h = tblk.attn.register_forward_hook(lambda m, a, o: (out.__setitem__("y", o[0] if isinstance(o, tuple) else o), _raise()))
    try:
        tblk(*args, **kwargs)
    except _Stop:
        pass
    finally:
        h.remove()
    return out["y"]
