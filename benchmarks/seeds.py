"""Seed reproduction benchmark: the five methods of ../shared/docs/SEEDS.md, each pruned to the
architecture its paper reports, written in that method's own checkpoint format, imported and compiled
by vitshrink (`compile_model(..., checkpoint=...)`, no spec), and timed dense vs pruned on ONNX Runtime
CPU. One table: the paper's MACs reduction and speed-up next to ours.

- Patch Slimming (DeiT-Ti, 1.3 -> 0.7 GFLOPs): no released checkpoint format -- a nested token schedule
  in query mode (eq. 2) as a spec, the keep ratio searched so the MACs match the paper's.
- WDPruning (DeiT-Ti 0.3-11): saliency scores + thresholds keeping 70% of heads/rows (TopKBinarizer),
  exit after 11 blocks.
- S2ViTE (DeiT-Ti, 30% structured): atten_mask / other_mask over 30% of heads and MLP neurons.
- VTC-LFC (DeiT-Ti, -46.7% FLOPs): a cfged checkpoint with unequal q/k and v widths, MLP and a token_cfg.
- SAViT (DeiT-B, 17.6 -> 8.8 GFLOPs): the gated model with head, neuron and residual gates.

Random weights (latency does not depend on them; accuracy is not measured here).

    python benchmarks/seeds.py [--seconds 15] [--threads 2] [--only wdpruning,s2vite]
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import warnings
from pathlib import Path

import torch

PAPER = {  # SEEDS.md: MACs reduction and the speed-up the paper measured (device)
    "patch_slimming": ("deit_tiny_patch16_224", 0.46, "x1.41 throughput (V100)"),
    "wdpruning": ("deit_tiny_patch16_224", 0.462, "x1.20 throughput (RTX 3090), CPU 332 -> 265 ms (x1.25)"),
    "s2vite": ("deit_tiny_patch16_224", 0.237, "running time -10.6% (x1.12)"),
    "vtc_lfc": ("deit_tiny_patch16_224", 0.467, "x1.70 throughput (V100, batch 256)"),
    "savit": ("deit_base_patch16_224", 0.50, "x1.55 (V100)"),
}


def _logit(p: float) -> float:
    import math

    return math.log(p / (1 - p))


def wdpruning(model, path):
    """WDPruning checkpoint keeping 70% (sigmoid(threshold) = 0.7) of heads, proj/fc1/fc2 rows; exit 11."""
    g = torch.Generator().manual_seed(0)
    sd = dict(model.state_dict())
    for i, b in enumerate(model.blocks):
        p = f"blocks.{i}."
        sd[p + "attn.qkv.head_saliency_scores"] = torch.randn(b.attn.num_heads, 1, generator=g)
        sd[p + "attn.qkv.threshold_head"] = torch.tensor([_logit(0.7)])
        for layer, n in (("attn.proj", 192), ("mlp.fc1", 768), ("mlp.fc2", 192)):
            sd[f"{p}{layer}.saliency_scores"] = torch.randn(n, 1, generator=g)
            sd[f"{p}{layer}.threshold_fc"] = torch.tensor([_logit(0.7)])
    for j in range(2):
        sd[f"norm_classifier.{j}.weight"], sd[f"norm_classifier.{j}.bias"] = torch.ones(192), torch.zeros(192)
        sd[f"head_classifier.{j}.weight"], sd[f"head_classifier.{j}.bias"] = 0.02 * torch.randn(1000, 192), torch.zeros(1000)
    torch.save({"model": sd}, path)
    return {"import_options": {"exit": "11", "classifiers": "10,11"}}


def s2vite(model, path):
    """S2ViTE: 30% of the heads (where a block can lose one) and 30% of the MLP neurons masked."""
    g = torch.Generator().manual_seed(1)
    atten, other = {}, {}
    for i, b in enumerate(model.blocks):
        H, hd = b.attn.num_heads, b.attn.head_dim
        heads = torch.ones(H)
        if i > 0:  # 11 of 12 blocks lose one of their 3 heads: 11 of 36 heads, ~30%
            heads[int(torch.randint(H, (1,), generator=g))] = 0
        atten[f"blocks.{i}.attn.qkv.weight_mask"] = heads.repeat_interleave(hd).repeat(3)[:, None].expand(3 * H * hd, 192).clone()
        neurons = (torch.rand(768, generator=g) > 0.3).float()
        other[f"blocks.{i}.mlp.fc1.weight_mask"] = neurons[:, None].expand(768, 192).clone()
    torch.save({"model": model.state_dict(), "atten_mask": atten, "other_mask": other}, path)
    return {}


def vtc_lfc(model, path):
    """A cfged DeiT-Ti: 3 heads of q/k 40 and v 48 channels, MLP 480, tokens kept 80% at blocks 4, 7, 10."""
    sd = model.state_dict()
    out = {k: v for k, v in sd.items() if not k.startswith("blocks.")}
    cfg = {"embed": (3, 192), "head": (192, 1000)}
    tokens, present = [], 196
    for i in range(12):
        p = f"blocks.{i}."
        W, b = sd[p + "attn.qkv.weight"].view(3, 3, 64, 192), sd[p + "attn.qkv.bias"].view(3, 3, 64)
        out[p + "attn.qkv.weight"] = torch.cat([W[0, :, :40].reshape(-1, 192), W[1, :, :40].reshape(-1, 192),
                                                W[2, :, :48].reshape(-1, 192)])
        out[p + "attn.qkv.bias"] = torch.cat([b[0, :, :40].reshape(-1), b[1, :, :40].reshape(-1), b[2, :, :48].reshape(-1)])
        out[p + "attn.proj.weight"] = sd[p + "attn.proj.weight"].view(192, 3, 64)[:, :, :48].reshape(192, -1)
        out[p + "mlp.fc1.weight"], out[p + "mlp.fc1.bias"] = sd[p + "mlp.fc1.weight"][:480], sd[p + "mlp.fc1.bias"][:480]
        out[p + "mlp.fc2.weight"] = sd[p + "mlp.fc2.weight"][:, :480]
        for k in ("attn.proj.bias", "mlp.fc2.bias", "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"):
            out[p + k] = sd[p + k]
        cfg.update({f"h.{i}": (3,), f"q.{i}": (192, 120), f"k.{i}": (192, 120), f"v.{i}": (192, 144),
                    f"proj.{i}": (144, 192), f"fc1.{i}": (192, 480), f"fc2.{i}": (480, 192)})
        if i in (4, 7, 10):
            present = int(present * 0.8)
        tokens.append(present)
    torch.save({"model": out, "dim_cfg": cfg, "token_cfg": tokens}, path)
    return {}


def savit(model, path):
    """SAViT gated DeiT-B: residual gate keeping 85% of 768 channels, 6 of 12 heads, 60% of the MLP."""
    g = torch.Generator().manual_seed(3)
    sd = dict(model.state_dict())
    res = torch.ones(768)
    res[torch.randperm(768, generator=g)[:115]] = 0
    sd["res_gate.weight"] = res
    for i in range(12):
        heads = torch.zeros(12)
        heads[torch.randperm(12, generator=g)[:6]] = 1
        sd[f"blocks.{i}.attn.attn_gate.weight"] = heads
        sd[f"blocks.{i}.mlp.hidden_gate1.weight"] = (torch.rand(3072, generator=g) > 0.4).float()
    torch.save({"model": sd}, path)
    return {}


def patch_slimming_spec(model_name, path, target):
    """A nested query-mode token schedule (keep ratio r at blocks 1..11, compounding) with MACs -target."""
    from vitshrink.families import build_module
    from vitshrink.counting import count_macs
    from vitshrink.families import import_model
    from vitshrink.masks.tokens import token_spec
    from vitshrink.families import apply_spec
    from vitshrink.spec import save_spec, Spec
    from vitshrink.families import resolve_spec

    _, ir, _ = import_model(model_name)
    dense = count_macs(build_module(ir, share=True), (1, 3, 224, 224))
    lo, hi = 0.5, 1.0
    for _ in range(12):
        r = (lo + hi) / 2
        masks, settings = token_spec(ir, f"uniform:{r:.4f}@1-11", mode="query")
        pruned = apply_spec(ir, resolve_spec(Spec(dict(masks), settings), ir))
        red = 1 - count_macs(build_module(pruned, share=True), (1, 3, 224, 224)) / dense
        lo, hi = (r, hi) if red > target else (lo, r)
    masks, settings = token_spec(ir, f"uniform:{lo:.4f}@1-11", mode="query")
    save_spec(Spec(dict(masks), settings, meta={"producer": "benchmarks/seeds.py", "schedule": f"uniform:{lo:.4f}@1-11"}), path)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default=None)
    ap.add_argument("--out", default="benchmarks/results/seeds.json")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    import vitshrink
    from vitshrink.frontends.timm import create_model

    tmp = Path(tempfile.mkdtemp(prefix="vitshrink-seeds-"))
    results = collections.OrderedDict()
    for seed, (model_name, paper_red, paper_speed) in PAPER.items():
        if args.only and seed not in args.only.split(","):
            continue
        print(f"== {seed}: {model_name}", flush=True)
        kw = dict(batch=(1, 8), threads=args.threads, bench_seconds=args.seconds, progress=False)
        if seed == "patch_slimming":
            patch_slimming_spec(model_name, tmp / "ps.json", paper_red)
            report = vitshrink.compile_model(model_name, tmp / "ps.json", tmp / seed, **kw)
        else:
            path = tmp / f"{seed}.pth"
            extra = globals()[seed](create_model(model_name), path)
            report = vitshrink.compile_model(model_name, out=tmp / seed, checkpoint=str(path), **kw, **extra)
            assert report["import"]["format"] == seed.replace("_", "-"), report["import"]["format"]
        lat = {e["batch"]: e for e in report["latency"]}
        results[seed] = {
            "model": model_name, "paper_macs_reduction": paper_red, "paper_speedup": paper_speed,
            "macs_reduction": 1 - report["macs"]["ratio"],
            "speedup": {b: lat[b]["speedup"] for b in lat}, "realization": {b: lat[b]["realization"] for b in lat},
            "stable": {b: lat[b]["stability"]["verdict"] for b in lat},
            "exactness": report["exactness"]["max_abs_diff"], "source_max_abs_diff": report["import"].get("source_max_abs_diff"),
        }
        r = results[seed]
        print(f"   MACs -{100 * r['macs_reduction']:.1f}% (paper -{100 * paper_red:.1f}%), speed-up b1 x{r['speedup'][1]:.2f} "
              f"b8 x{r['speedup'][8]:.2f}, realization {r['realization'][1]:.2f} / {r['realization'][8]:.2f}", flush=True)
    print("\n| seed | model | paper MACs | paper speed-up | ours MACs | ORT CPU speed-up b1 / b8 | realization b1 / b8 |")
    print("|---|---|---|---|---|---|---|")
    for seed, r in results.items():
        print(f"| {seed} | {r['model']} | -{100 * r['paper_macs_reduction']:.1f}% | {r['paper_speedup']} | "
              f"-{100 * r['macs_reduction']:.1f}% | x{r['speedup'][1]:.2f} / x{r['speedup'][8]:.2f} | "
              f"{r['realization'][1]:.2f} / {r['realization'][8]:.2f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"threads": args.threads, "seconds": args.seconds, "seeds": results}, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
