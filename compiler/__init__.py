"""vitshrink: a deployment compiler for pruned vision transformers.

checkpoint + masks --import--> IR --passes--> smaller IR --verify--> nn.Module --export--> ONNX
--> engine (ONNX Runtime / TensorRT) --measure--> report.

Public API (``__all__``; imported on first use so ``import vitshrink`` stays cheap, yet listed by
``dir(vitshrink)`` and visible to type checkers and IDEs):

- :func:`compile_model`, :class:`CompileOptions` -- the whole job (what ``vitshrink compile`` runs).
- :func:`make_masks` -- the masks job (what ``vitshrink masks`` runs): a spec v1 (and re-fitted weights).
- :func:`load` -- rebuild a pruned model from a ``vitshrink compile`` output or checkpoint directory.
- :func:`load_spec`, :func:`resolve_spec`, :class:`Spec` -- the mask format.
- :func:`import_model` -- timm model + checkpoint -> dense IR.
- :func:`import_checkpoint` -- a checkpoint pruned by another tool -> spec + dense-layout weights.
- :func:`apply_spec` -- the structural passes; :func:`build_module` -- IR -> nn.Module.
- :func:`reference_forward` -- the masked dense reference.
- :func:`ensure_timm_importable` -- call it before ``import timm`` / ``transformers`` in a script: on a CPU-only
  torch beside the CUDA build of torchvision (the only one pip has for torch 2.13) it lets them import.
- :class:`VitshrinkError` (bad input, CLI exit 2), :class:`VerificationError` (a broken promise,
  exit 1), :class:`SpecError`, :class:`CheckpointError`, :class:`ModelError`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .version import __version__

_LAZY = {
    "load": ("vitshrink.codegen", "load"),
    "save": ("vitshrink.codegen", "save"),
    "build_module": ("vitshrink.families", "build_module"),
    "PrunedViT": ("vitshrink.codegen", "PrunedViT"),
    "compile_model": ("vitshrink.pipeline", "compile_model"),
    "CompileOptions": ("vitshrink.pipeline", "CompileOptions"),
    "make_masks": ("vitshrink.pipeline", "make_masks"),
    "VitshrinkError": ("vitshrink.errors", "VitshrinkError"),
    "VerificationError": ("vitshrink.errors", "VerificationError"),
    "SpecError": ("vitshrink.errors", "SpecError"),
    "CheckpointError": ("vitshrink.errors", "CheckpointError"),
    "ModelError": ("vitshrink.errors", "ModelError"),
    "Spec": ("vitshrink.spec", "Spec"),
    "load_spec": ("vitshrink.spec", "load_spec"),
    "save_spec": ("vitshrink.spec", "save_spec"),
    "resolve_spec": ("vitshrink.families", "resolve_spec"),
    "import_model": ("vitshrink.families", "import_model"),
    "import_checkpoint": ("vitshrink.importers", "import_checkpoint"),
    "apply_spec": ("vitshrink.families", "apply_spec"),
    "reference_forward": ("vitshrink.families", "reference_forward"),
    "count_macs": ("vitshrink.counting", "count_macs"),
    "ensure_timm_importable": ("vitshrink.compat", "ensure_timm_importable"),
}

__all__ = sorted(_LAZY) + ["__version__"]

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs (never executed)
    from .codegen import PrunedViT, load, save  # noqa: F401
    from .compat import ensure_timm_importable  # noqa: F401
    from .counting import count_macs  # noqa: F401
    from .errors import CheckpointError, ModelError, SpecError, VerificationError, VitshrinkError  # noqa: F401
    from .families import apply_spec, build_module, import_model, reference_forward, resolve_spec  # noqa: F401
    from .importers import import_checkpoint  # noqa: F401
    from .pipeline import CompileOptions, compile_model, make_masks  # noqa: F401
    from .spec import Spec, load_spec, save_spec  # noqa: F401


def __dir__() -> list[str]:
    return list(__all__)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib  # lazy on purpose: `import vitshrink` stays cheap, each public name loads on first use

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value  # resolved once; documentation tools then find it in the module
        return value
    raise AttributeError(f"module 'vitshrink' has no attribute {name!r}")
