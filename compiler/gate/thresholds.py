"""Gate thresholds: what a gate checks (:data:`THRESHOLDS`), and where the thresholds come from --
``[tool.vitshrink.gate]`` in pyproject.toml, a TOML file (``--gate FILE``, its ``[gate]`` table or top
level) and command-line flags, later ones overriding earlier ones (:func:`load_gate`)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import VitshrinkError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

# name -> (direction, what the value is, unit)
THRESHOLDS = {
    "max_abs_diff": ("<=", "max abs diff on logits, compiled vs reference and ONNX Runtime vs torch", ""),
    "min_top1_agreement": (">=", "fraction of images where pruned and dense predict the same class", ""),
    "max_top1_drop": ("<=", "dense top-1 minus pruned top-1 (per low-precision engine: its original minus its pruned)", "points"),
    "min_top1": (">=", "pruned top-1 on the held-out images (per engine: that engine's pruned model at its precision)", ""),
    "min_speedup": (">=", "original (or dense) / pruned latency (median of per-round ratios)", "x"),
    "min_realization": (">=", "speed-up / ideal speed-up (MACs ratio)", ""),
    "max_slowdown": ("<=", "pruned latency vs the baseline report, relative", ""),
    "max_params": ("<=", "parameters of the pruned model", ""),
    "max_macs": ("<=", "MACs per image of the pruned model", ""),
}
PER_ENTRY = ("min_speedup", "min_realization", "max_slowdown")  # per latency entry
ACCURACY_ROWS = ("max_top1_drop", "min_top1")  # per accuracy row: the fp32 row (``ort``) and each low-precision engine
SELECTABLE = PER_ENTRY + ACCURACY_ROWS  # take SELECTOR=VALUE forms (the accuracy rows: ENGINE only)
AGAINST = ("original", "dense")  # what a speed-up is measured against
_SUFFIX = {"k": 1e3, "m": 1e6, "g": 1e9}


@dataclass
class Gate:
    """Thresholds: ``values[name]`` is a list of ``(selector, value)``; a selector is ``"*"`` (every
    latency entry), ``"ENGINE"``, ``"ENGINE@BATCH"`` or ``"@BATCH"`` (ENGINE as in ``--engines``:
    ``ort`` (= ``onnxruntime``), ``openvino``, ``native``, ``torch``, ...). ``against``: what
    ``min_speedup`` / ``min_realization`` compare the pruned model with -- ``"original"`` (default: the
    user's original model, timm's own, timed in the same rounds) or ``"dense"`` (vitshrink's dense codegen)."""

    values: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    allow_machine_change: bool = False
    absolute: bool = False
    against: Optional[str] = None

    def __bool__(self) -> bool:
        return bool(self.values)


def read_toml(path: str | Path, what: str) -> dict:
    """A parsed TOML file.

    Raises:
        VitshrinkError: ``"{what} {path}: cannot read (...)"`` or ``"...: not TOML (...)"``.
    """
    p = Path(path)
    try:
        return tomllib.loads(p.read_text())
    except OSError as e:
        raise VitshrinkError(f"{what} {p}: cannot read ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise VitshrinkError(f"{what} {p}: not TOML ({e})") from None


def parse_number(key: str, value: Any) -> float:
    """A threshold value: a number, ``"5%"`` (= 0.05), or a count with a K/M/G suffix (``"2.5M"``).

    Raises:
        VitshrinkError: naming ``key`` when the value is none of these.
    """
    if isinstance(value, bool):
        raise VitshrinkError(f"gate threshold '{key}': expected a number, found {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        v = value.strip().lower()
        try:
            if v.endswith("%"):
                return float(v[:-1]) / 100
            if v and v[-1] in _SUFFIX:
                return float(v[:-1]) * _SUFFIX[v[-1]]
            return float(v)
        except ValueError:
            pass
    raise VitshrinkError(f"gate threshold '{key}': expected a number, '5%' or '2.5M', found {value!r}")


def _entries(key: str, value: Any) -> list[tuple[str, float]]:
    """``1.5`` -> [("*", 1.5)]; ``"ort@8=1.8"`` or {"ort@8": 1.8} -> [("ort@8", 1.8)]; lists of these."""
    if isinstance(value, dict):
        if key not in SELECTABLE:
            raise VitshrinkError(f"gate threshold '{key}': takes one number, not a table")
        return [(_selector(key, s), parse_number(f"{key}.{s}", v)) for s, v in value.items()]
    if isinstance(value, (list, tuple)):
        return [e for v in value for e in _entries(key, v)]
    if isinstance(value, str) and "=" in value:
        if key not in SELECTABLE:
            raise VitshrinkError(f"gate threshold '{key}': takes one number, not SELECTOR=VALUE")
        sel, v = value.split("=", 1)
        return [(_selector(key, sel), parse_number(key, v))]
    return [("*", parse_number(key, value))]


def _selector(key: str, sel: str) -> str:
    sel = sel.strip()
    if sel in ("*", "all"):
        return "*"
    if key not in PER_ENTRY and not re.fullmatch(r"[A-Za-z_][\w-]*", sel):
        raise VitshrinkError(f"gate threshold '{key}': selector {sel!r} is not an ENGINE (accuracy has no batch size)")
    if not re.fullmatch(r"[A-Za-z_][\w-]*(@\d+)?|@\d+", sel):
        raise VitshrinkError(f"gate threshold '{key}': selector {sel!r} is not ENGINE, ENGINE@BATCH or @BATCH")
    return sel


def gate_from_mapping(table: dict, where: str) -> Gate:
    """A :class:`Gate` from a TOML-like table (keys as in :data:`THRESHOLDS`, ``-`` or ``_``).

    Raises:
        VitshrinkError: an unknown key (named, with ``where``) or a bad value.
    """
    gate = Gate()
    for raw, value in table.items():
        key = raw.replace("-", "_")
        if key == "allow_machine_change":
            gate.allow_machine_change = bool(value)
        elif key == "absolute":
            gate.absolute = bool(value)
        elif key == "against":
            if value not in AGAINST:
                raise VitshrinkError(f"{where}: gate key 'against' must be one of {', '.join(AGAINST)}, found {value!r}")
            gate.against = value
        elif key in THRESHOLDS:
            gate.values[key] = _entries(key, value)
        else:
            raise VitshrinkError(f"{where}: unknown gate key '{raw}' (expected {', '.join(THRESHOLDS)}, "
                                 "allow_machine_change, absolute, against)")
    return gate


def read_gate_file(path: str | Path) -> Gate:
    """Thresholds from a TOML file: ``[tool.vitshrink.gate]`` of a pyproject.toml, else its ``[gate]``
    table, else its top level.

    Raises:
        VitshrinkError: the file is missing or not TOML (named), or holds a bad key.
    """
    doc = read_toml(path, "gate file")
    table = doc.get("tool", {}).get("vitshrink", {}).get("gate")
    if table is None:
        table = doc.get("gate", doc)
    return gate_from_mapping(table, str(path))


def load_gate(cli: dict[str, Any], gate_file: Optional[str] = None, pyproject: Optional[str | Path] = "pyproject.toml") -> Gate:
    """The gate of a ``check`` / ``compile --gate`` call: pyproject.toml's ``[tool.vitshrink.gate]``
    (when that file has one), then ``gate_file``, then the ``cli`` flags (non-None values), each
    overriding a threshold of the same name."""
    gate = Gate()
    sources: list[Gate] = []
    if pyproject is not None and Path(pyproject).is_file():
        table = read_toml(pyproject, "pyproject").get("tool", {}).get("vitshrink", {}).get("gate")
        if table:
            sources.append(gate_from_mapping(table, f"{pyproject} [tool.vitshrink.gate]"))
    if gate_file:
        sources.append(read_gate_file(gate_file))
    sources.append(gate_from_mapping({k: v for k, v in cli.items() if v not in (None, (), [], False)}, "command line"))
    for s in sources:
        gate.values.update(s.values)
        gate.allow_machine_change |= s.allow_machine_change
        gate.absolute |= s.absolute
        gate.against = s.against or gate.against
    return gate
