"""Importer benchmark: a deit_small pruned by Torch-Pruning's own ViT example settings, compiled by
vitshrink in one step, against Torch-Pruning's own pruned model exported to ONNX -- same exporter
(torch.onnx, dynamo, opset 20, the same graph cleanup), same ONNX Runtime, one interleaved run:

- ``dense``: deit_small (vitshrink's codegen of the unpruned model)
- ``tp``: Torch-Pruning's pruned timm module, exported as it is (its patched attention forward)
- ``vitshrink``: the same checkpoint through ``vitshrink.importers`` + passes + codegen

Two Torch-Pruning settings (its examples/transformers/prune_timm_vit.py, L1, ratio 0.5, uniform):
head_dim pruning (the default) and whole-head pruning (``--prune_num_heads``, head ratio 0.5); both
prune the MLP and the embedding by the same ratio. Every model is checked against Torch-Pruning's own
logits before it is timed. Random weights: latency does not depend on them.

    python benchmarks/importers.py [--seconds 30] [--threads 2] [--batch 1,8]
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
sys.path.insert(0, str(REPO / "tests"))  # tests/tools.py: Torch-Pruning as its example uses it


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--seconds", type=float, default=30.0, help="timing budget per batch size")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--out", default="benchmarks/results/importers_tp_deit_small.json")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")

    from tools import torch_pruning_vit
    from vitshrink.compat import ensure_timm_importable
    from vitshrink.families import build_module
    from vitshrink.counting import count_macs
    from vitshrink.export import export_onnx, onnx_max_abs_diff
    from vitshrink.frontends.timm import create_model, from_timm, load_state
    from vitshrink.importers import import_checkpoint
    from vitshrink.families import apply_spec
    from vitshrink.passes import pad_heads
    from vitshrink.runtime.machine import machine
    from vitshrink.pipeline.output import toolchain
    from vitshrink.runtime.latency import measure_onnx, stability
    from vitshrink.families import resolve_spec

    ensure_timm_importable()
    batches = [int(b) for b in args.batch.split(",")]
    shape = (3, 224, 224)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    tmp = Path(tempfile.mkdtemp(prefix="vitshrink-bench-"))
    dense_ir = from_timm(create_model(args.model), args.model)
    paths = {"dense": export_onnx(build_module(dense_ir), tmp / "dense.onnx", shape)}
    macs = {"dense": count_macs(build_module(dense_ir), (1, *shape))}
    for name, kw in {"head_dim": {}, "heads": {"prune_num_heads": True}}.items():
        tp_model, _ = torch_pruning_vit(create_model(args.model), 0.5, **kw)
        torch.save(tp_model, tmp / f"{name}.pth")
        with torch.no_grad():
            want = tp_model(x)
        paths[f"tp_{name}"] = export_onnx(tp_model, tmp / f"tp_{name}.onnx", shape)
        result = import_checkpoint(tmp / f"{name}.pth", args.model)
        model = create_model(args.model)
        load_state(model, result.state_dict)
        ir = from_timm(model, args.model)
        pruned = build_module(pad_heads(apply_spec(ir, resolve_spec(result.spec, ir))))
        with torch.no_grad():
            got = pruned(x)
        diff = float((got - want).abs().max())
        assert diff <= 1e-4, f"{name}: vitshrink differs from Torch-Pruning by {diff}"
        paths[f"vitshrink_{name}"] = export_onnx(pruned, tmp / f"vitshrink_{name}.onnx", shape)
        for k in (f"tp_{name}", f"vitshrink_{name}"):
            d = onnx_max_abs_diff(paths[k], x, want)
            assert d <= 1e-4, f"{k}: ONNX Runtime differs from Torch-Pruning by {d}"
        macs[name] = count_macs(pruned, (1, *shape))
        print(f"{name}: vitshrink == Torch-Pruning within {diff:.1e}; MACs {macs['dense'] / 1e9:.3f} -> {macs[name] / 1e9:.3f} G",
              flush=True)

    results = measure_onnx(paths, batches, args.threads, shape, budget_s=args.seconds, extend_s=args.seconds,
                           progress=lambda b, d, p: print(f"\rbatch {b}: round {d}", end="", flush=True))
    print()
    out = {"model": args.model, "machine": machine(), "toolchain": toolchain(), "threads": args.threads,
           "macs": macs, "timing": "one worker process, one shared spinning ONNX Runtime pool, all files interleaved",
           "batches": {}}
    print(f"{'batch':>5} {'variant':>9} {'dense ms':>9} {'TP ms':>8} {'vitshrink ms':>12} {'TP/vitshrink':>12} "
          f"{'ideal':>6} {'realization TP / vitshrink':>27}")
    for b in batches:
        r = results[b]
        d = r.stats("dense")["p50"]
        rows = {}
        for name in ("head_dim", "heads"):
            tp, vs = r.stats(f"tp_{name}")["p50"], r.stats(f"vitshrink_{name}")["p50"]
            ideal = macs["dense"] / macs[name]
            rows[name] = {"dense_ms": d, "tp_ms": tp, "vitshrink_ms": vs, "tp_over_vitshrink": tp / vs,
                          "tp_over_vitshrink_paired": r.paired_ratio(f"tp_{name}", f"vitshrink_{name}"),
                          "ideal_speedup": ideal, "realization_tp": d / tp / ideal, "realization_vitshrink": d / vs / ideal,
                          "rounds": r.rounds, "stability": stability(r, f"tp_{name}", f"vitshrink_{name}")}
            print(f"{b:>5} {name:>9} {d:>9.2f} {tp:>8.2f} {vs:>12.2f} {tp / vs:>12.3f} {ideal:>6.3f} "
                  f"{d / tp / ideal:>13.3f} / {d / vs / ideal:.3f}")
        out["batches"][str(b)] = rows
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
