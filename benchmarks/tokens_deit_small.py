"""Token benchmark (issue 3): deit_small, ONNX Runtime CPU, batch 1 and 8, all variants in ONE
interleaved run (a fresh worker process sharing one spinning thread pool, see vitshrink.runtime.latency):

- dense
- static drop, schedule 0.7@4,7,10 (spatially uniform): prefix form (one permutation + slices)
  vs the plain gather form (a Gather per block)
- static query (Patch Slimming eq. 2), same schedule: prefix form (slice + concat) vs the gather /
  scatter form (Gather + ScatterND per block)
- dynamic EViT, keep 0.7 at blocks 4, 7, 10 (class attention, constant-K TopK + Gather)

Every variant is checked against the masked dense reference before it is timed. Random weights:
latency does not depend on them. Usage:

    python benchmarks/tokens_deit_small.py [--seconds 60] [--threads 2] [--out benchmarks/results/tokens_deit_small.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import torch


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--seconds", type=float, default=60.0, help="timing budget per batch size")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--out", default="benchmarks/results/tokens_deit_small.json")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")

    from vitshrink.families import build_module
    from vitshrink.counting import count_macs
    from vitshrink.export import export_onnx
    from vitshrink.families import import_model
    from vitshrink.masks.tokens import token_spec
    from vitshrink.families import apply_spec
    from vitshrink.passes import prefix_token_order
    from vitshrink.runtime.machine import machine
    from vitshrink.pipeline.output import toolchain
    from vitshrink.families import reference_forward
    from vitshrink.runtime.latency import measure_onnx
    from vitshrink.spec import Spec
    from vitshrink.families import resolve_spec

    _, ir, _ = import_model(args.model)
    shape = (ir.in_chans, *ir.img_size)
    static_masks, _ = token_spec(ir, "uniform:0.7@4,7,10")
    _, evit = token_spec(ir, "evit:0.7@4,7,10")
    variants = {
        "static_drop_prefix": (Spec(dict(static_masks), {"token_mode": "drop"}), True),
        "static_drop_gather": (Spec(dict(static_masks), {"token_mode": "drop"}), False),
        "static_query_prefix": (Spec(dict(static_masks), {"token_mode": "query"}), True),
        "static_query_gather": (Spec(dict(static_masks), {"token_mode": "query"}), False),
        "dynamic_evit": (Spec({}, evit), True),
    }
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    work = Path(tempfile.mkdtemp(prefix="vitshrink-tokbench-"))
    paths, macs = {}, {}
    dense = build_module(ir, share=True)
    macs["dense"] = count_macs(dense, (1, *shape))
    paths["dense"] = export_onnx(dense, work / "dense.onnx", shape)
    for name, (spec, prefix) in variants.items():
        rs = resolve_spec(spec, ir)
        pruned = apply_spec(ir, rs)
        if prefix:
            pruned = prefix_token_order(pruned)
        module = build_module(pruned, share=True)
        with torch.no_grad():
            diff = float((module(x) - reference_forward(ir, rs, x)).abs().max())
        assert diff <= 1e-4, f"{name}: not exact ({diff:.3g})"
        macs[name] = count_macs(module, (1, *shape))
        paths[name] = export_onnx(module, work / f"{name}.onnx", shape)
        print(f"{name}: exact ({diff:.1e}), {macs[name] / 1e9:.3f} GMACs", file=sys.stderr)

    batches = [int(b) for b in args.batch.split(",")]
    results = measure_onnx(paths, batches, args.threads, shape, budget_s=args.seconds,
                           progress=lambda b, d, p: print(f"\r  batch {b}: round {d}", end="", file=sys.stderr))
    print(file=sys.stderr)
    rows = []
    for batch in batches:
        res = results[batch]
        d = res.stats("dense")["p50"]
        for name in variants:
            p = res.stats(name)["p50"]
            ideal = macs["dense"] / macs[name]
            rows.append({"variant": name, "batch": batch, "threads": args.threads, "rounds": res.rounds,
                         "dense_ms_p50": d, "pruned_ms_p50": p, "speedup": d / p,
                         "speedup_paired": res.paired_ratio("dense", name), "ideal_speedup": ideal,
                         "realization": d / p / ideal, "macs": macs[name], "dense_macs": macs["dense"]})
    print(f"{'variant':22s} {'batch':>5s} {'dense p50':>10s} {'pruned p50':>10s} {'speed-up':>9s} {'ideal':>7s} {'realization':>11s}")
    for r in rows:
        print(f"{r['variant']:22s} {r['batch']:5d} {r['dense_ms_p50']:10.2f} {r['pruned_ms_p50']:10.2f} "
              f"{r['speedup']:9.3f} {r['ideal_speedup']:7.3f} {r['realization']:11.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": args.model, "machine": machine(), "toolchain": toolchain(),
                                          "schedule": "0.7 at blocks 4, 7, 10", "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
