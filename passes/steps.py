"""A family's passes as an ordered list of steps, so that each one can be checked on its own.

A spec compiles as a fold of IR -> IR passes (:func:`run`). Each :class:`Step` names the pass
function that ran, what it removes, and the :class:`~vitshrink.spec.resolved.ResolvedSpec` fields
whose masks it applies. After step k the IR must compute the masked dense reference with the masks
of steps 0..k applied (:func:`applied_so_far`) -- and nothing else: a layout step applies no masks.
That is what :func:`vitshrink.pipeline.verify_each.verify_each` checks after every step, as
compilers verify after each pass, so that a miscompilation is pinned on the first pass whose output
is no longer exact.

The step lists are built by the families (:func:`vitshrink.passes.vit.steps`,
:func:`vitshrink.passes.swin.steps`, and their ``layout_steps``); each step calls its pass through
the module global at run time, so a pass replaced in its module (a test planting a bug) is the one
every caller runs.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable, Iterable, Sequence

from vitshrink.spec.resolved import ResolvedSpec


@dataclass(frozen=True)
class Step:
    """One pass of a compile.

    - ``name``: the pass function (``prune_mlp``), as error messages and report.json name it;
    - ``what``: what it removes or re-lays out, in the field's words (``MLP hidden neurons``);
    - ``fields``: the ResolvedSpec fields it applies (``("mlp",)``; empty for a layout);
    - ``run``: IR -> IR.
    """

    name: str
    what: str
    fields: tuple[str, ...]
    run: Callable


def run(ir, steps: Iterable[Step]):
    """The IR after every step, in order."""
    for step in steps:
        ir = step.run(ir)
    return ir


def applied_so_far(spec: ResolvedSpec, steps: Sequence[Step]) -> ResolvedSpec:
    """The resolved spec with only the masks and settings of ``steps`` (every other field at its
    empty default): what the IR after those steps must compute."""
    wanted = {f for s in steps for f in s.fields}
    return replace(ResolvedSpec(), **{f.name: getattr(spec, f.name) for f in fields(ResolvedSpec) if f.name in wanted})


def width_steps(spec: ResolvedSpec, passes) -> list[Step]:
    """The steps every family shares, first and in this order (only those with something to do): q/k and
    v channels, heads, MLP neurons. ``passes``: the family's passes module, whose functions are looked up
    when a step runs."""
    out = []
    if spec.qk or spec.v:
        out.append(Step("prune_head_channels", "q/k and v channels", ("qk", "v"),
                        lambda ir: passes.prune_head_channels(ir, spec.qk, spec.v)))
    if spec.heads:
        out.append(Step("prune_heads", "attention heads", ("heads",), lambda ir: passes.prune_heads(ir, spec.heads)))
    if spec.mlp:
        out.append(Step("prune_mlp", "MLP hidden neurons", ("mlp",), lambda ir: passes.prune_mlp(ir, spec.mlp)))
    return out
