"""`vitshrink sweep` (issue 41): masks + compile per (method, budget), the Pareto front per engine and batch, the best
point within the drop copied to OUT/best, resuming without recomputing, bad input before any work. DeiT-Tiny's real
weights at 64 px on 60 of the real images, 48 of them calibrating, the suite's time budget; the held-out check is
loosened for the 12 others -- the sweep itself refuses fewer than 385 held-out images."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from conftest import DEIT_TINY_CKPT, IMAGENET_VAL, require_shared
from vitshrink import sweep
from vitshrink.cli import main


def _real_subset(root, n=60):
    """``n`` of the real ImageNet images (one per class) as an ImageFolder of links: a sweep on real statistics."""
    root.mkdir(parents=True)
    for d in sorted(IMAGENET_VAL.iterdir())[:n]:
        (root / d.name).mkdir()
        for f in d.iterdir():
            (root / d.name / f.name).symlink_to(f)
    return root


def test_front_and_best_are_what_they_say():
    rows = {"a": {"speedup": 1.2, "top1": 0.78, "drop": 0.5}, "b": {"speedup": 1.5, "top1": 0.77, "drop": 1.5},
            "c": {"speedup": 1.1, "top1": 0.76, "drop": 2.5}, "d": {"speedup": 1.9, "top1": 0.60, "drop": 18.0}}
    assert sweep.front(rows) == ["d", "b", "a"]  # c is slower and less accurate than a
    assert sweep.best(rows, 1.0) == "a" and sweep.best(rows, 2.0) == "b" and sweep.best(rows, 0.1) is None
    assert sweep.half_width(385) < 5.0 < sweep.half_width(384)


def test_sweep_writes_the_front_resumes_and_copies_the_best(tmp_path, monkeypatch):
    require_shared()
    monkeypatch.setattr(sweep, "MAX_HALF_WIDTH", 100.0)  # 12 held-out images: coarse, and enough for the mechanics
    data, out = _real_subset(tmp_path / "imgs"), tmp_path / "sw"
    args = ["sweep", "deit_tiny_patch16_224", "--checkpoint", str(DEIT_TINY_CKPT), "--data", str(data), "--img-size", "64",
            "--calib-images", "48", "--macs", "0.6", "--methods", "widths,tome", "--bench-seconds", "0.2",
            "--max-top1-drop", "100", "--out", str(out)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    r = json.loads((out / "sweep.json").read_text())
    assert set(r["points"]) == {"widths@0.6", "tome@0.6"}
    rows = {n: p["rows"]["ort@1"] for n, p in r["points"].items()}
    assert all(row["macs_ratio"] <= p["macs"] + 1e-6 for row, p in zip(rows.values(), r["points"].values()))
    assert r["split"]["held_out"] == 12 and r["fronts"]["ort@1"] == sweep.front(rows)
    assert r["best"]["ort@1"] == max(rows, key=lambda n: rows[n]["speedup"])  # every point within 100 points
    assert (out / "best" / "spec.json").is_file() and (out / "best" / "out" / "report.json").is_file()
    assert (out / "sweep.png").stat().st_size > 10_000 and "| point |" in (out / "sweep.md").read_text()
    # interrupted in a point (its compile never committed): a rerun recomputes that point only
    import shutil

    shutil.rmtree(out / "points" / "tome@0.6" / "out")
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("[")]
    assert sum("resumed" in ln for ln in lines) == 1 and "tome@0.6: " in lines[-1] and "resumed" not in lines[-1]
    # no point within a drop below zero on a model whose pruning never gains: exit 3, OUT kept
    res = CliRunner().invoke(main, [*args[:-4], "--max-top1-drop", "-100", "--out", str(out)])
    assert res.exit_code == 3 and "no point within" in res.output and not (out / "best").exists()


@pytest.mark.parametrize("extra,words", [
    (["--macs", "0.5,1.5"], "--macs 0.5,1.5: give budgets in (0, 1]"),
    (["--methods", "widths,prune-all"], "unknown method 'prune-all'"),
    (["--engines", "tensorrt"], "--engines: tensorrt cannot run here"),
    (["--calib-images", "52"], "8 held-out images measure top-1 to +-34.6 points"),
])
def test_bad_sweeps_exit_2_before_any_point(tmp_path, extra, words):
    require_shared()
    data = _real_subset(tmp_path / "imgs")
    res = CliRunner().invoke(main, ["sweep", "deit_tiny_patch16_224", "--checkpoint", str(data), "--data", str(data),
                                    "--out", str(tmp_path / "sw"), *extra])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and words in lines[0], res.output
    assert not (tmp_path / "sw").exists()
