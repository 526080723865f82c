"""One budget for the whole model (``vitshrink masks --macs R``): heads and MLP neurons allocated across
blocks by score per MAC, instead of one keep ratio per block.

The search is Kwon et al.'s (NeurIPS 2022, sec. 4.2, "mask search" under a FLOPs constraint): for every
number ``h`` of kept heads (the best ``h`` by score, after the one head every kept block must keep), the
MACs left by the budget go to MLP neurons in order of score per MAC, and the ``h`` whose kept units
have the largest total score wins. With Fisher scores (:mod:`.scores`) that total is the loss increase
the removal is expected to cost, in one unit for heads and neurons. What a unit costs is measured, not
modelled: the MACs the generated model loses when one head or one neuron of a block goes
(:func:`unit_costs`, :func:`vitshrink.counting.count_macs_by_module`), so token schedules and Swin's windows
are priced as they run. ``round_to`` keeps every block's neuron count a multiple of that many (widths
that int8 and SIMD kernels prefer).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from ..counting import count_macs, count_macs_by_module
from ..errors import VitshrinkError
from ..spec.format import Spec
from .scores import block_modules


@dataclass(frozen=True)
class Costs:
    """``total``: MACs per image of the model the masks apply to; per block (source index) the MACs of one
    ``head`` and one ``neuron`` -- or another ``unit`` (``ns``: a latency budget, :mod:`.latency`)."""

    total: int
    head: dict[int, int]
    neuron: dict[int, int]
    unit: str = "MACs"


def _generated(family, ir, spec: Spec):
    pruned = family.passes.apply_spec(ir, family.spec.resolve(spec, ir, {}), {})
    return family.codegen.build_module(pruned, share=True)


def model_macs(family, ir, shape: tuple[int, int, int], spec: Optional[Spec] = None) -> int:
    """MACs per image [C, H, W] of the generated model of ``ir`` with ``spec`` (masks and settings) applied,
    counted as :func:`vitshrink.counting.count_macs` counts (a dynamic token rule at its keep ratio)."""
    return count_macs(_generated(family, ir, spec or Spec()), (1, *shape))


def unit_costs(family, ir, shape: tuple[int, int, int], base: Optional[Spec] = None) -> Costs:
    """Measure what one head and one MLP neuron of each block cost (MACs per image) in the generated model
    of ``ir`` with the spec ``base`` applied (its masks and settings: an embedding mask, a static token mask,
    a dynamic token rule such as EViT's, which lives in the settings): three counts -- as it is,
    with one head gone from every block, with one neuron gone from every block -- read per block
    (:func:`vitshrink.counting.count_macs_by_module`; a width mask changes no other block's work). A
    block with one head gets the head cost 0 (its head is never removed)."""
    base = base or Spec()

    def macs(masks: dict) -> dict:
        module = _generated(family, ir, Spec(masks={**base.masks, **masks}, settings=dict(base.settings)))
        names = {m: n for n, m in module.named_modules()}
        blocks = {s: names[blk] for s, blk, _ in block_modules(module)}
        got = count_macs_by_module(module, list(blocks.values()), (1, *shape))
        return {"total": got[""], **{s: got[n] for s, n in blocks.items()}}

    def one_less(kind: str) -> dict:
        masks = {}
        for b in ir.blocks:
            n = b.attn.num_heads if kind == "heads" else b.mlp.hidden
            if n > 1:
                keep = torch.ones(n, dtype=torch.bool)
                keep[0] = False
                masks[f"{family.spec.block_name(ir, b.source_index)}.{kind}"] = keep
        return macs(masks)

    dense, no_head, no_neuron = macs({}), one_less("heads"), one_less("mlp")
    head = {b.source_index: dense[b.source_index] - no_head[b.source_index] if b.attn.num_heads > 1 else 0 for b in ir.blocks}
    neuron = {b.source_index: dense[b.source_index] - no_neuron[b.source_index] if b.mlp.hidden > 1 else 0 for b in ir.blocks}
    return Costs(dense["total"], head, neuron)


def smallest(ir, costs: Costs) -> float:
    """The least share of ``costs.total`` a budget can reach: what no mask here removes (embedding,
    classifier, norms) plus one head per block, no MLP neuron."""
    blocks = [b.source_index for b in ir.blocks]
    removable = sum(costs.head[s] * ir.block(s).attn.num_heads + costs.neuron[s] * ir.block(s).mlp.hidden for s in blocks)
    return (costs.total - removable + sum(costs.head[s] for s in blocks)) / costs.total


def allocate(ir, head_scores: dict[int, Tensor], mlp_scores: dict[int, Tensor], costs: Costs, ratio: float,
             round_to: int = 1, name: Callable[[int], str] = str) -> tuple[dict[str, Tensor], dict]:
    """Keep-masks for heads and MLP neurons of every block of ``ir`` with MACs at most ``ratio`` of
    ``costs.total`` (the search of the module docstring).

    Args:
        head_scores / mlp_scores: per block (source index) [H] / [hidden] scores (larger = keep).
        ratio: the budget, in (0, 1]. round_to: neuron counts per block are multiples of it.
        name: the family's canonical key prefix of a block (``blocks.3``).
    Returns:
        (``{"<block>.heads": [H] bool, "<block>.mlp": [hidden] bool}``, a summary: ``macs`` (estimated,
        per image), ``budget``, ``heads``/``mlp`` kept per block, ``score_kept``).
    Raises:
        VitshrinkError: the budget is below what one head per block and no neuron already costs.
    """
    budget = ratio * costs.total
    blocks = [b.source_index for b in ir.blocks]
    must = {s: int(torch.argmax(head_scores[s])) for s in blocks}  # every kept block keeps its best head
    floor = smallest(ir, costs) * costs.total
    if floor > budget:
        what = f"--macs {ratio:g}" if costs.unit == "MACs" else f"--latency-ms: a share of {ratio:.3f} of the dense latency"
        raise VitshrinkError(f"{what}: below the {floor / costs.total:.3f} of the dense {'MACs' if costs.unit == 'MACs' else 'latency'} "
                             "that one head per block and no MLP neuron cost")
    # optional heads by score per MAC (equal costs unless tokens or windows differ between blocks)
    heads = sorted(((float(head_scores[s][h]), s, h) for s in blocks for h in range(len(head_scores[s])) if h != must[s]),
                   key=lambda t: -t[0] / max(costs.head[t[1]], 1))
    # neurons in groups of round_to per block, best first within a block; groups ordered by score per MAC
    groups = []
    for s in blocks:
        sc = mlp_scores[s].double()
        order = torch.argsort(sc, descending=True).tolist()
        for g in range(0, len(order) - len(order) % round_to, round_to):
            members = order[g:g + round_to]
            gain = float(sc[members].sum())
            groups.append((gain / max(costs.neuron[s] * round_to, 1), gain, costs.neuron[s] * round_to, s, members))
    groups.sort(key=lambda t: -t[0])
    cum_cost, cum_gain = [0.0], [0.0]
    for _, gain, cost, _, _ in groups:  # greedy prefix by score per MAC (within a block: best neurons first)
        cum_cost.append(cum_cost[-1] + cost)
        cum_gain.append(cum_gain[-1] + gain)
    best, used = None, floor
    for h in range(len(heads) + 1):
        if h:
            used += costs.head[heads[h - 1][1]]
        if used > budget:
            break
        k = bisect.bisect_right(cum_cost, budget - used) - 1  # neuron groups that fit
        total = sum(t[0] for t in heads[:h]) + cum_gain[k]
        if best is None or total > best[0]:
            best = (total, h, k, used + cum_cost[k])
    total, h, k, macs = best
    masks: dict[str, Tensor] = {}
    for s in blocks:
        keep = torch.zeros(len(head_scores[s]), dtype=torch.bool)
        keep[must[s]] = True
        masks[f"{name(s)}.heads"] = keep
        masks[f"{name(s)}.mlp"] = torch.zeros(len(mlp_scores[s]), dtype=torch.bool)
    for _, s, hh in heads[:h]:
        masks[f"{name(s)}.heads"][hh] = True
    for *_, s, members in groups[:k]:
        masks[f"{name(s)}.mlp"][members] = True
    summary = {"macs": int(macs), "budget": int(budget), "dense_macs": costs.total, "score_kept": total,
               "heads": {name(s): int(masks[f"{name(s)}.heads"].sum()) for s in blocks},
               "mlp": {name(s): int(masks[f"{name(s)}.mlp"].sum()) for s in blocks}}
    return masks, summary
