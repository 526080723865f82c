"""``vitshrink import`` and ``vitshrink inspect``: pruned checkpoints of other tools, converted to spec v1."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import click

from ..errors import VitshrinkError
from .common import fail

IMPORT_EXIT = """\b
Exit codes:
  0  success
  2  bad input (checkpoint, format, model name, option): one line 'error: ...', nothing written
"""

_SOURCE_OPTIONS = [
    click.option("--from", "source_format", default=None,
                 help="Format of PRUNED (skip detection): torch-pruning, hf, torch-prune, nni, zeroed."),
    click.option("--dense-checkpoint", default=None, help="Dense weights, for formats that hold masks only (NNI)."),
    click.option("--trust-pickle", is_flag=True,
                 help="Let a pickled checkpoint run its own code (default: classes are recorded, never run)."),
    click.option("--import-option", "import_options", multiple=True, callback=lambda c, p, v: parse_options(v),
                 help="KEY=VALUE for the format, repeatable (WDPruning: exit=11, classifiers=10,11)."),
]


def parse_options(values) -> dict:
    """``("exit=11", "classifiers=10,11")`` -> ``{"exit": "11", "classifiers": "10,11"}``."""
    out = {}
    for v in values:
        key, sep, val = v.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {v!r}")
        out[key.strip()] = val.strip()
    return out


def _source_options(fn):
    for opt in reversed(_SOURCE_OPTIONS):
        fn = opt(fn)
    return fn


def _import(pruned, model, source_format, dense_checkpoint, trust_pickle, import_options=None):
    from ..importers import guess_model, import_checkpoint  # lazy: the compile stack loads only for commands that use it

    if model is None:
        model = guess_model(pruned, trust_pickle)
        if model is None:
            raise VitshrinkError(f"'{pruned}' does not name its architecture: give --model (a timm model name)")
    return model, import_checkpoint(pruned, model, source_format, dense_checkpoint, trust_pickle, import_options)


def _classes(result) -> str:
    """The head the checkpoint has: its number of classes and where their names come from."""
    head = result.state_dict.get("head.weight", result.state_dict.get("head.fc.weight"))
    if head is None or head.ndim != 2:
        return "none (a feature extractor: the output is the pooled features)"
    names = f"; label names from {result.label_names[1]}" if result.label_names else ""
    return f"{head.shape[0]} (head [{head.shape[0]}, {head.shape[1]}]{names})"


def _sidecar(model: str, result) -> dict:
    """The ``config.json`` written beside ``dense.safetensors`` (timm's Hub layout: ``label_names``; vitshrink's
    own block: the source's LayerNorm eps and preprocessing), so a compile of the file computes as the source does;
    {} when the source has none of them."""
    ours = {k: v for k, v in (("layer_norm_eps", result.layer_norm_eps), ("data_config", result.data_config)) if v}
    if not ours and not result.label_names:
        return {}
    side: dict = {"architecture": model}
    if result.label_names:
        side.update(num_classes=len(result.label_names[0]), label_names=list(result.label_names[0]))
    if ours:
        side["vitshrink"] = {**ours, "source": str(result.notes.get("source") or result.spec.meta.get("source", ""))}
    return side


def _table(model: str, result) -> str:
    from ..importers import format_names  # lazy: as above

    n = result.notes
    lines = [f"{result.format}: {result.reason}", f"loader: {n.get('loader')}", f"model: {model}",
             f"indices: {n.get('index_history')}", f"classes: {_classes(result)}", "",
             f"{'block':>5}  {'heads':>9}  {'q/k ch':>11}  {'v ch':>11}  {'mlp':>11}"]
    for r in n["widths"]:
        lines.append(f"{r['block']:>5}  {r['heads'][1]:>4}/{r['heads'][0]:<4}  {r['qk'][1]:>5}/{r['qk'][0]:<5}  "
                     f"{r['v'][1]:>5}/{r['v'][0]:<5}  {r['mlp'][1]:>5}/{r['mlp'][0]:<5}")
    if "embed" in result.spec.masks:
        lines.append(f"embed: {int(result.spec.masks['embed'].sum())}/{result.spec.masks['embed'].numel()} channels")
    removed = {k: v for k, v in (n.get("removed") or {}).items() if v}
    if removed:
        lines.append("removed: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in removed.items()))
    if isinstance(n.get("softmax_scale"), list):
        lines.append("softmax scale of the source: " + "; ".join(n["softmax_scale"]))
    for msg in n.get("not_removed") or []:
        lines.append(f"not removed: {msg}")
    un = n.get("unstructured") or []
    if un:
        two4 = sum(u["semi_structured_2_4"] for u in un)
        lines.append(f"unstructured zeros left in {len(un)} kept tensors (no speed-up claimed; {two4} of them 2:4 "
                     f"semi-structured), e.g. {un[0]['tensor']}: {100 * un[0]['zeros_left']:.1f}% zeros")
    lines.append(f"reference: {result.reference_note}")
    lines.append(f"(formats known: {', '.join(format_names())})")
    return "\n".join(lines)


@click.command("inspect", epilog="""\b
Example:
  vitshrink inspect tp_deit_small.pth --model deit_small_patch16_224
""" + IMPORT_EXIT)
@click.argument("pruned")
@click.option("--model", default=None, help="timm name of the original architecture (read from the pickle if it records one).")
@_source_options
@click.option("--json", "as_json", is_flag=True, help="Print import.json instead of the table.")
def inspect_cmd(pruned, model, source_format, dense_checkpoint, trust_pickle, import_options, as_json):
    """Detect PRUNED's format and print what it keeps per block (no compiling, nothing written)."""
    from ..importers.verify import import_report  # lazy: as above

    try:
        model, result = _import(pruned, model, source_format, dense_checkpoint, trust_pickle, import_options)
    except VitshrinkError as e:
        fail(e)
    click.echo(json.dumps(import_report(result), indent=1) if as_json else _table(model, result))

@click.command("import", epilog="""\b
Example:
  vitshrink import tp_deit_small.pth --model deit_small_patch16_224 --out runs/tp_import
  vitshrink compile deit_small_patch16_224 --checkpoint runs/tp_import/dense.safetensors \\
  --spec runs/tp_import/spec.json --out runs/tp
""" + IMPORT_EXIT)
@click.argument("pruned")
@click.option("--model", default=None, help="timm name of the original architecture (read from the pickle if it records one).")
@click.option("--out", "out", required=True, help="Directory for spec.json, dense.safetensors, import.json.")
@_source_options
def import_cmd(pruned, model, out, source_format, dense_checkpoint, trust_pickle, import_options):
    """Convert PRUNED into spec v1 + dense-layout weights (what `compile --checkpoint PRUNED` does first)."""
    from safetensors.torch import save_file  # lazy: as above

    from ..importers.verify import import_report  # lazy: as above
    from ..spec.format import save_spec  # lazy: as above

    out_dir = Path(out)
    try:
        if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / "import.json").is_file())):
            raise VitshrinkError(f"output '{out}' exists and is not an earlier vitshrink import; choose another --out")
        model, result = _import(pruned, model, source_format, dense_checkpoint, trust_pickle, import_options)
    except VitshrinkError as e:
        fail(e)
    out_dir.resolve().parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.resolve().parent))
    try:
        save_spec(result.spec, tmp / "spec.json")
        save_file({k: v.contiguous() for k, v in result.state_dict.items()}, str(tmp / "dense.safetensors"),
                  metadata={"source": str(pruned), "format": result.format})
        side = _sidecar(model, result)
        if side:  # beside dense.safetensors: what compile applies to it (read_sidecar)
            (tmp / "config.json").write_text(json.dumps(side, indent=1) + "\n")
        (tmp / "import.json").write_text(json.dumps({"model": model, "source": str(pruned), **import_report(result)},
                                                     indent=1) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    click.echo(f"{result.format}: {result.reason}")
    labels = ", config.json: what the source computes with beyond its weights" if side else ""
    click.echo(f"wrote {out}/ (spec.json, dense.safetensors, import.json{labels}); compile with: vitshrink compile {model} "
               f"--checkpoint {out}/dense.safetensors --spec {out}/spec.json --out OUT")
