"""Read torch pickles (``torch.save`` of a module, a training checkpoint, a mask dict) without executing
code from them.

``torch.load(weights_only=True)`` refuses a pickled ``nn.Module``; ``weights_only=False`` runs whatever
the pickle names. :func:`safe_load` sits between: torch's own tensor rebuild functions and a few plain
containers are real, while every class the pickle names is replaced by a *record* -- an inert stand-in
that keeps the class path, the constructor arguments and the state (a module's ``__dict__``) and runs
no code of that class. Classes outside :data:`KNOWN` (torch, timm, torch_pruning, numpy scalars,
``argparse.Namespace``, collections) refuse the file unless ``trust=True`` (the CLI's
``--trust-pickle``), which loads it with plain ``torch.load(weights_only=False)``.
"""
from __future__ import annotations

import collections
import pickle
import types
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import CheckpointError

#: Module prefixes whose classes may appear in a checkpoint (recorded, never instantiated).
KNOWN = ("torch.", "timm.", "torch_pruning.", "numpy.", "collections.", "argparse.", "transformers.")
#: Real objects: torch's tensor rebuilders and plain containers. Everything else becomes a record.
_REAL = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "dict"): dict,
    ("builtins", "list"): list, ("builtins", "tuple"): tuple, ("builtins", "slice"): slice,
    ("builtins", "float"): float, ("builtins", "int"): int, ("builtins", "complex"): complex,
    ("torch", "Size"): torch.Size,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch", "device"): torch.device,
}


class Record:
    """An inert stand-in for an object of class ``path`` (``module.qualname``).

    ``args``: what the pickle passed to the class (or to ``__new__``); ``state``: what it passed to
    ``__setstate__`` (for an ``nn.Module``, its ``__dict__``: ``_parameters``, ``_buffers``, ``_modules``
    and plain attributes such as ``num_heads``, ``head_dim``, ``scale``, ``fused_attn``).
    """

    path = "?"

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state = args, kwargs, {}

    @classmethod
    def _new(cls, *args):
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state = args, {}, {}
        return obj

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.state = state if isinstance(state, dict) else {"__state__": state}

    def __repr__(self) -> str:
        return f"<record {self.path}>"

    # containers that subclass dict/list pickle their items through these
    def __setitem__(self, key, value):
        self.state[key] = value

    def append(self, value):
        self.state.setdefault("__items__", []).append(value)

    def extend(self, values):
        self.state.setdefault("__items__", []).extend(values)


def _record_class(path: str) -> type:
    cls = type(path.rsplit(".", 1)[-1], (Record,), {"path": path})
    cls.__new__ = lambda c, *a, **k: Record._new.__func__(c, *a)  # NEWOBJ: no code of the real class
    return cls


def _getattr_record(obj, name, *default):
    """``getattr`` as a pickle uses it (bound methods, e.g. a patched ``forward``): recorded, not run."""
    rec = Record(obj, name)
    rec.path = "builtins.getattr"
    return rec


class _Unpickler(pickle.Unpickler):
    seen: set[str]
    unknown: list[str]

    def find_class(self, module: str, name: str):
        module = {"__builtin__": "builtins"}.get(module, module)
        path = f"{module}.{name}"
        self.seen.add(path)
        if (module, name) in _REAL:
            return _REAL[(module, name)]
        if path == "builtins.getattr":
            return _getattr_record
        if not any(path.startswith(p) for p in KNOWN):
            self.unknown.append(path)
        return _record_class(path)


def safe_load(path: str | Path, trust: bool = False) -> tuple[Any, dict]:
    """Load a torch pickle without running code from it (see the module docstring).

    Args:
        path: a ``torch.save`` file (zip or legacy format).
        trust: load with ``torch.load(weights_only=False)`` instead: runs the pickle's code and needs the
            classes it names to be importable. Only for files from a trusted source.
    Returns:
        (the object with records in place of classes, info ``{"loader": str, "classes": [paths]}``).
    Raises:
        CheckpointError: unreadable file, or a class outside :data:`KNOWN` (named; exit 2).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}': no such file")
    if trust:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"checkpoint '{path}': cannot be read ({type(e).__name__}: {e})".splitlines()[0]) from e
        return obj, {"loader": "torch.load(weights_only=False) -- trusted, code from the file ran", "classes": []}

    seen: set[str] = set()
    unknown: list[str] = []

    class Unpickler(_Unpickler):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.seen, self.unknown = seen, unknown

    module = types.SimpleNamespace(Unpickler=Unpickler, load=pickle.load, __name__="vitshrink_safe_pickle")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=False, pickle_module=module)
    except Exception as e:  # noqa: BLE001 - any reader failure is "unreadable"
        raise CheckpointError(f"checkpoint '{path}': cannot be read ({type(e).__name__}: {e})".splitlines()[0]) from e
    if unknown:
        raise CheckpointError(
            f"checkpoint '{path}': the pickle needs class '{unknown[0]}', which is not a tensor or a known class "
            f"(torch, timm, torch_pruning); pass --trust-pickle to run the file's code if you trust its source")
    return obj, {"loader": "restricted unpickler: classes recorded, no code from the file ran", "classes": sorted(seen)}


def is_module_record(obj: Any) -> bool:
    """True for a recorded ``nn.Module`` (its state has ``_modules`` and ``_parameters``)."""
    return isinstance(obj, Record) and "_parameters" in obj.state and "_modules" in obj.state


def module_tree(root: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, dict], dict[str, str]]:
    """Flatten a recorded (or real, when trusted) module into
    (state dict ``name -> tensor``, attributes per module ``name -> {attr: value}``, class per module).

    Attributes are the plain values of the module's ``__dict__`` (numbers, strings, bools, None).
    """
    tensors: dict[str, torch.Tensor] = {}
    attrs: dict[str, dict] = {}
    classes: dict[str, str] = {}

    def visit(m, name):
        if isinstance(m, torch.nn.Module):
            state, cls = m.__dict__, f"{type(m).__module__}.{type(m).__qualname__}"
        else:
            state, cls = m.state, m.path
        classes[name] = cls
        attrs[name] = {k: v for k, v in state.items()
                       if not k.startswith("_") and isinstance(v, (int, float, str, bool, type(None)))}
        if "forward" in state:
            attrs[name]["forward_patched"] = True
        for kind in ("_parameters", "_buffers"):
            for k, v in (state.get(kind) or {}).items():
                if isinstance(v, torch.Tensor):
                    tensors[f"{name}.{k}" if name else k] = v.detach()
        for k, child in (state.get("_modules") or {}).items():
            if child is not None:
                visit(child, f"{name}.{k}" if name else k)

    visit(root, prefix)
    return tensors, attrs, classes


def find(obj: Any, pred, depth: int = 2) -> Optional[Any]:
    """The first value in ``obj`` (or in a dict of it, ``depth`` levels down) for which ``pred`` holds."""
    if pred(obj):
        return obj
    if depth and isinstance(obj, dict):
        for v in obj.values():
            hit = find(v, pred, depth - 1)
            if hit is not None:
                return hit
    return None


