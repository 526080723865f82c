"""Which of timm's vision transformers vitshrink imports exactly: every model of the ViT-like families
(``vit_*``, ``deit*``, ``swin*``, ``eva*``, ``cait*``, ``beit*``, ``xcit*``, ``flexivit*``) up to 120M
parameters, with random weights, translated into the IR and compiled back (codegen of the unpruned
model) and compared with timm's own forward on two random images.

Each model ends as ``exact`` (max |diff| <= 1e-4 on the output: logits, or features for a feature
extractor), ``mismatch`` (imported, but differs), ``refused`` (the frontend names the option it cannot
represent) or ``crash`` (anything else: a bug). ``--small`` builds ViTs at a smaller image size (the
same weights' shapes but for the position embedding) so the whole list runs in minutes.

Writes benchmarks/results/coverage.json (per model: class, parameters, status, reason, max |diff|) and
prints the README table: models per refusal reason and what each needs.

    python benchmarks/coverage.py [--small] [--models a,b,...] [--out FILE]
"""
from __future__ import annotations

import argparse
import collections
import fnmatch
import itertools
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PATTERNS = ("vit_*", "deit*", "swin*", "eva*", "cait*", "beit*", "xcit*", "flexivit*")
MAX_PARAMS = 120e6
TOL = 1e-4
#: model class -> image size used with --small (the class must take ``img_size``); others: default size
SMALL_SIZE = {name: 4 for name in ("VisionTransformer", "VisionTransformerDistilled", "Eva", "Beit",
                                   "VisionTransformerRelPos", "Cait")}  # in patches per side


def timm():
    import vitshrink

    vitshrink.ensure_timm_importable()
    import timm as t

    return t


def candidates(patterns=PATTERNS, max_params: float = MAX_PARAMS) -> list[tuple[str, str, int]]:
    """(name, model class, parameters) of every timm model matching ``patterns`` with <= ``max_params``
    parameters (counted on the meta device: nothing is allocated)."""
    t = timm()
    names = sorted(set(itertools.chain.from_iterable(t.list_models(p) for p in patterns)))
    out = []
    for n in names:
        with torch.device("meta"):
            m = t.create_model(n)
        p = sum(x.numel() for x in m.parameters())
        if p <= max_params:
            out.append((n, type(m).__name__, p))
    return out


def check(name: str, small: bool = False, seed: int = 0) -> dict:
    """Import ``name`` (random weights, every parameter moved off its init so no bias is zero) and
    compare vitshrink's codegen with timm's forward. Returns ``{"status", "reason", "max_abs_diff",
    "img_size"}``."""
    t = timm()
    from vitshrink.errors import ModelError
    from vitshrink.families import build_module, from_timm

    torch.manual_seed(seed)
    kwargs = {}
    if small:
        with torch.device("meta"):
            meta = t.create_model(name)
        plain = type(getattr(meta, "patch_embed", None)).__name__ == "PatchEmbed"  # a CNN stem needs its full size
        cells = SMALL_SIZE.get(type(meta).__name__) if plain else None
        if cells:
            kwargs["img_size"] = cells * meta.patch_embed.patch_size[0]
    try:
        model = t.create_model(name, **kwargs).eval()
    except Exception:  # noqa: BLE001 - e.g. a convolutional stem that needs the full image: default size
        model = t.create_model(name).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    pe = getattr(model, "patch_embed", None)
    size = tuple(getattr(pe, "img_size", None) or model.pretrained_cfg.get("input_size", (3, 224, 224))[1:])
    out = {"img_size": list(size)}
    try:
        ir = from_timm(model, name)
    except ModelError as e:
        return {**out, "status": "refused", "reason": str(e)}
    except Exception as e:  # noqa: BLE001 - anything but a named refusal is a bug to report
        return {**out, "status": "crash", "reason": f"{type(e).__name__}: {e}".splitlines()[0]}
    x = torch.randn(2, 3, *size)
    try:
        with torch.no_grad():
            d = float((model(x) - build_module(ir)(x)).abs().max())
    except Exception as e:  # noqa: BLE001
        return {**out, "status": "crash", "reason": f"codegen: {type(e).__name__}: {e}".splitlines()[0]}
    return {**out, "status": "exact" if d <= TOL else "mismatch", "max_abs_diff": d}


#: refusal reason -> what supporting it needs (the README table's last column)
NEEDS = {
    "scale_attn_inner=True": "a LayerNorm over the heads' outputs before proj (normalising over kept v channels)",
    "norm='RmsNorm'": "RMSNorm (and its masked form for embedding pruning)",
    "unsupported model class Xcit": "cross-covariance attention (over channels), local patch interaction, class-attention layers",
    "embed_layer='HybridEmbed'": "a stem whose own output is the embedding (no projection: MobileCLIP's ConvStem)",
    "attn_layer='DiffAttention'": "differential attention (two softmax maps subtracted)",
    "block_fn='ParallelScalingBlock'": "attention and MLP in parallel from one fused input projection",
    "block_fn='DiffParallelScalingBlock'": "parallel blocks with differential attention",
    "block_fn='ParallelThingsBlock'": "several attention/MLP branches per block",
    "block_fn='ResPostBlock'": "post-norm residual blocks",
    "pre_norm='RmsNorm'": "RMSNorm (and its masked form for embedding pruning)",
    "scale_attn_norm=True": "a LayerNorm inside the attention (before proj)",
}


def reason_key(r: dict) -> str:
    """The refusal reason without model-specific values after the option name."""
    s = r.get("reason", "")
    return s.split(":")[0].removeprefix("unsupported model option ") if r["status"] == "refused" else r["status"]


def table(results: dict) -> str:
    """Markdown: models per status / refusal reason (by model class)."""
    by = collections.defaultdict(list)
    for name, r in results.items():
        by[("imported exactly" if r["status"] == "exact" else reason_key(r))].append((name, r["class"]))
    rows = ["| imported / refused for | models | classes | what it needs |", "|---|---|---|---|"]
    for k, v in sorted(by.items(), key=lambda kv: (kv[0] != "imported exactly", -len(kv[1]), kv[0])):
        classes = collections.Counter(c for _, c in v)
        rows.append(f"| {k} | {len(v)} | {', '.join(f'{c} {n}' for c, n in classes.most_common())} | {NEEDS.get(k, '')} |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="ViTs at 4x4 patches (faster; same widths)")
    ap.add_argument("--models", default=None, help="comma-separated names or fnmatch patterns (default: all)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "coverage.json"))
    a = ap.parse_args()
    from rich.progress import Progress

    models = candidates()
    if a.models:
        pats = a.models.split(",")
        models = [m for m in models if any(fnmatch.fnmatch(m[0], p) for p in pats)]
    results, t0 = {}, time.perf_counter()
    with Progress(transient=True) as bar:
        task = bar.add_task("importing", total=len(models))
        for name, cls, params in models:
            bar.update(task, description=name)
            results[name] = {"class": cls, "params": params, **check(name, small=a.small)}
            bar.advance(task)
    counts = collections.Counter(r["status"] for r in results.values())
    doc = {"timm": timm().__version__, "patterns": PATTERNS, "max_params": MAX_PARAMS, "tolerance": TOL,
           "small": a.small, "seconds": round(time.perf_counter() - t0, 1), "counts": dict(counts), "models": results}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{len(results)} models (timm {doc['timm']}, <= {MAX_PARAMS / 1e6:.0f}M parameters): "
          + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    print(table(results))
    for name, r in results.items():
        if r["status"] in ("mismatch", "crash"):
            print(f"{r['status'].upper()}: {name}: {r.get('reason', r.get('max_abs_diff'))}", file=sys.stderr)
    return 1 if counts.get("mismatch") or counts.get("crash") else 0


if __name__ == "__main__":
    sys.exit(main())
