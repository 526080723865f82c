"""False-alarm rate and sensitivity of `vitshrink check --baseline ... --max-slowdown 5%` on this machine.

1. The same compile (DeiT-Tiny, compiler/examples/deit_tiny_example.json, ORT CPU 2 threads, batch 1)
   run N+1 times in a row; compile k+1 gated against compile k: N gates of an unchanged engine, each a
   false alarm when it fails. Every gate is decided both ways `vitshrink check` can: from the two
   reports' rounds, and by re-timing both model.onnx interleaved (what check does when it has both
   output directories).
2. Changed engines, each compiled R times and gated against baseline compiles: a pruned model made
   deliberately slower (the MLP of three blocks kept whole, +14% MACs); and two layout choices the
   issue suspected of being slower -- irregular heads unpadded (``--layout group``) vs padded, and a
   static token spec in the ``--token-layout gather`` form (gathers + ScatterND per block) vs its
   ``prefix`` form. Whether those two are slower is what the run measures; the gate must flag them
   only when they are.

Every compile is a full `compile_model` run (fresh latency worker, timing as the CLI does it), so the
noise is the real run-to-run noise of this machine. Writes benchmarks/results/gate_false_alarms.json
and gate_false_alarms.png (slowdown and its 95% interval per gate, the 5% threshold).

    python benchmarks/gate_false_alarms.py [--repeats 20] [--variants 3] [--seconds 4]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = "deit_tiny_patch16_224"
SPEC = REPO / "compiler" / "examples" / "deit_tiny_example.json"


def compile_once(tmp: Path, tag: str, spec: Path, seconds: float, **opts) -> dict:
    from vitshrink.pipeline import compile_model, CompileOptions

    out = tmp / tag
    return compile_model(MODEL, spec, out, CompileOptions(bench_seconds=seconds, progress=False, batch=(1,), threads=(2,), **opts))


def gate(report: dict, baseline: dict, threshold: float, new_dir: Path, old_dir: Path, seconds: float) -> dict:
    """Both ways `vitshrink check --max-slowdown` can decide: from the two reports' rounds
    (``rounds``) and by re-timing both model.onnx interleaved (``retimed``, what check does when
    both output directories are there)."""
    from vitshrink.gate import evaluate, gate_from_mapping
    from vitshrink.gate.retime import retimer

    g = gate_from_mapping({"max_slowdown": threshold}, "benchmark")
    out = {}
    for how, retime in (("rounds", None), ("retimed", retimer(new_dir, old_dir, seconds))):
        (c,) = evaluate(report, g, baseline, retime=retime)
        out[how] = {"status": c.status, "slowdown": c.value, "ci95": list(c.interval) if c.interval else None, "note": c.note}
    return out


def token_spec(tmp: Path) -> Path:
    """The example's structural masks plus a static token schedule (keep 70% at blocks 4-11, drop mode)."""
    from vitshrink.frontends.timm import create_model, from_timm
    from vitshrink.masks.tokens import token_spec as make
    from vitshrink.spec import load_spec, save_spec, Spec

    base = load_spec(SPEC)
    masks, settings = make(from_timm(create_model(MODEL)), "uniform:0.7@4-11")
    path = tmp / "tokens.json"
    save_spec(Spec({**base.masks, **masks}, {**base.settings, **settings}), path)
    return path


def wider_spec(tmp: Path, blocks=(0, 1, 2)) -> Path:
    """The example with the MLP of ``blocks`` kept whole: a pruned model with 14% more MACs, i.e. slower."""
    import torch

    from vitshrink.spec import load_spec, save_spec, Spec

    base = load_spec(SPEC)
    masks = dict(base.masks)
    for b in blocks:
        masks[f"blocks.{b}.mlp"] = torch.ones(768, dtype=torch.bool)
    path = tmp / "wider.json"
    save_spec(Spec(masks, dict(base.settings)), path)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20, help="gates of an unchanged engine (N)")
    ap.add_argument("--variants", type=int, default=3, help="compiles of each slower engine (R)")
    ap.add_argument("--seconds", type=float, default=4.0, help="--bench-seconds of every compile")
    ap.add_argument("--threshold", type=float, default=0.05)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gate_false_alarms.json"))
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    from rich.progress import Progress

    total = a.repeats + 1 + 3 * a.variants + 2
    result = {"model": MODEL, "spec": str(SPEC.relative_to(REPO)), "threshold": a.threshold, "bench_seconds": a.seconds,
              "same": [], "slower": {}}
    with tempfile.TemporaryDirectory() as d, Progress() as bar:
        tmp, task = Path(d), bar.add_task("compiles", total=total)

        def run(tag, spec=SPEC, **opts):
            rep = compile_once(tmp, tag, spec, a.seconds, **opts)
            rep["dir"] = tmp / tag
            bar.advance(task)
            return rep

        def g(new, old):
            return gate(new, old, a.threshold, new["dir"], old["dir"], a.seconds)

        same = [run(f"same{i}") for i in range(a.repeats + 1)]
        result["machine"], result["toolchain"] = same[0]["machine"], same[0]["toolchain"]
        for i in range(a.repeats):
            result["same"].append({**g(same[i + 1], same[i]), "ms": same[i + 1]["latency"][0]["pruned_ms"]["p50"]})
        spec_w = wider_spec(tmp)
        result["slower"]["MLP of blocks 0-2 kept whole (+14% MACs) vs the example"] = [
            g(run(f"wider{i}", spec_w), same[i]) for i in range(a.variants)]
        result["slower"]["irregular heads unpadded (--layout group) vs pad"] = [
            g(run(f"group{i}", layout="group"), same[i]) for i in range(a.variants)]
        spec_t = token_spec(tmp)
        prefix = run("prefix", spec_t)
        result["slower"]["token gather layout vs prefix"] = [
            g(run(f"gather{i}", spec_t, token_layout="gather"), prefix) for i in range(a.variants)]
        # sanity: an unchanged token engine is not flagged either
        result["slower"]["(control) token prefix layout vs prefix"] = [g(run("prefix2", spec_t), prefix)]
    result["false_alarms"] = {}
    for how in ("rounds", "retimed"):
        alarms = sum(x[how]["status"] == "fail" for x in result["same"])
        result["false_alarms"][how] = f"{alarms} of {a.repeats}"
        print(f"[{how}] unchanged engine: {a.repeats - alarms} of {a.repeats} gates pass (--max-slowdown {a.threshold:.0%})")
        for name, gs in result["slower"].items():
            print(f"[{how}] {name}: flagged {sum(x[how]['status'] == 'fail' for x in gs)} of {len(gs)}; slowdowns "
                  + ", ".join(f"{100 * x[how]['slowdown']:+.1f}%" for x in gs))
    Path(a.out).write_text(json.dumps(result, indent=1))
    plot(result, Path(a.out).with_suffix(".png"))
    return 0


def plot(result: dict, path: Path) -> None:
    """Slowdown and its 95% interval per gate, both methods side by side, the threshold dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("same engine", x) for x in result["same"]] + [(n, x) for n, xs in result["slower"].items() for x in xs]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.22 * len(rows) + 1.8), sharey=True)
    colors = {"pass": "tab:green", "fail": "tab:red", "skip": "grey"}
    titles = {"rounds": "two reports' rounds", "retimed": "both ONNX re-timed, interleaved"}
    for ax, how in zip(axes, ("rounds", "retimed")):
        for y, (_, x) in enumerate(rows):
            gx = x[how]
            if gx["ci95"]:
                ax.plot([100 * gx["ci95"][0], 100 * gx["ci95"][1]], [y, y], color=colors[gx["status"]], lw=2, alpha=0.6)
            ax.plot([100 * gx["slowdown"]], [y], "o", color=colors[gx["status"]], ms=4)
        ax.axvline(100 * result["threshold"], color="k", ls="--", lw=1)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_title(f"{titles[how]}: {result['false_alarms'][how]} false alarms", fontsize=9)
        ax.set_xlabel("slowdown vs baseline (%); bar: bootstrap 95% interval")
        ax.grid(axis="x", alpha=0.3)
    labels = [n if i == 0 or rows[i - 1][0] != n else "" for i, (n, _) in enumerate(rows)]
    axes[0].set_yticks(range(len(rows)), labels, fontsize=7)
    axes[0].invert_yaxis()
    axes[1].plot([], [], "o", color="tab:green", label="pass")
    axes[1].plot([], [], "o", color="tab:red", label="fail: whole interval above")
    axes[1].plot([], [], "k--", label=f"--max-slowdown {result['threshold']:.0%}")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"vitshrink check --max-slowdown on {result['model']} (ORT CPU, 2 threads, batch 1), "
                 f"{len(result['same'])} pairs of identical compiles + changed engines", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


if __name__ == "__main__":
    sys.exit(main())
