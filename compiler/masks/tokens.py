"""Token schedules for ``vitshrink masks --tokens`` (ViT/DeiT): static ``uniform`` (evenly spaced) and
``slim`` (Patch Slimming's top-down selection from attention on calibration images), dynamic ``evit``
and ``lfe`` rules, and ``tome`` token merging (r tokens merged per block)."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import VitshrinkError
from ..ir.vit import ViTIR


TOKEN_KINDS = ("uniform", "slim", "evit", "lfe", "tome")
#: ``--tokens KIND:auto`` with ``--macs R``: the keep ratio at which the token schedule alone brings the MACs to
#: ``R / AUTO_WIDTH_SHARE`` of the dense model's, the width search taking the rest -- tokens first, because on
#: DeiT-Tiny they cost less accuracy per MAC than heads and neurons (docs/benchmarks.md); never below
#: ``AUTO_MIN_KEEP`` (below it the widths take the rest of the budget).
AUTO_WIDTH_SHARE = 0.97
AUTO_MIN_KEEP = 0.5


def parse_token_schedule(text: str) -> tuple[str, float, list[int]]:
    """``KIND:RATIO@BLOCKS`` -> (kind, ratio, blocks), e.g. ``slim:0.7@4,7,10`` or ``uniform:0.9@3-11``;
    ``tome:R[@BLOCKS]`` -> ("tome", R, blocks or [] for every block), e.g. ``tome:8``.

    KIND: ``uniform`` (static, spatially even), ``slim`` (static, Patch Slimming top-down),
    ``evit`` (dynamic, class attention), ``lfe`` (dynamic, VTC-LFC). RATIO in (0, 1]: the share of
    the patch tokens present before each listed block that the block keeps. ``tome`` (token merging,
    ToMe): R tokens merged in every listed block (ToMe's r; at most what bipartite matching allows there).

    Raises:
        VitshrinkError: the text does not follow the grammar.
    """
    if text.split(":", 1)[0] == "tome":
        try:
            r_s, _, blocks_s = text.split(":", 1)[1].partition("@")
            r = int(r_s)
            blocks = _block_list(blocks_s) if blocks_s else []
        except ValueError:
            raise VitshrinkError(f"--tokens {text!r}: expected tome:R or tome:R@BLOCKS (R tokens merged per block), "
                                 "e.g. tome:8 or tome:8@4,5,6") from None
        if r < 1:
            raise VitshrinkError(f"--tokens {text!r}: R, the tokens merged per block, must be positive")
        return "tome", r, blocks
    try:
        kind, rest = text.split(":", 1)
        ratio_s, blocks_s = rest.split("@", 1)
        ratio = float(ratio_s)
        blocks = _block_list(blocks_s)
    except ValueError:
        raise VitshrinkError(f"--tokens {text!r}: expected KIND:RATIO@BLOCKS, e.g. evit:0.7@4,7,10 or slim:0.8@3-11") from None
    if kind not in TOKEN_KINDS:
        raise VitshrinkError(f"--tokens {text!r}: KIND must be one of {', '.join(TOKEN_KINDS)}")
    if not 0.0 < ratio <= 1.0:
        raise VitshrinkError(f"--tokens {text!r}: a keep ratio must be in (0, 1]")
    return kind, ratio, sorted(set(blocks))


def _block_list(text: str) -> list[int]:
    """``4,7,10`` or ``3-11`` (or both) -> block indices. Raises ValueError."""
    blocks: list[int] = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-", 1)
            blocks += list(range(int(a), int(b) + 1))
        else:
            blocks.append(int(part))
    return blocks


def merge_schedule(ir: ViTIR, r: int, blocks: list[int]) -> dict[str, dict]:
    """``token_merge`` settings for ToMe's r in ``blocks`` (every block when empty): r merges per block, fewer where
    bipartite matching cannot merge r any more (as ToMe's timm patch does: ``r = min(r, (tokens - protected) // 2)``),
    none once no token can merge.

    Raises:
        VitshrinkError: a block that does not exist.
    """
    from ..spec.tokens import mergeable  # lazy: spec imports torch only, but keep this module's imports light

    L = len(ir.blocks)
    for b in blocks:
        if not 0 <= b < L:
            raise VitshrinkError(f"--tokens: block {b} does not exist (the model has blocks 0..{L - 1})")
    chosen, present, rules = set(blocks) or set(range(L)), ir.num_tokens, {}
    for b in ir.blocks:
        n = min(r, mergeable(present, ir.num_prefix)) if b.source_index in chosen else 0
        if n > 0:
            rules[str(b.source_index)] = {"r": n}
            present -= n
    return rules


def auto_blocks(depth: int) -> list[int]:
    """EViT's token-pruning blocks (4, 7, 10 of DeiT's 12), scaled to ``depth`` blocks."""
    return sorted({min(depth - 1, max(1, round(depth * k / 12))) for k in (4, 7, 10)})


def is_auto(text: str) -> bool:
    """``KIND:auto`` or ``KIND:auto@BLOCKS``: a schedule whose keep ratio the ``--macs`` budget chooses."""
    return text.split(":", 1)[-1].split("@", 1)[0].strip() == "auto"


def auto_schedule(family, ir: ViTIR, text: str, macs: float, shape: tuple[int, int, int], mode: Optional[str] = None,
                  fuse: bool = False) -> Optional[str]:
    """The concrete schedule for ``KIND:auto[@BLOCKS]`` under ``--macs R`` (blocks default :func:`auto_blocks`):
    the largest keep ratio on a 0.01 grid in [``AUTO_MIN_KEEP``, 1) whose schedule alone keeps at most
    ``R / AUTO_WIDTH_SHARE`` of the dense MACs (counted on the generated model, :func:`.budget.model_macs`;
    ``slim`` priced by the ``uniform`` masks of the same counts). None where the budget leaves no room for
    tokens (R >= ``AUTO_WIDTH_SHARE``: the widths take it all).

    Raises:
        VitshrinkError: bad KIND or BLOCKS.
    """
    from ..spec.format import Spec  # lazy: benchmarks/gpu.py imports this module with torch and timm only (no scipy)
    from .budget import model_macs  # lazy: as above

    kind, rest = text.split(":", 1)
    if kind == "tome":
        return _auto_merge(family, ir, rest, macs, shape)
    blocks = rest.split("@", 1)[1] if "@" in rest else ",".join(map(str, auto_blocks(len(ir.blocks))))
    concrete = lambda r: f"{kind}:{r:.2f}@{blocks}"  # noqa: E731
    parse_token_schedule(concrete(AUTO_MIN_KEEP))  # grammar and kind, before any counting
    target = macs / AUTO_WIDTH_SHARE
    if target >= 1.0:
        return None
    dense = model_macs(family, ir, shape)

    def share(r: float) -> float:
        price = concrete(r).replace("slim:", "uniform:", 1)
        masks, settings = token_spec(ir, price, mode=mode or ("query" if kind == "slim" else None), fuse=fuse)
        return model_macs(family, ir, shape, Spec(masks=masks, settings=settings)) / dense

    grid = [round(AUTO_MIN_KEEP + k / 100, 2) for k in range(int(round((1 - AUTO_MIN_KEEP) * 100)))]  # 0.50 .. 0.99
    lo, hi = 0, len(grid) - 1  # the largest ratio with share <= target (the share grows with the ratio)
    if share(grid[0]) > target:
        return concrete(grid[0])
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if share(grid[mid]) <= target:
            lo = mid
        else:
            hi = mid - 1
    return concrete(grid[lo])


def _auto_merge(family, ir: ViTIR, rest: str, macs: float, shape: tuple[int, int, int]) -> Optional[str]:
    """``tome:auto[@BLOCKS]`` under ``--macs R``: the smallest ToMe r (in every block, or in BLOCKS) whose merging
    alone keeps at most R of the dense MACs -- merging takes the whole budget where it can: on DeiT-Tiny it costs
    far less accuracy per MAC than heads, neurons or pruned tokens (docs/benchmarks.md) --, else the largest r and
    the widths the rest. None at R >= 1."""
    from ..spec.format import Spec  # lazy: as in auto_schedule
    from ..spec.tokens import mergeable  # lazy: as above
    from .budget import model_macs  # lazy: as above

    blocks = rest.split("@", 1)[1] if "@" in rest else ""
    concrete = lambda r: f"tome:{r}" + (f"@{blocks}" if blocks else "")  # noqa: E731
    parse_token_schedule(concrete(1))
    if macs >= 1.0:
        return None
    dense = model_macs(family, ir, shape)

    def share(r: int) -> float:
        return model_macs(family, ir, shape, Spec(settings=token_spec(ir, concrete(r))[1])) / dense

    lo, hi = 1, mergeable(ir.num_tokens, ir.num_prefix)  # the smallest r with share <= R (the share falls with r)
    if share(hi) > macs:
        return concrete(hi)
    while lo < hi:
        mid = (lo + hi) // 2
        if share(mid) <= macs:
            hi = mid
        else:
            lo = mid + 1
    return concrete(lo)


def _counts(ir: ViTIR, ratio: float, blocks: list[int]) -> dict[int, int]:
    """Patch tokens kept at each listed block: ceil(ratio * present), cumulative."""
    present, out = ir.num_patches, {}
    for b in blocks:
        if not 0 <= b < len(ir.blocks):
            raise VitshrinkError(f"--tokens: block {b} does not exist (the model has blocks 0..{len(ir.blocks) - 1})")
        present = max(1, math.ceil(ratio * present - 1e-9))
        out[b] = present
    return out


def _masks_from_sets(ir: ViTIR, sets: dict[int, list[int]]) -> dict[str, Tensor]:
    masks = {}
    for b, patches in sets.items():
        m = torch.zeros(ir.num_tokens, dtype=torch.bool)
        m[: ir.num_prefix] = True
        m[[ir.num_prefix + p for p in patches]] = True
        masks[f"blocks.{b}.tokens"] = m
    return masks


def uniform_token_masks(ir: ViTIR, ratio: float, blocks: list[int]) -> dict[str, Tensor]:
    """Static nested masks keeping, at each listed block, evenly spaced patches of those still kept
    (raster order): a data-free schedule. Returns canonical ``blocks.{i}.tokens`` masks."""
    cur = list(range(ir.num_patches))
    sets = {}
    for b, n in _counts(ir, ratio, blocks).items():
        cur = [cur[(t * len(cur)) // n] for t in range(n)]
        sets[b] = cur
    return _masks_from_sets(ir, sets)


@torch.no_grad()
def attention_rollout_scores(ir: ViTIR, images: Tensor, batch: int = 25) -> Tensor:
    """[L, N] mean over ``images`` of each token's impact on the final class token, per block.

    Patch Slimming (Tang et al. CVPR 2022) approximates the impact of patch j at block l on the
    output through the attention maps of the later blocks (eq. 6): here the class-token row of
    ``Ā_{L-1} ... Ā_l`` with ``Ā = (A + I) / 2`` (head-averaged attention plus the residual path,
    attention rollout), computed on the dense model.
    """
    L, N = len(ir.blocks), ir.num_tokens
    total = torch.zeros(L, N)
    eye = torch.eye(N)
    for s in range(0, images.shape[0], batch):
        x_img = images[s:s + batch]
        x = F.conv2d(x_img, ir.patch_weight, ir.patch_bias, stride=ir.patch_size).flatten(2).transpose(1, 2)
        pre = torch.stack([t.value for t in ir.prefix]).expand(x.shape[0], -1, -1)
        x = torch.cat([pre, x], 1) + ir.pos_embed
        maps = []
        for blk in ir.blocks:
            a, m = blk.attn, blk.mlp
            h = F.layer_norm(x, (ir.embed_dim,), blk.norm1.weight, blk.norm1.bias, blk.norm1.eps)
            q, k, v = F.linear(h, a.q_weight, a.q_bias), F.linear(h, a.k_weight, a.k_bias), F.linear(h, a.v_weight, a.v_bias)
            B = x.shape[0]
            hd = a.qk_dims[0]
            q, k = (t.reshape(B, N, a.num_heads, hd).transpose(1, 2) for t in (q, k))
            probs = ((q @ k.transpose(-2, -1)) * a.scale).softmax(-1)
            maps.append(probs.mean(1))
            o = (probs @ v.reshape(B, N, a.num_heads, -1).transpose(1, 2)).transpose(1, 2).reshape(B, N, -1)
            x = x + F.linear(o, a.proj_weight, a.proj_bias)
            h = F.layer_norm(x, (ir.embed_dim,), blk.norm2.weight, blk.norm2.bias, blk.norm2.eps)
            x = x + F.linear(F.gelu(F.linear(h, m.fc1_weight, m.fc1_bias)), m.fc2_weight, m.fc2_bias)
        row = torch.zeros(x.shape[0], N)
        row[:, 0] = 1.0  # the class token after the last block
        for l in range(L - 1, -1, -1):
            row = (row.unsqueeze(1) @ (0.5 * maps[l] + 0.5 * eye)).squeeze(1)
            total[l] += row.sum(0)
    return total / images.shape[0]


def slim_token_masks(ir: ViTIR, ratio: float, blocks: list[int], images: Tensor) -> dict[str, Tensor]:
    """Patch Slimming's top-down nested selection: at the deepest listed block keep the patches of
    largest impact (:func:`attention_rollout_scores`); going up, keep those plus the most impactful
    others, so masks are nested by construction. Returns canonical ``blocks.{i}.tokens`` masks."""
    scores = attention_rollout_scores(ir, images)
    counts = _counts(ir, ratio, blocks)
    P = ir.num_prefix
    sets: dict[int, list[int]] = {}
    kept: list[int] = []
    for b in sorted(counts, reverse=True):
        s = scores[b, P:]
        rest = sorted((p for p in range(ir.num_patches) if p not in set(kept)), key=lambda p: (-float(s[p]), p))
        kept = sorted(kept + rest[: counts[b] - len(kept)])
        sets[b] = kept
    return _masks_from_sets(ir, sets)


def token_spec(ir: ViTIR, schedule: str, mode: Optional[str] = None, fuse: bool = False,
               calib: Optional[Tensor] = None) -> tuple[dict[str, Tensor], dict]:
    """Masks and settings for ``--tokens SCHEDULE`` (see :func:`parse_token_schedule`).

    Returns:
        (masks, settings): static kinds give ``blocks.{i}.tokens`` masks and ``token_mode`` (``drop``
        for uniform, ``query`` for slim unless ``mode`` says otherwise); dynamic kinds give
        ``dynamic_tokens`` rules with the keep ratio.
    Raises:
        VitshrinkError: bad schedule; ``slim`` without calibration images; a model with average
            pooling (its pooled token set would change) or without a class token (the scores read it).
    """
    kind, ratio, blocks = parse_token_schedule(schedule)
    if fuse and kind not in ("evit", "lfe"):  # accepted and ignored would mislead: say which rules fuse
        raise VitshrinkError(f"--fuse: only the dynamic rules (evit, lfe) fuse their pruned tokens; --tokens {kind}:... "
                             + ("merges tokens itself" if kind == "tome" else "drops fixed tokens"))
    if kind == "tome":  # token merging: class-token and average-pooled models alike (resolve refuses the rest)
        return {}, {"token_merge": merge_schedule(ir, int(ratio), blocks)}
    if getattr(ir, "pool", "token") == "avg" or not ir.prefix or ir.prefix[0].name != "cls":
        raise VitshrinkError(f"--tokens: token schedules need a class-token model; {ir.name} pools the patch "
                             "tokens on average (global_pool='avg')")
    if kind in ("evit", "lfe"):
        _counts(ir, ratio, blocks)  # range check
        score = "cls_attention" if kind == "evit" else "cls_attention_lfe"
        rules = {str(b): {"keep": ratio, "score": score, "fuse": fuse} for b in blocks}
        return {}, {"dynamic_tokens": rules}
    if kind == "uniform":
        return uniform_token_masks(ir, ratio, blocks), {"token_mode": mode or "drop"}
    if calib is None:
        raise VitshrinkError("--tokens slim:... needs calibration images (--calib DIR)")
    return slim_token_masks(ir, ratio, blocks, calib), {"token_mode": mode or "query"}
