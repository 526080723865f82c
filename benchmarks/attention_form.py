"""Which attention form to export to ONNX: through SDPA (what the generated modules run in torch) or
written out (two MatMuls and a Softmax)? Both exports of the same pruned model are timed interleaved
on the CPU engines; vitshrink exports the faster (:mod:`vitshrink.export`).

Cases: deit_small and swin_tiny, heads and MLP 50% (L1), random weights. Writes
benchmarks/results/attention_form.json and prints the paired per-round ratio explicit / SDPA (below
1: the explicit form is faster) and the node counts of both graphs.

    python benchmarks/attention_form.py [--seconds 8] [--engines ort,openvino] [--batch 1,8]
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--engines", default="ort,openvino")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--models", default="deit_small_patch16_224,swin_tiny_patch4_window7_224")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "attention_form.json"))
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    import onnx

    from vitshrink.codegen import attention_form
    from vitshrink.export import export_onnx
    from vitshrink.families import apply_spec, build_module, family_of, import_model, resolve_spec
    from vitshrink.runtime import engines
    from vitshrink.runtime.machine import machine

    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name in a.models.split(","):
            _, ir, _ = import_model(name)
            family = family_of(ir)
            pruned = family.passes.lay_out(apply_spec(ir, resolve_spec(family.masks.l1_spec(ir, heads=0.5, mlp=0.5), ir)), "pad", "prefix")
            module, shape = build_module(pruned), (3, *ir.img_size)
            paths, nodes = {}, {}
            for form, fused in (("sdpa", True), ("explicit", False)):
                with attention_form(module, fused):
                    paths[form] = export_onnx(module, Path(d) / f"{name}-{form}.onnx", shape, fused_attention=fused)
                nodes[form] = dict(collections.Counter(n.op_type for n in onnx.load(str(paths[form])).graph.node).most_common(8))
            for eng in a.engines.split(","):
                if engines.status(eng):
                    continue
                for b, res in engines.measure(eng, paths, [int(x) for x in a.batch.split(",")], 2, shape, a.seconds).items():
                    row = {"model": name, "engine": eng, "batch": b, "sdpa_ms": res.stats("sdpa")["p50"],
                           "explicit_ms": res.stats("explicit")["p50"], "explicit_over_sdpa": res.paired_ratio("explicit", "sdpa")}
                    rows.append(row)
                    print(f"{name} {eng} batch {b}: sdpa {row['sdpa_ms']:.2f} ms, explicit {row['explicit_ms']:.2f} ms, "
                          f"explicit/sdpa {row['explicit_over_sdpa']:.3f}", flush=True)
            print(f"{name} nodes: {nodes}")
            rows.append({"model": name, "nodes": nodes})
    Path(a.out).write_text(json.dumps({"machine": machine(), "threads": 2, "seconds": a.seconds, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
