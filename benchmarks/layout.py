"""Layout per engine (issue 7 item 5): irregular per-head widths run padded (`--layout pad`) or grouped
(`--layout group`) -- which is faster depends on the engine, so measure it on every engine.

deit_small with VTC-LFC-style per-head channel pruning (each head keeps its own number of q/k and v
channels, drawn from 24..64 of 64 with a fixed seed) and MLP 50%. Three exports of the same model --
dense, padded (one width per block, zero channels), grouped (heads of equal width batched together) --
timed interleaved per engine (ORT, OpenVINO, the native runner, torch eager), batch 1 and 8, 2 threads.
Realization is against the *structural* MACs (what the spec removes; padding executes more).
Writes benchmarks/results/layout.json and layout.png.

    python benchmarks/layout.py [--seconds 8] [--batch 1,8] [--engines ort,openvino,native,torch]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
MODEL = "deit_small_patch16_224"


def irregular_spec(ir, seed: int = 0):
    """Per head: q/k and v keep counts in 24..64 (independent), the channels themselves random; MLP 50% (L1)."""
    from vitshrink.masks.vit import l1_spec

    g = torch.Generator().manual_seed(seed)
    spec = l1_spec(ir, mlp=0.5)
    for b in ir.blocks:
        H, hd = b.attn.num_heads, b.attn.qk_dims[0]
        for kind in ("qk", "v"):
            m = torch.zeros(H, hd, dtype=torch.bool)
            for h in range(H):
                k = int(torch.randint(24, hd + 1, (1,), generator=g))
                m[h, torch.randperm(hd, generator=g)[:k]] = True
            spec.masks[f"blocks.{b.source_index}.{kind}"] = m
    return spec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="timing budget per engine and batch size")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--engines", default="ort,openvino,native,torch")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "layout.json"))
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    from vitshrink.runtime.machine import machine
    from vitshrink.pipeline.output import toolchain
    from vitshrink.families import build_module
    from vitshrink.codegen import save
    from vitshrink.counting import count_macs
    from vitshrink.export import export_onnx, onnx_max_abs_diff
    from vitshrink.frontends.timm import create_model, from_timm
    from vitshrink.families import apply_spec
    from vitshrink.passes import group_heads, pad_heads
    from vitshrink.runtime.engines import measure, status
    from vitshrink.families import resolve_spec

    batches = [int(b) for b in a.batch.split(",")]
    ir = from_timm(create_model(MODEL), MODEL)
    pruned = apply_spec(ir, resolve_spec(irregular_spec(ir), ir))
    modules = {"dense": build_module(ir), "pad": build_module(pad_heads(pruned)), "group": build_module(group_heads(pruned))}
    shape = (3, 224, 224)
    macs = {k: count_macs(m, (1, *shape)) for k, m in modules.items()}
    macs["structural"] = count_macs(build_module(pruned), (1, *shape))
    ideal = macs["dense"] / macs["structural"]
    groups = sum(len(blk.attn.groups) for blk in modules["group"].blocks)
    print(f"MACs dense {macs['dense'] / 1e9:.3f} G, structural {macs['structural'] / 1e9:.3f} G (ideal x{ideal:.3f}), "
          f"padded executes {macs['pad'] / 1e9:.3f} G; grouped: {groups} attention groups in 12 blocks", file=sys.stderr)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    rows, skipped = [], {}
    with tempfile.TemporaryDirectory() as d, torch.no_grad():
        onnx, dirs = {}, {}
        for k, m in modules.items():
            onnx[k] = export_onnx(m, Path(d) / f"{k}.onnx", shape)
            dirs[k] = save(m, Path(d) / k)
            assert onnx_max_abs_diff(onnx[k], x, m(x)) <= 1e-4, k
        for engine in a.engines.split(","):
            reason = status(engine)
            if reason:
                skipped[engine] = reason
                continue
            arts = dirs if engine.startswith("torch") else onnx
            print(f"== {engine}", file=sys.stderr)
            res = measure(engine, {k: arts[k] for k in ("dense", "pad", "group")}, batches, a.threads, shape, a.seconds)
            for b in batches:
                r = res[b]
                ms = {k: r.stats(k)["p50"] for k in ("dense", "pad", "group")}
                rows.append({"engine": engine, "batch": b, "rounds": r.rounds, "ms": ms,
                             "speedup": {k: ms["dense"] / ms[k] for k in ("pad", "group")},
                             "realization": {k: ms["dense"] / ms[k] / ideal for k in ("pad", "group")},
                             "pad_vs_group_paired": r.paired_ratio("group", "pad"),
                             "faster": "pad" if ms["pad"] <= ms["group"] else "group"})
    out = {"model": MODEL, "spec": "per-head q/k and v widths 24..64 of 64 (seed 0), MLP 50% (L1)",
           "machine": machine(), "toolchain": toolchain(), "threads": a.threads, "bench_seconds": a.seconds,
           "macs": macs, "ideal_speedup": ideal, "attention_groups": groups, "rows": rows, "skipped": skipped}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print("| engine | batch | dense ms | pad ms | group ms | realization pad | realization group | faster |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['batch']} | {r['ms']['dense']:.2f} | {r['ms']['pad']:.2f} | {r['ms']['group']:.2f} | "
              f"{r['realization']['pad']:.3f} | {r['realization']['group']:.3f} | {r['faster']} |")
    plot(out, Path(a.out).with_suffix(".png"))
    return 0


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = out["rows"]
    batches = sorted({r["batch"] for r in rows})
    engines = list(dict.fromkeys(r["engine"] for r in rows))
    fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 3.8), squeeze=False, sharey=True)
    for ax, b in zip(axes[0], batches):
        for k, (lay, color) in enumerate((("pad", "#1f6feb"), ("group", "#bf8700"))):
            ys = [next(r["realization"][lay] for r in rows if r["engine"] == e and r["batch"] == b) for e in engines]
            xs = [i + (k - 0.5) * 0.38 for i in range(len(engines))]
            ax.bar(xs, ys, 0.38, label=f"--layout {lay}", color=color)
            for xv, yv in zip(xs, ys):
                ax.text(xv, yv, f"{yv:.2f}", ha="center", va="bottom", fontsize=7)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xticks(range(len(engines)), engines)
        ax.set_title(f"batch {b}")
        ax.set_ylabel("realization (vs structural MACs)")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.suptitle(f"{out['model']}, irregular per-head widths + MLP 50%: padded vs grouped heads per engine "
                 f"({out['threads']} threads)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
