"""Mask format v1 (DESIGN.md "The mask format"): boolean keep-masks with canonical names + settings.

Canonical names (original model coordinates; a missing mask means "keep all"):

=====================  ===================  ===============================================
name                   shape                meaning
=====================  ===================  ===============================================
``embed``              [D]                  residual-stream channels (global, SAViT)
``blocks.{i}.heads``   [H_i]                whole heads (WDPruning, S2ViTE, SAViT)
``blocks.{i}.qk``      [H_i, head_dim]      q and k channels per head (VTC-LFC)
``blocks.{i}.v``       [H_i, head_dim]      v channels per head (VTC-LFC)
``blocks.{i}.mlp``     [hidden_i]           MLP hidden neurons
``blocks.{i}.keep``    []                   false: the whole block is removed
``blocks.{i}.tokens``  [N]                  static token keep-mask before block i (prefix kept)
=====================  ===================  ===============================================

Settings: ``exit`` = ``{"block": k, "head": prefix, "head_dist": prefix, "norm": prefix}``: the model
ends after block k (0-based source index) and classifies with the Linear ``{head}.weight/.bias`` (and
``{head_dist}`` on distilled models) after the LayerNorm ``{norm}.weight/.bias``, all read from the
checkpoint; an omitted prefix means the model's own ``head``/``head_dist``/``norm``.

``token_mode``: ``"drop"`` (default: tokens removed before block i leave the sequence for good) or
``"query"`` (Patch Slimming, eq. 2: in block i only kept tokens are updated -- queries, attention
output, projection and MLP -- while keys and values still come from all tokens). Static masks must be
nested (a token removed at block i is not kept at a later block); a missing mask keeps the tokens of
the previous one.

``dynamic_tokens``: ``{"<i>": rule}``, per block a fixed-count, input-dependent selection of the
patch tokens (prefix tokens are always kept) -- see :class:`DynamicRule` for the fields.

File forms:

- JSON ``{"format": "vitshrink.spec/1", "masks": {...}, "settings": {...}}``: a 1-D mask is the list
  of kept indices, a 2-D mask one such list per row, ``blocks.{i}.keep`` a boolean.
- safetensors: one bool tensor per name at full shape (true = keep); settings as a JSON object string
  under the metadata key ``settings``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from .errors import SpecError, VitshrinkError
from .ir import ViTIR

FORMAT = "vitshrink.spec/1"
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(heads|qk|v|mlp|keep|tokens)$")
_KNOWN_SETTINGS = ("exit", "token_mode", "dynamic_tokens")
SCORES = ("cls_attention", "cls_attention_lfe", "predictor")
PREDICTOR_TYPES = ("dynamicvit", "mlp")


@dataclass
class Spec:
    """A mask spec as written: ``masks`` maps canonical names to bool tensors (any shape) or to the
    JSON form (index lists, bool); ``settings`` is a JSON object. Validate with :func:`resolve_spec`."""

    masks: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExitSetting:
    """Early exit (WDPruning): end after source block ``block``; classifier weights by checkpoint prefix."""

    block: int
    head: Optional[str] = None
    head_dist: Optional[str] = None
    norm: Optional[str] = None


@dataclass(frozen=True)
class PredictorSetting:
    """A learned token scorer read from the checkpoint under ``prefix``.

    - ``"dynamicvit"``: DynamicViT's PredictorLG (Rao et al. NeurIPS 2021): ``{prefix}.in_conv.0``
      LayerNorm(D), ``.in_conv.1`` Linear(D, D) + GELU; the first D/2 features stay per token, the
      last D/2 are averaged over the patch tokens present; ``.out_conv.0`` Linear(D, D/2) + GELU,
      ``.out_conv.2`` Linear(D/2, D/4) + GELU, ``.out_conv.4`` Linear(D/4, 2), log-softmax; the score is
      the keep log-probability (column 0).
    - ``"mlp"``: a per-token MLP scorer (SViTE+ / DPS-ViT style): optional ``{prefix}.norm``
      LayerNorm(D), then ``{prefix}.fc0`` ... ``{prefix}.fc{n}`` Linear layers D -> hidden... -> 1 with
      GELU between them; the score is the output.
    """

    type: str
    prefix: str
    hidden: tuple[int, ...] = ()
    norm: bool = True
    eps: float = 1e-5  # the predictor's own LayerNorm eps: torch's default, which DynamicViT's PredictorLG uses

    def expected_shapes(self, D: int) -> dict[str, tuple[int, ...]]:
        """Checkpoint key -> shape this predictor needs for embed_dim D."""
        p, out = self.prefix, {}
        if self.type == "dynamicvit":
            dims = [("in_conv.1", D, D), ("out_conv.0", D // 2, D), ("out_conv.2", D // 4, D // 2), ("out_conv.4", 2, D // 4)]
            out[f"{p}.in_conv.0.weight"] = out[f"{p}.in_conv.0.bias"] = (D,)
        else:
            widths = [D, *self.hidden, 1]
            dims = [(f"fc{j}", widths[j + 1], widths[j]) for j in range(len(widths) - 1)]
            if self.norm:
                out[f"{p}.norm.weight"] = out[f"{p}.norm.bias"] = (D,)
        for name, o, i in dims:
            out[f"{p}.{name}.weight"] = (o, i)
            out[f"{p}.{name}.bias"] = (o,)
        return out


@dataclass(frozen=True)
class DynamicRule:
    """A dynamic token rule of one block: keep ``keep`` of the patch tokens present, input-dependent.

    - ``keep``: the number of patch (non-prefix) tokens kept -- the spec gives a count (int) or a
      ratio of the patch tokens present (float in (0, 1], rounded up as EViT does). Equal to the
      tokens present: the rule does nothing.
    - ``score``: ``cls_attention`` (EViT, Liang et al. ICLR 2022: the class token's attention to each
      token in this block, averaged over heads), ``cls_attention_lfe`` (VTC-LFC, Wang et al. NeurIPS
      2022: that score times the token's low-frequency energy, eq. 6), ``predictor`` (a learned scorer).
    - ``head_weighting``: VTC-LFC's weighted attention score (eq. 8, as in the authors' selector):
      ``mean_h(w_h A_h[cls, j]) + mean_h(A_h[cls, cls] mean_i A_h[i, j])`` with ``w_h = mean_i A_h[i, cls]``,
      i over the patch tokens. Default on for ``cls_attention_lfe``, off otherwise.
    - ``cutoff``: the low-pass width of the LFE (VTC-LFC's default 0.15).
    - ``where``: ``mlp`` -- between the attention and the MLP of the block (EViT, VTC-LFC; needed by
      the attention scores) -- or ``attn`` -- before the block (DynamicViT; predictor only).
    - ``fuse``: merge the pruned tokens into one extra token, their sum weighted by their scores
      (EViT), appended after the kept tokens; it is a patch token for later rules.

    Ties in scores go to the lower position (tokens keep their relative order; see
    :func:`vitshrink.codegen.rank_keep`).
    """

    keep: int
    score: str = "cls_attention"
    where: str = "mlp"
    fuse: bool = False
    head_weighting: bool = False
    cutoff: float = 0.15
    predictor: Optional[PredictorSetting] = None


@dataclass
class ResolvedSpec:
    """A spec validated against one model: full-shape bool masks in original coordinates."""

    embed: Optional[Tensor] = None
    heads: dict[int, Tensor] = field(default_factory=dict)
    qk: dict[int, Tensor] = field(default_factory=dict)
    v: dict[int, Tensor] = field(default_factory=dict)
    mlp: dict[int, Tensor] = field(default_factory=dict)
    removed_blocks: frozenset[int] = frozenset()
    exit: Optional[ExitSetting] = None
    tokens: dict[int, Tensor] = field(default_factory=dict)
    token_mode: str = "drop"
    dynamic: dict[int, DynamicRule] = field(default_factory=dict)
    stage_embed: dict[int, Tensor] = field(default_factory=dict)  # Swin: stage -> [C_s] bool

    def last_block(self, num_blocks: int) -> int:
        """Source index of the last block that runs (the exit block, or the last one)."""
        return self.exit.block if self.exit is not None else num_blocks - 1


# ----------------------------------------------------------------------------------------- files


def load_spec(path: str | Path) -> Spec:
    """Read a spec file (``.json`` or ``.safetensors``).

    Raises:
        VitshrinkError: the file is missing or unreadable.
        SpecError: the content is not a v1 spec (the key is named).
    """
    path = Path(path)
    if not path.is_file():
        raise VitshrinkError(f"spec '{path}': no such file")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VitshrinkError(f"spec '{path}': cannot be read as JSON ({e})") from e
    if not isinstance(doc, dict):
        raise SpecError("format", f"{path}: the top level must be a JSON object")
    if doc.get("format") != FORMAT:
        raise SpecError("format", f"{path}: expected \"{FORMAT}\", found {doc.get('format')!r}")
    unknown = set(doc) - {"format", "masks", "settings", "meta"}
    if unknown:
        raise SpecError(sorted(unknown)[0], f"{path}: unknown top-level key")
    masks, settings = doc.get("masks", {}), doc.get("settings", {})
    if not isinstance(masks, dict):
        raise SpecError("masks", f"{path}: must be a JSON object")
    if not isinstance(settings, dict):
        raise SpecError("settings", f"{path}: must be a JSON object")
    meta = doc.get("meta", {})
    return Spec(dict(masks), dict(settings), str(path), meta if isinstance(meta, dict) else {})


def _load_safetensors(path: Path) -> Spec:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            masks = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001
        raise VitshrinkError(f"spec '{path}': cannot be read as safetensors ({type(e).__name__}: {e})") from e
    for k, t in masks.items():
        if t.dtype != torch.bool:
            raise SpecError(k, f"{path}: safetensors masks must be bool tensors, found {t.dtype}")
    if meta.get("format", FORMAT) != FORMAT:
        raise SpecError("format", f"{path}: expected \"{FORMAT}\", found {meta.get('format')!r}")
    try:
        settings = json.loads(meta.get("settings", "{}"))
    except json.JSONDecodeError as e:
        raise SpecError("settings", f"{path}: metadata 'settings' is not JSON ({e})") from e
    if not isinstance(settings, dict):
        raise SpecError("settings", f"{path}: metadata 'settings' must be a JSON object")
    return Spec(masks, settings, str(path))


def _to_index_form(value: Any) -> Any:
    if isinstance(value, Tensor):
        if value.dim() == 0:
            return bool(value)
        if value.dim() == 1:
            return torch.nonzero(value, as_tuple=False).flatten().tolist()
        return [_to_index_form(r) for r in value]
    return value


def save_spec(spec: Spec, path: str | Path, *, resolved_shapes: Optional[dict[str, tuple]] = None) -> Path:
    """Write ``spec`` as JSON (index lists) or safetensors (bool tensors), chosen by the suffix.

    The safetensors form needs full-shape bool tensors: masks given as index lists are expanded
    with ``resolved_shapes[name]``.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        tensors = {}
        for k, v in spec.masks.items():
            if not isinstance(v, Tensor):
                if resolved_shapes is None or k not in resolved_shapes:
                    raise SpecError(k, "needs its full shape to be written as safetensors")
                v = _from_index_form(k, v, resolved_shapes[k])
            tensors[k] = v.to(torch.bool).contiguous()
        save_file(tensors, str(path), metadata={"format": FORMAT, "settings": json.dumps(spec.settings),
                                                "meta": json.dumps(spec.meta)})
    else:
        doc = {"format": FORMAT, "masks": {k: _to_index_form(v) for k, v in spec.masks.items()}, "settings": spec.settings}
        if spec.meta:
            doc["meta"] = spec.meta
        path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


# ------------------------------------------------------------------------------------ validation


def _from_index_form(key: str, value: Any, shape: tuple) -> Tensor:
    """JSON value -> bool tensor of ``shape`` (raises SpecError naming ``key``)."""
    if isinstance(value, Tensor):
        if value.dtype != torch.bool:
            raise SpecError(key, f"mask tensors must be bool, found {value.dtype}")
        if tuple(value.shape) != tuple(shape):
            raise SpecError(key, f"has shape {list(value.shape)}, the model needs {list(shape)}")
        return value.clone()
    if len(shape) == 0:
        if not isinstance(value, bool):
            raise SpecError(key, f"must be true or false, found {value!r}")
        return torch.tensor(value)
    if len(shape) == 1:
        if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
            raise SpecError(key, f"must be a list of kept indices (integers), found {_short(value)}")
        bad = [i for i in value if not 0 <= i < shape[0]]
        if bad:
            raise SpecError(key, f"index {bad[0]} out of range for size {shape[0]}")
        if len(set(value)) != len(value):
            raise SpecError(key, "repeats an index")
        m = torch.zeros(shape, dtype=torch.bool)
        m[value] = True
        return m
    if not isinstance(value, list) or len(value) != shape[0]:
        n = len(value) if isinstance(value, list) else _short(value)
        raise SpecError(key, f"must be {shape[0]} lists of kept indices (one per head), found {n}")
    return torch.stack([_from_index_form(f"{key}[{r}]", row, shape[1:]) for r, row in enumerate(value)])


def _short(v: Any) -> str:
    s = json.dumps(v) if not isinstance(v, Tensor) else f"tensor{list(v.shape)}"
    return s if len(s) < 40 else s[:37] + "..."


def mask_shapes(ir: ViTIR) -> dict[str, tuple]:
    """Canonical mask name -> full shape, for the model ``ir`` (a dense import; ViT or Swin)."""
    if getattr(ir, "family", "vit") == "swin":
        from .spec_swin import swin_mask_shapes

        return swin_mask_shapes(ir)
    shapes: dict[str, tuple] = {"embed": (ir.embed_dim,)}
    for b in ir.blocks:
        i, H = b.source_index, b.attn.num_heads
        hd = max(b.attn.qk_dims) if H else 0
        shapes[f"blocks.{i}.heads"] = (H,)
        shapes[f"blocks.{i}.qk"] = (H, hd)
        shapes[f"blocks.{i}.v"] = (H, max(b.attn.v_dims) if H else 0)
        shapes[f"blocks.{i}.mlp"] = (b.mlp.hidden,)
        shapes[f"blocks.{i}.keep"] = ()
        shapes[f"blocks.{i}.tokens"] = (ir.num_tokens,)
    return shapes


def _resolve_exit(value: Any, ir: ViTIR, tensors: dict[str, Tensor]) -> ExitSetting:
    if not isinstance(value, dict) or "block" not in value:
        raise SpecError("exit", 'must be an object {"block": k, "head": prefix, ...}')
    unknown = set(value) - {"block", "head", "head_dist", "norm"}
    if unknown:
        raise SpecError(f"exit.{sorted(unknown)[0]}", "unknown exit field (expected block, head, head_dist, norm)")
    k = value["block"]
    L = len(ir.blocks)
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < L:
        raise SpecError("exit.block", f"{k!r} is out of range: the model has blocks 0..{L - 1}")
    D, C = ir.embed_dim, ir.num_classes
    for name in ("head", "head_dist", "norm"):
        prefix = value.get(name)
        if prefix is None:
            continue
        if not isinstance(prefix, str):
            raise SpecError(f"exit.{name}", f"must be a checkpoint key prefix (string), found {prefix!r}")
        if name == "head_dist" and ir.num_prefix < 2:
            raise SpecError("exit.head_dist", "the model has no distillation token")
        want = {"weight": (C, D), "bias": (C,)} if name != "norm" else {"weight": (D,), "bias": (D,)}
        for part, shape in want.items():
            key = f"{prefix}.{part}"
            if key not in tensors:
                raise SpecError(f"exit.{name}", f"checkpoint key '{key}' not found")
            if tuple(tensors[key].shape) != shape:
                raise SpecError(f"exit.{name}", f"checkpoint key '{key}' has shape {list(tensors[key].shape)}, needs {list(shape)}")
    return ExitSetting(k, value.get("head"), value.get("head_dist"), value.get("norm"))


def resolve_spec(spec: Spec, ir: ViTIR, tensors: Optional[dict[str, Tensor]] = None) -> ResolvedSpec:
    """Validate ``spec`` against the dense model ``ir`` and expand it to full-shape bool masks.

    Args:
        spec: the spec as read.
        ir: the dense (unpruned) import of the model the spec was written for (a ViT, or a Swin:
            names of :mod:`vitshrink.spec_swin`).
        tensors: checkpoint tensors the settings may reference (exit classifiers).
    Raises:
        SpecError: unknown key, wrong shape or type, index out of range, every head of a kept block
            pruned, a kept head with no q/k channel, no embed channel, exit block out of range or its
            classifier keys missing, a pruned prefix token, non-nested token masks, a dynamic rule that keeps
            more tokens than are present or whose predictor weights are missing. The key is named.
    """
    tensors = tensors or {}
    out = ResolvedSpec()
    if getattr(ir, "family", "vit") == "swin":  # names of the Swin table (vitshrink.spec_swin)
        from .spec_swin import resolve_swin_spec

        resolve_swin_spec(spec, ir, out)
        return out
    shapes = mask_shapes(ir)
    L = len(ir.blocks)
    removed = set()
    for key in sorted(spec.settings):
        if key not in _KNOWN_SETTINGS:
            raise SpecError(key, f"unknown setting (known: {', '.join(_KNOWN_SETTINGS)})")
    mode = spec.settings.get("token_mode", "drop")
    if mode not in ("drop", "query"):
        raise SpecError("token_mode", f"must be \"drop\" or \"query\", found {mode!r}")
    out.token_mode = mode
    if "exit" in spec.settings:
        out.exit = _resolve_exit(spec.settings["exit"], ir, tensors)
    for key in sorted(spec.masks):
        value = spec.masks[key]
        if key == "embed":
            m = _from_index_form(key, value, shapes[key])
            if not m.any():
                raise SpecError(key, "keeps no channel")
            out.embed = m
            continue
        match = _BLOCK_KEY.match(key)
        if not match:
            raise SpecError(key, "unknown mask name (expected embed or blocks.{i}.{heads,qk,v,mlp,keep,tokens})")
        i, kind = int(match.group(1)), match.group(2)
        if i >= L:
            raise SpecError(key, f"block {i} does not exist: the model has blocks 0..{L - 1}")
        m = _from_index_form(key, value, shapes[key])
        if kind == "tokens":
            out.tokens[i] = m
        elif kind == "keep":
            if not bool(m):
                removed.add(i)
        else:
            getattr(out, kind)[i] = m
    out.removed_blocks = frozenset(removed)
    if ir.pool == "avg":  # the pooled set would change with the tokens; an exit needs a class token
        why = "does not apply to an average-pooled model (global_pool='avg' pools every patch token)"
        if out.tokens:
            raise SpecError(f"blocks.{min(out.tokens)}.tokens", why)
        for key in ("dynamic_tokens", "exit"):
            if key in spec.settings:
                raise SpecError(key, why)
    for i, h in out.heads.items():
        if i not in removed and not h.any():
            raise SpecError(f"blocks.{i}.heads", "prunes every head of a kept block (remove the block with blocks.{i}.keep: false)".replace("{i}", str(i)))
    for i, qk in out.qk.items():
        if i in removed:
            continue
        kept_heads = out.heads.get(i, torch.ones(qk.shape[0], dtype=torch.bool))
        empty = [h for h in range(qk.shape[0]) if kept_heads[h] and not qk[h].any()]
        if empty:
            raise SpecError(f"blocks.{i}.qk", f"head {empty[0]} is kept but keeps no q/k channel (prune it with blocks.{i}.heads)")
    from .spec_tokens import _check_static_tokens, _resolve_dynamic

    _check_static_tokens(out, ir)
    if "dynamic_tokens" in spec.settings:
        out.dynamic = _resolve_dynamic(spec.settings["dynamic_tokens"], out, ir, tensors)
    if out.tokens and out.dynamic:
        raise SpecError("dynamic_tokens", "static token masks (blocks.{i}.tokens) and dynamic rules cannot be combined yet")
    return out
