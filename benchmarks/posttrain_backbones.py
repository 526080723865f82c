"""Post-training masks on a Swin and a DINOv2-style feature extractor: how much of the dense model's output
each criterion keeps -- L1 on weights (no data), data-aware scores, data-aware + least-squares
reconstruction -- where no ImageNet weights are at hand to measure top-1 (``../shared/data`` has real
weights for DeiT-Tiny only; ``benchmarks/posttrain.py`` measures top-1 there).

Each model has seeded random weights (timm's own initialisation, ``torch.manual_seed(0)``; DINOv2's
LayerScale factors, which timm initialises to 1e-5 and which would make every random block near-identity,
set to 1), saved as a checkpoint so that ``vitshrink masks`` and the evaluation see the same model.
``vitshrink masks --data`` chooses ``--calib-images`` (default 128) of the 1000 real images in
``imagenet-sample/val`` (seeded, as the CLI does); agreement is measured on ``--eval-images`` (default 256) of the *other* images: per image the
cosine similarity and the relative L2 error ``||f_pruned - f_dense|| / ||f_dense||`` of the output (Swin:
the logits of its random classifier, and top-1 agreement with the dense model; DINOv2: the pooled feature,
``num_classes=0``), medians and means over images. Masks: the same structure for every criterion
(``--heads 0.5 --mlp 0.5``) and one budget for the data-aware ones (``--macs 0.7``). The pruned model is
the generated module of the spec on the re-fitted weights (the compile's exactness check holds it to the
masked dense model; not repeated here).

Random weights are not trained ones: what a criterion keeps of a random model's function says how well it
finds the units that carry the output, not what accuracy a trained model keeps. Read the numbers as a
comparison of criteria, not as accuracy.

Writes benchmarks/results/posttrain_backbones.json and .png, prints the table.

    python benchmarks/posttrain_backbones.py [--calib-images 128] [--eval-images 256] [--only swin_tiny_patch4_window7_224]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from main_job import REPO, VAL, run  # the same images and subprocess helper

#: model -> image size (DINOv2 at 224 px: 256 patch tokens, as it is often deployed; its default is 518)
MODELS = {"swin_tiny_patch4_window7_224": 224, "vit_small_patch14_dinov2": 224}
#: (method, structure, `vitshrink masks` arguments, uses --data)
CONFIGS = [
    ("L1 (no data)", "heads0.5+mlp0.5", ["--heads", "0.5", "--mlp", "0.5"], False),
    ("data-aware", "heads0.5+mlp0.5", ["--heads", "0.5", "--mlp", "0.5", "--no-reconstruct"], True),
    ("data-aware + reconstruction", "heads0.5+mlp0.5", ["--heads", "0.5", "--mlp", "0.5"], True),
    ("data-aware", "macs0.7", ["--macs", "0.7", "--no-reconstruct"], True),
    ("data-aware + reconstruction", "macs0.7", ["--macs", "0.7"], True),
]


def main() -> int:
    if sys.argv[1:2] == ["--plot-only"]:
        plot(json.loads(Path(sys.argv[2]).read_text()), Path(sys.argv[2]).with_suffix(".png"))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib-images", type=int, default=128)
    ap.add_argument("--eval-images", type=int, default=256)
    ap.add_argument("--only", default=None, help="comma-separated model names")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "posttrain_backbones.json"))
    a = ap.parse_args()
    if not VAL.is_dir():
        raise SystemExit(f"needs the real images in {VAL}")
    import vitshrink
    vitshrink.ensure_timm_importable()
    import torch
    from safetensors.torch import save_file

    from vitshrink.pipeline.calibration import choose, find_images, load_images
    from vitshrink.runtime.machine import machine

    torch.set_num_threads(2)
    exe = str(Path(sys.executable).with_name("vitshrink"))
    models = [m for m in MODELS if not a.only or m in a.only.split(",")]
    rows, pool = [], find_images(VAL, "--data")
    with tempfile.TemporaryDirectory() as d:
        for name in models:
            size = MODELS[name]
            dense, transform = _random_model(name, size)
            ckpt = Path(d) / f"{name}.safetensors"
            save_file({k: v.contiguous() for k, v in dense.state_dict().items()}, str(ckpt))
            calib = set(choose(pool, a.calib_images))  # what `masks --data` picks
            held = [p for p in pool if p not in calib][:a.eval_images]
            x = load_images(held, transform)
            with torch.no_grad():
                ref = torch.cat([dense(x[i:i + 32]) for i in range(0, len(x), 32)])
            for method, structure, args, data in CONFIGS:
                spec = Path(d) / f"{name}.{len(rows)}.json"
                extra = ["--data", str(VAL), "--calib-images", str(a.calib_images)] if data else []
                t0 = time.perf_counter()
                run([exe, "masks", name, "--checkpoint", ckpt, "--img-size", str(size), *extra, *args, "--out", spec, "--quiet"])
                took = time.perf_counter() - t0
                weights = spec.with_name(spec.stem + ".weights.safetensors")
                row = {"model": name, "method": method, "structure": structure, "masks_args": args, "masks_seconds": round(took, 1),
                       **_agreement(name, size, weights if weights.is_file() else ckpt, spec, x, ref)}
                rows.append(row)
                print(f"{name:30s} {method:28s} {structure:16s} MACs x{row['macs_ratio']:.3f}  cos {row['cosine_median']:.4f}  "
                      f"rel. error {row['rel_error_median']:.3f}" + (f"  top-1 agr. {row['top1_agreement']:.3f}" if "top1_agreement" in row else "")
                      + f"  masks {took:.0f} s", flush=True)
    out = {"images": str(VAL), "calibration_images": a.calib_images, "eval_images": a.eval_images,
           "eval_images_are": "the first images of imagenet-sample/val (sorted) not chosen for calibration",
           "weights": "random, timm's initialisation after torch.manual_seed(0), LayerScale factors set to 1", "machine": machine(), "rows": rows}
    Path(a.out).write_text(json.dumps(out, indent=1))
    plot(out, Path(a.out).with_suffix(".png"))
    print(table(out))
    return 0


def _random_model(name: str, size: int):
    import timm
    import torch

    from vitshrink.frontends.timm import eval_transform

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, img_size=size).eval()
    with torch.no_grad():  # DINOv2's LayerScale starts at 1e-5: random blocks would be near-identity
        for mod in model.modules():
            if hasattr(mod, "gamma") and isinstance(mod.gamma, torch.nn.Parameter):
                mod.gamma.fill_(1.0)
    return model, eval_transform(model)


def _agreement(name: str, size: int, weights: Path, spec_path: Path, x, ref) -> dict:
    """The generated module of ``spec_path`` on ``weights`` against the dense outputs ``ref`` [N, F] on ``x``."""
    import torch

    import vitshrink

    _, ir, tensors = vitshrink.import_model(name, checkpoint=weights, img_size=(size, size))
    spec = vitshrink.load_spec(spec_path)
    pruned = vitshrink.apply_spec(ir, vitshrink.resolve_spec(spec, ir, tensors), tensors)
    module = vitshrink.build_module(pruned)
    with torch.no_grad():
        out = torch.cat([module(x[i:i + 32]) for i in range(0, len(x), 32)])
    cos = torch.nn.functional.cosine_similarity(out, ref, dim=-1)
    rel = (out - ref).norm(dim=-1) / ref.norm(dim=-1)
    shape = (1, 3, size, size)
    row = {"macs_ratio": vitshrink.count_macs(module, shape) / vitshrink.count_macs(vitshrink.build_module(ir), shape),
           "cosine_median": float(cos.median()), "cosine_mean": float(cos.mean()),
           "rel_error_median": float(rel.median()), "rel_error_mean": float(rel.mean()), "n": len(x)}
    if out.shape[-1] == 1000:  # a classifier (random): top-1 agreement with the dense model
        row["top1_agreement"] = float((out.argmax(-1) == ref.argmax(-1)).float().mean())
    return row


def table(res: dict) -> str:
    lines = ["| model | masks | MACs | cosine to dense: L1 (no data) | data-aware | + reconstruction | rel. error: L1 | data-aware | + reconstruction |",
             "|---|---|---|---|---|---|---|---|---|"]
    by: dict = {}
    for r in res["rows"]:
        by.setdefault((r["model"], r["structure"]), {})[r["method"]] = r
    methods = ("L1 (no data)", "data-aware", "data-aware + reconstruction")
    for (model, structure), m in by.items():
        first = next(iter(m.values()))
        args = " ".join(a for a in first["masks_args"] if a != "--no-reconstruct")
        cos = [f"{m[k]['cosine_median']:.3f}" if k in m else "--" for k in methods]
        rel = [f"{m[k]['rel_error_median']:.3f}" if k in m else "--" for k in methods]
        lines.append(f"| {model} | `{args}` | x{first['macs_ratio']:.2f} | {' | '.join(cos)} | {' | '.join(rel)} |")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in res["rows"]))
    colors = {"L1 (no data)": "tab:gray", "data-aware": "tab:orange", "data-aware + reconstruction": "tab:blue"}
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.6), squeeze=False)
    for ax, model in zip(axes[0], models):
        rows = [r for r in res["rows"] if r["model"] == model]
        structures = list(dict.fromkeys(r["structure"] for r in rows))
        width = 0.8 / len(colors)
        for j, (method, c) in enumerate(colors.items()):
            xs, ys = [], []
            for i, s in enumerate(structures):
                hit = [r for r in rows if r["structure"] == s and r["method"] == method]
                if hit:
                    xs.append(i + (j - 1) * width)
                    ys.append(hit[0]["rel_error_median"])
            ax.bar(xs, ys, width, color=c, label=method)
        labels = [f"{s}\nMACs x{next(r['macs_ratio'] for r in rows if r['structure'] == s):.2f}" for s in structures]
        ax.set_xticks(range(len(structures)), labels, fontsize=8)
        ax.set_ylabel("median relative L2 error of the output vs dense (lower is better)", fontsize=8)
        ax.set_title(f"{model} (random weights)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"benchmarks/posttrain_backbones.py: {res['calibration_images']} calibration images, "
                 f"{res['eval_images']} other images measured -- {res['machine'].get('cpu', '')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
