"""Post-training masks (``vitshrink masks --data``): data-aware scores (:mod:`.scores`), per-block ratios or one
budget for the whole model (:mod:`.budget`), and least-squares reconstruction of the layers that read the
removed units (:mod:`.refit`), written as spec v1 plus re-fitted weights in the dense layout.

No retraining and no labels: a few hundred calibration images, minutes on a CPU. The spec records the
criterion, the budget's outcome and the calibration images (``meta.calibration``: ``vitshrink compile
--data`` leaves them out of its accuracy images).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ..errors import VitshrinkError
from ..spec.format import Spec
from .budget import Costs, allocate, model_macs, smallest, unit_costs
from .common import check_ratio, topk_mask
from .refit import refit
from .scores import Scores, unit_scores


@dataclass
class Result:
    """The spec, the scores it came from, the budget summary (``--macs``), and after reconstruction the
    re-fitted pruned IR and its per-layer calibration errors."""

    spec: Spec
    scores: Scores
    budget: Optional[dict] = None
    pruned_ir: object = None
    refit: list = field(default_factory=list)


def embed_masks(family, ir, scores: Scores, ratio: float) -> dict[str, Tensor]:
    """The ``round(ratio * D)`` residual channels with the largest scores: ViT ``embed``, Swin one per stage."""
    if hasattr(ir, "stages"):
        return {f"layers.{k}.embed": topk_mask(v, ratio) for k, v in scores.embed.items()}
    return {"embed": topk_mask(scores.embed[""], ratio)}


def posttrain(family, ir, images: Tensor, shape: tuple[int, int, int], heads: Optional[float] = None,
              mlp: Optional[float] = None, embed: Optional[float] = None, macs: Optional[float] = None,
              criterion: str = "obs", round_to: int = 1, reconstruct: bool = True, alpha: Optional[float] = None,
              teacher: float = 0.6, steps: int = 1, costs: Optional[Costs] = None,
              adjust: Optional[Callable[[dict, float], Optional[float]]] = None,
              base: Optional[Spec] = None, progress: Optional[Callable[[str, int, int], None]] = None) -> Result:
    """Masks for ``ir`` (the dense model) from its activations on calibration ``images`` [N, C, H, W].

    Args:
        heads, mlp: keep ratios per block by score; macs: instead, the pruned MACs at most this share of
            the dense model's, heads and neurons allocated across blocks (:func:`.budget.allocate`).
        embed: keep ratio of residual channels by score. criterion: ``obs``, ``activation`` or ``fisher``
            (:mod:`.scores`).
        costs: what a head and a neuron of each block cost, for ``macs`` (default: MACs, :func:`.budget.unit_costs`;
            ``--latency-ms``: nanoseconds on an engine, :func:`.latency.costs_from_table`).
        adjust: ``adjust(width masks, ratio)`` after the last allocation: None to keep it, or a new ratio to
            allocate again with the same scores (``--latency-ms``: the allocation timed on the engine); at
            most two re-allocations, the last one kept.
        round_to: ``--macs``: MLP neurons per block in multiples of this. steps: ``--macs`` in this many rounds,
            each re-fitted and re-scored (:func:`_search`). base: masks and settings to keep (a token
            schedule); they apply before the widths are priced and re-fitted.
        reconstruct: re-fit attention projections and fc2 (:func:`.refit.refit`; ``alpha``: its ridge, None:
            chosen per layer on held-out calibration images; ``teacher``: its target's share of the dense
            model's residual stream).
        progress: ``progress(stage, done, total)``.
    Raises:
        VitshrinkError: a ratio or budget outside (0, 1], no width option, a budget below one head per block.
    """
    for flag, r in (("heads", heads), ("mlp", mlp), ("embed", embed), ("macs", macs)):
        check_ratio(flag, r)
    if macs is not None and (heads is not None or mlp is not None):
        raise VitshrinkError("--macs allocates heads and MLP neurons itself: give it without --heads / --mlp")
    if steps < 1:
        raise VitshrinkError(f"--steps {steps}: give a positive number of rounds")
    if not reconstruct:
        steps = 1  # the rounds score a re-fitted model: without reconstruction there is none
    if round_to < 1:
        raise VitshrinkError(f"--round-to {round_to}: give a positive number of neurons")
    if embed is not None and criterion != "fisher":
        raise VitshrinkError(f"--embed: the {criterion} criterion has no embedding-channel scores (use --criterion fisher)")
    tick = (lambda stage: (lambda d, t: progress(stage, d, t))) if progress else (lambda stage: None)
    scores = unit_scores(family, ir, images, criterion, progress=tick("scores"))
    base = base or Spec()
    masks, settings = dict(base.masks), dict(base.settings)
    if embed is not None:
        masks.update(embed_masks(family, ir, scores, embed))
    name = lambda s: family.spec.block_name(ir, s)  # noqa: E731
    weights = None
    if reconstruct or (macs is not None and steps > 1):
        weights = {s: v["tokens"] for s, v in scores.blocks.items() if "tokens" in v}
        if not weights:  # no gradients in the criterion: one Fisher pass on a subset for the weights
            fisher = unit_scores(family, ir, images[:64], "fisher")
            weights = {s: v["tokens"] for s, v in fisher.blocks.items() if "tokens" in v}
    budget = None
    if macs is not None:
        width, budget = _search(family, ir, images, shape, scores, masks, settings, macs, round_to, criterion, steps, teacher,
                                weights, tick, costs, adjust)
        masks.update(width)
    else:
        for b in ir.blocks:
            sc = scores.blocks[b.source_index]
            if heads is not None and b.attn.num_heads:
                masks[f"{name(b.source_index)}.heads"] = topk_mask(sc["heads"], heads)
            if mlp is not None and b.mlp.hidden:
                masks[f"{name(b.source_index)}.mlp"] = topk_mask(sc["mlp"], mlp)
    meta = {"producer": "vitshrink masks", "criterion": criterion, "model": ir.name,
            "keep_ratio": {"heads": heads, "mlp": mlp, "embed": embed}, "macs_budget": macs,
            "reconstructed": bool(reconstruct), "steps": steps if macs is not None else 1,
            "reconstruction": {"teacher": teacher, "ridge": "per layer on held-out calibration batches" if alpha is None else alpha}
            if reconstruct else None}
    if budget is not None:
        meta["budget"] = {k: budget[k] for k in ("macs", "budget", "dense_macs", "base_macs", "width_share") if k in budget}
    spec = Spec(masks=masks, settings=settings, source="<posttrain>", meta=meta)
    result = Result(spec, scores, budget)
    if reconstruct:
        result.pruned_ir, result.refit = refit(family, ir, masks, settings, images, alpha, progress=tick("reconstruct"),
                                               token_weights=weights, teacher=teacher)
    return result


def _search(family, ir, images, shape, scores, masks, settings, macs, round_to, criterion, steps, teacher, weights, tick,
            costs=None, adjust=None):
    """The ``--macs`` allocation, in ``steps`` rounds: each round prunes to the next point of a geometric
    schedule from 1 to ``macs``, re-fits, and scores the re-fitted model again for the next round (the
    scores of units that stay change once others are gone; units already removed score 0 and stay out,
    the budget shrinking each round). Returns (width masks on ``ir``, budget summary)."""
    name = lambda s: family.spec.block_name(ir, s)  # noqa: E731
    share, dense = macs, None
    if costs is None:
        costs = unit_costs(family, ir, shape, Spec(masks=masks, settings=settings))
        if masks or settings:  # --macs is a share of the dense model's MACs; the base (tokens, --embed) takes its part first
            dense = model_macs(family, ir, shape)
            share = min(1.0, macs * dense / costs.total)
            if share < smallest(ir, costs):
                raise VitshrinkError(f"--macs {macs:g}: below the {smallest(ir, costs) * costs.total / dense:.3f} of the dense "
                                     "MACs that one head per block and no MLP neuron cost with the token schedule / --embed")
    hs = {s: v["heads"] for s, v in scores.blocks.items()}
    ms = {s: v["mlp"] for s, v in scores.blocks.items()}
    for t in range(1, steps + 1):
        width, budget = allocate(ir, hs, ms, costs, share ** (t / steps), round_to, name)
        if t < steps:
            current, _ = refit(family, ir, {**masks, **width}, settings, images, teacher=teacher, token_weights=weights,
                               progress=tick(f"reconstruct {t}"))
            hs, ms = _in_dense_ids(ir, current, unit_scores(family, current, images, criterion, progress=tick(f"scores {t + 1}")))
    if dense is not None:  # the summary in the dense model's MACs; the width search's share of the base model
        budget = {**budget, "budget": int(macs * dense), "dense_macs": dense, "base_macs": costs.total, "width_share": share}
    ratio = macs
    for attempt in range(3):  # the last allocation checked by the caller (--latency-ms: timed), re-allocated if asked
        new = adjust(width, ratio) if adjust is not None else None
        if new is None or attempt == 2:
            break
        ratio = new
        width, budget = allocate(ir, hs, ms, costs, ratio, round_to, name)
    return width, {**budget, "steps": steps, "ratio": ratio}


def _in_dense_ids(ir, current, scores: Scores) -> tuple[dict, dict]:
    """Head and neuron scores of ``current`` (a pruned IR: its units carry their ids in ``ir``) over ``ir``'s
    units, 0 for the removed ones."""
    dense = {b.source_index: b for b in ir.blocks}
    hs, ms = {}, {}
    for b in current.blocks:
        d, sc = dense[b.source_index], scores.blocks[b.source_index]
        hs[b.source_index] = torch.zeros(d.attn.num_heads, dtype=torch.float64)
        if b.attn.num_heads > 1:
            hs[b.source_index][list(b.attn.head_ids)] = sc["heads"].double()
        elif b.attn.num_heads:
            hs[b.source_index][b.attn.head_ids[0]] = 1.0
        ms[b.source_index] = torch.zeros(d.mlp.hidden, dtype=torch.float64)
        if b.mlp.hidden:
            ms[b.source_index][list(b.mlp.hidden_ids)] = sc["mlp"].double() + 1e-30
    return hs, ms


def dense_state(family, timm_model: nn.Module, dense_ir, pruned_ir) -> dict[str, Tensor]:
    """The timm model's state dict with the re-fitted ``attn.proj`` and ``mlp.fc2`` of ``pruned_ir`` written
    into its dense layout (kept rows and columns; removed columns zeroed). LayerScale after a re-fitted layer
    is folded into it and set to 1 (the fit is of the folded layer).

    Raises:
        VitshrinkError: a block whose timm layers are not where this expects them (named).
    """
    model = timm_model
    blocks = dict(enumerate(family.frontend.timm_blocks(model)))
    dense = {b.source_index: b for b in dense_ir.blocks}
    with torch.no_grad():
        for b in pruned_ir.blocks:
            prefix, tb = blocks[b.source_index]
            rows = _embed_rows(family, pruned_ir, b.source_index)
            d = dense[b.source_index]
            if b.attn.num_heads:
                offsets = [sum(d.attn.v_dims[:h]) for h in range(d.attn.num_heads)]
                cols = [offsets[h] + c for h, ids in zip(b.attn.head_ids, b.attn.v_ids) for c in ids]
                _write(tb.attn.proj, _scale_of(tb, 1), rows, cols, b.attn.proj_weight, b.attn.proj_bias, prefix + "attn.proj")
            if b.mlp.hidden:
                _write(tb.mlp.fc2, _scale_of(tb, 2), rows, list(b.mlp.hidden_ids), b.mlp.fc2_weight, b.mlp.fc2_bias,
                       prefix + "mlp.fc2")
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}


def _embed_rows(family, ir, source_index: int) -> list[int]:
    if hasattr(ir, "stages"):  # Swin: the block's stage
        return list(ir.stage_of(source_index).embed_ids)
    return list(ir.embed_ids)


def _scale_of(tb: nn.Module, k: int):
    """The LayerScale gamma after sub-layer ``k`` (1: attention, 2: MLP) of a timm block, as (owner, attribute) or None."""
    ls = getattr(tb, f"ls{k}", None)
    if ls is not None and hasattr(ls, "gamma"):
        return ls, "gamma"
    if getattr(tb, f"gamma_{k}", None) is not None:
        return tb, f"gamma_{k}"
    return None


def _write(lin: nn.Module, scale, rows: list[int], cols: list[int], w: Tensor, b: Optional[Tensor], where: str) -> None:
    if not isinstance(lin, nn.Linear):
        raise VitshrinkError(f"{where}: not a Linear layer in the timm model; the re-fitted weights cannot be written")
    if scale is not None:  # fold gamma into the layer, then gamma = 1
        owner, attr = scale
        g = getattr(owner, attr)
        lin.weight.mul_(g[:, None])
        if lin.bias is not None:
            lin.bias.mul_(g)
        g.fill_(1.0)
    keep = torch.zeros(lin.weight.shape[1], dtype=torch.bool)
    keep[cols] = True
    lin.weight[:, ~keep] = 0.0
    r, c = torch.tensor(rows), torch.tensor(cols)
    lin.weight[r[:, None], c[None, :]] = w.to(lin.weight.dtype)
    if b is not None and lin.bias is not None:
        lin.bias[r] = b.to(lin.bias.dtype)
