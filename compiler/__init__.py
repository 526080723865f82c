"""vitshrink: a deployment compiler for pruned vision transformers.

checkpoint + masks --import--> IR --passes--> smaller IR --verify--> nn.Module --export--> ONNX
--> engine (ONNX Runtime / TensorRT) --measure--> report.

Public API (imported lazily so ``import vitshrink`` stays cheap):

- :func:`load` -- rebuild a pruned model from a ``vitshrink compile`` output or checkpoint directory.
- :func:`compile_model` -- the whole job (what ``vitshrink compile`` runs).
- :func:`load_spec`, :func:`resolve_spec`, :class:`Spec` -- the mask format.
- :func:`import_model` -- timm model + checkpoint -> dense IR.
- :func:`apply_spec` -- the structural passes; :func:`build_module` -- IR -> nn.Module.
- :func:`reference_forward` -- the masked dense reference.
"""
from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "load": ("vitshrink.codegen", "load"),
    "save": ("vitshrink.codegen", "save"),
    "build_module": ("vitshrink.codegen", "build_module"),
    "PrunedViT": ("vitshrink.codegen", "PrunedViT"),
    "compile_model": ("vitshrink.pipeline", "compile_model"),
    "Spec": ("vitshrink.spec", "Spec"),
    "load_spec": ("vitshrink.spec", "load_spec"),
    "save_spec": ("vitshrink.spec", "save_spec"),
    "resolve_spec": ("vitshrink.spec", "resolve_spec"),
    "import_model": ("vitshrink.frontends.timm", "import_model"),
    "apply_spec": ("vitshrink.passes", "apply_spec"),
    "reference_forward": ("vitshrink.reference", "reference_forward"),
    "count_macs": ("vitshrink.counting", "count_macs"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'vitshrink' has no attribute {name!r}")
