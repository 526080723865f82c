"""Compile a pruned DeiT-Tiny with the Python API, then load and run the result.

    python examples/compile_and_load.py [OUT_DIR]

No ``if __name__ == "__main__":`` guard is needed: latency is timed in a subprocess that never
re-imports this script. Uses the real DeiT-Tiny weights in ../shared/data when present, random
weights otherwise (exactness and latency are meaningful either way; accuracy is not).
"""
import sys
from pathlib import Path

import torch

import vitshrink

repo = Path(__file__).resolve().parents[1]
out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/example")
weights = repo.parent / "shared" / "data" / "deit_tiny_patch16_224.in1k.safetensors"

# 1. a mask spec: drop heads 0 and 1 of blocks 2-5, keep half the MLP neurons of block 3
masks = {f"blocks.{i}.heads": torch.tensor([False, False, True]) for i in range(2, 6)}
masks["blocks.3.mlp"] = torch.arange(768) % 2 == 0
spec_file = out.parent / f"{out.name}-spec.json"
spec_file.parent.mkdir(parents=True, exist_ok=True)
vitshrink.save_spec(vitshrink.Spec(masks), spec_file)

# 2. compile: verify exactness, export ONNX, time dense vs pruned (keyword arguments = CLI options)
report = vitshrink.compile_model(
    "deit_tiny_patch16_224", spec_file, out,
    checkpoint=str(weights) if weights.is_file() else None,
    batch=(1,), threads=2, bench_seconds=1, progress=False,
)
lat = report["latency"][0]
print(f"exactness {report['exactness']['max_abs_diff']:.1e}, MACs x{1 / report['macs']['ratio']:.2f}, "
      f"speed-up x{lat['speedup']:.2f} at batch 1 ({lat['stability']['verdict']})")

# 3. the pruned model is an ordinary nn.Module, loadable without timm
model = vitshrink.load(out)
logits = model(torch.randn(2, 3, 224, 224))
print("logits", tuple(logits.shape), "heads per block", [b.attn.num_heads for b in model.blocks])
