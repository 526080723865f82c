"""The compile job (``vitshrink compile``), one stage after another -- each stage a method of
:class:`~.job.CompileJob`:

- :mod:`.options`: :class:`CompileOptions` (one field per flag);
- :mod:`.masks`: the masks job (``vitshrink masks``), :func:`make_masks`;
- :mod:`.job`: the stages, :func:`compile_model`;
- :mod:`.inputs`: the verification (and calibration) images;
- :mod:`.layout_choice`: ``--layout auto``, the head layout timed on the target engine;
- :mod:`.engine_checks`: every engine verified against torch, then timed (and TensorRT built);
- :mod:`.progress`: stage lines, timings and peak memory; :mod:`.output`: the output directory,
  written atomically, with input hashes and toolchain versions.
"""
from __future__ import annotations

from .job import CompileJob, compile_model
from .masks import MasksResult, make_masks
from .options import CompileOptions

__all__ = ["CompileJob", "CompileOptions", "MasksResult", "compile_model", "make_masks"]
