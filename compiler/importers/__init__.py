"""Importers: pruned checkpoints made by other tools -> (dense-layout weights, canonical spec, the
source's own computation as a reference, notes).

Importers only translate; every removal still happens in :mod:`vitshrink.passes`, so each format
inherits their exactness. Detection is a registry of cheap probes over the loaded object (one file is
loaded once, pickles through :func:`.safe_pickle.safe_load`, which runs no code from the file):

==================  ==========================================================================
format              what it reads
==================  ==========================================================================
``torch-pruning``   ``torch.save(model)`` of a timm ViT pruned by Torch-Pruning (shrunk shapes),
                    ``{"model": module, ...}`` training checkpoints, ``tp.state_dict(model)``
``torch-prune``     ``torch.nn.utils.prune`` state dicts (``*.weight_orig`` + ``*.weight_mask``)
``nni``             NNI mask dicts ``{module: {"weight": mask, "bias": mask}}`` (+ the dense weights)
``hf``              Hugging Face ViT/DeiT directories, ``config.pruned_heads`` as head masks
``vtc-lfc``         VTC-LFC's shrunk "cfged" DeiT (``dim_cfg``, ``token_cfg`` as LFE token rules)
``s2vite``          SViTE / S2ViTE checkpoints with ``atten_mask`` / ``other_mask`` / ``mask``
``savit``           SAViT's gated model (``res_gate``, ``attn_gate``, ``hidden_gate1``)
``savit-deployed``  SAViT's deployed shrunk state dict (whole heads, original head_dim)
``wdpruning``       WDPruning saliency scores + thresholds, early exit with ``exit=K``
``zeroed``          any dense-shaped timm state dict whose pruned structure is zeros (after
                    ``prune.remove``, S2ViTE, applied gates)
==================  ==========================================================================

For timm Swin models the dense-shaped formats apply (``torch-prune``, ``nni``, ``zeroed``), with the
Swin names (``layers.{s}.blocks.{j}.*``), and ``hf`` reads ``SwinForImageClassification`` directories
(:mod:`.hf_swin`); the others read ViT/DeiT layouts only and say so.

Adding a format: a module with ``probe(obj, ctx) -> reason | None`` and ``convert(obj, ctx) ->
ImportResult``, registered in :data:`FORMATS`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from torch import Tensor, nn

from ..errors import CheckpointError, VitshrinkError
from ..spec import Spec


@dataclass
class ImportResult:
    """What an importer produced.

    Attributes:
        format: registry name; ``reason``: why detection chose it.
        state_dict: weights of the *original* (dense) timm architecture, pruned units as zeros, constant
            outputs of removed units folded into the next bias: load into the dense model and compile.
        spec: canonical masks (spec v1, original coordinates -- or, without index history, kept units
            placed first, said in ``notes``).
        reference_state_dict: what the source computes, as weights of the dense timm model (None:
            the source cannot be run without its code; then the masked dense reference is the anchor).
        reference_scales: softmax scale per block the source really uses (block -> scale), for the reference.
        notes: ``loader``, per-block ``widths``, ``removed``, ``not_removed``, ``unstructured``, ``index_history``.
        layer_norm_eps: the source's LayerNorm eps where it differs from timm's (Hugging Face: 1e-12).
        reference_exit: the source ends early (WDPruning): (blocks kept, norm prefix, head prefix) -- the
            reference is timm's model cut by hand after that many blocks with that norm and classifier.
    """

    format: str
    reason: str
    state_dict: dict[str, Tensor]
    spec: Spec
    reference_state_dict: Optional[dict[str, Tensor]] = None
    reference_scales: dict[int, float] = field(default_factory=dict)
    reference_note: str = ""
    notes: dict = field(default_factory=dict)
    layer_norm_eps: Optional[float] = None
    reference_exit: Optional[tuple[int, str, str]] = None

    def configure(self, model: nn.Module) -> nn.Module:
        """Set on a timm model what the source computes with but the weights do not carry (LayerNorm eps)."""
        if self.layer_norm_eps is not None:
            for m in model.modules():
                if isinstance(m, nn.LayerNorm):
                    m.eps = self.layer_norm_eps
        return model


@dataclass
class ImportContext:
    """What a probe and a converter may use: the dense model (timm, original architecture), its name,
    the file and the user's options."""

    model_name: str
    model: nn.Module
    path: Path
    dense_checkpoint: Optional[Path] = None
    trust: bool = False
    loader: str = ""
    options: dict = field(default_factory=dict)

    def option(self, key: str, default=None):
        """An importer option (``--import-option KEY=VALUE``), as given (a string) or ``default``."""
        return self.options.get(key, default)

    def dense_state(self) -> dict[str, Tensor]:
        """Weights of the dense model: ``--dense-checkpoint`` when given, else the model's own (random)."""
        if self.dense_checkpoint is None:
            return {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return read_any_state_dict(self.dense_checkpoint, self.trust)

    @property
    def swin(self) -> bool:
        return type(self.model).__name__ == "SwinTransformer"

    def prefixes(self) -> list[str]:
        """Per block, its state-dict prefix -- which is also its spec name: ``blocks.{i}.`` (ViT) or
        ``layers.{s}.blocks.{j}.`` (Swin)."""
        if self.swin:
            return [f"layers.{s}.blocks.{j}." for s, st in enumerate(self.model.layers) for j in range(len(st.blocks))]
        return [f"blocks.{i}." for i in range(len(self.model.blocks))]

    def dims(self) -> list[tuple[int, int, int]]:
        """Per block of the dense model (in :meth:`prefixes` order): (num_heads, head_dim, MLP hidden)."""
        blocks = [b for st in self.model.layers for b in st.blocks] if self.swin else list(self.model.blocks)
        return [(b.attn.num_heads, b.attn.qkv.out_features // (3 * b.attn.num_heads), b.mlp.fc1.out_features)
                for b in blocks]


@dataclass(frozen=True)
class Format:
    name: str
    description: str
    probe: Callable[[Any, ImportContext], Optional[str]]
    convert: Callable[[Any, ImportContext], ImportResult]
    fallback: bool = False  # chosen only when no specific format matches (``zeroed``)
    swin: bool = False  # also reads timm Swin checkpoints (the dense-shaped formats)


def _formats() -> list[Format]:
    from . import formats, hf, seeds, torch_pruning, vtc_lfc

    return [torch_pruning.FORMAT, hf.FORMAT, vtc_lfc.FORMAT, *seeds.FORMATS, *formats.FORMATS]


def format_names() -> list[str]:
    return [f.name for f in _formats()]


def load_source(path: str | Path, trust: bool = False) -> tuple[Any, str]:
    """Load a checkpoint file as an object: safetensors -> dict of tensors; anything else through
    :func:`.safe_pickle.safe_load`. Returns (object, loader description).

    Raises:
        CheckpointError: missing, unreadable, or a pickle needing unknown classes (named).
    """
    path = Path(path)
    if path.is_dir():
        from .hf import read_hf_dir

        obj = read_hf_dir(path)
        if obj is None:
            raise CheckpointError(f"checkpoint '{path}' is a directory without config.json (not a transformers model)")
        return obj, "transformers directory (config.json + weights; no code run)"
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}': no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path)), "safetensors"
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"checkpoint '{path}': cannot be read ({type(e).__name__}: {e})".splitlines()[0]) from e
    from .safe_pickle import safe_load

    obj, info = safe_load(path, trust)
    return obj, info["loader"]


def read_any_state_dict(path: str | Path, trust: bool = False) -> dict[str, Tensor]:
    """A state dict from a safetensors file, a pickled state dict (possibly under ``model`` /
    ``state_dict`` / ``model_ema``, ``module.`` prefixes stripped) or a pickled module (its tensors).

    Raises:
        CheckpointError: unreadable, or nothing like a state dict inside (the file is named).
    """
    from .safe_pickle import find, is_module_record, module_tree

    obj, _ = load_source(path, trust)
    mod = find(obj, lambda o: is_module_record(o) or isinstance(o, nn.Module))
    if mod is not None:
        return module_tree(mod)[0]
    sd = as_state_dict(obj)
    if sd is None:
        raise CheckpointError(f"checkpoint '{path}': holds no state dict of tensors")
    return sd


def as_state_dict(obj: Any) -> Optional[dict[str, Tensor]]:
    """``obj`` as a flat ``{name: tensor}`` (looking under ``model``/``state_dict``/``model_ema``), or None."""
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        return None
    if all(k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return {k: v.detach().float() if v.is_floating_point() else v for k, v in obj.items()}


def import_checkpoint(path: str | Path, model_name: str | nn.Module, fmt: Optional[str] = None,
                      dense_checkpoint: Optional[str | Path] = None, trust: bool = False,
                      options: Optional[dict] = None) -> ImportResult:
    """Detect the format of the pruned checkpoint ``path`` and convert it for the timm model ``model_name``.

    Args:
        path: the pruned checkpoint (see the module docstring for the formats).
        model_name: the timm name of the *original* architecture (e.g. ``deit_small_patch16_224``), or
            such a timm model itself (its weights are used as the dense weights where a format needs them).
        fmt: skip detection and use this format (``--from``).
        dense_checkpoint: dense weights, for formats that hold masks only (NNI).
        trust: let pickles run their own code (``--trust-pickle``); off, classes are recorded, not run.
        options: format options (``--import-option KEY=VALUE``), e.g. WDPruning's ``exit=11``.
    Returns:
        :class:`ImportResult`.
    Raises:
        VitshrinkError: unknown or ambiguous format (the line lists the formats and ``--from``), a file
            that does not fit the model (the key and shapes are named), an unknown pickle class.
    """
    from ..frontends.timm import create_model

    path = Path(path)
    if isinstance(model_name, nn.Module):
        model, model_name = model_name.eval(), getattr(model_name, "default_cfg", {}).get("architecture", type(model_name).__name__)
    else:
        model = create_model(model_name)
    obj, loader = load_source(path, trust)
    ctx = ImportContext(model_name, model, path, Path(dense_checkpoint) if dense_checkpoint else None, trust, loader,
                        dict(options or {}))
    formats = _formats()
    names = ", ".join(f.name for f in formats)
    if ctx.swin:  # tools that save Swin checkpoints in the dense layout; the others are ViT-only readers
        swin_names = ", ".join(f.name for f in formats if f.swin)
        if fmt is not None and fmt in names.split(", ") and fmt not in swin_names.split(", "):
            raise VitshrinkError(f"--from '{fmt}': this format is read for ViT/DeiT models only; for {model_name} "
                                 f"(Swin) the formats are {swin_names}")
        formats, names = [f for f in formats if f.swin], swin_names
    if fmt is not None:
        chosen = [f for f in formats if f.name == fmt]
        if not chosen:
            raise VitshrinkError(f"--from '{fmt}': unknown format (known: {names})")
        reason = chosen[0].probe(obj, ctx) or f"--from {fmt} (the file does not look like it: conversion may fail)"
        fmt_obj = chosen[0]
    else:
        hits = [(f, r) for f in formats for r in [f.probe(obj, ctx)] if r]
        if any(not f.fallback for f, _ in hits):
            hits = [(f, r) for f, r in hits if not f.fallback]
        if not hits:
            raise VitshrinkError(f"checkpoint '{path}': no known pruned format for {model_name} (known: {names}); "
                                 f"name one with --from FORMAT")
        if len(hits) > 1:
            raise VitshrinkError(f"checkpoint '{path}': ambiguous, looks like {' and '.join(f.name for f, _ in hits)}; "
                                 f"choose with --from FORMAT (known: {names})")
        fmt_obj, reason = hits[0]
    result = fmt_obj.convert(obj, ctx)
    result.format, result.reason = fmt_obj.name, reason
    result.notes.setdefault("loader", loader)
    result.notes.setdefault("widths", widths(result, ctx))
    return result


def widths(result: ImportResult, ctx: ImportContext) -> list[dict]:
    """Per block of the imported model: kept heads, q/k and v channels (summed over heads), MLP hidden."""
    rows = []
    for i, (prefix, (H, hd, hidden)) in enumerate(zip(ctx.prefixes(), ctx.dims())):
        m = result.spec.masks
        heads = m.get(f"{prefix}heads")
        kept = heads if heads is not None else None
        n_heads = int(kept.sum()) if kept is not None else H

        def chan(key):
            t = m.get(f"{prefix}{key}")
            if t is None:
                return n_heads * hd
            return int(t[kept].sum()) if kept is not None else int(t.sum())

        mlp = m.get(f"{prefix}mlp")
        rows.append({"block": i, "name": prefix.rstrip("."), "heads": [H, n_heads], "qk": [H * hd, chan("qk")], "v": [H * hd, chan("v")],
                     "mlp": [hidden, int(mlp.sum()) if mlp is not None else hidden]})
    return rows


def guess_model(path: str | Path, trust: bool = False) -> Optional[str]:
    """The timm architecture a checkpoint names: a pickled timm module's ``pretrained_cfg``, or the timm
    equivalent of a transformers config (:func:`.hf.timm_name`); None when it names none."""
    from .hf import timm_name
    from .safe_pickle import find, is_module_record

    obj, _ = load_source(path, trust)
    if isinstance(obj, dict) and "hf_config" in obj:
        return timm_name(obj["hf_config"])
    mod = find(obj, lambda o: is_module_record(o) or isinstance(o, nn.Module))
    if mod is None:
        return None
    state = mod.__dict__ if isinstance(mod, nn.Module) else mod.state
    cfg = state.get("pretrained_cfg") or state.get("default_cfg")
    arch = cfg.get("architecture") if isinstance(cfg, dict) else None
    return arch if isinstance(arch, str) else None
