"""``vitshrink run vitshrink.toml``: compile and gate many (model, checkpoint, spec or importer) entries,
locally one after another or fanned out over a Ray cluster, into one summary.

File format (paths relative to the file)::

    [defaults]                  # any entry field; entries override
    batch = [1, 8]
    bench_seconds = 5
    [defaults.gate]             # thresholds as in `vitshrink check` (vitshrink.gate.thresholds.THRESHOLDS)
    min_speedup = 1.3

    [[entry]]
    name = "tiny-heads"         # output subdirectory; unique
    model = "deit_tiny_patch16_224"
    checkpoint = "weights/deit_tiny.safetensors"
    spec = "specs/heads.json"   # or: from = "torch-pruning" (a pruned checkpoint, imported)
    target = "xeon-8480"        # Ray: run on a node with resource "target:xeon-8480"
    baseline = "last/tiny-heads/report.json"
    [entry.gate]
    max_top1_drop = 0.5

Every entry runs :func:`run_entry` -- the same function locally and as a Ray task -- which compiles into
a temporary directory and returns the files, so a worker on another machine hands its results back to
the driver. Exit code of the run: the worst entry, in the order 1 (verification failed) > 2 (bad input)
> 3 (gate failed) > 0.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

from .errors import VitshrinkError
from .gate.evaluate import evaluate, passed
from .gate.retime import retimer
from .gate.thresholds import gate_from_mapping, read_toml
from .pipeline.job import compile_model
from .pipeline.options import NOT_ENTRY_FIELDS, CompileOptions
from .report.io import read_report, report_dir
from .runtime.engines import parse_engines

#: entry fields passed to :class:`~vitshrink.pipeline.options.CompileOptions` under the same name: every option of a
#: compile (one description: a new option is a run-file field the moment it is a CompileOptions field)
OPTION_FIELDS = tuple(f.name for f in dataclasses.fields(CompileOptions) if f.name not in NOT_ENTRY_FIELDS)
ENTRY_FIELDS = {"name", "model", "spec", "from", "target", "baseline", "gate", *OPTION_FIELDS}
PATH_FIELDS = ("spec", "baseline", *(f.name for f in dataclasses.fields(CompileOptions) if f.metadata.get("path")))
SEVERITY = {0: 0, 3: 1, 2: 2, 1: 3}  # exit code -> how bad


def read_runfile(path: str | Path) -> list[dict]:
    """The entries of a run file, defaults applied, paths resolved against the file's folder.

    Raises:
        VitshrinkError: unreadable / not TOML, no entries, an unknown or missing field, a duplicate
            name, an engine not built in -- naming the entry and the field.
    """
    p = Path(path)
    doc = read_toml(p, "run file")
    unknown = set(doc) - {"defaults", "entry"}
    if unknown:
        raise VitshrinkError(f"run file {p}: unknown table '{sorted(unknown)[0]}' (expected [defaults] and [[entry]])")
    defaults, raw = doc.get("defaults", {}), doc.get("entry", [])
    if not isinstance(raw, list) or not raw:
        raise VitshrinkError(f"run file {p}: no [[entry]] tables")
    _known_fields(defaults, f"run file {p}, [defaults]")  # named as where it is written, not as the first entry
    entries, names = [], set()
    for i, e in enumerate(raw):
        where = f"run file {p}, entry {i + 1}"
        _known_fields(e, where)
        entry = {**defaults, **e, "gate": {**defaults.get("gate", {}), **e.get("gate", {})}}
        if "model" not in entry:
            raise VitshrinkError(f"{where}: field 'model' is missing")
        entry.setdefault("name", entry["model"])
        where = f"run file {p}, entry '{entry['name']}'"
        if entry["name"] in names or not str(entry["name"]).replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise VitshrinkError(f"{where}: name must be unique and made of letters, digits, '-', '_', '.'")
        names.add(entry["name"])
        if "spec" not in entry and "checkpoint" not in entry:
            raise VitshrinkError(f"{where}: give 'spec' (masks) or 'checkpoint' (a pruned checkpoint to import)")
        for k in PATH_FIELDS:
            if entry.get(k) is not None:
                entry[k] = str((p.parent / entry[k]).resolve())
                if not Path(entry[k]).exists():  # found now, not when the entry starts after others compiled
                    raise VitshrinkError(f"{where}: field '{k}': {entry[k]}: no such file or directory")
        try:
            entry["engines"] = list(parse_engines(entry.get("engines", ["ort"])))
        except ValueError as e:
            raise VitshrinkError(f"{where}: field 'engines': {e}") from None
        try:  # validate now, not after an hour of compiling (the message names the option's flag)
            _options(entry, False).check()
        except VitshrinkError as e:
            raise VitshrinkError(f"{where}: {e}") from None
        gate_from_mapping(entry["gate"], f"{where} [gate]")
        entries.append(entry)
    return entries


def _known_fields(table: dict, where: str) -> None:
    """Raise :class:`VitshrinkError` naming the first field of ``table`` a run file entry does not take, with
    the closest known ones."""
    bad = sorted(set(table) - ENTRY_FIELDS)
    if bad:
        close = difflib.get_close_matches(bad[0], sorted(ENTRY_FIELDS), n=2)
        hint = (" (pass --trust-pickle to vitshrink run)" if bad[0] == "trust_pickle"
                else f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "")
        raise VitshrinkError(f"{where}: unknown field '{bad[0]}'{hint}")


def _options(entry: dict, trust_pickle: bool, progress: bool = False) -> CompileOptions:
    kw = {k: entry[k] for k in OPTION_FIELDS if k in entry}
    if "from" in entry:
        kw["source_format"] = entry["from"]
    return CompileOptions(progress=progress, trust_pickle=trust_pickle, **kw)


def run_entry(entry: dict, trust_pickle: bool = False, progress: bool = False) -> dict:
    """Compile and gate one entry (locally or inside a Ray task; ``progress``: the compile's stage lines and bars
    on stderr, as ``vitshrink compile`` shows them). Never raises for the entry's own failures: returns ``{"name", "exit_code", "error", "report", "checks", "files": {name: bytes}, "seconds",
    "host"}`` -- ``files`` the output directory's files, for the driver to write."""
    t0 = time.time()
    out = {"name": entry["name"], "model": entry["model"], "exit_code": 0, "error": None, "report": None, "checks": [],
           "files": {}, "host": platform.node()}
    tmp = Path(tempfile.mkdtemp(prefix="vitshrink-run-"))
    try:
        report = compile_model(entry["model"], entry.get("spec"), tmp / "out", _options(entry, trust_pickle, progress))
        out["report"] = report
        gate = gate_from_mapping(entry.get("gate", {}), f"entry '{entry['name']}' [gate]")
        if gate:
            baseline = read_report(entry["baseline"]) if entry.get("baseline") else None
            retime = retimer(tmp / "out", report_dir(entry.get("baseline")))
            checks = evaluate(report, gate, baseline, retime=retime)
            out["checks"] = [c.__dict__ for c in checks]
            if not passed(checks):
                out["exit_code"] = 3
                out["error"] = "gate failed: " + ", ".join(c.name for c in checks if c.status == "fail")
        out["files"] = {str(f.relative_to(tmp / "out")): f.read_bytes() for f in sorted((tmp / "out").rglob("*")) if f.is_file()}
    except VitshrinkError as e:
        out["exit_code"], out["error"] = e.exit_code, str(e).splitlines()[0]
    except Exception as e:  # an internal error of one entry must not lose the others
        out["exit_code"], out["error"] = 1, f"internal error: {type(e).__name__}: {e}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["seconds"] = round(time.time() - t0, 1)
    return out


def run_all(entries: list[dict], out_dir: str | Path, trust_pickle: bool = False, ray_address: Optional[str] = None,
            on_done: Optional[Callable[[dict, int, int], None]] = None, on_start: Optional[Callable[[dict, int, int], None]] = None,
            progress: bool = False) -> list[dict]:
    """Run every entry (locally in order, or as Ray tasks when ``ray_address`` is given: ``"local"``
    starts a local cluster), write each entry's files to ``out_dir/<name>/`` as results arrive, and
    return the results in file order (``files`` dropped). ``on_start`` / ``on_done(result, i, n)``
    report progress; ``progress``: each local entry's compile shows its stages as it goes (not on Ray, whose
    workers' output would interleave).

    On Ray, an entry with ``target = "T"`` asks for the custom resource ``target:T`` (a node started
    with ``--resources '{"target:T": 1}'``) and as many CPUs as its largest thread count, so that
    two entries never time on the same cores at once. A local cluster registers every target of the
    file on this machine.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n, results = len(entries), {}

    def keep(res: dict, i: int) -> None:
        d = out_dir / res["name"]
        if d.exists():
            shutil.rmtree(d)
        for rel, data in res.pop("files").items():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_bytes(data)
        results[res["name"]] = res
        if on_done:
            on_done(res, len(results), n)

    if ray_address is None:
        for i, e in enumerate(entries):
            if on_start:
                on_start(e, i + 1, n)
            keep(run_entry(e, trust_pickle, progress), i)
    else:
        _run_on_ray(entries, trust_pickle, ray_address, keep, on_start)
    return [results[e["name"]] for e in entries]


def _run_on_ray(entries, trust_pickle, address, keep, on_start) -> None:
    try:
        import ray  # lazy: optional ([ray] extra) and heavy, only for --ray
    except ImportError:
        raise VitshrinkError("--ray needs Ray: pip install 'vitshrink[ray]'") from None
    targets = sorted({e["target"] for e in entries if e.get("target")})
    started = False
    if not ray.is_initialized():
        if address == "local":
            ray.init(num_cpus=os.cpu_count(), resources={f"target:{t}": 1 for t in targets}, include_dashboard=False,
                     log_to_driver=False, logging_level="WARNING")
        else:
            ray.init(address=address, log_to_driver=False, logging_level="WARNING")
        started = True
    try:
        task = ray.remote(run_entry)
        pending = {}
        for i, e in enumerate(entries):
            threads = e.get("threads", 2)
            cpus = max(threads) if isinstance(threads, list) else int(threads)
            opts: dict[str, Any] = {"num_cpus": cpus, "max_retries": 0}
            if e.get("target"):
                opts["resources"] = {f"target:{e['target']}": 0.001}
            pending[task.options(**opts).remote(e, trust_pickle)] = i
            if on_start:
                on_start(e, i + 1, len(entries))
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(done[0])
            keep(ray.get(done[0]), i)
    finally:
        if started:
            ray.shutdown()


def worst_exit(results: list[dict]) -> int:
    """The exit code of a run: its worst entry (1 > 2 > 3 > 0)."""
    return max((r["exit_code"] for r in results), key=lambda c: SEVERITY.get(c, 3), default=0)


def summary_rows(results: list[dict]) -> list[dict]:
    """One row per entry: name, model (a failed entry's too), exit code, MACs ratio, top-1 drop (points, from the
    original model as ``max_top1_drop`` measures it; from vitshrink's dense model where the report has no
    original), speed-ups (against the original model where the report timed it, else against vitshrink's dense),
    gate counts."""
    rows = []
    for r in results:
        rep = r["report"] or {}
        acc = rep.get("accuracy") or {}
        first = (acc.get("engines") or [{}])[0]
        base = first.get("original_top1") if first.get("original_top1") is not None else acc.get("dense_top1")
        checks = r["checks"]
        rows.append({
            "entry": r["name"], "model": rep.get("model") or r.get("model", ""), "exit": r["exit_code"],
            "macs_x": rep["macs"]["dense"] / rep["macs"]["pruned"] if rep.get("macs") else None,
            "top1_drop": 100 * (base - acc["pruned_top1"]) if "pruned_top1" in acc and base is not None else None,
            "speedup": {f"b{e['batch']} t{e['threads']}": e.get("speedup_vs_original", e["speedup"]) for e in rep.get("latency", [])},
            "gate": f"{sum(c['status'] == 'pass' for c in checks)}/{len(checks)}" if checks else "—",
            "host": r["host"], "seconds": r["seconds"], "error": r["error"] or "",
        })
    return rows
