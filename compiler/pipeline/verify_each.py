"""Compile stage: verify after each pass (``--verify-each``; automatic when the final exactness check fails).

The compile's exactness check compares the finished model with the masked dense reference. When it
fails, that says *that* the pipeline miscompiled, not *where*. Here the family's passes run again from
the dense IR one :class:`~vitshrink.passes.steps.Step` at a time -- the structural and token passes,
then the layouts --, and after every step the IR's codegen is compared with the reference that has
the masks of the steps so far applied (:func:`vitshrink.passes.steps.applied_so_far`; a layout step
adds none, so it is held to the previous reference). The first step whose output differs by more than
the tolerance is the pass that broke the model.
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import Tensor

from ..errors import VerificationError
from ..passes.steps import applied_so_far


def verify_each(family, dense, resolved, x: Tensor, tensors: Optional[Mapping[str, Tensor]], heads_layout: str,
                token_layout: str, tolerance: float, stop_at_first: bool = False) -> list[dict]:
    """Run the family's passes on ``dense`` one step at a time, checking each step's output.

    Args:
        family: the model's :class:`~vitshrink.families.Family`.
        dense: the unpruned IR (as the frontend imported it); resolved: the resolved spec.
        x: verification images [B, C, H, W] float32; tensors: the checkpoint tensors the spec reads.
        heads_layout, token_layout: the layouts the compile chose (``pad``/``group``/``fused``; ``prefix``/``gather``).
        tolerance: max abs diff on logits (fp32).
        stop_at_first: stop after the first step that is not exact (the failure path).
    Returns:
        One row per step: ``{"pass": function name, "what": what it removes, "max_abs_diff": float,
        "passed": bool}``, in the order the passes ran.
    """
    steps = list(family.passes.steps(resolved, tensors)) + list(family.passes.layout_steps(heads_layout, token_layout))
    rows, ir, ref, ref_fields = [], dense, None, None
    with torch.no_grad():
        for k, step in enumerate(steps):
            ir = step.run(ir)
            so_far = applied_so_far(resolved, steps[: k + 1])
            fields_now = tuple(f for s in steps[: k + 1] for f in s.fields)
            if fields_now != ref_fields:  # a layout step keeps the reference of the step before it
                ref, ref_fields = family.reference.reference_forward(dense, so_far, x, tensors, False, None), fields_now
            out = family.codegen.build_module(ir, True, False)(x)
            diff = float((out - ref).abs().max())
            rows.append({"pass": step.name, "what": step.what, "max_abs_diff": diff, "passed": diff <= tolerance})
            if stop_at_first and diff > tolerance:
                break
    return rows


def first_failure(rows: list[dict]) -> Optional[dict]:
    """The first row of :func:`verify_each` that is not exact, or None."""
    return next((r for r in rows if not r["passed"]), None)


def describe(rows: list[dict], tolerance: float) -> str:
    """One clause for an error line: which pass broke exactness, or that every pass's output was exact
    (then the difference is in what follows the passes: codegen of the final module or its reload)."""
    bad = first_failure(rows)
    if bad is not None:
        before = [r["pass"] for r in rows[: rows.index(bad)]]
        exact = f" (exact after {', '.join(before)})" if before else " (the first pass)"
        return (f"first pass not exact: {bad['pass']} ({bad['what']}) differs from the reference with its masks by "
                f"{bad['max_abs_diff']:.3g} > {tolerance:g}{exact}")
    return f"every pass's output is exact ({', '.join(r['pass'] for r in rows) or 'no passes'}): the difference is in codegen or reload"


def check_each_pass(family, dense, resolved, x: Tensor, tensors, layouts: tuple[str, str], tolerance: float,
                    failure: Optional[str]) -> list[dict]:
    """The compile's use of :func:`verify_each`: after a failed final check (``failure``: its message)
    up to the first pass that is not exact, otherwise (``--verify-each``) every pass.

    Returns:
        report.json's ``exactness.per_pass`` rows.
    Raises:
        VerificationError: ``failure`` or a pass that is not exact, the message naming the first such pass
            (or saying that every pass was exact).
    """
    rows = verify_each(family, dense, resolved, x, tensors, *layouts, tolerance, stop_at_first=failure is not None)
    if failure is None and first_failure(rows) is not None:
        failure = "exactness failed: a pass is not exact although the compiled model is"
    if failure is not None:
        raise VerificationError(f"{failure}; {describe(rows, tolerance)}")
    return rows
