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
Swin names (``layers.{s}.blocks.{j}.*``), ``torch-pruning`` reads a shrunk timm Swin
(:mod:`.shrunk_swin`) and ``hf`` reads ``SwinForImageClassification`` directories (:mod:`.hf_swin`); the
others read ViT/DeiT layouts only and say so (each :class:`~.base.Format` lists its families).

Adding a format: a module with ``probe(obj, ctx) -> reason | None`` and ``convert(obj, ctx) ->
ImportResult`` (:mod:`.base`), registered in :data:`FORMATS`. Files are read by :mod:`.load`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from torch import nn

from ..errors import VitshrinkError
from ..families import family_of, import_model
from ..frontends.timm import check_model_name, configure, create_model, fit_classifier, read_sidecar
from . import hf, nni, s2vite, savit, torch_prune, torch_pruning, vtc_lfc, wdpruning, zeroed
from .base import Format, ImportContext, ImportResult
from .hf import model_kwargs, timm_name
from .load import as_state_dict, load_source
from .safe_pickle import find, is_module_record

#: every format, in detection order (a fallback only when nothing specific matches)
FORMATS: list[Format] = [torch_pruning.FORMAT, hf.FORMAT, vtc_lfc.FORMAT, s2vite.FORMAT, savit.FORMAT,
                         savit.DEPLOYED_FORMAT, wdpruning.FORMAT, torch_prune.FORMAT, nni.FORMAT, zeroed.FORMAT]

__all__ = ["FORMATS", "Format", "ImportContext", "ImportResult", "format_names", "guess_model", "import_checkpoint"]


def format_names() -> list[str]:
    """The ``--from`` names of every format."""
    return [f.name for f in FORMATS]


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
    path = Path(path)
    if not isinstance(model_name, nn.Module):
        check_model_name(model_name)  # a mistyped name is said before anything about the file
    obj, loader = load_source(path, trust)
    kwargs = model_kwargs(obj["hf_config"]) if isinstance(obj, dict) and "hf_config" in obj else {}
    if isinstance(model_name, nn.Module):
        model, model_name = model_name.eval(), getattr(model_name, "default_cfg", {}).get("architecture", type(model_name).__name__)
    else:
        model = create_model(model_name, **kwargs)
        flat = as_state_dict(obj)
        if flat is not None:  # a head fine-tuned to its own classes is not a shrunk one: the model's made that size first
            fit_classifier(model, flat)
    family = family_of(model)
    ctx = ImportContext(model_name, model, path, family, Path(dense_checkpoint) if dense_checkpoint else None, trust,
                        loader, dict(options or {}))
    formats = [f for f in FORMATS if family in f.families]  # what reads this family's checkpoints
    names = ", ".join(f.name for f in formats)
    other = next((f for f in FORMATS if f.name == fmt and family not in f.families), None)
    if other is not None:
        raise VitshrinkError(f"--from '{fmt}': this format is read for {', '.join(f.title for f in other.families)} "
                             f"models only; for {model_name} ({family.title}) the formats are {names}")
    if fmt is not None:
        chosen = [f for f in formats if f.name == fmt]
        if not chosen:
            raise VitshrinkError(f"--from '{fmt}': unknown format (known: {names})")
        fmt_obj = chosen[0]
        reason = fmt_obj.probe(obj, ctx)
        if not reason:  # say what the file is instead of converting what it is not
            found = [(f, r) for f in formats if f is not fmt_obj for r in [f.probe(obj, ctx)] if r]
            found = [(f, r) for f, r in found if not f.fallback] or found
            what = (f"it looks like {found[0][0].name} ({found[0][1]}); try --from {found[0][0].name}" if found
                    else f"it matches no known format ({describe(obj)})")
            raise VitshrinkError(f"checkpoint '{path}' is not a {fmt} file ({fmt_obj.description}): {what}")
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
    _check_entries(obj, fmt_obj, fmt is not None, path)
    try:
        result = fmt_obj.convert(obj, ctx)
    except VitshrinkError:
        raise
    except (TypeError, AttributeError, KeyError, ValueError, IndexError) as e:  # a file its probe let through
        raise VitshrinkError(f"checkpoint '{path}': the {fmt_obj.name} importer could not read it "
                             f"({type(e).__name__}: {e}); `vitshrink inspect` says what it holds") from e
    result.format, result.reason = fmt_obj.name, reason
    result.model_kwargs = {**kwargs, **result.model_kwargs}
    result.notes.setdefault("loader", loader)
    result.notes.setdefault("widths", widths(result, ctx))
    return result


#: top-level entries of a training checkpoint that no importer needs and none is lost by leaving
HARMLESS = frozenset({"optimizer", "optimizer_state_dict", "lr_scheduler", "scheduler", "scaler", "amp", "epoch", "step",
                      "global_step", "iteration", "args", "config", "cfg", "hyper_parameters", "arch", "version",
                      "best_acc", "best_acc1", "max_accuracy", "acc", "acc1", "metrics", "loss", "train_args", "seed"})
#: entries that hold the weights (:func:`.load.as_state_dict` looks under them)
WEIGHTS = ("model", "state_dict", "model_ema")


def _check_entries(obj, fmt: Format, chosen: bool, path: Path) -> None:
    """Nothing in a wrapped checkpoint is silently ignored: every top-level entry beside the weights is
    read by the format (``Format.reads``) or harmless (:data:`HARMLESS`); with ``--from`` (``chosen``),
    entries another format reads are left as asked.

    Raises:
        VitshrinkError: an entry no importer reads (named, with the harmless ones).
    """
    if not isinstance(obj, dict) or not any(k in obj for k in WEIGHTS) or fmt.name in ("hf", "torch-pruning"):
        return  # a flat state dict, an HF directory, a pickled module and what was saved with it
    allowed = set(HARMLESS) | set(WEIGHTS) | set(fmt.reads)
    if chosen:
        allowed |= {k for f in FORMATS for k in f.reads}
    unknown = [k for k, v in obj.items() if isinstance(k, str) and k not in allowed and v is not None]  # None holds nothing
    if unknown:
        readers = [f.name for f in FORMATS if unknown[0] in f.reads]
        hint = f" (the {' / '.join(readers)} format reads it: --from {readers[0]})" if readers else ""
        raise VitshrinkError(f"checkpoint '{path}': entry '{unknown[0]}' is read by no importer of format {fmt.name}"
                             f"{hint}; entries left out as harmless: {', '.join(sorted(HARMLESS))}")


def describe(obj) -> str:
    """What a loaded file holds, in a few words (for errors)."""
    if is_module_record(obj):
        return f"a pickled {getattr(obj, 'path', type(obj).__name__)} module"
    if isinstance(obj, dict):
        keys = [str(k) for k in list(obj)[:5]]
        return f"a dict of {len(obj)} entries ({', '.join(keys)}{', ...' if len(obj) > 5 else ''})"
    return f"a {type(obj).__name__}"


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


def import_dense(model_name: str, checkpoint: Optional[str | Path], img_size: Optional[tuple[int, int]] = None,
                 num_classes: Optional[int] = None, like: Optional[str | Path] = None):
    """:func:`vitshrink.families.import_model` for the dense weights a spec is applied to, where ``checkpoint``
    may also be a transformers directory (read by the ``hf`` importer: its weights in timm's layout, its
    LayerNorm eps, its ``id2label``, its image processor and, for a vision tower, its output width).

    Args:
        num_classes: ``--num-classes`` (None: the checkpoint's head decides).
        like: the checkpoint a weights-file ``checkpoint`` was derived from (``vitshrink masks``' re-fitted
            weights, in timm's layout): what it computes with beyond its weights applies to ``checkpoint`` too --
            a transformers directory's LayerNorm eps, ``id2label`` and image processor, what the ``config.json``
            beside a file says (:func:`~vitshrink.frontends.timm.read_sidecar`).
    Returns what ``import_model`` returns.

    Raises:
        VitshrinkError: as ``import_model``; a directory whose ``config.pruned_heads`` already prunes heads
            (a spec would be applied on top of them: compile it without ``--spec``).
    """
    if checkpoint is None or not Path(checkpoint).is_dir():
        source, side = None, read_sidecar(like) if like is not None else {}  # a directory has no sidecar
        if like is not None and Path(like).is_dir():
            source = import_checkpoint(like, model_name, "hf").configure
        elif side:
            source = lambda model: configure(model, **side)  # noqa: E731 - what the file beside it says
        return import_model(model_name, checkpoint, img_size=img_size, num_classes=num_classes, configure=source)
    result = import_checkpoint(checkpoint, model_name, "hf")
    if result.spec.masks:
        raise VitshrinkError(f"checkpoint '{checkpoint}': config.pruned_heads already prunes heads; a --spec would apply "
                             "on top of them: compile the directory without --spec, or give the dense model")
    return import_model(model_name, state_dict=result.state_dict, configure=result.configure, img_size=img_size,
                        model_kwargs=result.model_kwargs, num_classes=num_classes)


def guess_model(path: str | Path, trust: bool = False) -> Optional[str]:
    """The timm architecture a checkpoint names: a pickled timm module's ``pretrained_cfg``, or the timm
    equivalent of a transformers config (:func:`.hf.timm_name`); None when it names none."""
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
